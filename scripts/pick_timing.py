"""Pick timing of models on the three NCEDC station groups: training, validation and held-out test.

    python scripts/pick_timing.py eqt-original:../shared/weights/eqtransformer_original/EqT_original_model.h5 \
        feq3 leqnet --ncedc ../shared/data/ncedc

Windows as ``seisbench-feq evaluate`` cuts them (random sub-sample P position, ``offset_seed`` 0);
the station split of training (``split_by_station(test_fraction=0.5, seed=0)``, and of its train
side the station-hash 15 % that is validation). Per model, group and phase: the matched picks
(within 0.5 s), the median and mean residual (model - analyst, s), the MAE, and the sample (from
the analyst pick) where the model's P output averaged over the windows peaks. A residual that is
small on the training stations and grows on the others is a timing habit that does not generalise;
one that is the same everywhere would be a label or alignment offset.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from seisbench_feq.data import load_ncedc, split_by_station, station_hash_fraction
from seisbench_feq.evaluation import as_picker, evaluate_models
from seisbench_feq.evaluation.run import load_models
from seisbench_feq.evaluation.scoring import TOLERANCE_S


def _mean_curve_peak(model, waveforms: np.ndarray, metadata: pd.DataFrame, half_width: int = 40) -> float:
    """Where the P output averaged over windows (aligned on the analyst pick) peaks, in samples."""
    picker = as_picker(model, progress=False)
    if not hasattr(picker, "predict"):  # e.g. STA/LTA: no P probability
        return np.nan
    probability = picker.predict(waveforms)[:, 1]
    centres = metadata["p_sample"].round().astype(int).to_numpy()
    keep = (centres >= half_width) & (centres < probability.shape[-1] - half_width)
    curves = [probability[i, c - half_width : c + half_width + 1] for i, c in zip(np.where(keep)[0], centres[keep])]
    return float(np.argmax(np.mean(curves, axis=0)) - half_width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model specs, as for seisbench-feq evaluate")
    parser.add_argument("--ncedc", default="../shared/data/ncedc")
    args = parser.parse_args()
    waveforms, metadata = load_ncedc(args.ncedc, offset_seed=0)
    side = split_by_station(metadata, test_fraction=0.5, seed=0).to_numpy()
    validation = np.array([station_hash_fraction(s, seed=1) < 0.15 for s in metadata["station"]])
    group = np.where(side == "test", "test", np.where(validation, "validation", "train"))
    models, _ = load_models(args.models)
    rows = []
    for name in ("train", "validation", "test"):
        mask = group == name
        meta = metadata[mask].reset_index(drop=True)
        _, picks = evaluate_models(models, waveforms[mask], meta, costs=False, progress=False, return_picks=True)
        for model, frame in picks.items():
            row = {"model": model, "stations": name, "windows": int(mask.sum())}
            for phase in ("P", "S"):
                residual = (frame[f"{phase}_sample"] - meta[f"{phase.lower()}_sample"]) / meta["sampling_rate"]
                residual = residual[residual.abs() <= TOLERANCE_S]
                row[f"{phase}_matched"] = len(residual)
                row[f"{phase}_median_s"] = round(residual.median(), 3)
                row[f"{phase}_mean_s"] = round(residual.mean(), 3)
                row[f"{phase}_mae_s"] = round(residual.abs().mean(), 3)
            row["P_curve_peak_samples"] = _mean_curve_peak(models[model], waveforms[mask], meta)
            rows.append(row)
    print(pd.DataFrame(rows).sort_values(["model", "stations"], kind="stable").to_string(index=False))


if __name__ == "__main__":
    main()
