"""Final annotations of a station and which picks and detections in them are final.

After windows up to offset ``o`` have run, every sample before ``o + stride + pre`` is final (the
next grid window only contributes past its blinded edge). Final samples are appended to a
per-station buffer and never recomputed; picks come from the model's own ``classify_aggregate``
on that buffer, and a pick is final once its trigger has switched off inside the final part.
"""

from __future__ import annotations

import logging

import numpy as np
import obspy

from .buffers import Job, Station

logger = logging.getLogger("seisbench_feq.realtime")


def append_annotations(station: Station, annotations: obspy.Stream, job: Job) -> None:
    """Append the newly final samples ``[final_end, job.new_final)`` of an ``annotate`` call."""
    a, b = station.final_end, job.new_final
    if b <= a:
        return
    t_a = station.time(a)
    n_new = b - a
    blocks: dict[str, np.ndarray] = {}
    for trace in annotations:
        # nearest annotation sample for each station sample (the same samples when the data is
        # at the model's rate, as the window grid is then identical)
        rate = trace.stats.sampling_rate
        source = np.round((t_a - trace.stats.starttime) * rate
                          + np.arange(n_new) * (rate / station.sampling_rate)).astype(np.int64)
        inside = (source >= 0) & (source < trace.stats.npts)
        block = blocks.setdefault(trace.stats.channel, np.full(n_new, np.nan, dtype=np.float32))
        block[inside] = trace.data[source[inside]]
    append_blocks(station, blocks, b)


def append_blocks(station: Station, blocks: dict[str, np.ndarray], b: int) -> None:
    """Append final annotations ``[final_end, b)``: label channel -> ``b - final_end`` samples."""
    a = station.final_end
    if b <= a:
        return
    if station.ann_start is None:
        station.ann_start = a
    n_new = b - a
    for name, data in station.ann.items():  # keep every label aligned on the station grid
        if len(data) != a - station.ann_start:
            station.ann[name] = np.concatenate([data, np.full(a - station.ann_start, np.nan, np.float32)])[
                : a - station.ann_start]
    for name in set(station.ann) | set(blocks):
        previous = station.ann.get(name)
        if previous is None:
            previous = np.full(a - station.ann_start, np.nan, dtype=np.float32)
        block = blocks.get(name)
        if block is None:  # a label missing from this output
            block = np.full(n_new, np.nan, dtype=np.float32)
        station.ann[name] = np.concatenate([previous, block[:n_new]])
    station.final_end = b


def annotation_stream(station: Station) -> obspy.Stream:
    net, sta, loc = station.key.split(".")
    stream = obspy.Stream()
    for name, data in station.ann.items():
        stream += obspy.Trace(data, header=dict(network=net, station=sta, location=loc, channel=name,
                                                 sampling_rate=station.sampling_rate,
                                                 starttime=station.time(station.ann_start)))
    return stream


def final_items(model, argdict: dict, station: Station, job: Job, dedupe_tolerance: float):
    """``(picks to emit, detections to report, all triggers)`` of the station's final buffer."""
    output = model.classify_aggregate(annotation_stream(station), argdict)
    picks = list(getattr(output, "picks", []) or [])
    detections = list(getattr(output, "detections", []) or [])
    last = station.time(station.final_end - 1)
    half = 0.5 / station.sampling_rate

    def is_final(item) -> bool:
        if station.cut_at is not None and station.index(item.start_time) <= station.cut_at:
            return False  # the rest of a trigger longer than the history
        return job.flush or item.end_time < last - half

    def emitted(pick) -> bool:
        t = pick.peak_time.timestamp
        return any(phase == pick.phase and abs(t - other) <= dedupe_tolerance
                   for phase, other in station.emitted)

    new_picks = [p for p in sorted(picks, key=lambda p: p.peak_time) if is_final(p) and not emitted(p)]
    pending_until = min((p.start_time for p in picks if not is_final(p)), default=None)
    new_detections = []
    for det in detections:
        if not is_final(det) or any(abs(det.start_time - t) < 1e-6 for t in station.done_detections):
            continue
        if pending_until is not None and pending_until <= det.end_time:
            continue  # a pick inside this detection is still open
        station.done_detections.append(det.start_time)
        new_detections.append(det)
    return new_picks, new_detections, picks + detections


def reset_annotations(station: Station) -> None:
    station.ann, station.ann_start, station.cut_at = {}, None, None


def trim_annotations(station: Station, triggers: list, history_s: float, warn_once) -> None:
    """Keep ``history_s`` of final annotations, never cutting through a trigger's start unless
    the trigger is longer than twice the history (its rest is then never emitted)."""
    if station.ann_start is None:
        return
    history = int(history_s * station.sampling_rate)
    keep = station.final_end - history
    if keep <= station.ann_start:
        return
    t_keep = station.time(keep)
    for item in triggers:
        if item.start_time <= t_keep <= item.end_time:
            if station.final_end - station.index(item.start_time) <= 2 * history:
                keep = min(keep, station.index(item.start_time) - 1)
            else:
                station.cut_at = keep
                warn_once(f"cut:{station.key}",
                          "%s: a trigger on %s has lasted since %s, longer than history=%g s; "
                          "it is cut and not emitted (a model stuck above its threshold?)",
                          station.key, getattr(item, "phase", None) or "Detection",
                          item.start_time, history_s)
    k = keep - station.ann_start
    if k > 0:
        for name in station.ann:
            station.ann[name] = station.ann[name][k:]
        station.ann_start = keep


def forget_emitted(station: Station, history_s: float) -> None:
    """Forget emitted picks and detections that can no longer be recomputed."""
    horizon = station.time(station.final_end).timestamp - history_s - 60
    if station.ann_start is not None:
        horizon = min(horizon, station.time(station.ann_start).timestamp - 1)
    while station.emitted and station.emitted[0][1] < horizon:
        station.emitted.popleft()
    while station.done_detections and station.done_detections[0].timestamp < horizon:
        station.done_detections.popleft()
