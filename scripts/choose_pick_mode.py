"""Choose each model's default pick rule on *validation* data only (never on test stations or hours).

    python scripts/choose_pick_mode.py feq3 leqnet feq1 feq2 --ncedc ../shared/data/ncedc \
        --continuous ../shared/data/cx_continuous/sds

* NCEDC: the validation stations recorded in each model's weights json (``data.ncedc_val_files``;
  a share of the training side of the station split). Windows: three random sub-sample P
  positions per trace. P and S F1 under SeisBench's peak rule and EQTransformer's event-gated rule.
* ``--continuous``: the validation part of the continuous training data (the last 10 % of each
  segment, which ``seisbench-feq train`` never trains on; ``seisbench_feq.training.validation``), against the grid-free reference of
  ``seisbench-feq evaluate`` (the converted original EqT, 8 start shifts, consensus). Per rule: the
  share of reference P/S picks matched within 0.5 s and of the model's picks confirmed, and their
  harmonic mean (an F1 against the reference), through ``classify`` with the model's defaults.

The rule with the higher mean of the NCEDC mean F1 and the continuous mean F1 is the choice.
``--thresholds 0.3,0.35,0.4`` scores each rule at each P = S threshold too (the model's weights
set them in ``default_args``; without the flag, the weights' own), and the best pair is printed:

    python scripts/choose_pick_mode.py feq3 leqnet --continuous ../shared/data/cx_continuous/sds \
        --thresholds 0.3,0.35,0.4
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import pandas as pd

from seisbench_feq.evaluation import evaluate_models
from seisbench_feq.loading import load_model
from seisbench_feq.training.validation import continuous_validation, validation_pick_windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--ncedc", default="../shared/data/ncedc")
    parser.add_argument("--continuous", help="continuous training data (its validation part is used)")
    parser.add_argument("--teacher", default="../shared/weights/eqtransformer_original/EqT_original_model.h5")
    parser.add_argument("--cache-dir", default="local/teacher_cache", help="where the reference picks are kept")
    parser.add_argument("--thresholds", type=lambda text: [float(v) for v in text.split(",")], default=[None],
                        help="comma-separated P = S thresholds to score (default: the weights' own)")
    args = parser.parse_args()
    tail = continuous_validation(args.continuous, args.teacher, cache_dir=args.cache_dir) if args.continuous else None
    rows = []
    for spec in args.models:
        model = load_model(spec)
        files = _validation_files(spec, args.ncedc)
        waveforms, metadata = validation_pick_windows(args.ncedc, files)
        for mode, threshold in itertools.product(("peak", "eqt"), args.thresholds):
            given = {} if threshold is None else {"P": threshold, "S": threshold}
            table = evaluate_models({spec: model}, waveforms, metadata, costs=False, progress=False, pick_mode=mode,
                                    thresholds=given)
            row = table.iloc[0]
            result = {"model": spec, "pick_mode": mode, "threshold": row["threshold_P"], "windows": len(metadata),
                      "P_f1": round(row["P_f1"], 3), "S_f1": round(row["S_f1"], 3),
                      "mean_f1": round((row["P_f1"] + row["S_f1"]) / 2, 3),
                      "P_mae_s": round(row["P_mae_s"], 3), "S_mae_s": round(row["S_mae_s"], 3),
                      "P_res_mean_s": round(row["P_res_mean_s"], 3)}
            if tail is not None:
                result.update(tail.score(model, spec, pick_mode=mode,
                                         **{f"{phase}_threshold": value for phase, value in given.items()}))
                result["score"] = round((result["mean_f1"] + result["continuous_mean_f1"]) / 2, 3)
            rows.append(result)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    key = "score" if tail is not None else "mean_f1"
    for spec, group in table.groupby("model", sort=False):
        best = group.loc[group[key].idxmax()]
        print(f"{spec}: pick_mode {best['pick_mode']!r}, P and S threshold {best['threshold']:g}")


def _validation_files(spec: str, ncedc_root: str) -> list[str]:
    """The validation traces recorded with the weights (older jsons list only the stations)."""
    from importlib.resources import files

    from seisbench_feq.data import ncedc_files

    name, _, prefix = spec.partition(":")  # "feq3" (shipped) or "feq3:PREFIX" (a training run's weights)
    path = Path(prefix + ".json.v1") if prefix else files("seisbench_feq") / "weights" / name / "default.json.v1"
    data = json.loads(path.read_text())["data"]
    if "ncedc_val_files" in data:
        return data["ncedc_val_files"]
    stations = set(data["ncedc_val_stations"])
    return [n for n in ncedc_files(Path(ncedc_root)) if ".".join(n.split("_")[:2]) in stations]


if __name__ == "__main__":
    main()
