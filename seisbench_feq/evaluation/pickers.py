"""Pickers on labelled windows: a SeisBench model (probabilities -> picks) or the STA/LTA baseline.

Every picker has ``pick_windows(waveforms, pick_mode="peak") -> DataFrame`` with one row per window:
``detections`` (list of (on, off) samples), ``P_sample``, ``P_value``, ``S_sample``, ``S_value``
(the highest-probability pick; NaN without one) and, for models, ``detection_max``, ``P_max``,
``S_max`` (the window's highest output).

Pick modes:

- ``"peak"``: SeisBench's ``WaveformModel.picks_from_annotations`` / ``detections_from_annotations``
  (ObsPy ``trigger_onset``, on = threshold, off = threshold / 2; the pick is the trigger's peak).
- ``"eqt"``: EQTransformer's event-gated rule (its ``mseed_predictor._picker``): for each detection
  (trigger on = off = detection threshold, at least 0.1 s), the first S peak inside it and
  the highest P peak between the detection start - 1 s and that S - 0.1 s (the detection end
  without an S). Peaks are local maxima above the phase threshold. Detections are scored with
  SeisBench's rule in both modes.

Both rules are those of ``classify(stream, pick_mode=...)``: :mod:`seisbench_feq.models.picking`.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .scoring import DEFAULT_THRESHOLDS, PHASES

logger = logging.getLogger(__name__)

TIMING_BATCH = 64
PICK_MODES = ("peak", "eqt")
PICK_COLUMNS = ["detections", "P_sample", "P_value", "S_sample", "S_value"]
MAX_COLUMNS = ["detection_max", "P_max", "S_max"]


def window_picks(probability: np.ndarray, threshold: float, phase: str = "", sampling_rate: float = 100.0):
    """Picks in one window's probability trace: list of (peak_sample, peak_value), best first.

    SeisBench's ``picks_from_annotations`` rule (trigger on at ``threshold``, off at
    ``threshold / 2``; the peak is the maximum inside the trigger), through the package's one
    trigger function :func:`seisbench_feq.models.picking.peak_window_picks`.
    """
    from ..models.picking import peak_window_picks

    probability = np.asarray(probability, dtype=np.float32)
    found = [(int(peak), float(probability[peak])) for _, _, peak in peak_window_picks(probability, threshold)]
    return sorted(found, key=lambda x: -x[1])


def window_detections(probability: np.ndarray, threshold: float, sampling_rate: float = 100.0):
    """Detection intervals (on_sample, off_sample) in one window's detection trace (SeisBench rule)."""
    from ..models.picking import peak_window_picks

    return [(int(on), int(off)) for on, off, _ in peak_window_picks(np.asarray(probability, np.float32), threshold)]


def picks_from_probabilities(
    probabilities: np.ndarray,
    thresholds: Mapping[str, float] | None = None,
    sampling_rate: float = 100.0,
    pick_mode: str = "peak",
) -> pd.DataFrame:
    """Per-window picks from (N, 3, samples) detection / P / S probabilities.

    Returns one row per window: ``detections`` (list of (on, off) samples), ``P_sample``,
    ``P_value``, ``S_sample``, ``S_value`` (the highest-probability pick; NaN without a pick) and
    ``detection_max``, ``P_max``, ``S_max`` (the window's highest output; NaN where a model has
    no such output). ``pick_mode``: "peak" or "eqt", the rules of
    :func:`seisbench_feq.models.picking.picks_from_windows` (the rule ``classify`` uses).
    """
    from ..models.picking import picks_from_windows

    if pick_mode not in PICK_MODES:
        raise ValueError(f"pick_mode={pick_mode!r}: expected one of {PICK_MODES}")
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    probabilities = np.asarray(probabilities, dtype=np.float32).reshape(-1, 3, np.shape(probabilities)[-1])
    found = picks_from_windows(probabilities, thresholds, pick_mode=pick_mode, sampling_rate=sampling_rate)
    rows = []
    for window, picks in zip(probabilities, found):
        row: dict[str, Any] = {
            name: (float(np.nanmax(values)) if np.isfinite(values).any() else math.nan)
            for name, values in zip(MAX_COLUMNS, window)
        }
        row["detections"] = [(int(a), int(b)) for a, b in picks.detections]
        for phase, phase_picks in (("P", picks.P), ("S", picks.S)):
            # the highest probability; the earliest among equals (max keeps the first, picks are in time order)
            best = max(phase_picks, key=lambda x: x[1]) if phase_picks else (math.nan, math.nan)
            row[f"{phase}_sample"], row[f"{phase}_value"] = best
        rows.append(row)
    frame = pd.DataFrame(rows, columns=PICK_COLUMNS + MAX_COLUMNS)
    # float samples always (NaN = no pick), whether or not every window has a pick: fresh and cached
    # picks then have the same types
    return frame.astype({column: np.float64 for column in PICK_COLUMNS[1:] + MAX_COLUMNS})


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
        # the model's own thresholds (its weights' default_args), as classify uses them
        self.thresholds = {**model_thresholds(model), **(thresholds or {})}
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
        if all(row is None for row in rows):
            raise ValueError(f"{type(model).__name__} has no detection, P or S output (labels {labels})")
        return rows  # a detector (detection only) is scored on detection; its P/S columns stay empty

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

    def pick_windows(self, waveforms: np.ndarray, pick_mode: str = "peak") -> pd.DataFrame:
        return picks_from_probabilities(self.predict(waveforms), self.thresholds, self.sampling_rate, pick_mode)

    def pick_windows_modes(self, waveforms: np.ndarray, pick_modes=PICK_MODES) -> dict[str, pd.DataFrame]:
        """Picks under several pick modes from one prediction: mode -> per-window picks."""
        probabilities = self.predict(waveforms)
        return {
            mode: picks_from_probabilities(probabilities, self.thresholds, self.sampling_rate, mode)
            for mode in pick_modes
        }

    def costs(
        self, waveforms: np.ndarray, timing_repeats: int = 5, timing_batch: int = TIMING_BATCH
    ) -> dict[str, float]:
        """Parameter counts, weight-file size, FLOPs and ms per window (batches of ``timing_batch``)."""
        import torch

        from ..flops import flops_per_window
        from ..models import keras_param_count, torch_param_count

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
        # models whose weights are not torch tensors (the decision tree) state their own sizes
        own = getattr(model, "evaluation_costs", dict)()
        if "mflops_per_window" not in own:
            costs["mflops_per_window"] = flops_per_window(model, waveforms.shape[1], waveforms.shape[2]) / 1e6
        was_training = model.training
        model.eval()
        try:
            costs["ms_per_window"] = _ms_per_window(
                self._forward, _timing_batch(waveforms, timing_batch), timing_repeats
            )
        finally:
            model.train(was_training)
        costs.update(own)
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

    def pick_windows(self, waveforms: np.ndarray, pick_mode: str = "peak") -> pd.DataFrame:
        """Per-window picks; ``pick_mode`` is accepted for the picker interface and ignored."""
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
        return pd.DataFrame(rows, columns=PICK_COLUMNS)

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


def model_thresholds(model) -> dict[str, float]:
    """Detection, P and S thresholds of ``model.classify`` with default settings: the weights'
    ``default_args``, then the class's annotate defaults (``*_threshold``), then ``DEFAULT_THRESHOLDS``."""
    defaults = {key: value[1] for key, value in getattr(model, "_annotate_args", {}).items() if isinstance(value, tuple)}
    args = {**defaults, **(getattr(model, "default_args", None) or {})}
    phase_default = args.get("*_threshold")  # SeisBench's shared default of the phase thresholds only
    return {task: float(args.get(f"{task}_threshold", default if task == "detection" or phase_default is None
                                 else phase_default))
            for task, default in DEFAULT_THRESHOLDS.items()}


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


def picks_by_mode(picker, waveforms: np.ndarray, pick_modes=PICK_MODES) -> dict[str, pd.DataFrame]:
    """``picker``'s per-window picks for each pick mode (one prediction for a model).

    Pickers without pick modes (STA/LTA, user objects with ``pick_windows(waveforms)``) give the
    same picks for every mode.
    """
    if hasattr(picker, "pick_windows_modes"):
        return picker.pick_windows_modes(waveforms, tuple(pick_modes))
    picks = picker.pick_windows(waveforms)
    return {mode: picks for mode in pick_modes}
