"""Per-station ring buffers, a bounded reorder buffer for late records, and the window planner.

All positions are sample indices on a station's own grid (index 0 = its first sample).
"""

from __future__ import annotations

import collections
import heapq
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import obspy
from obspy import UTCDateTime

logger = logging.getLogger("seisbench_feq.realtime")


class ChannelRing:
    """Samples of one channel by absolute station sample index; NaN where nothing arrived.

    Records that leave a gap are held back (``pending``) until the missing records arrive, so
    out-of-order delivery (common after a SeedLink reconnect) loses nothing. The hold is bounded:
    once the held data reaches ``reorder_samples`` beyond the end, the gap is given up (it stays
    NaN, a gap for the model) and reported, as is every record that arrives after that.
    """

    def __init__(self, trace_id: str, start: int, reorder_samples: int = 0):
        self.trace_id = trace_id
        self.start = start
        self.data = np.empty(8192)
        self.n = 0
        self.reorder_samples = int(reorder_samples)
        self.pending: list[tuple[int, int, np.ndarray]] = []  # heap of (index, order, values)
        self._order = 0
        self.given_up: list[tuple[int, int]] = []  # gaps accepted as gaps: (start, end) indices

    @property
    def end(self) -> int:
        return self.start + self.n

    @property
    def held(self) -> int:
        """Samples held back beyond the end (waiting for a missing record)."""
        return max((i + len(v) for i, _, v in self.pending), default=self.end) - self.end

    def reopen(self, index: int) -> None:
        """Move the start back to ``index`` (a record older than the first one received, while
        nothing of the channel has been processed). What was written goes back into the reorder
        buffer, so the samples between the new start and the old one wait for their records like
        any other gap instead of reading as "already received"."""
        if self.n:
            heapq.heappush(self.pending, (self.start, self._order, self.data[: self.n].copy()))
            self._order += 1
        self.start, self.n = index, 0

    def add(self, index: int, values: np.ndarray, can_prepend: bool = False) -> dict:
        """Take one record. Returns what happened: ``dropped`` (samples already present),
        ``late`` (samples that arrived after their gap was given up), ``gaps`` (the gaps given up
        now, as ``(start, end)`` indices), ``held`` (the record waits for a missing one)."""
        report = {"dropped": 0, "late": 0, "gaps": [], "held": False}
        if index < self.start and can_prepend:
            self.reopen(index)
        if index < self.end:
            overlap = min(self.end - index, len(values))
            late = sum(max(0, min(b, index + overlap) - max(a, index))
                       for a, b in self.given_up)
            report["late"] = late
            report["dropped"] = overlap - late
            values = values[overlap:]
            index = self.end
            if len(values) == 0:
                return report
        heapq.heappush(self.pending, (index, self._order, values))
        self._order += 1
        self._drain(report)
        if self.pending and self.held > self.reorder_samples:
            self._drain(report, give_up=True)
        report["held"] = bool(self.pending)
        return report

    def flush_pending(self) -> list[tuple[int, int]]:
        """End of the stream: write every held record, gaps left as they are."""
        report = {"dropped": 0, "late": 0, "gaps": [], "held": False}
        self._drain(report, give_up=True)
        return report["gaps"]

    def _drain(self, report: dict, give_up: bool = False) -> None:
        while self.pending:
            index, _, values = self.pending[0]
            if index > self.end and not give_up:
                return
            heapq.heappop(self.pending)
            if index < self.end:  # a held record partly covered by one written since
                skip = self.end - index
                report["dropped"] += min(skip, len(values))
                values = values[skip:]
                index = self.end
                if not len(values):
                    continue
            gap = index - self.end
            if gap:
                report["gaps"].append((self.end, index))
                self.given_up.append((self.end, index))
                if len(self.given_up) > 64:
                    self.given_up = self.given_up[-64:]
            self._write(index, values)
            if give_up and self.pending and self.held <= self.reorder_samples:
                give_up = False  # the rest fits the reorder window again

    def _write(self, index: int, values: np.ndarray) -> None:
        gap = index - self.end
        need = self.n + gap + len(values)
        if need > len(self.data):
            grown = np.empty(max(need, 2 * len(self.data)))
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n: self.n + gap] = np.nan
        self.data[self.n + gap: need] = values
        self.n = need

    def trim(self, keep_from: int) -> None:
        k = min(max(keep_from - self.start, 0), self.n)
        if k:
            self.data[: self.n - k] = self.data[k: self.n]
            self.n -= k
            self.start += k

    def get(self, a: int, b: int) -> np.ndarray:
        out = np.full(max(b - a, 0), np.nan)
        lo, hi = max(a, self.start), min(b, self.end)
        if hi > lo:
            out[lo - a: hi - a] = self.data[lo - self.start: hi - self.start]
        return out


@dataclass
class Job:
    """One model call's worth of work for a station, cut from its ring under the lock."""

    station: "Station"
    slice_start: int
    slice_end: int
    new_final: int  # annotation final up to this sample (exclusive) after the call
    flush: bool  # segment ends at slice_end
    stream: obspy.Stream | None  # the slice for ``annotate`` (stations not run directly)
    ready_wall: float  # when the data that completes this job had arrived
    grid_start: int  # segment start (window grid anchor)
    starts: list[int] = field(default_factory=list)  # windows new in this job (their first samples)
    windows: np.ndarray | None = None  # direct stations: those windows, (n, components, win) float32


@dataclass
class Station:
    key: str  # NET.STA.LOC
    sampling_rate: float
    anchor: UTCDateTime  # time of sample index 0
    win: int
    stride: int
    pre: int
    post: int
    channels: dict = field(default_factory=dict)  # component letter -> ChannelRing
    marks: collections.deque = field(default_factory=collections.deque)  # (ready index, wall)
    ready_index: int = 0
    first_index: int | None = None
    last_arrival: float = 0.0
    band: str | None = None
    # processing state (worker thread only)
    seg_start: int | None = None
    o_next: int = 0
    final_end: int = 0
    scan_pos: int = 0
    gap_pending: bool = False
    ann: dict = field(default_factory=dict)  # channel name -> np.ndarray of final annotations
    ann_start: int | None = None  # sample index (station grid) of ann[...][0]
    emitted: collections.deque = field(default_factory=collections.deque)  # (phase, peak timestamp)
    cut_at: int | None = None  # annotation cut inside an over-long trigger here
    done_detections: collections.deque = field(default_factory=collections.deque)
    last_plot: float = 0.0
    plotted_final: int = -1
    queued: bool = False
    # direct stations (at the model's rate): windows run on arrays, each once; their outputs are
    # kept (by first sample) while they still overlap samples that are not final
    direct: bool = False
    preds: dict = field(default_factory=dict)  # window start -> (win, labels) float32, blinded
    # early mode: (phase, trigger on, trigger off, peak) POSIX s of the picks emitted early
    early_triggers: collections.deque = field(default_factory=collections.deque)

    def time(self, index: float) -> UTCDateTime:
        return self.anchor + index / self.sampling_rate

    def index(self, t: UTCDateTime) -> int:
        return int(round((t - self.anchor) * self.sampling_rate))


class Planner:
    """Which windows of a station to run next, on ``classify``'s window grid.

    ``windows_per_call`` whole grid windows per call; at the end of a segment (a gap in all
    components, or the end of the stream) one more window aligned to the segment end, as
    ``classify`` does. A direct station (:attr:`Station.direct`) gets only the new windows (their
    outputs are kept for the stacking); for any other station the slice for ``annotate`` starts
    ``context_windows`` earlier, so that its stacking sees every window overlapping the new
    samples. Called under the picker's lock.
    """

    def __init__(self, windows_per_call: int, context_windows: int, max_component_lag: float,
                 component_order: str):
        self.windows_per_call = windows_per_call
        self.context_windows = context_windows
        self.max_component_lag = max_component_lag
        self.component_order = component_order
        self.expected_components = len(component_order)

    def ready_index(self, station: Station, final: bool = False) -> int:
        """Sample index up to which every live component has arrived (or is given up on)."""
        ends = [ring.end for ring in station.channels.values()]
        newest = max(ends)
        if final:
            return newest
        lag = int(self.max_component_lag * station.sampling_rate)
        ready = min(e for e in ends if e >= newest - lag)
        if len(ends) < self.expected_components and station.first_index is not None:
            ready = min(ready, max(newest - lag, station.first_index))  # wait a while for the others
        return ready

    def has_work(self, station: Station) -> bool:
        if station.seg_start is None:
            return station.ready_index - station.scan_pos >= station.win
        need = station.o_next + (self.windows_per_call - 1) * station.stride + station.win
        return station.ready_index >= need

    def plan(self, station: Station, final: bool, now: float) -> Job | None:
        """The next job for a station, or None. ``final``: the station's stream has ended."""
        ready = self.ready_index(station, final) if station.channels else 0
        while True:
            if station.seg_start is None:
                start = self._first_valid(station, station.scan_pos, ready)
                if start is None:
                    return None
                if not final and ready - start < station.win:
                    # not committed yet: until one window has run, a late record older than the
                    # first one received still opens the stream (see Ingest._store)
                    station.scan_pos = start
                    return None
                station.seg_start = station.o_next = start
                station.final_end = start + station.pre
                station.scan_pos = start
                station.ann, station.ann_start = {}, None
                station.preds = {}
            gap = self._first_all_missing(station, station.scan_pos, ready)
            station.gap_pending = False
            if gap is None:
                station.scan_pos = ready
                seg_end = ready
            else:
                seg_end = gap
            seg_len = seg_end - station.seg_start
            if gap is not None or final:
                # the segment ends: like classify, add a window aligned to its end and close triggers
                job = None
                if seg_len >= station.win:
                    last_grid = station.seg_start + (seg_end - station.win - station.seg_start) // station.stride * station.stride
                    starts = list(range(station.o_next, last_grid + 1, station.stride))
                    if last_grid + station.win < seg_end:
                        starts.append(seg_end - station.win)
                    first = max(station.seg_start,
                                min(station.o_next - self.context(station) * station.stride, last_grid))
                    if station.direct:
                        first = min(starts, default=seg_end)
                    job = self.cut(station, first, seg_end, seg_end - station.post, True, now, starts)
                elif seg_len > 0:
                    logger.info("%s: segment %s - %s is shorter than one window; not annotated (as classify)",
                                station.key, station.time(station.seg_start), station.time(seg_end))
                # the next segment starts after the gap
                station.seg_start = None
                station.scan_pos = seg_end
                if job is not None:
                    return job
                if gap is None:
                    return None
                continue
            # normal: whole grid windows
            available = (seg_end - station.o_next - station.win) // station.stride + 1 if seg_end - station.o_next >= station.win else 0
            if available < self.windows_per_call:
                return None
            o_last = station.o_next + (available - 1) * station.stride
            first = max(station.seg_start, station.o_next - self.context(station) * station.stride)
            starts = list(range(station.o_next, o_last + 1, station.stride))
            job = self.cut(station, first, o_last + station.win, o_last + station.stride + station.pre, False, now,
                           starts)
            station.o_next = o_last + station.stride
            return job

    def context(self, station: Station) -> int:
        """Earlier windows re-run with the new ones: none where the outputs are kept."""
        return 0 if station.direct else self.context_windows

    @staticmethod
    def _first_valid(station: Station, a: int, b: int) -> int | None:
        if b <= a:
            return None
        valid = np.zeros(b - a, dtype=bool)
        for ring in station.channels.values():
            valid |= ~np.isnan(ring.get(a, b))
        hits = np.flatnonzero(valid)
        return a + int(hits[0]) if len(hits) else None

    @staticmethod
    def _first_all_missing(station: Station, a: int, b: int) -> int | None:
        if b <= a:
            return None
        missing = np.ones(b - a, dtype=bool)
        for ring in station.channels.values():
            missing &= np.isnan(ring.get(a, b))
        hits = np.flatnonzero(missing)
        return a + int(hits[0]) if len(hits) else None

    def cut(self, station: Station, a: int, b: int, new_final: int, flush: bool, now: float,
            starts: list[int]) -> Job:
        ready_wall = now if flush else arrival_of(station, b)
        if station.direct:
            windows = station_windows(station, self.component_order, starts)
            return Job(station, a, b, new_final, flush, None, ready_wall, station.seg_start, starts, windows)
        return Job(station, a, b, new_final, flush, station_stream(station, a, b), ready_wall,
                   station.seg_start, starts)


def station_windows(station: Station, component_order: str, starts: list[int]) -> np.ndarray:
    """The windows starting at ``starts`` as one (n, components, win) float32 array in the model's
    component order, what SeisBench's ``stream_to_array`` and windowing give: missing samples and
    components are 0. Values too large for float32 are scaled by a power of two, as the stream
    cleaner does (the windows are normalised, so the output is the same)."""
    from ..models.preprocessing import huge_value_factor

    out = np.zeros((len(starts), len(component_order), station.win), dtype=np.float32)
    if not starts:
        return out
    a, b = min(starts), max(starts) + station.win
    block = np.zeros((len(component_order), b - a))
    for comp, ring in station.channels.items():
        if comp in component_order:
            block[component_order.index(comp)] = ring.get(a, b)
    np.nan_to_num(block, copy=False, nan=0.0)
    factor = huge_value_factor(float(np.abs(block).max(initial=0.0)))
    if factor != 1.0:
        block *= factor
    for k, start in enumerate(starts):
        out[k] = block[:, start - a: start - a + station.win]
    return out


def station_stream(station: Station, a: int, b: int, fill: bool = False) -> obspy.Stream:
    """The station's samples ``[a, b)`` as a Stream (missing samples: gaps, or 0 with ``fill``)."""
    stream = obspy.Stream()
    net, sta, loc = station.key.split(".")
    for comp, ring in station.channels.items():
        values = ring.get(a, b)
        if np.isnan(values).all():
            continue
        if fill:
            values = np.nan_to_num(values)
        trace = obspy.Trace(np.ma.masked_invalid(values) if np.isnan(values).any() else values,
                            header=dict(network=net, station=sta, location=loc,
                                        channel=ring.trace_id.split(".")[-1],
                                        sampling_rate=station.sampling_rate, starttime=station.time(a)))
        stream += trace.split() if np.ma.isMaskedArray(trace.data) else trace
    return stream


def arrival_of(station: Station, index: int) -> float:
    """Wall time at which the station's data first reached ``index`` (complete components).

    The caller holds the picker's lock (the source thread appends marks)."""
    for ready, wall in station.marks:
        if ready >= index:
            return wall
    return time.time()
