"""What happens to data before the network: the ONE stream cleaner, the window filter and normalisation.

:func:`clean_stream` is used by ``classify``/``annotate``, the archive picker and the real-time picker
alike, so that a stream is treated the same whichever way it comes in. The window functions are shared
by inference, training and export, so that all of them see identical inputs.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import obspy
import torch

logger = logging.getLogger(__name__)

#: Sampling rates within this relative distance of the model's are the model's rate (a header
#: rounding, e.g. 100.0001 Hz): the header is corrected, the data are not resampled.
NOMINAL_RATE_TOLERANCE = 1e-4

#: Traces whose largest finite value exceeds this are scaled by a power of two before annotation:
#: float32 (the network's precision) overflows in the per-window std far below its 3.4e38 limit.
#: The windows are normalised per channel, so a constant factor per instrument changes nothing else.
SAFE_MAX_ABS = 1e15
_SCALED_MAX_ABS = 2.0**30

__all__ = [
    "clean_stream",
    "sanitize_stream",
    "normalize_windows",
    "highpass_windows",
    "preprocess_windows",
    "warn_incomplete_instruments",
    "NOMINAL_RATE_TOLERANCE",
]


def normalize_windows(batch: torch.Tensor, norm: str = "std", eps: float = 1e-10) -> torch.Tensor:
    """Per-window, per-channel demean and scale of (..., channels, samples) data.

    Channels that are all zero (a missing component) stay zero. Used by ``annotate`` and by
    training so that both see identical inputs.
    """
    batch = batch - batch.mean(dim=-1, keepdim=True)
    if norm == "std":
        scale = batch.std(dim=-1, keepdim=True)
    else:
        scale = batch.abs().amax(dim=-1, keepdim=True)
    if torch.is_grad_enabled() and batch.requires_grad:
        return batch / (scale + eps)
    return batch.div_(scale + eps)  # inference: same values, one pass and one allocation fewer


def highpass_windows(batch: torch.Tensor, freq: float, sampling_rate: float, corners: int = 2) -> torch.Tensor:
    """Zero-phase Butterworth high-pass of each (..., samples) window, in the frequency domain.

    The gain is ``1 / (1 + (freq / f) ** (2 * corners))``, the magnitude response of ObsPy's
    ``filter("highpass", freq=freq, corners=corners, zerophase=True)``. The straight line from the
    first to the last sample is removed first, so the FFT's periodic wrap adds no step at the
    window edges (which the blinding hides anyway). Works window by window, so training,
    ``annotate``, the archive and the real-time picker all filter identically.
    """
    n = int(batch.shape[-1])  # a Python int also while tracing (export): windows have a fixed length
    ramp = torch.linspace(0.0, 1.0, n, dtype=batch.dtype, device=batch.device)
    batch = batch - (batch[..., :1] + (batch[..., -1:] - batch[..., :1]) * ramp)
    gain = torch.from_numpy(_highpass_gain(n, freq, sampling_rate, corners)).to(batch.device, batch.dtype)
    return torch.fft.irfft(torch.fft.rfft(batch, dim=-1) * gain, n=n, dim=-1)


@functools.lru_cache(maxsize=8)
def _highpass_gain(n: int, freq: float, sampling_rate: float, corners: int) -> np.ndarray:
    # NumPy, not torch.fft.rfftfreq: a constant for the ONNX exporter, and computed once.
    ratio = (np.fft.rfftfreq(n, d=1.0 / sampling_rate) / freq) ** (2 * corners)
    return ratio / (1 + ratio)


def preprocess_windows(model, batch: torch.Tensor) -> torch.Tensor:
    """What the model does to raw windows before ``forward``: optional high-pass, then normalisation."""
    if getattr(model, "highpass", None):
        batch = highpass_windows(batch, model.highpass, model.sampling_rate)
    return normalize_windows(batch, model.norm)


# --- the one stream cleaner -------------------------------------------------------------------------


class _Notes:
    """Each distinct message once per trace and call (a long stream must not repeat one line)."""

    def __init__(self, model: str, notes: list | None):
        self.model, self.notes, self.seen = model, notes, set()

    def __call__(self, trace_id: str, kind: str, message: str, level: int = logging.WARNING) -> None:
        if (trace_id, kind) in self.seen:
            return
        self.seen.add((trace_id, kind))
        text = f"{self.model}: {message}" if self.model else message
        logger.log(level, text)
        if self.notes is not None and level >= logging.WARNING:
            self.notes.append(message)


def _seconds(value: float) -> str:
    """Seconds rounded DOWN to 0.01 s: a 59.99 s trace must not read "60.00 s"."""
    return f"{math.floor(value * 100 + 1e-6) / 100:.2f}"


def _spans(trace: obspy.Trace, bad: np.ndarray, limit: int = 3) -> str:
    """'T0-T1, T2-T3 (+n more)' of the runs where ``bad`` is True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], bad.view(np.int8), [0]])))
    runs = list(zip(edges[::2], edges[1::2]))
    t0, delta = trace.stats.starttime, trace.stats.delta
    text = ", ".join(f"{t0 + a * delta} - {t0 + (b - 1) * delta}" for a, b in runs[:limit])
    return text + (f" (+{len(runs) - limit} more)" if len(runs) > limit else "")


def _mask_invalid(trace: obspy.Trace, note: _Notes) -> None:
    data = trace.data
    invalid = np.ma.getmaskarray(data)
    if np.issubdtype(data.dtype, np.floating):
        invalid = invalid | ~np.isfinite(np.ma.getdata(data))
    if invalid.any():
        note(trace.id, "invalid",
             f"{trace.id} has {int(invalid.sum())} masked/NaN samples ({_spans(trace, invalid)}); they are "
             "treated as gaps (zero-filled where other components of the instrument have data)")
        trace.data = np.ma.masked_array(np.ma.getdata(data), mask=invalid)
    elif np.ma.isMaskedArray(data):
        trace.data = np.ma.getdata(data)


def _instrument(trace: obspy.Trace) -> str:
    return trace.id[:-1]


def huge_value_factor(peak: float) -> float:
    """The power of two (exact in floating point) that brings ``peak`` to about 2**30, or 1 when
    ``peak`` is small enough for float32 windows (at most ``SAFE_MAX_ABS``)."""
    if not peak > SAFE_MAX_ABS:
        return 1.0
    return 2.0 ** -math.ceil(math.log2(peak / _SCALED_MAX_ABS))


def _scale_huge_values(traces: list, note: _Notes) -> None:
    peaks: dict[str, float] = {}
    for trace in traces:
        if trace.data.dtype.kind != "f" or not trace.stats.npts:
            continue
        values = np.abs(np.ma.getdata(trace.data))
        finite = values[np.isfinite(values)] if not np.ma.isMaskedArray(trace.data) else values[~trace.data.mask]
        if finite.size and finite.max() > SAFE_MAX_ABS:
            key = _instrument(trace)
            peaks[key] = max(peaks.get(key, 0.0), float(finite.max()))
    for key, peak in peaks.items():
        factor = huge_value_factor(peak)
        for trace in traces:
            if _instrument(trace) == key:
                huge = np.abs(np.ma.getdata(trace.data)) > SAFE_MAX_ABS
                trace.data = (trace.data.astype(np.float64) * factor)
                where = f" ({_spans(trace, huge)})" if huge.any() else ""
                note(trace.id, "scaled",
                     f"{trace.id} holds values up to {peak:.3g}{where}, beyond what float32 windows can "
                     f"normalise; the instrument's traces are scaled by {factor:.3g} (the output is "
                     "unchanged: every window is normalised)")


def _fix_rate(trace: obspy.Trace, sampling_rate: float, note: _Notes) -> None:
    rate = trace.stats.sampling_rate
    if rate == sampling_rate:
        return
    if abs(rate - sampling_rate) <= NOMINAL_RATE_TOLERANCE * sampling_rate:
        note(trace.id, "nominal", f"{trace.id}: header rate {rate!r} Hz taken as the nominal {sampling_rate:g} Hz",
             logging.INFO)
        trace.stats.sampling_rate = sampling_rate
        return
    note(trace.id, "resample", f"resampling {trace.id} from {rate:.6g} Hz to the model's {sampling_rate:g} Hz")


def _resolve_overlaps(traces: list, note: _Notes, conflicts: str) -> list:
    """Traces of one id and rate without overlaps: identical samples kept once; samples that differ
    dropped (``conflicts="mask"``: a gap) or taken from the later record (``"later"``)."""
    traces = sorted(traces, key=lambda tr: tr.stats.starttime)
    end = None
    overlapping = False
    for tr in traces:
        if end is not None and tr.stats.starttime <= end:
            overlapping = True
            break
        end = tr.stats.endtime
    if not overlapping:
        return traces
    rate = traces[0].stats.sampling_rate
    t0 = traces[0].stats.starttime
    offsets = [int(round((tr.stats.starttime - t0) * rate)) for tr in traces]
    n = max(o + tr.stats.npts for o, tr in zip(offsets, traces))
    dtype = np.result_type(*[tr.data.dtype for tr in traces])
    data = np.zeros(n, dtype=dtype)
    have = np.zeros(n, bool)
    conflict = np.zeros(n, bool)
    for offset, tr in zip(offsets, traces):
        values = np.ma.getdata(tr.data).astype(dtype, copy=False)
        valid = ~np.ma.getmaskarray(tr.data)
        span = slice(offset, offset + tr.stats.npts)
        clash = have[span] & valid & (data[span] != values)
        conflict[span] |= clash
        take = valid if conflicts == "later" else valid & ~have[span]
        data[span][take] = values[take]
        have[span] |= valid
    merged = obspy.Trace(data=data, header=traces[0].stats.copy())
    merged.stats.npts = n
    if conflict.any():
        action = "dropped (a gap)" if conflicts == "mask" else "taken from the later record"
        note(merged.id, "overlap",
             f"{merged.id}: overlapping records disagree on {int(conflict.sum())} samples "
             f"({_spans(merged, conflict)}); those samples are {action}, the rest is kept")
        if conflicts == "mask":
            have &= ~conflict
    merged.data = np.ma.masked_array(data, mask=~have) if not have.all() else data
    return [merged]


def clean_stream(
    stream: obspy.Stream,
    sampling_rate: float,
    in_samples: int | None = None,
    model: str = "",
    *,
    conflicts: str = "mask",
    resample: bool = False,
    notes: list | None = None,
) -> obspy.Stream:
    """Make SeisBench's silent input handling explicit; returns a new stream (samples may be shared).

    One rule for ``classify``, the archive picker and the real-time picker:

    - empty traces are dropped; channel codes are upper-cased (SeisBench matches Z/N/E only);
    - rates within :data:`NOMINAL_RATE_TOLERANCE` (relative) of ``sampling_rate`` are the model's
      rate (the header is fixed, nothing is resampled); other rates are announced per trace, and
      resampled here with SeisBench's routine when ``resample`` (else by ``annotate`` later);
    - masked samples and NaN/inf become gaps; the trace and spans are named;
    - values too large for the float32 network are scaled by a power of two per instrument;
    - overlapping records of one trace: identical samples are kept once; samples that disagree are
      dropped (``conflicts="mask"``) or taken from the later record (``"later"``); trace and span named;
    - traces shorter than one window (``in_samples``) are named.

    Each message is logged once per trace and call, and appended to ``notes`` when given.
    """
    if conflicts not in ("mask", "later"):
        raise ValueError(f"conflicts={conflicts!r}: expected 'mask' or 'later'")
    note = _Notes(model, notes)
    traces = []
    for trace in stream:
        if trace.stats.npts == 0:
            continue
        trace = obspy.Trace(data=trace.data, header=trace.stats.copy())  # the caller's trace stays as it was
        if trace.stats.channel != trace.stats.channel.upper():
            note(trace.id, "case", f"channel code of {trace.id} upper-cased to match Z/N/E components")
            trace.stats.channel = trace.stats.channel.upper()
        _mask_invalid(trace, note)
        _fix_rate(trace, sampling_rate, note)
        traces.append(trace)
    _scale_huge_values(traces, note)
    if resample and any(tr.stats.sampling_rate != sampling_rate for tr in traces):
        from seisbench.models import WaveformModel

        other = obspy.Stream()
        for tr in traces:  # SeisBench's resampler needs gap-free pieces: gaps stay gaps
            if tr.stats.sampling_rate != sampling_rate:
                other += obspy.Stream([tr]).split() if np.ma.isMaskedArray(tr.data) else tr
        WaveformModel.resample(other, sampling_rate)
        traces = [tr for tr in traces if tr.stats.sampling_rate == sampling_rate] + list(other)
    groups: dict[tuple[str, float], list] = {}
    for trace in traces:
        groups.setdefault((trace.id, trace.stats.sampling_rate), []).append(trace)
    cleaned = obspy.Stream()
    for group in groups.values():
        for trace in _resolve_overlaps(group, note, conflicts):
            cleaned += obspy.Stream([trace]).split() if np.ma.isMaskedArray(trace.data) else trace
    if in_samples:
        for trace in cleaned:
            duration = trace.stats.npts / trace.stats.sampling_rate
            if duration * sampling_rate < in_samples:
                note(trace.id, f"short {trace.stats.starttime}",
                     f"{trace.id} starting {trace.stats.starttime} is {_seconds(duration)} s long, shorter "
                     f"than one {in_samples / sampling_rate:g} s window; it is not annotated")
    return cleaned


def sanitize_stream(stream: obspy.Stream, sampling_rate: float, in_samples: int, model: str) -> None:
    """:func:`clean_stream`, in place (the name before 0.2)."""
    stream.traces = clean_stream(stream, sampling_rate, in_samples, model).traces


def warn_incomplete_instruments(stream: obspy.Stream, component_order: str, model: str) -> None:
    """Name instruments where components are missing: they are zero-filled, not dropped."""
    components: dict[str, set[str]] = {}
    for trace in stream:
        key = f"{trace.stats.network}.{trace.stats.station}.{trace.stats.location}"
        components.setdefault(key, set()).add(trace.stats.channel[-1:])
    for key, present in components.items():
        mapped = {{"1": "N", "2": "E"}.get(c, c) for c in present}
        missing = [c for c in component_order if c not in mapped]
        if missing:
            logger.warning(
                f"{model}: {key} has no {'/'.join(missing)} component(s) "
                f"(channels ending in {sorted(present)}); they are zero-filled"
            )
