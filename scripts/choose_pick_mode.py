"""Choose each model's default pick rule on *validation* data only (never on test stations or hours).

    python scripts/choose_pick_mode.py feq3 leqnet feq1 feq2 --ncedc ../shared/data/ncedc \
        --continuous ../shared/data/cx_continuous/sds

* NCEDC: the validation stations recorded in each model's weights json (``data.ncedc_val_files``;
  a share of the training side of the station split). Windows: three random sub-sample P
  positions per trace. P and S F1 under SeisBench's peak rule and EQTransformer's event-gated rule.
* ``--continuous``: the validation part of the continuous training data (the last 10 % of each
  segment, which ``seisbench-feq train`` never trains on), against the grid-free reference of
  ``seisbench-feq evaluate`` (the converted original EqT, 8 start shifts, consensus). Per rule: the
  share of reference P/S picks matched within 0.5 s and of the model's picks confirmed, and their
  harmonic mean (an F1 against the reference), through ``classify`` with the model's defaults.

The rule with the higher mean of the NCEDC mean F1 and the continuous mean F1 is the choice.
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
    parser.add_argument("--continuous", help="continuous training data (its validation part is used)")
    parser.add_argument("--teacher", default="../shared/weights/eqtransformer_original/EqT_original_model.h5")
    args = parser.parse_args()
    streams, reference = _continuous_validation(args.continuous, args.teacher) if args.continuous else ({}, None)
    rows = []
    for spec in args.models:
        model = load_model(spec)
        files = _validation_files(spec, args.ncedc)
        waveforms, metadata = validation_pick_windows(args.ncedc, files)
        for mode in ("peak", "eqt"):
            table = evaluate_models({spec: model}, waveforms, metadata, costs=False, progress=False, pick_mode=mode)
            row = table.iloc[0]
            result = {"model": spec, "pick_mode": mode, "windows": len(metadata),
                      "P_f1": round(row["P_f1"], 3), "S_f1": round(row["S_f1"], 3),
                      "mean_f1": round((row["P_f1"] + row["S_f1"]) / 2, 3)}
            if streams:
                result.update(_continuous_scores(model, spec, mode, streams, reference))
                result["score"] = round((result["mean_f1"] + result["continuous_mean_f1"]) / 2, 3)
            rows.append(result)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    key = "score" if streams else "mean_f1"
    for spec, group in table.groupby("model", sort=False):
        print(f"{spec}: pick_mode {group.loc[group[key].idxmax(), 'pick_mode']!r}")


def _continuous_validation(root: str, teacher_spec: str):
    """The validation tails of the continuous segments (as training splits them) and the reference."""
    from seisbench_feq.data import read_continuous_segments
    from seisbench_feq.evaluation import continuous

    teacher = load_model(f"eqt-original:{teacher_spec}")
    streams, frames = {}, []
    for segment in read_continuous_segments(root):
        split_at = int(segment.data.shape[-1] * 0.9)  # seisbench_feq.training.distillation: val_fraction 0.1
        stream = segment.to_stream()
        start = stream[0].stats.starttime + split_at / segment.sampling_rate
        stream.trim(start, stream[0].stats.endtime)
        streams[segment.name] = stream
        frames.append(continuous.consensus_picks(teacher, stream, continuous.grid_shifts(8), "reference", segment.name))
    return streams, pd.concat(frames, ignore_index=True)


def _continuous_scores(model, spec: str, mode: str, streams: dict, reference: pd.DataFrame) -> dict:
    from seisbench_feq.evaluation import continuous

    frames = [continuous._picks_frame(model.classify(st, pick_mode=mode).picks, spec, name) for name, st in streams.items()]
    starts, spans = {}, {}
    for name, st in streams.items():
        tid = f"{st[0].stats.network}.{st[0].stats.station}.{st[0].stats.location}"
        starts[(name, tid)] = st[0].stats.starttime
        spans[(name, tid)] = (st[0].stats.starttime, float(st[0].stats.endtime - st[0].stats.starttime))
    row = continuous.score_continuous(pd.concat(frames, ignore_index=True), reference, starts, spans)
    out = {}
    for phase in ("P", "S"):
        matched, confirmed = row[f"reference_{phase}_matched_pct"] / 100, row[f"{phase}_confirmed_by_reference_pct"] / 100
        out[f"cont_{phase}_matched"] = round(matched, 3)
        out[f"cont_{phase}_confirmed"] = round(confirmed, 3)
        out[f"cont_{phase}_f1"] = round(2 * matched * confirmed / (matched + confirmed), 3) if matched + confirmed else 0.0
    out["cont_S_near_own_P_pct"] = round(row["S_near_own_P_pct"], 1)
    out["continuous_mean_f1"] = round((out["cont_P_f1"] + out["cont_S_f1"]) / 2, 3)
    return out


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
