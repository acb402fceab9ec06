"""Choose each model's default pick rule on the NCEDC *validation* stations (never on test stations).

    python scripts/choose_pick_mode.py feq3 leqnet feq1 feq2 --ncedc ../shared/data/ncedc

The validation stations are those recorded in each model's weights json (``data.ncedc_val_files``;
a share of the training side of the station split). Windows: three random sub-sample P positions
per trace. Prints P and S F1 under SeisBench's peak rule and EQTransformer's event-gated rule.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from seisbench_feq.evaluation import evaluate_models
from seisbench_feq.loading import load_model
from seisbench_feq.training.module import validation_pick_windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--ncedc", default="../shared/data/ncedc")
    args = parser.parse_args()
    rows = []
    for spec in args.models:
        model = load_model(spec)
        files = _validation_files(spec, args.ncedc)
        waveforms, metadata = validation_pick_windows(args.ncedc, files)
        for mode in ("peak", "eqt"):
            table = evaluate_models({spec: model}, waveforms, metadata, costs=False, progress=False, pick_mode=mode)
            row = table.iloc[0]
            rows.append({"model": spec, "pick_mode": mode, "windows": len(metadata),
                         "P_f1": round(row["P_f1"], 3), "S_f1": round(row["S_f1"], 3),
                         "mean_f1": round((row["P_f1"] + row["S_f1"]) / 2, 3)})
    print(pd.DataFrame(rows).to_string(index=False))


def _validation_files(spec: str, ncedc_root: str) -> list[str]:
    """The validation traces recorded with the weights (older jsons list only the stations)."""
    from importlib.resources import files

    from seisbench_feq.data import ncedc_files

    data = json.loads((files("seisbench_feq") / "weights" / spec / "default.json.v1").read_text())["data"]
    if "ncedc_val_files" in data:
        return data["ncedc_val_files"]
    stations = set(data["ncedc_val_stations"])
    return [n for n in ncedc_files(Path(ncedc_root)) if ".".join(n.split("_")[:2]) in stations]


if __name__ == "__main__":
    main()
