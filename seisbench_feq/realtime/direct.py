"""The model on window arrays: each window once, batched over stations, stacked like ``annotate``.

``annotate`` on a small slice per call costs far more than its windows (stream copy, merge,
cleaning, grouping, an event loop and a thread per call), and its stacking needs the windows
before the new ones, so every window ran twice. Here the windows of all ready stations go through
the model's own hooks as one array (``annotate_batch_pre``, ``forward``, ``annotate_batch_post``:
what SeisBench's ``_predict_windows`` does), each station keeps the blinded output of its windows
while they still overlap samples that are not final, and the final samples are stacked with
SeisBench's own ``stack_windows`` (its ``_stack_predictions_array_ext``), so they equal
``classify``'s.

Only for models whose stream-level pre-processing does nothing to data already at the model's
rate (:func:`direct_reason`); other models, and stations at another rate (resampled by
``annotate``), keep the ``annotate`` path.
"""

from __future__ import annotations

import logging

import numpy as np

from .buffers import Job, Station

logger = logging.getLogger("seisbench_feq.realtime")


def direct_reason(model) -> str | None:
    """Why ``model`` cannot run on window arrays (None: it can)."""
    from seisbench.models import WaveformModel

    from ..models.hooks import PickerHooks

    cls = type(model)
    pred_sample = model.pred_sample if not isinstance(model.pred_sample, int) else (0, model.pred_sample)
    if not model.sampling_rate:
        return "the model has no sampling rate"
    if model._grouping.grouping != "instrument" or tuple(pred_sample) != (0, model.in_samples):
        return "not an instrument-grouped model with one output sample per input sample"
    if getattr(model, "filter_args", None) or getattr(model, "allow_padding", False):
        return "the model filters streams or pads windows"
    # stream-level hooks that change samples (the package's cleaner only checks them; ingest does
    # the same checks record by record)
    if cls.annotate_stream_pre not in (WaveformModel.annotate_stream_pre, PickerHooks.annotate_stream_pre):
        return f"{cls.__name__} overrides annotate_stream_pre"
    for name in ("_get_in_pred_samples", "_cut_fragments_array", "_predict_windows",
                 "_stack_predictions_array_ext"):
        if getattr(cls, name) is not getattr(WaveformModel, name):
            return f"{cls.__name__} overrides {name}"
    return None


def forward(model, windows: np.ndarray, argdict: dict) -> np.ndarray:
    """(n, components, win) float32 windows -> (n, win, labels) float32, blinded (NaN edges)."""
    import torch

    with torch.no_grad():
        x = torch.as_tensor(windows, dtype=torch.float32, device=model.device)
        x = model.annotate_batch_pre(x, argdict=argdict)
        piggyback = None
        if isinstance(x, tuple):  # (batch, piggyback) form of the hook
            x, piggyback = x
        y = model.annotate_batch_post(model(x), piggyback=piggyback, argdict=argdict)
    y = model._recursive_torch_to_numpy(y)
    if y.ndim == 2:  # one label
        y = y[..., np.newaxis]
    return np.ascontiguousarray(y, dtype=np.float32)


def run_windows(model, jobs: list[Job], argdict: dict, batch_size: int, on_error) -> tuple[list, int]:
    """Outputs of every job's new windows, batched over jobs (``batch_size`` windows per forward).

    Returns ``(per job: (n, win, labels) array or None where the model failed, forward calls)``.
    A failing batch is retried station by station; ``on_error(job, exc)`` is called for each job
    that fails alone.
    """
    results: list = [None] * len(jobs)
    todo = [i for i, job in enumerate(jobs) if job.starts]
    for i, job in enumerate(jobs):
        if not job.starts:
            results[i] = np.zeros((0, model.in_samples, len(model.labels)), np.float32)
    calls = 0
    if not todo:
        return results, calls
    train_mode = model.training
    if train_mode:
        model.eval()
    try:
        batch = np.concatenate([jobs[i].windows for i in todo])
        try:
            parts = []
            for k in range(0, len(batch), batch_size):
                parts.append(forward(model, batch[k: k + batch_size], argdict))
                calls += 1
            out = np.concatenate(parts)
            k = 0
            for i in todo:
                n = len(jobs[i].starts)
                results[i] = out[k: k + n]
                k += n
        except Exception as exc:  # noqa: BLE001 - isolate the station whose data breaks the model
            if len(todo) == 1:
                on_error(jobs[todo[0]], exc)
            else:
                logger.error("the model failed on %d stations (%s); retrying them one by one", len(todo), exc)
                for i in todo:
                    try:
                        results[i] = forward(model, jobs[i].windows, argdict)
                        calls += 1
                    except Exception as exc_one:  # noqa: BLE001
                        on_error(jobs[i], exc_one)
    finally:
        if train_mode:
            model.train()
    return results, calls


def stack_final(station: Station, a: int, b: int, n_labels: int, method: str,
                blind_from: int | None = None) -> np.ndarray:
    """Samples ``[a, b)`` of the stacked outputs kept for ``station``, (b - a, labels) float32 (NaN
    where no window sees a sample), with SeisBench's ``stack_windows`` over the windows that
    overlap them, in start order as ``annotate`` stacks them. ``blind_from``: window samples from
    there on are NaN (the model's blinding, where the windows were run with less of it)."""
    from seisbench.ext import stack_windows

    out = np.full((max(b - a, 0), n_labels), np.nan, dtype=np.float32)
    starts = sorted(s for s in station.preds if s + station.win > a and s < b)
    if b <= a or not starts:
        return out
    base = starts[0]
    windows = np.stack([station.preds[s] for s in starts])
    if blind_from is not None:
        windows[:, blind_from:] = np.nan
    stacked = stack_windows(windows=windows, offsets=np.array(starts, dtype=np.intp) - base, method=method)
    lo, hi = max(a, base), min(b, base + len(stacked))
    if hi > lo:
        out[lo - a: hi - a] = stacked[lo - base: hi - base]
    return out


def forget_windows(station: Station, final_end: int) -> None:
    """Drop the outputs that no sample at or after ``final_end`` needs any more."""
    for start in [s for s in station.preds if s + station.win <= final_end]:
        del station.preds[start]
