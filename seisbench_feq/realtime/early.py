"""Early picks: low-latency picks from the windows run so far, before their samples are final.

A sample is final only once every window overlapping it has run, so a final pick waits about a
whole window after its arrival. In early mode (``RealtimePicker(early_picks=True)``, direct path
only), after each model call for a station the outputs of the windows run so far (kept in
``Station.preds``) are stacked the same way as the final samples (:func:`.direct.stack_final`)
over the *provisional* samples: from the end of the final buffer up to the newest window's end
minus its post blinding (``early_blinding``: fewer seconds than the model's, with the final
samples blinded as the model's again). The model's own ``classify_aggregate`` runs on the tail
of the final buffer followed by that provisional part; a pick whose trigger has switched off
inside the provisional part, and that was not emitted yet, is emitted at once, marked ``early``.

The provisional samples are stacked from fewer windows than the final ones, so an early pick can
differ slightly from ``classify``'s (or be one that the later windows would not confirm). Each
pick is still emitted once: the triggers of early picks are remembered per station, and a final
pick of the same phase whose trigger overlaps one of them (or whose peak lies within
``dedupe_tolerance``) is not emitted again when its samples become final.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import obspy

from . import direct as direct_path
from .buffers import Job, Station
from .common import RealtimeError


@dataclass(frozen=True)
class EarlySettings:
    """How windows run for early picks: the forward pass blinds ``post`` samples at the window end
    (fewer than the model's, so early picks see closer to the newest data); final stacking blinds
    again from window sample ``final_blind_from`` so final picks stay ``classify``'s."""

    forward_argdict: dict
    post: int
    final_blind_from: int | None  # None: the windows ran with the model's own blinding


def early_settings(argdict: dict, geometry: tuple[int, int, int, int], early: bool, rate: float,
                   blinding: float | None = None) -> EarlySettings:
    """:class:`EarlySettings` from the window ``geometry`` (``in_samples, stride, pre, post``) and
    the window end blinding of early picks (seconds; None: the model's)."""
    in_samples, _, pre, post = geometry
    if blinding is None:
        return EarlySettings(argdict, post, None)
    if not early:
        raise RealtimeError("early_blinding needs early_picks=True")
    early_post = int(round(blinding * rate))
    if not 0 <= early_post <= post:
        raise RealtimeError(f"early_blinding={blinding!r} s: expected 0 to the model's window end blinding "
                            f"({post / rate:g} s)")
    return EarlySettings({**argdict, "blinding": (pre, early_post)}, early_post, in_samples - post)


def provisional_end(station: Station, job: Job, post: int) -> int:
    """First sample after the provisional part: the newest window's end minus ``post`` blinding."""
    return max(job.starts) + station.win - post if job.starts else station.final_end


def early_picks(model, argdict: dict, settings: EarlySettings, station: Station, job: Job,
                label_names: list[str], stacking: str, dedupe_tolerance: float) -> list:
    """Picks (SeisBench ``Pick``) whose trigger switched off in the station's provisional samples
    and that were emitted neither early nor final yet, in time order."""
    if job.flush or not job.starts or not station.preds:
        return []
    a, b = station.final_end, provisional_end(station, job, settings.post)
    if b - a < 2:
        return []
    provisional = direct_path.stack_final(station, a, b, len(label_names), stacking)
    # the final buffer's last window of samples gives the triggers open at its end their start
    tail = a if station.ann_start is None else max(station.ann_start, a - station.win)
    if station.cut_at is not None:
        tail = max(tail, min(station.cut_at + 1, a))
    net, sta, loc = station.key.split(".")
    stream = obspy.Stream()
    for k, name in enumerate(label_names):
        final = station.ann.get(name)
        head = np.full(a - tail, np.nan, np.float32)
        if final is not None and station.ann_start is not None:
            part = final[tail - station.ann_start: a - station.ann_start]
            head[: len(part)] = part
        stream += obspy.Trace(np.concatenate([head, provisional[:, k]]),
                              header=dict(network=net, station=sta, location=loc, channel=name,
                                          sampling_rate=station.sampling_rate, starttime=station.time(tail)))
    output = model.classify_aggregate(stream, argdict)
    out = []
    for pick in sorted(getattr(output, "picks", []) or [], key=lambda p: p.peak_time):
        on, off = station.index(pick.start_time), station.index(pick.end_time)
        if on <= tail < a:
            continue  # started before the tail: its start is not known here
        if off < a - 1 or off >= b - 1:
            continue  # final already (the final path has it), or still on at the provisional end
        if already_emitted(station, pick, dedupe_tolerance):
            continue
        out.append(pick)
    return out


def already_emitted(station: Station, pick, dedupe_tolerance: float) -> bool:
    """The pick (same phase) was emitted: its peak within ``dedupe_tolerance`` of an emitted one,
    or its trigger overlapping the trigger of an early pick."""
    t = pick.peak_time.timestamp
    if any(phase == pick.phase and abs(t - other) <= dedupe_tolerance for phase, other in station.emitted):
        return True
    return overlaps_early(station, pick)


def overlaps_early(station: Station, pick) -> bool:
    on, off = pick.start_time.timestamp, pick.end_time.timestamp
    return any(phase == pick.phase and on <= e_off and e_on <= off
               for phase, e_on, e_off, _ in station.early_triggers)


def early_peak(station: Station, pick) -> float | None:
    """Peak time (POSIX s) of the early pick whose trigger the (final) ``pick`` overlaps."""
    on, off = pick.start_time.timestamp, pick.end_time.timestamp
    for phase, e_on, e_off, peak in station.early_triggers:
        if phase == pick.phase and on <= e_off and e_on <= off:
            return peak
    return None


def remember(station: Station, pick) -> None:
    station.early_triggers.append((pick.phase, pick.start_time.timestamp, pick.end_time.timestamp,
                                   pick.peak_time.timestamp))


def forget(station: Station, history_s: float) -> None:
    """Forget early triggers that no final pick can overlap any more."""
    if station.ann_start is None:
        return
    horizon = station.time(station.ann_start).timestamp - history_s - 60
    while station.early_triggers and station.early_triggers[0][2] < horizon:
        station.early_triggers.popleft()


def stride_overlap(model, stride: float, annotate_kwargs: dict) -> int:
    """``overlap`` (samples) of a ``stride`` in seconds, checked against an explicit ``overlap``."""
    rate = float(model.sampling_rate or 0)
    if not rate:
        raise RealtimeError("stride needs a model with a sampling rate")
    if not stride > 0:
        raise RealtimeError(f"stride must be > 0 seconds, got {stride!r}")
    samples = int(round(stride * rate))
    if abs(samples - stride * rate) > 1e-6 * rate or not 0 < samples < int(model.in_samples):
        raise RealtimeError(f"stride={stride:g} s is not a whole number of samples at {rate:g} Hz shorter "
                            f"than the window ({int(model.in_samples) / rate:g} s)")
    overlap = int(model.in_samples) - samples
    if annotate_kwargs.get("overlap") not in (None, overlap):
        raise RealtimeError(f"stride={stride:g} s (overlap {overlap}) contradicts overlap={annotate_kwargs['overlap']}")
    return overlap


def check_unblinded(in_samples: int, stride: int, pre: int, post: int) -> None:
    """A stride longer than a window's unblinded part would leave samples without annotation."""
    if in_samples - pre - post < stride:
        raise RealtimeError(f"stride {stride} samples is longer than the unblinded part of a window "
                            f"({in_samples - pre - post} samples): samples between windows would get no annotation")


def split_confirmed(station: Station, picks: list) -> tuple[list, list]:
    """Final picks -> (those to emit, ``(station, phase, early peak, final peak)`` of those whose
    trigger overlaps an early pick's: emitted already)."""
    emit, confirmed = [], []
    for pick in picks:
        peak = early_peak(station, pick)
        if peak is None:
            emit.append(pick)
        else:
            confirmed.append((station.key, pick.phase, peak, pick.peak_time.timestamp))
    return emit, confirmed
