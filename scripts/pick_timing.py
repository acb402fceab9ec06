"""Pick timing of models on the three NCEDC station groups: training, validation and held-out test.

    python scripts/pick_timing.py eqt-original:../shared/weights/eqtransformer_original/EqT_original_model.h5 \
        feq3 leqnet --ncedc ../shared/data/ncedc

Windows as ``seisbench-feq evaluate`` cuts them (random sub-sample P position, ``offset_seed`` 0);
the station split of training (``split_by_station(test_fraction=0.5, seed=0)`` and, of its train
side, ``is_validation_station``). Per model, group and phase, over the true positives of
``evaluate``'s rules (peak rule, 0.5 s): their number, the median and mean residual (model -
analyst, s) and the MAE; and the sample (from the analyst pick) where the model's P output,
averaged over the windows, peaks. A residual that is small on the training stations and grows on
the others is a timing habit that does not generalise; one that is the same everywhere would be a
label or alignment offset.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from seisbench_feq.data import is_validation_station, load_ncedc, split_by_station
from seisbench_feq.evaluation import ModelPicker, phase_outcomes, picks_from_probabilities, score_picks
from seisbench_feq.evaluation.run import load_models
from seisbench_feq.evaluation.scoring import TOLERANCE_S

CURVE_HALF_WIDTH = 40  # samples each side of the analyst P for the mean output curve


def timing_row(probabilities: np.ndarray, metadata: pd.DataFrame, sampling_rate: float) -> dict:
    """Residual statistics of the true-positive picks and the peak of the mean P curve."""
    picks = picks_from_probabilities(probabilities, sampling_rate=sampling_rate)
    scores = score_picks(picks, metadata, sampling_rate=sampling_rate)
    row = {}
    for phase in ("P", "S"):
        pick = picks[f"{phase}_sample"].to_numpy(float)
        true = metadata[f"{phase.lower()}_sample"].to_numpy(float)
        tp = phase_outcomes(pick, true, TOLERANCE_S * sampling_rate) == "tp"
        row[f"{phase}_tp"] = int(tp.sum())
        row[f"{phase}_median_s"] = round(float(np.median((pick[tp] - true[tp]) / sampling_rate)), 3)
        row[f"{phase}_mean_s"] = round(scores[f"{phase}_res_mean_s"], 3)
        row[f"{phase}_mae_s"] = round(scores[f"{phase}_mae_s"], 3)
    centres = metadata["p_sample"].round().astype(int).to_numpy()
    keep = (centres >= CURVE_HALF_WIDTH) & (centres < probabilities.shape[-1] - CURVE_HALF_WIDTH)
    curves = [probabilities[i, 1, c - CURVE_HALF_WIDTH : c + CURVE_HALF_WIDTH + 1]
              for i, c in zip(np.where(keep)[0], centres[keep])]  # fmt: skip
    row["P_curve_peak_samples"] = int(np.argmax(np.mean(curves, axis=0))) - CURVE_HALF_WIDTH
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model specs with P/S outputs, as for seisbench-feq evaluate")
    parser.add_argument("--ncedc", default="../shared/data/ncedc")
    args = parser.parse_args()
    waveforms, metadata = load_ncedc(args.ncedc, offset_seed=0)
    side = split_by_station(metadata, test_fraction=0.5, seed=0).to_numpy()
    validation = metadata["station"].map(is_validation_station).to_numpy()
    group = np.where(side == "test", "test", np.where(validation, "validation", "train"))
    models, _ = load_models(args.models)
    rows = []
    for label, model in models.items():
        picker = ModelPicker(model, progress=False)
        probabilities = picker.predict(waveforms)  # once per model; the groups are slices of it
        for name in ("train", "validation", "test"):
            mask = group == name
            meta = metadata[mask].reset_index(drop=True)
            row = {"model": label, "stations": name, "windows": int(mask.sum())}
            rows.append({**row, **timing_row(probabilities[mask], meta, picker.sampling_rate)})
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
