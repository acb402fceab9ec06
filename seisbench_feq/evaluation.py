"""Evaluation of pickers on labelled windows: the tables of the EqT / LEQNet / FEQ papers.

``seisbench-feq evaluate`` and :func:`evaluate_models` score any set of models on windows with
analyst P and S picks (the NCEDC traces of ``../shared/data/ncedc`` through
:func:`seisbench_feq.data.load_ncedc`, or a SeisBench ``WaveformDataset`` folder) and report

- detection, P and S precision / recall / F1 and false-negative counts,
- pick residuals: mean, std, MAE and MAPE,
- Keras and PyTorch parameter counts, weight-file size, FLOPs per window and ms per window,

with an STA/LTA baseline (ObsPy) and the converted original EQTransformer / LEQNet in the same table.

Rules (also written into every report, see :data:`RULES_MARKDOWN`):

- **Probabilities.** Each window (N, 3, 6000 samples, ZNE, counts) goes through the model's own
  ``annotate_batch_pre`` (its normalisation) and ``forward``; no blinding, no stacking: one
  window, one prediction, as in the papers' test sets.
- **Pick extraction.** SeisBench's ``WaveformModel.picks_from_annotations`` /
  ``detections_from_annotations`` on the window's probability trace (ObsPy ``trigger_onset``
  with on = threshold, off = threshold / 2). Thresholds: detection 0.5, P 0.3, S 0.3.
- **Matching, per window and phase.** The highest-probability pick is compared with the analyst
  pick. ``|pick - analyst| <= 0.5 s``: true positive. A pick further away: one false positive
  *and* one false negative ("wrong"). No pick: one false negative ("missed"). A pick in a
  window without an analyst pick of that phase: false positive.
- **Detection.** True positive when a detection interval overlaps the analyst [P, S] interval;
  detections that all miss it: FP + FN; no detection: FN; any detection in a noise window: FP.
- **Residuals** (pick - analyst, seconds, positive = late) over the true positives only:
  mean, std (population, ddof=0), MAE = mean |r|, and
  MAPE = 100 x mean(|r| / t_analyst), t_analyst = analyst arrival time from the window's first
  sample (the percentage depends on where the window starts: compare models on the same windows).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import platform
import shlex
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

TOLERANCE_S = 0.5
DEFAULT_THRESHOLDS = {"detection": 0.5, "P": 0.3, "S": 0.3}
TASKS = ("detection", "P", "S")
PHASES = ("P", "S")
QUALITY_BAR_F1 = 0.05  # shipped models' P and S F1 may fall at most this far below the reference
TIMING_BATCH = 64
COST_COLUMNS = ("keras_params", "torch_params", "weights_kb", "mflops_per_window", "ms_per_window")

RULES_MARKDOWN = """\
- **Windows**: each labelled window (3 x 6000 samples, ZNE, counts, 100 Hz) is passed through the
  model's own `annotate_batch_pre` (its normalisation) and `forward`: one window, one prediction,
  no blinding and no overlap stacking.
- **Picks** come from SeisBench's `WaveformModel.picks_from_annotations` /
  `detections_from_annotations` on the window's probability trace (ObsPy `trigger_onset`, on =
  threshold, off = threshold / 2). Thresholds: {thresholds}.
- **Matching** (per window and phase): the highest-probability pick is compared with the analyst
  pick. |pick - analyst| <= {tol} s: true positive (TP). A pick further away: one false positive
  *and* one false negative (column "wrong"). No pick: false negative ("missed"). A pick in a
  window without an analyst pick of that phase (noise window): false positive.
- **Detection**: TP when a detection interval overlaps the analyst [P, S] interval; detections that
  all miss it: FP + FN; no detection: FN; any detection in a noise window: FP.
- **Residuals** r = pick - analyst in seconds (positive = late), over the TPs only: mean, std
  (population), MAE = mean |r|, MAPE = 100 x mean(|r| / t), t = analyst arrival time measured from
  the window's first sample.
- **STA/LTA** (ObsPy): Z channel demeaned, band-passed {stalta_band} Hz (2 corners, causal),
  `classic_sta_lta` (STA {sta} s, LTA {lta} s), `trigger_onset` (on {on}, off {off}). Each trigger
  interval is a detection; the P pick is the onset of the trigger with the highest STA/LTA ratio.
  It gives **no S picks** (its S columns are empty).
- **Parameters**: Keras-convention count (`seisbench_feq.keras_param_count`: BatchNorm statistics
  counted, one bias per RNN gate set) and PyTorch trainable count. **Weights** = size of the
  SeisBench `.pt` file (`torch.save` of the state dict).
- **FLOPs per window**: `seisbench_feq.flops`: multiply-accumulates of every convolution, matrix
  product (including attention) and LSTM/GRU weight product, counted at the ATen-operator level
  during one forward pass; 2 FLOPs per MAC; element-wise work not counted.
- **ms per window**: fastest of {repeats} timed forward passes (normalisation + `forward`, after one
  warm-up pass) of a batch of {batch} real windows, divided by {batch}; {threads} torch thread(s),
  {machine}. The fastest run is the one least disturbed by other processes on a shared machine.
  STA/LTA: the filter + `classic_sta_lta` on the Z channel, same batch. "x ref" columns: ratio to
  the reference model measured in the same run.
"""


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 = 2 TP / (2 TP + FP + FN); NaN where a ratio is 0 / 0."""

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)


def residual_stats(residuals_s: Sequence[float], arrival_times_s: Sequence[float]) -> dict[str, float]:
    """Mean, std (ddof=0), MAE (s) and MAPE (%) of pick residuals; NaN when there are none.

    ``arrival_times_s`` are the analyst arrival times from the window's first sample (MAPE's
    denominators); they must be positive.
    """
    r = np.asarray(residuals_s, dtype=float)
    t = np.asarray(arrival_times_s, dtype=float)
    if r.shape != t.shape:
        raise ValueError(f"{r.size} residuals but {t.size} arrival times")
    if r.size == 0:
        return {"res_mean_s": math.nan, "res_std_s": math.nan, "mae_s": math.nan, "mape_pct": math.nan}
    if (t <= 0).any():
        raise ValueError("arrival times must be > 0 s from the window start for MAPE")
    return {
        "res_mean_s": float(r.mean()),
        "res_std_s": float(r.std()),
        "mae_s": float(np.abs(r).mean()),
        "mape_pct": float(100.0 * np.mean(np.abs(r) / t)),
    }


def phase_outcomes(pick_samples, true_samples, tolerance_samples: float) -> np.ndarray:
    """Outcome per window: "tp", "wrong" (FP + FN), "missed" (FN), "false" (FP) or "tn".

    ``pick_samples``/``true_samples`` hold one value per window, NaN where there is no pick /
    no analyst pick. A pick exactly ``tolerance_samples`` away is a true positive.
    """
    pick = np.asarray(pick_samples, dtype=float)
    true = np.asarray(true_samples, dtype=float)
    has_pick, has_true = ~np.isnan(pick), ~np.isnan(true)
    within = np.zeros(pick.shape, bool)
    both = has_pick & has_true
    within[both] = np.abs(pick[both] - true[both]) <= tolerance_samples + 1e-9
    out = np.full(pick.shape, "tn", dtype=object)
    out[has_true & within] = "tp"
    out[has_true & has_pick & ~within] = "wrong"
    out[has_true & ~has_pick] = "missed"
    out[~has_true & has_pick] = "false"
    return out


def detection_outcomes(detections: Sequence[Sequence[tuple[float, float]]], p_samples, s_samples) -> np.ndarray:
    """Outcome per window for detection, with the analyst [P, S] interval as the event.

    ``detections[i]`` lists (on, off) sample intervals of window i. A window without P is noise;
    a window with P but no S uses [P, P].
    """
    p = np.asarray(p_samples, dtype=float)
    s = np.asarray(s_samples, dtype=float)
    out = np.full(len(p), "tn", dtype=object)
    for i, intervals in enumerate(detections):
        if np.isnan(p[i]):
            out[i] = "false" if len(intervals) else "tn"
            continue
        start, end = p[i], (s[i] if not np.isnan(s[i]) else p[i])
        if any(on <= end and off >= start for on, off in intervals):
            out[i] = "tp"
        else:
            out[i] = "wrong" if len(intervals) else "missed"
    return out


def count_outcomes(outcomes: np.ndarray) -> dict[str, int]:
    """TP / FP / FN counts (and the two kinds of FN) from :func:`phase_outcomes` outcomes."""
    n = {k: int(np.sum(outcomes == k)) for k in ("tp", "wrong", "missed", "false")}
    return {
        "tp": n["tp"],
        "fp": n["wrong"] + n["false"],
        "fn": n["wrong"] + n["missed"],
        "missed": n["missed"],
        "wrong": n["wrong"],
    }


# ------------------------------------------------------------------------------------------------
# Pick extraction (SeisBench's trigger rules on one window's probability trace)
# ------------------------------------------------------------------------------------------------


def _as_trace(probability: np.ndarray, sampling_rate: float):
    import obspy

    return obspy.Trace(
        data=np.ascontiguousarray(probability, dtype=np.float32),
        header={"sampling_rate": sampling_rate, "network": "XX", "station": "WIN"},
    )


def window_picks(probability: np.ndarray, threshold: float, phase: str, sampling_rate: float = 100.0):
    """Picks in one window's probability trace: list of (peak_sample, peak_value), best first.

    Uses :meth:`seisbench.models.WaveformModel.picks_from_annotations` (trigger on at
    ``threshold``, off at ``threshold / 2``; the peak is the maximum inside the trigger).
    """
    import obspy
    from seisbench.models import WaveformModel

    trace = _as_trace(probability, sampling_rate)
    picks = WaveformModel.picks_from_annotations(obspy.Stream([trace]), threshold, phase)
    t0 = trace.stats.starttime
    found = [(round((p.peak_time - t0) * sampling_rate), float(p.peak_value)) for p in picks]
    return sorted(found, key=lambda x: -x[1])


def window_detections(probability: np.ndarray, threshold: float, sampling_rate: float = 100.0):
    """Detection intervals (on_sample, off_sample) in one window's detection trace (SeisBench rule)."""
    import obspy
    from seisbench.models import WaveformModel

    trace = _as_trace(probability, sampling_rate)
    detections = WaveformModel.detections_from_annotations(obspy.Stream([trace]), threshold)
    t0 = trace.stats.starttime
    return [
        (round((d.start_time - t0) * sampling_rate), round((d.end_time - t0) * sampling_rate)) for d in detections
    ]


def picks_from_probabilities(
    probabilities: np.ndarray, thresholds: Mapping[str, float] | None = None, sampling_rate: float = 100.0
) -> pd.DataFrame:
    """Per-window picks from (N, 3, samples) detection / P / S probabilities.

    Returns one row per window: ``detections`` (list of (on, off) samples), ``P_sample``,
    ``P_value``, ``S_sample``, ``S_value`` (the highest-probability pick; NaN without a pick).
    """
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    rows = []
    for det, p, s in probabilities:
        row: dict[str, Any] = {
            "detections": window_detections(det, thresholds["detection"], sampling_rate)
            if np.isfinite(det).any()
            else []
        }
        for phase, prob in (("P", p), ("S", s)):
            picks = window_picks(prob, thresholds[phase], phase, sampling_rate) if np.isfinite(prob).any() else []
            row[f"{phase}_sample"], row[f"{phase}_value"] = picks[0] if picks else (math.nan, math.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=["detections", "P_sample", "P_value", "S_sample", "S_value"])


# ------------------------------------------------------------------------------------------------
# Pickers: a SeisBench model, or the STA/LTA baseline
# ------------------------------------------------------------------------------------------------


def _ms_per_window(fn, batch: np.ndarray, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``fn(batch)`` after one warm-up call, per window.

    The fastest run is the one least disturbed by other processes on a shared machine (the
    convention of Python's ``timeit``); the model's own cost does not vary between runs.
    """
    fn(batch)  # warm-up: first-call allocations and thread start-up are not part of the rate
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
    return 1000.0 * min(times) / len(batch)


def _timing_batch(waveforms: np.ndarray, size: int = TIMING_BATCH) -> np.ndarray:
    """``size`` real windows (cycled when there are fewer)."""
    return np.resize(waveforms, (size,) + waveforms.shape[1:]).astype(np.float32)


class ModelPicker:
    """Runs a SeisBench ``WaveformModel`` (or any module with the same hooks) on windows.

    Override :meth:`predict` for models whose outputs need other handling.
    """

    def __init__(self, model, thresholds: Mapping[str, float] | None = None, batch_size: int = 64, progress=True):
        self.model = model
        self.thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
        self.batch_size = batch_size
        self.progress = progress
        self.sampling_rate = float(getattr(model, "sampling_rate", None) or 100.0)
        self._rows = self._output_rows(model)
        self.phases = tuple(p for p, row in zip(PHASES, self._rows[1:]) if row is not None)

    @staticmethod
    def _output_rows(model) -> list[int | None]:
        """Index of the detection, P and S outputs among ``model.labels`` (None when absent)."""
        labels = [str(label).lower() for label in (getattr(model, "labels", None) or ["detection", "p", "s"])]
        rows = []
        for wanted in ("detection", "p", "s"):
            match = [i for i, label in enumerate(labels) if label == wanted or (wanted == "detection" and label == "d")]
            rows.append(match[0] if match else None)
        if rows[1] is None and rows[2] is None:
            raise ValueError(f"{type(model).__name__} has no P or S output (labels {labels})")
        return rows

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        model = self.model
        device = getattr(model, "device", torch.device("cpu"))
        with torch.no_grad():
            x = torch.as_tensor(batch, dtype=torch.float32, device=device)
            x = model.annotate_batch_pre(x, {})
            if isinstance(x, tuple):  # (batch, piggyback) form of the hook
                x = x[0]
            out = model(x)
            if isinstance(out, (tuple, list)):
                out = torch.stack(list(out), dim=1)
            out = out.detach().float().cpu().numpy()
        if out.ndim != 3 or out.shape[0] != len(batch):
            raise ValueError(f"{type(model).__name__} returned shape {out.shape}; expected (batch, labels, samples)")
        result = np.full((len(batch), 3, out.shape[-1]), np.nan, dtype=np.float32)
        for j, row in enumerate(self._rows):
            if row is not None:
                result[:, j] = out[:, row]
        return result

    def predict(self, waveforms: np.ndarray) -> np.ndarray:
        """(N, 3, samples) counts -> (N, 3, samples) detection / P / S probabilities."""
        from tqdm.auto import tqdm

        was_training = self.model.training
        self.model.eval()
        try:
            starts = range(0, len(waveforms), self.batch_size)
            iterator = tqdm(starts, desc=f"{type(self.model).__name__}", unit="batch", disable=not self.progress)
            return np.concatenate(
                [self._forward(waveforms[i : i + self.batch_size]) for i in iterator]
                or [np.zeros((0, 3, waveforms.shape[-1]), np.float32)]
            )
        finally:
            self.model.train(was_training)

    def pick_windows(self, waveforms: np.ndarray) -> pd.DataFrame:
        return picks_from_probabilities(self.predict(waveforms), self.thresholds, self.sampling_rate)

    def costs(
        self, waveforms: np.ndarray, timing_repeats: int = 5, timing_batch: int = TIMING_BATCH
    ) -> dict[str, float]:
        """Parameter counts, weight-file size, FLOPs and ms per window (batches of ``timing_batch``)."""
        import torch

        from .flops import flops_per_window
        from .models import keras_param_count, torch_param_count

        model = self.model
        costs: dict[str, float] = {}
        try:
            costs["keras_params"] = keras_param_count(model)
        except Exception as err:  # a foreign module layout: report the gap, keep the other numbers
            logger.warning("Keras parameter count failed for %s: %s", type(model).__name__, err)
            costs["keras_params"] = math.nan
        costs["torch_params"] = torch_param_count(model)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        costs["weights_kb"] = buffer.getbuffer().nbytes / 1000.0
        costs["mflops_per_window"] = flops_per_window(model, waveforms.shape[1], waveforms.shape[2]) / 1e6
        was_training = model.training
        model.eval()
        try:
            costs["ms_per_window"] = _ms_per_window(
                self._forward, _timing_batch(waveforms, timing_batch), timing_repeats
            )
        finally:
            model.train(was_training)
        return costs


@dataclass
class StaLtaPicker:
    """The classic baseline: ObsPy ``classic_sta_lta`` + ``trigger_onset`` on the Z channel.

    Every trigger interval is a detection; the P pick is the onset of the trigger with the highest
    STA/LTA ratio. No S picks. ``component`` is the row of Z in the windows (ZNE order: 0).
    """

    sta_s: float = 0.5
    lta_s: float = 5.0
    trigger_on: float = 3.5
    trigger_off: float = 1.0
    freqmin: float = 1.0
    freqmax: float = 20.0
    sampling_rate: float = 100.0
    component: int = 0
    phases = ("P",)  # scored phases: no S picks

    def characteristic(self, waveforms: np.ndarray) -> np.ndarray:
        """(N, C, samples) -> (N, samples) STA/LTA ratio of the (filtered) Z channel."""
        from obspy.signal.filter import bandpass
        from obspy.signal.trigger import classic_sta_lta

        nsta, nlta = round(self.sta_s * self.sampling_rate), round(self.lta_s * self.sampling_rate)
        out = np.zeros((len(waveforms), waveforms.shape[-1]))
        for i, window in enumerate(waveforms):
            z = window[self.component].astype(np.float64)
            z = z - z.mean()
            if not z.any():
                continue  # no vertical data: no trigger (classic_sta_lta would divide 0 by 0)
            z = bandpass(z, self.freqmin, self.freqmax, self.sampling_rate, corners=2, zerophase=False)
            out[i] = classic_sta_lta(z, nsta, nlta)
        return out

    def pick_windows(self, waveforms: np.ndarray) -> pd.DataFrame:
        from obspy.signal.trigger import trigger_onset

        rows = []
        for cft in self.characteristic(waveforms):
            triggers = trigger_onset(cft, self.trigger_on, self.trigger_off) if cft.any() else []
            row: dict[str, Any] = {
                "detections": [(int(a), int(b)) for a, b in triggers],
                "S_sample": math.nan,
                "S_value": math.nan,
            }
            if len(triggers):
                on, off = max(triggers, key=lambda t: cft[t[0] : t[1] + 1].max())
                row["P_sample"], row["P_value"] = int(on), float(cft[on : off + 1].max())
            else:
                row["P_sample"], row["P_value"] = math.nan, math.nan
            rows.append(row)
        return pd.DataFrame(rows, columns=["detections", "P_sample", "P_value", "S_sample", "S_value"])

    def costs(
        self, waveforms: np.ndarray, timing_repeats: int = 5, timing_batch: int = TIMING_BATCH
    ) -> dict[str, float]:
        return {
            "keras_params": math.nan,
            "torch_params": math.nan,
            "weights_kb": math.nan,
            "mflops_per_window": math.nan,
            "ms_per_window": _ms_per_window(
                self.characteristic, _timing_batch(waveforms, timing_batch), timing_repeats
            ),
        }


def as_picker(model, thresholds: Mapping[str, float] | None = None, batch_size: int = 64, progress: bool = True):
    """A picker for ``model``: objects with ``pick_windows`` are used as they are."""
    if hasattr(model, "pick_windows"):
        return model
    if not hasattr(model, "annotate_batch_pre"):
        raise TypeError(
            f"cannot evaluate {type(model).__name__}: expected a SeisBench WaveformModel or an object with "
            "pick_windows(waveforms) -> DataFrame"
        )
    return ModelPicker(model, thresholds=thresholds, batch_size=batch_size, progress=progress)


# ------------------------------------------------------------------------------------------------
# Scoring and the table
# ------------------------------------------------------------------------------------------------


def _check_inputs(waveforms: np.ndarray, metadata: pd.DataFrame) -> float:
    if waveforms.ndim != 3:
        raise ValueError(f"waveforms must be (windows, channels, samples), got shape {waveforms.shape}")
    if len(waveforms) != len(metadata):
        raise ValueError(f"{len(waveforms)} waveforms but {len(metadata)} metadata rows")
    missing = {"p_sample", "s_sample"} - set(metadata.columns)
    if missing:
        raise KeyError(f"metadata lacks the column(s) {sorted(missing)} (analyst pick sample in the window)")
    bad = ~np.isfinite(waveforms).all(axis=(1, 2))
    if bad.any():
        names = metadata.get("trace_name", pd.Series(range(len(metadata)))).to_numpy()[bad]
        raise ValueError(f"{bad.sum()} window(s) hold NaN or inf samples: {list(names[:5])}")
    rates = set(metadata["sampling_rate"].unique()) if "sampling_rate" in metadata.columns else {100.0}
    if len(rates) != 1:
        raise ValueError(f"windows at several sampling rates {sorted(rates)}: evaluate each rate separately")
    return float(rates.pop())


def score_picks(
    picks: pd.DataFrame,
    metadata: pd.DataFrame,
    tolerance_s: float = TOLERANCE_S,
    sampling_rate: float = 100.0,
    phases: Sequence[str] = PHASES,
) -> dict[str, float]:
    """One table row from per-window ``picks`` (rows aligned with ``metadata``).

    Phases not in ``phases`` (a picker without that output, e.g. S for STA/LTA) get NaN scores,
    not zeros.
    """
    if len(picks) != len(metadata):
        raise ValueError(f"{len(picks)} pick rows for {len(metadata)} windows")
    tol = tolerance_s * sampling_rate
    p_true = metadata["p_sample"].to_numpy(float)
    s_true = metadata["s_sample"].to_numpy(float)
    row: dict[str, float] = {"n_windows": len(metadata), "n_P": int((~np.isnan(p_true)).sum())}
    row["n_S"] = int((~np.isnan(s_true)).sum())
    det = count_outcomes(detection_outcomes(list(picks["detections"]), p_true, s_true))
    for key, value in det.items():
        row[f"detection_{key}"] = value
    row["detection_precision"], row["detection_recall"], row["detection_f1"] = precision_recall_f1(
        det["tp"], det["fp"], det["fn"]
    )
    for phase, true in (("P", p_true), ("S", s_true)):
        if phase not in phases:
            for key in ("tp", "fp", "fn", "missed", "wrong", "precision", "recall", "f1"):
                row[f"{phase}_{key}"] = math.nan
            row.update({f"{phase}_{key}": math.nan for key in residual_stats([], [])})
            continue
        pick = picks[f"{phase}_sample"].to_numpy(float)
        outcomes = phase_outcomes(pick, true, tol)
        counts = count_outcomes(outcomes)
        for key, value in counts.items():
            row[f"{phase}_{key}"] = value
        row[f"{phase}_precision"], row[f"{phase}_recall"], row[f"{phase}_f1"] = precision_recall_f1(
            counts["tp"], counts["fp"], counts["fn"]
        )
        tp = outcomes == "tp"
        stats = residual_stats((pick[tp] - true[tp]) / sampling_rate, true[tp] / sampling_rate)
        for key, value in stats.items():
            row[f"{phase}_{key}"] = value
    return row


def score_table(
    picks_by_model: Mapping[str, pd.DataFrame],
    metadata: pd.DataFrame,
    tolerance_s: float = TOLERANCE_S,
    sampling_rate: float = 100.0,
    phases_by_model: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """:func:`score_picks` for several models on the same windows, as a table indexed by model."""
    phases_by_model = phases_by_model or {}
    rows = {
        name: score_picks(picks, metadata, tolerance_s, sampling_rate, phases_by_model.get(name, PHASES))
        for name, picks in picks_by_model.items()
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table


def _picks_key(name: str, picker, waveforms: np.ndarray, metadata: pd.DataFrame, thresholds) -> str:
    """What the per-window picks depend on: model weights (or baseline settings), windows, thresholds."""
    import hashlib

    h = hashlib.sha1()
    h.update(name.encode())
    h.update(json.dumps(dict(thresholds), sort_keys=True).encode())
    h.update(np.ascontiguousarray(waveforms).tobytes())
    h.update(metadata.get("trace_name", pd.Series(dtype=str)).astype(str).str.cat(sep="|").encode())
    if isinstance(picker, ModelPicker):
        for key, tensor in picker.model.state_dict().items():
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        h.update(type(picker.model).__name__.encode())
        if hasattr(picker.model, "get_model_args"):  # e.g. the normalisation mode
            h.update(json.dumps(picker.model.get_model_args(), sort_keys=True, default=str).encode())
    else:
        h.update(repr(picker).encode())
    return h.hexdigest()


def _cache_file(cache_dir: Path, name: str) -> Path:
    import re

    return Path(cache_dir) / (re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") + ".pkl")


def _cached_picks(cache_dir, name, picker, waveforms, metadata, thresholds) -> pd.DataFrame | None:
    """Per-window picks of an earlier, interrupted or repeated run with identical inputs, if any."""
    if cache_dir is None:
        return None
    path = _cache_file(cache_dir, name)
    if not path.exists():
        return None
    try:
        stored = pd.read_pickle(path)
    except Exception as err:  # a truncated file from an interrupted run: recompute
        logger.warning("ignoring unreadable pick cache %s: %s", path, err)
        return None
    if stored.get("key") != _picks_key(name, picker, waveforms, metadata, thresholds):
        return None
    logger.info("%s: reusing the picks stored in %s (same weights, windows and thresholds)", name, path)
    return stored["picks"]


def _store_picks(cache_dir, name, picker, waveforms, metadata, thresholds, picks: pd.DataFrame) -> None:
    if cache_dir is None:
        return
    path = _cache_file(cache_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pd.to_pickle({"key": _picks_key(name, picker, waveforms, metadata, thresholds), "picks": picks}, tmp)
    tmp.replace(path)  # atomic: an interrupted run never leaves a half-written cache


def _evaluate(
    models: Mapping[str, Any],
    waveforms: np.ndarray,
    metadata: pd.DataFrame,
    *,
    thresholds: Mapping[str, float] | None,
    tolerance_s: float,
    batch_size: int,
    costs: bool,
    timing_repeats: int,
    progress: bool,
    timing_batch: int = TIMING_BATCH,
    cache_dir: Path | None = None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, tuple[str, ...]]]:
    sampling_rate = _check_inputs(waveforms, metadata)
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    metadata = metadata.reset_index(drop=True)
    rows, picks_by_model, phases_by_model = {}, {}, {}
    for name, model in models.items():
        picker = as_picker(model, thresholds, batch_size, progress)
        picks = _cached_picks(cache_dir, name, picker, waveforms, metadata, thresholds)
        if picks is None:
            logger.info("evaluating %s on %d windows", name, len(waveforms))
            picks = picker.pick_windows(waveforms)
            _store_picks(cache_dir, name, picker, waveforms, metadata, thresholds, picks)
        phases = tuple(getattr(picker, "phases", PHASES))
        row = score_picks(picks, metadata, tolerance_s, sampling_rate, phases)
        row["tolerance_s"] = tolerance_s
        uses_thresholds = isinstance(picker, ModelPicker)
        row.update({f"threshold_{k}": (v if uses_thresholds else math.nan) for k, v in thresholds.items()})
        if costs:
            row.update(picker.costs(waveforms, timing_repeats, timing_batch))
        rows[name], picks_by_model[name], phases_by_model[name] = row, picks, phases
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table, picks_by_model, phases_by_model


def evaluate_models(
    models: Mapping[str, Any],
    waveforms: np.ndarray,
    metadata: pd.DataFrame,
    *,
    thresholds: Mapping[str, float] | None = None,
    tolerance_s: float = TOLERANCE_S,
    batch_size: int = 64,
    costs: bool = True,
    timing_repeats: int = 5,
    timing_batch: int = TIMING_BATCH,
    progress: bool = True,
    return_picks: bool = False,
):
    """Score ``models`` (name -> SeisBench ``WaveformModel``, :class:`StaLtaPicker`, or any object
    with ``pick_windows(waveforms) -> DataFrame``) on labelled windows.

    ``waveforms``: (N, 3, samples) float32 counts in the models' component order (ZNE);
    ``metadata``: N rows with ``p_sample`` and ``s_sample`` (analyst picks, samples from the window
    start; NaN = none, e.g. noise windows) and optionally ``sampling_rate`` and ``trace_name``.

    Returns a DataFrame indexed by model name with ``{detection,P,S}_{tp,fp,fn,missed,wrong,
    precision,recall,f1}``, ``{P,S}_{res_mean_s,res_std_s,mae_s,mape_pct}``, the thresholds and
    tolerance and, with ``costs``, ``keras_params, torch_params, weights_kb, mflops_per_window,
    ms_per_window``. With ``return_picks`` also a dict name -> per-window picks DataFrame.
    The rules are in this module's docstring. Use :func:`scores_for_json` to store one row.
    """
    table, picks, _ = _evaluate(
        models,
        waveforms,
        metadata,
        thresholds=thresholds,
        tolerance_s=tolerance_s,
        batch_size=batch_size,
        costs=costs,
        timing_repeats=timing_repeats,
        progress=progress,
        timing_batch=timing_batch,
    )
    return (table, picks) if return_picks else table


def evaluate_on_ncedc(
    models: Mapping[str, Any],
    root: str | Path,
    split: str = "test",
    test_fraction: float = 0.5,
    seed: int = 0,
    **kwargs,
) -> pd.DataFrame:
    """:func:`evaluate_models` on the NCEDC windows of one station split ("test", "train" or "all").

    The windows and the split are those of :func:`seisbench_feq.data.load_ncedc` and
    :func:`seisbench_feq.data.split_by_station`, i.e. those of ``seisbench-feq evaluate --split``.
    """
    from .data import load_ncedc, split_by_station

    if split not in ("all", "train", "test"):
        raise ValueError(f"split={split!r}: expected 'all', 'train' or 'test'")
    waveforms, metadata = load_ncedc(root)
    mask = np.ones(len(metadata), bool)
    if split != "all":
        mask = (split_by_station(metadata, test_fraction=test_fraction, seed=seed) == split).to_numpy()
    return evaluate_models(models, waveforms[mask], metadata[mask].reset_index(drop=True), **kwargs)


def _plain(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value


def scores_for_json(row: pd.Series | Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready nested dict of one :func:`evaluate_models` row (NaN -> None).

    ``{"n_windows", "tolerance_s", "thresholds": {...}, "detection": {precision, recall, f1, tp,
    fp, fn, missed, wrong}, "P": {... , res_mean_s, res_std_s, mae_s, mape_pct}, "S": {...},
    "cost": {keras_params, torch_params, weights_kb, mflops_per_window, ms_per_window}}``
    (``cost`` only when the row has it).
    """
    row = dict(row)
    out: dict[str, Any] = {
        "n_windows": _plain(row.get("n_windows")),
        "tolerance_s": _plain(row.get("tolerance_s", TOLERANCE_S)),
        "thresholds": {task: _plain(row.get(f"threshold_{task}")) for task in TASKS},
    }
    for task in TASKS:
        prefix = f"{task}_"
        out[task] = {key[len(prefix) :]: _plain(value) for key, value in row.items() if key.startswith(prefix)}
        for key in ("tp", "fp", "fn", "missed", "wrong"):  # counts stay integers (CSV round trips give floats)
            if out[task].get(key) is not None:
                out[task][key] = int(out[task][key])
    if out["n_windows"] is not None:
        out["n_windows"] = int(out["n_windows"])
    if any(key in row for key in COST_COLUMNS):
        out["cost"] = {key: _plain(row.get(key)) for key in COST_COLUMNS}
        for key in ("keras_params", "torch_params"):
            if out["cost"][key] is not None:
                out["cost"][key] = int(out["cost"][key])
    return out


def quality_bar(table: pd.DataFrame, reference: str, margin: float = QUALITY_BAR_F1) -> pd.DataFrame:
    """P and S F1 of every other scored model against ``reference``'s: pass when >= ref - margin.

    ``margin_*`` = F1 - (reference F1 - margin): how far above (+) or below (-) the bar.
    Models without S scores (STA/LTA) are left out.
    """
    if reference not in table.index:
        raise KeyError(f"reference model {reference!r} is not in the table ({list(table.index)})")
    ref = table.loc[reference]
    rows = []
    for name, row in table.iterrows():
        if name == reference or pd.isna(row.get("S_f1")):
            continue
        out = {"model": name}
        for phase in PHASES:
            out[f"{phase}_f1"] = row[f"{phase}_f1"]
            out[f"{phase}_ref_f1"] = ref[f"{phase}_f1"]
            out[f"{phase}_margin"] = row[f"{phase}_f1"] - (ref[f"{phase}_f1"] - margin)
        out["passes"] = bool(out["P_margin"] >= -1e-12 and out["S_margin"] >= -1e-12)
        rows.append(out)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# Model specs (CLI names) and data
# ------------------------------------------------------------------------------------------------

NCEDC_WINDOW_NOTE = (
    "One 60 s window per NCEDC trace, P at sample 500 + crc32(file name) mod 2000 "
    "(`seisbench_feq.data.load_ncedc`, the protocol of the reference results in model_spec.md)."
)

MODEL_SPEC_HELP = """\
model specs: feq1 | feq2 | feq3 | leqnet (shipped weights; NAME:WEIGHTS for another shipped name),
stalta (ObsPy baseline), eqt-original:PATH.h5 / leqnet-original:PATH.h5 (Keras originals converted
on the fly), PATH or CLASS:PATH (a SeisBench .pt/.json pair written by model.save; CLASS is one of
feq1, feq2, feq3, leqnet, eqtransformer, original-eqtransformer; guessed from the .json otherwise)"""


def _weights_prefix(path: str) -> tuple[Path, str | None]:
    """'x', 'x.pt', 'x.json', 'x.pt.v2' -> (Path('x'), version or None)."""
    p = Path(path)
    name, version = p.name, None
    for ext in (".pt", ".json"):
        if ext + ".v" in name:
            name, version = name.split(ext + ".v", 1)
            break
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return p.with_name(name), version


def _class_for_weights(cls_name: str | None, json_path: Path):
    import seisbench.models as sbm

    from .models import MODELS

    classes = dict(MODELS)
    classes["eqtransformer"] = sbm.EQTransformer
    if cls_name is not None:
        key = cls_name.lower().replace("_", "-")
        if key in ("original-eqtransformer", "eqt-original", "originaleqtransformer"):
            from .convert import OriginalEQTransformer

            return OriginalEQTransformer
        if key not in classes:
            raise ValueError(f"unknown model class {cls_name!r}; expected one of {sorted(classes)}")
        return classes[key]
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the weights description {json_path}: {err}") from err
    args = meta.get("model_args", {})
    named = meta.get("model_class") or meta.get("class")
    if named:
        return _class_for_weights(str(named).rsplit(".", 1)[-1], json_path)
    if "per_channel_std" in args:
        from .convert import OriginalEQTransformer

        return OriginalEQTransformer
    if "lstm_blocks" in args:
        return sbm.EQTransformer
    if "res_kernels" in args:  # the LEQNet family: the class whose defaults match the saved layout
        for cls in MODELS.values():
            arch = cls._default_architecture
            if (
                list(args.get("res_kernels", [])) == list(arch["res_kernels"])
                and args.get("rnn") == arch["rnn"]
                and args.get("rnn_blocks") == arch["rnn_blocks"]
                and args.get("pick_rnn") == arch["pick_rnn"]
            ):
                return cls
        return MODELS["leqnet"]
    raise ValueError(f"{json_path}: cannot tell the model class; use CLASS:PATH ({MODEL_SPEC_HELP})")


def load_model_spec(spec: str) -> tuple[str, Any]:
    """Resolve a CLI model spec to ``(label, model or picker)``; see :data:`MODEL_SPEC_HELP`."""
    from .models import MODELS

    head, _, rest = spec.partition(":")
    key = head.lower()
    if key == "stalta" and not rest:
        return "STA/LTA", StaLtaPicker()
    if key in ("eqt-original", "leqnet-original"):
        if not rest:
            raise ValueError(f"{spec!r}: give the Keras file as {key}:PATH.h5")
        h5 = Path(rest)
        if not h5.is_file():
            raise FileNotFoundError(f"{spec!r}: Keras file {h5} does not exist")
        from . import convert

        if key == "eqt-original":
            return "EqT original (converted)", convert.eqtransformer_from_keras(h5)
        return "LEQNet original (converted)", convert.leqnet_from_keras(h5)
    if key in MODELS and (not rest or rest in MODELS[key].list_pretrained()):
        name = rest or "default"
        cls = MODELS[key]
        return f"{cls.__name__} ({name})", cls.from_pretrained(name)
    # a weights pair: PATH or CLASS:PATH
    known_classes = {*MODELS, "eqtransformer", "original-eqtransformer"}
    cls_name, path = (head, rest) if rest and key in known_classes else (None, spec)
    prefix, version = _weights_prefix(path)
    json_path = Path(f"{prefix}.json" + (f".v{version}" if version else ""))
    if not json_path.is_file():
        raise FileNotFoundError(
            f"{spec!r} is not a known model name and {json_path} does not exist ({MODEL_SPEC_HELP})"
        )
    cls = _class_for_weights(cls_name, json_path)
    model = cls.load(str(prefix), version_str=version, map_location="cpu")
    return f"{cls.__name__} ({prefix.name})", model


def _p_offset(trace_name: str, in_samples: int) -> int:
    # the NCEDC protocol's deterministic P position, scaled to the window length
    return in_samples // 12 + zlib.crc32(trace_name.encode()) % max(1, in_samples // 3)


def load_seisbench_windows(path: str | Path, in_samples: int = 6000, limit: int | None = None):
    """Labelled windows from a SeisBench ``WaveformDataset`` folder (metadata.csv + waveforms.hdf5).

    Every trace with a P arrival gives one window (ZNE, 100 Hz, counts) with P at a deterministic
    position (``in_samples/12 + crc32(trace_name) % (in_samples/3)`` samples from its start,
    500..2499 for 6000 samples, as for the NCEDC traces); samples outside the trace are zero.
    Returns ``(waveforms, metadata)`` like :func:`seisbench_feq.data.load_ncedc`.
    """
    import seisbench.data as sbd

    dataset = sbd.WaveformDataset(path, component_order="ZNE", dimension_order="NCW", sampling_rate=100)
    md = dataset.metadata
    p_col = next((c for c in ("trace_p_arrival_sample", "trace_P_arrival_sample") if c in md.columns), None)
    if p_col is None:
        raise KeyError(f"{path}: the metadata has no trace_p_arrival_sample / trace_P_arrival_sample column")
    s_col = next((c for c in ("trace_s_arrival_sample", "trace_S_arrival_sample") if c in md.columns), None)
    rate_col = "trace_sampling_rate_hz"
    idx = np.flatnonzero(md[p_col].notna().to_numpy())
    if limit:
        idx = idx[:limit]
    if not len(idx):
        raise ValueError(f"{path}: no trace has a P arrival ({p_col})")
    waveforms = np.zeros((len(idx), 3, in_samples), np.float32)
    rows = []
    for j, i in enumerate(idx):
        row = md.iloc[i]
        name = str(row.get("trace_name_original", row.get("trace_name", i)))  # the writer renames to buckets
        scale = 100.0 / float(row[rate_col]) if rate_col in md.columns else 1.0
        data = dataset.get_waveforms(int(i))
        p = float(row[p_col]) * scale
        offset = _p_offset(name, in_samples)
        start = int(round(p)) - offset
        lo, hi = max(start, 0), min(start + in_samples, data.shape[-1])
        if hi > lo:
            waveforms[j, :, lo - start : hi - start] = data[:, lo:hi]
        s = float(row[s_col]) * scale - start if s_col and pd.notna(row[s_col]) else math.nan
        rows.append(
            {
                "trace_name": name,
                "station": f"{row.get('station_network_code', '')}.{row.get('station_code', '')}",
                "p_sample": p - start,
                "s_sample": s if (math.isnan(s) or 0 <= s < in_samples) else math.nan,
                "sampling_rate": 100.0,
            }
        )
    return waveforms, pd.DataFrame(rows)


def load_labelled_windows(path: str | Path, noise: bool = False, limit: int | None = None):
    """NCEDC npz folder (via :mod:`seisbench_feq.data`) or SeisBench dataset folder -> windows."""
    from . import data

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} does not exist")
    if (path / "metadata.csv").exists() and (path / "waveforms.hdf5").exists():
        if noise:
            raise ValueError("--noise is only available for the NCEDC npz layout")
        return load_seisbench_windows(path, limit=limit)
    waveforms, metadata = data.load_ncedc(path)
    if limit:
        waveforms, metadata = waveforms[:limit], metadata.iloc[:limit].reset_index(drop=True)
    if noise:
        nw, nmd = data.load_ncedc_noise(path, pad_to=waveforms.shape[-1])
        if limit:
            nw, nmd = nw[:limit], nmd.iloc[:limit]
        waveforms = np.concatenate([waveforms, nw])
        metadata = pd.concat([metadata, nmd], ignore_index=True)
    return waveforms, metadata


# ------------------------------------------------------------------------------------------------
# Report: markdown tables and plots
# ------------------------------------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return "—"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def _count(value) -> str:
    return "—" if value is None or pd.isna(value) else f"{int(value):,}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def table_markdown(table: pd.DataFrame, reference: str | None = None) -> str:
    """The scores, residual and cost tables of one split as markdown.

    With a ``reference`` row, the cost table also gives size, FLOPs and time as ratios to it.
    """
    parts = []
    header = ["model"] + [f"{t} P / R / F1" for t in TASKS] + ["FN det / P / S", "of which missed P / S"]
    rows = []
    for name, r in table.iterrows():
        prf = [
            "—" if pd.isna(r[f"{t}_f1"]) else " / ".join(_fmt(r[f"{t}_{m}"]) for m in ("precision", "recall", "f1"))
            for t in TASKS
        ]
        rows.append(
            [
                name,
                *prf,
                " / ".join(_count(r[f"{t}_fn"]) for t in TASKS),
                f"{_count(r['P_missed'])} / {_count(r['S_missed'])}",
            ]
        )
    parts.append(markdown_table(header, rows))
    header = ["model"] + [f"{p} {m}" for p in PHASES for m in ("mean (s)", "std (s)", "MAE (s)", "MAPE (%)")]
    stats = ("res_mean_s", "res_std_s", "mae_s", "mape_pct")
    rows = [
        [name] + [_fmt(r[f"{p}_{m}"], 2 if m == "mape_pct" else 3) for p in PHASES for m in stats]
        for name, r in table.iterrows()
    ]
    parts.append(markdown_table(header, rows))
    if "ms_per_window" in table.columns:
        ref = table.loc[reference] if reference is not None and reference in table.index else None
        header = ["model", "Keras params", "PyTorch params", "weights (kB)", "MFLOPs / window", "ms / window"]
        if ref is not None:
            header += ["weights x ref", "FLOPs x ref", "time x ref"]
        rows = []
        for name, r in table.iterrows():
            cells = [
                name,
                _count(r["keras_params"]),
                _count(r["torch_params"]),
                _fmt(r["weights_kb"], 1),
                _fmt(r["mflops_per_window"], 1),
                _fmt(r["ms_per_window"], 2),
            ]
            if ref is not None:
                cells += [
                    _fmt(r[key] / ref[key], 2) for key in ("weights_kb", "mflops_per_window", "ms_per_window")
                ]
            rows.append(cells)
        parts.append(markdown_table(header, rows))
    return "\n\n".join(parts)


def quality_bar_markdown(bar: pd.DataFrame, reference: str, margin: float = QUALITY_BAR_F1) -> str:
    if bar.empty:
        return "_no model to compare with the reference_"
    rows = [
        [
            r["model"],
            f"{_fmt(r['P_f1'])} vs {_fmt(r['P_ref_f1'])} ({r['P_margin']:+.3f})",
            f"{_fmt(r['S_f1'])} vs {_fmt(r['S_ref_f1'])} ({r['S_margin']:+.3f})",
            "**pass**" if r["passes"] else "**FAIL**",
        ]
        for _, r in bar.iterrows()
    ]
    intro = (
        f"Bar: P and S F1 at least reference F1 - {margin} (reference: {reference}). "
        "In brackets: the margin to the bar (negative = below it)."
    )
    header = ["model", "P F1 vs reference (margin)", "S F1 vs reference (margin)", "result"]
    return intro + "\n\n" + markdown_table(header, rows)


def _residuals_s(picks: pd.DataFrame, metadata: pd.DataFrame, phase: str, sampling_rate: float) -> np.ndarray:
    r = (picks[f"{phase}_sample"].to_numpy(float) - metadata[f"{phase.lower()}_sample"].to_numpy(float)) / sampling_rate
    return r[~np.isnan(r)]


def plot_residuals(
    picks_by_model: Mapping[str, pd.DataFrame],
    metadata: pd.DataFrame,
    path: str | Path,
    tolerance_s: float = TOLERANCE_S,
    sampling_rate: float = 100.0,
) -> Path:
    """Histograms of pick - analyst residuals: one row per model, columns P and S."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(picks_by_model)
    fig, axes = plt.subplots(len(names), 2, figsize=(9, 2.0 + 1.8 * len(names)), squeeze=False, sharex=True)
    span = 2 * tolerance_s
    bins = np.linspace(-span, span, 41)
    for i, name in enumerate(names):
        for j, phase in enumerate(PHASES):
            ax = axes[i, j]
            r = _residuals_s(picks_by_model[name], metadata, phase, sampling_rate)
            if not len(r):
                ax.text(0.5, 0.5, "no picks", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.hist(np.clip(r, -span, span), bins=bins, color="C0" if phase == "P" else "C3")
            for x in (-tolerance_s, tolerance_s):
                ax.axvline(x, color="k", ls="--", lw=0.8)
            outside = int((np.abs(r) > span).sum())
            ax.set_title(
                f"{name}, {phase}: {len(r)} picks ({outside} beyond ±{span:g} s, drawn at the edge)", fontsize=8
            )
            ax.set_ylabel("windows", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("pick - analyst (s)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scores(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Grouped bars of precision, recall and F1 per task and model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharey=True)
    names = list(table.index)
    width = 0.8 / max(1, len(names))
    for ax, task in zip(axes, TASKS):
        for k, name in enumerate(names):
            values = [table.loc[name, f"{task}_{m}"] for m in ("precision", "recall", "f1")]
            values = [0.0 if pd.isna(v) else v for v in values]
            ax.bar(np.arange(3) + (k - (len(names) - 1) / 2) * width, values, width, label=name)
        ax.set_xticks(range(3), ["precision", "recall", "F1"])
        ax.set_title(task)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def window_table(
    picks_by_model: Mapping[str, pd.DataFrame], metadata: pd.DataFrame, tolerance_s: float, sampling_rate: float
) -> pd.DataFrame:
    """Long per-window table (one row per model and window) with picks, residuals and outcomes."""
    frames = []
    base_cols = [c for c in ("trace_name", "station", "split", "p_sample", "s_sample") if c in metadata.columns]
    for name, picks in picks_by_model.items():
        frame = metadata[base_cols].copy().reset_index(drop=True)
        frame.insert(0, "model", name)
        frame["detection_outcome"] = detection_outcomes(
            list(picks["detections"]), metadata["p_sample"].to_numpy(float), metadata["s_sample"].to_numpy(float)
        )
        frame["detections"] = [";".join(f"{a}-{b}" for a, b in d) for d in picks["detections"]]
        for phase in PHASES:
            true = metadata[f"{phase.lower()}_sample"].to_numpy(float)
            pick = picks[f"{phase}_sample"].to_numpy(float)
            frame[f"{phase}_pick_sample"] = pick
            frame[f"{phase}_value"] = picks[f"{phase}_value"].to_numpy(float)
            frame[f"{phase}_residual_s"] = (pick - true) / sampling_rate
            frame[f"{phase}_outcome"] = phase_outcomes(pick, true, tolerance_s * sampling_rate)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def _machine() -> str:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{platform.machine()} CPU with {os.cpu_count()} cores{load}, {gpu}, torch {torch.__version__}"


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (options at their defaults left out)."""
    defaults = vars(build_parser().parse_args(["evaluate", "stalta", "--data", "x"]))
    parts = ["seisbench-feq", "evaluate", *args.models, "--data", str(args.data)]
    for key, value in vars(args).items():
        if key in ("models", "data", "func", "command", "verbose") or value == defaults.get(key):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seisbench-feq")
    add_subcommands(parser.add_subparsers(dest="command"))
    return parser


def run_evaluation(args: argparse.Namespace) -> Path:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from .data import split_by_station

    waveforms, metadata = load_labelled_windows(args.data, noise=args.noise, limit=args.limit)
    metadata = metadata.copy()
    metadata["split"] = split_by_station(metadata, test_fraction=args.test_fraction, seed=args.split_seed).to_numpy()
    models: dict[str, Any] = {}
    specs: dict[str, str] = {}
    for spec in args.models:
        label, model = load_model_spec(spec)
        if label in models:
            label = f"{label} [{spec}]"
        specs[label] = spec
        if hasattr(model, "to") and args.device:
            model = model.to(args.device)
        models[label] = model
    thresholds = {"detection": args.detection_threshold, "P": args.p_threshold, "S": args.s_threshold}
    splits = list(dict.fromkeys(args.split))
    # Predict once for the windows any requested split needs; score each split from the same picks.
    needed = np.ones(len(metadata), bool) if "all" in splits else metadata["split"].isin(splits).to_numpy()
    w, md = waveforms[needed], metadata[needed].reset_index(drop=True)
    if not len(md):
        raise ValueError(f"no windows in split(s) {splits}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = _machine()  # before the run: the load average the timings were taken under
    full, picks, phases = _evaluate(
        models,
        w,
        md,
        thresholds=thresholds,
        tolerance_s=args.tolerance,
        batch_size=args.batch_size,
        costs=not args.no_costs,
        timing_repeats=args.timing_repeats,
        progress=not args.quiet,
        timing_batch=args.timing_batch,
        cache_dir=None if args.no_resume else out / "cache",
    )
    sampling_rate = float(md["sampling_rate"].iloc[0]) if "sampling_rate" in md.columns else 100.0
    cost_cols = [c for c in COST_COLUMNS if c in full.columns]

    reference = args.reference or next((n for n in models if n.startswith("EqT original")), None)
    command = _command_line(args)
    stalta = StaLtaPicker()
    lines = [
        "# Evaluation report",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}; {torch.get_num_threads()} torch thread(s)."
        f" Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
        f"Data: `{args.data}` — {len(md)} windows of {w.shape[-1]} samples"
        f" ({int(md['p_sample'].notna().sum())} with an analyst P, {int(md['s_sample'].notna().sum())} with S,"
        f" {int(md['p_sample'].isna().sum())} noise), {md['station'].nunique() if 'station' in md else '?'} stations."
        f" Split by station (`seisbench_feq.data.split_by_station`, test_fraction={args.test_fraction},"
        f" seed={args.split_seed})." + (f" {NCEDC_WINDOW_NOTE}" if "file_name" in md.columns else ""),
        "",
        "Models: " + "; ".join(f"**{label}** = `{spec}`" for label, spec in specs.items()) + ".",
        "",
        "## Rules",
        "",
        RULES_MARKDOWN.format(
            thresholds=", ".join(f"{k} {v}" for k, v in thresholds.items()),
            tol=args.tolerance,
            stalta_band=f"{stalta.freqmin:g}-{stalta.freqmax:g}",
            sta=stalta.sta_s,
            lta=stalta.lta_s,
            on=stalta.trigger_on,
            off=stalta.trigger_off,
            repeats=args.timing_repeats,
            batch=args.timing_batch,
            threads=torch.get_num_threads(),
            machine=machine,
        ),
    ]
    tables = {}
    printed = []
    for split in splits:
        mask = np.ones(len(md), bool) if split == "all" else (md["split"] == split).to_numpy()
        if not mask.any():
            logger.warning("split %s has no windows; skipped", split)
            continue
        sub_md = md[mask].reset_index(drop=True)
        sub_picks = {name: p[mask].reset_index(drop=True) for name, p in picks.items()}
        if split == "all":
            table = full
        else:  # same picks and costs, scored on the split's windows only
            table = score_table(sub_picks, sub_md, args.tolerance, sampling_rate, phases)
            extra = [c for c in full.columns if c.startswith(("threshold_", "tolerance")) or c in cost_cols]
            table = table.join(full[extra])
        tables[split] = table
        table.to_csv(out / f"scores_{split}.csv")
        residual_png = plot_residuals(sub_picks, sub_md, out / f"residuals_{split}.png", args.tolerance, sampling_rate)
        scores_png = plot_scores(table, out / f"scores_{split}.png", title=f"split: {split} ({mask.sum()} windows)")
        n_stations = sub_md["station"].nunique() if "station" in sub_md else "?"
        section = [
            "",
            f"## Split `{split}`: {mask.sum()} windows, {n_stations} stations",
            "",
            table_markdown(table, reference),
        ]
        if reference and reference in table.index:
            bar = quality_bar_markdown(quality_bar(table, reference), reference)
            section += ["", f"### Quality bar ({split})", "", bar]
        section += ["", f"![P/R/F1]({scores_png.name})", "", f"![residuals]({residual_png.name})"]
        lines += section
        printed += section
    window_table(picks, md, args.tolerance, sampling_rate).to_csv(out / "window_picks.csv", index=False)
    report = out / "evaluation.md"
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(printed).strip())
    print(f"\nreport: {report}")
    return report


def _main(args: argparse.Namespace) -> int:
    run_evaluation(args)
    return 0


def add_subcommands(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score models on labelled windows (P/S/detection P-R-F1, residuals, costs) and write a report",
        description="Score models on labelled windows and write markdown + plots.\n\n" + MODEL_SPEC_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("models", nargs="+", help="model specs (see above)")
    parser.add_argument(
        "--data", required=True, help="NCEDC npz folder (e.g. ../shared/data/ncedc) or a SeisBench dataset folder"
    )
    parser.add_argument(
        "--split",
        nargs="+",
        default=["all", "test"],
        choices=["all", "train", "test"],
        help="station split(s) to score; 'test' = held-out stations (default: all test)",
    )
    parser.add_argument("--test-fraction", type=float, default=0.5, help="share of stations held out (default 0.5)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the station split (default 0)")
    parser.add_argument("--noise", action="store_true", help="add the NCEDC pre-P noise windows (detection/pick FP)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N windows (quick runs)")
    parser.add_argument("--out", default="evaluation", help="output folder for evaluation.md, CSVs and PNGs")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE_S, help="pick tolerance in s (default 0.5)")
    parser.add_argument("--detection-threshold", type=float, default=DEFAULT_THRESHOLDS["detection"])
    parser.add_argument("--p-threshold", type=float, default=DEFAULT_THRESHOLDS["P"])
    parser.add_argument("--s-threshold", type=float, default=DEFAULT_THRESHOLDS["S"])
    parser.add_argument("--reference", default=None, help="model label for the quality bar (default: EqT original)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-costs", action="store_true", help="skip parameter/FLOP counts and timing")
    parser.add_argument(
        "--timing-repeats", type=int, default=5, help="timed batches of 64 per model; the fastest counts (default 5)"
    )
    parser.add_argument("--timing-batch", type=int, default=TIMING_BATCH, help="windows per timed batch (64)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="torch device for the models (default: cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="recompute every model's picks (default: reuse OUT/cache/ picks of identical weights, windows and"
        " thresholds, so an interrupted or repeated run only predicts what is missing)",
    )
    parser.set_defaults(func=_main)


def main(argv: list[str] | None = None) -> int:
    """``python -m seisbench_feq.evaluation ARGS`` = ``seisbench-feq evaluate ARGS``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(["evaluate", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
