"""The input side of the real-time picker (the source thread): records into station rings.

Every record is checked (rate, band, component, sample grid), its codes made safe, its channel
upper-cased (the one rule of ``classify`` and ``pick``) and stored in its channel's ring, which
holds back out-of-order records within the reorder window. Every drop and gap is logged.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import obspy

from ..io.files import safe_code
from .buffers import ChannelRing, Station
from .common import COMPONENT_ALIASES, RealtimeError, nominal_rate

logger = logging.getLogger("seisbench_feq.realtime")


class Ingest:
    """Feeds records into the stations of a :class:`~.picker.RealtimePicker` (``p``)."""

    def __init__(self, picker):
        self.p = picker

    def feed(self, trace: obspy.Trace, arrival: float | None = None) -> None:
        """Add one record (any length). Thread-safe; cheap: the model runs in :meth:`run`'s thread."""
        arrival = time.time() if arrival is None else arrival
        try:
            values = self._check_trace(trace)
        except RealtimeError as exc:
            self.p.stats["bad_records"] += 1
            logger.warning("%s", exc)
            return
        if values is None:
            return
        trace.stats.channel = trace.stats.channel.upper()  # the one rule of classify and pick
        self._safe_codes(trace)
        key = f"{trace.stats.network}.{trace.stats.station}.{trace.stats.location}"
        comp = COMPONENT_ALIASES.get(trace.stats.channel[-1:], trace.stats.channel[-1:])
        if comp not in self.p._comp_order:
            self.p.stats["ignored_records"] += 1
            self.p._warn_once(f"component:{trace.id}", "%s: component %r is not one of the model's %s; "
                            "its records are ignored", trace.id, trace.stats.channel[-1:], self.p._comp_order)
            return
        with self.p._lock:
            station = self.p._stations.get(key)
            rate = nominal_rate(trace.stats.sampling_rate, station.sampling_rate if station else self.p.model_rate)
            if station is None:
                station = self._new_station(key, trace, rate)
                if station is None:
                    return
                self.p._stations[key] = station
            if rate != station.sampling_rate:
                self.p.stats["bad_records"] += 1
                self.p._warn_once(f"rate:{trace.id}", "%s: %g Hz, but %s runs at %g Hz; its records are "
                                "skipped", trace.id, trace.stats.sampling_rate, key, station.sampling_rate)
                return
            band = trace.stats.channel[:-1]
            if station.band is not None and band != station.band and self._prefer(station, band):
                logger.info("%s: band %s? comes before %s? in the channel priority; using %s", key, band,
                            station.band, band)
                station.band, station.channels, station.first_index = band, {}, None
                station.scan_pos = station.ready_index = 0
                station.marks.clear()
            if station.band is None:
                station.band = band
            elif band != station.band:
                self.p.stats["bad_records"] += 1
                self.p._warn_once(f"band:{trace.id}", "%s: %s already uses channels %s?; %s ignored "
                                "(select one band in --streams)", trace.id, key, station.band, trace.id)
                return
            exact = (trace.stats.starttime - station.anchor) * station.sampling_rate
            index = int(round(exact))
            if abs(exact - index) > 0.25:
                self.p._warn_once(f"tear:{trace.id}", "%s: record at %s is %.2f samples off the station's "
                                "sample grid; snapped", trace.id, trace.stats.starttime, exact - index)
            self._store(station, comp, trace, index, values, arrival)

    def _store(self, station: Station, comp: str, trace, index: int, values, arrival: float) -> None:
        ring = station.channels.get(comp)
        if ring is None:
            ring = station.channels[comp] = ChannelRing(
                trace.id, index, int(self.p.reorder_window * station.sampling_rate))
        # until the first segment starts, a record older than the first one received still
        # opens the stream (records of the first seconds often arrive out of order)
        fresh = station.seg_start is None and station.final_end == 0 and station.ann_start is None
        if station.first_index is None:
            station.first_index = station.scan_pos = index
        elif fresh:
            station.first_index = min(station.first_index, index)
            station.scan_pos = min(station.scan_pos, index)
        report = ring.add(index, values, can_prepend=fresh and index >= station.first_index)
        if report["late"]:
            self.p.stats["late_samples_dropped"] += report["late"]
            logger.warning("%s: record at %s arrived after its gap was given up (reorder window %g s); "
                           "%.2f s dropped, the gap stays", trace.id, trace.stats.starttime,
                           self.p.reorder_window, report["late"] / station.sampling_rate)
        if report["dropped"]:
            self.p.stats["overlapping_samples_dropped"] += report["dropped"]
            if report["dropped"] == len(values):
                self.p.stats["duplicate_records"] += 1  # the same samples again (a resent record)
                logger.debug("%s: record at %s already received; dropped", trace.id, trace.stats.starttime)
                return
        if report["late"] == len(values):
            return
        self.gaps(station, ring, report["gaps"])
        if report["held"]:
            self.p.stats["held_records"] += 1
        station.last_arrival = arrival
        ready = self.p.planner.ready_index(station)
        if fresh and ready < station.ready_index:  # an older record reopened the stream start
            station.ready_index = ready
            station.marks = type(station.marks)(m for m in station.marks if m[0] <= ready)
        if ready > station.ready_index:
            station.ready_index = ready
            station.marks.append((ready, arrival))
        self.p.stats["records"] += 1
        if not station.queued and (station.gap_pending or self.p.planner.has_work(station)):
            station.queued = True
            if not self.p._queue:
                self.p._queued_at = time.time()  # batch_wait counts from here
            self.p._queue.append(station.key)
            self.p._ready.notify()

    def _prefer(self, station: Station, band: str) -> bool:
        """Switch a station to ``band``: it comes first in the channel priority and nothing of
        the station has been processed yet."""
        priority = self.p.band_priority
        if band not in priority or (station.band in priority and priority.index(station.band) < priority.index(band)):
            return False
        return station.seg_start is None and station.final_end == 0 and station.ann_start is None

    def gaps(self, station: Station, ring: ChannelRing, gaps: list[tuple[int, int]]) -> None:
        for a, b in gaps:
            self.p.stats["gaps"] += 1
            self.p.stats["gap_seconds"] += (b - a) / station.sampling_rate
            station.gap_pending = True
            logger.warning("%s: gap of %.2f s, %s - %s (data missing, or later than the %g s reorder "
                           "window)", ring.trace_id, (b - a) / station.sampling_rate, station.time(a),
                           station.time(b), self.p.reorder_window)

    def _safe_codes(self, trace: obspy.Trace) -> None:
        """Codes SeisBench can group and select (no wildcards, dots or slashes); ``annotate``
        waited forever on a station ``a/b``. Renamed codes are reported once per trace."""
        stats = trace.stats
        original = trace.id
        for key in ("network", "station", "location", "channel"):
            if stats[key] and safe_code(stats[key]) != stats[key]:
                stats[key] = safe_code(stats[key])
        if trace.id != original:
            self.p._warn_once(f"codes:{original}", "%r: SEED codes renamed to %s for processing and outputs",
                            original, trace.id)

    def _check_trace(self, trace: obspy.Trace) -> np.ndarray | None:
        if trace.stats.npts == 0:
            return None
        if not trace.stats.sampling_rate > 0:
            raise RealtimeError(f"{trace.id}: sampling rate {trace.stats.sampling_rate}; record skipped")
        data = trace.data
        if data.dtype.kind not in "iuf":
            raise RealtimeError(f"{trace.id}: non-numeric samples ({data.dtype}) at {trace.stats.starttime}; record skipped")
        # (np.ma on every record costs more than the rest of feed)
        values = np.ma.filled(data.astype(np.float64), np.nan) if np.ma.isMaskedArray(data) else data.astype(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            values[bad] = np.nan  # treated as a gap in this component
            self.p.stats["nan_samples"] += int(bad.sum())
        return values

    def _new_station(self, key: str, trace: obspy.Trace, rate: float) -> Station | None:
        ratio = rate / (self.p.model_rate or rate)
        sizes = [self.p.in_samples * ratio, self.p.stride_model * ratio, self.p.pre_model * ratio, self.p.post_model * ratio]
        if any(abs(s - round(s)) > 1e-6 for s in sizes):
            self.p.stats["bad_records"] += 1
            self.p._warn_once(f"rate:{key}", "%s: %g Hz does not divide the model's %g Hz windows into whole "
                            "samples; station skipped", trace.id, rate, self.p.model_rate)
            return None
        if rate != trace.stats.sampling_rate:
            logger.info("%s: %.7g Hz is the nominal %g Hz (within %g); no resampling", trace.id,
                        trace.stats.sampling_rate, rate, 1e-4)
        elif self.p.model_rate and rate != self.p.model_rate:
            logger.warning("%s: %g Hz data is resampled to the model's %g Hz in every call", key, rate, self.p.model_rate)
        win, stride, pre, post = (int(round(s)) for s in sizes)
        logger.info("new station %s (%g Hz)", key, rate)
        # at the model's rate the windows are cut from the rings as arrays (no resampling to do)
        direct = self.p.direct and rate == self.p.model_rate
        return Station(key=key, sampling_rate=rate, anchor=trace.stats.starttime, win=win, stride=stride,
                       pre=pre, post=post, direct=direct)
