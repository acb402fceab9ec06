"""The real-time picker: records in, ring buffers, the model on complete windows, picks out once."""

from __future__ import annotations

import collections
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import obspy

from . import direct as direct_path, early as early_mode, finality
from .buffers import ChannelRing, Job, Planner, Station, arrival_of, station_stream
from .ingest import Ingest
from .common import COMPONENT_ALIASES, RealtimeError, RealtimePick
from .outputs import PickCSV, plot_station
from .sources import Source

logger = logging.getLogger("seisbench_feq.realtime")


def window_geometry(model, argdict: dict) -> tuple[int, int, int, int]:
    """``(in_samples, stride, pre, post)`` of a model's annotate windows: the package's one window
    geometry (:func:`seisbench_feq.models.annotate.window_step`) and the blinding default."""
    from ..models.annotate import window_step

    in_samples = int(model.in_samples)
    stride = int(window_step(model, argdict))
    overlap = in_samples - stride
    if stride <= 0:
        raise RealtimeError(f"overlap={overlap} must be smaller than the window ({in_samples} samples)")
    blinding = argdict.get("blinding")
    if blinding is None:  # the model's annotate default (EQTransformer family: 500, 500)
        blinding = model._annotate_args.get("blinding", (None, (0, 0)))[1]
    return in_samples, stride, int(blinding[0]), int(blinding[1])


class RealtimePicker:
    """Runs a SeisBench ``WaveformModel`` on live or replayed data and emits each pick once.

    :param model: any array-output ``WaveformModel`` (FEQ3, EQTransformer, ...).
    :param callback: called with each :class:`RealtimePick` as it is emitted (errors are logged).
    :param csv_path: picks are appended here (header written once), flushed per pick.
    :param quakeml_dir: deprecated, ignored with a warning: one station cannot locate an event,
        so real time writes no QuakeML; ``seisbench-feq associate`` builds located events from
        the picks CSV (the package's one QuakeML builder, :func:`seisbench_feq.io.quakeml.build_catalog`).
    :param plot_dir: a PNG per station, rewritten every ``plot_interval`` s: the last
        ``plot_seconds`` of waveform (filtered as the model sees it), the probabilities and picks.
    :param step: seconds of new data between model calls (rounded to whole window strides; the
        default, one stride, gives the lowest latency).
    :param silence_timeout: wall seconds without data after which a station's buffered tail is
        flushed (picks in it emitted) as if its stream had ended.
    :param max_component_lag: seconds a component may trail its station's newest data before it
        is treated as missing (zero-filled, as ``classify`` does).
    :param reorder_window: seconds of data a channel holds back while waiting for a missing
        (late) record; beyond that the gap is given up and logged.
    :param history: seconds of final annotations kept per station (for picks and plots).
    :param dedupe_tolerance: seconds within which a same-phase pick at a station is a duplicate.
    :param batch_stations: stations whose windows go into one model call at most.
    :param batch_wait: wall seconds :meth:`run` waits, once a station has a window to run, for
        other stations to complete theirs, so that they share one model call (the CPU per window
        of a batch of one is several times that of a batch of many); a pick waits at most this
        much longer. 0: run each station as soon as it is ready.
    :param weights: the weights label written with each pick.
    :param band_priority: band codes in priority order (``["HH", "BH"]``): a station that streams
        several bands uses, of those that arrive before its first window has run, the one first in this list.
    :param direct: run the model on window arrays, each window once, batched over stations
        (:mod:`.direct`; the same annotations as ``annotate``, at a fraction of its cost) where the
        model and the station's rate allow it; False: ``annotate`` on every call (the reference).
    :param stride: seconds between window starts (``overlap = in_samples - stride x rate``).
    :param early_picks: low latency (:mod:`.early`, direct path only): picks also from the windows
        run so far, emitted before their samples are final (``RealtimePick.early``); still once.
    :param early_blinding: seconds blinded at a window's end for early picks (None: the model's
        blinding, 5 s for FEQ3); final picks keep the model's.
    :param annotate_kwargs: passed to ``annotate`` and ``classify_aggregate`` like ``classify``'s
        keyword arguments (e.g. ``P_threshold=0.2``, ``overlap=4000``).
    """

    def __init__(self, model, *, callback: Callable[[RealtimePick], Any] | None = None,
                 csv_path: str | Path | None = None, quakeml_dir: str | Path | None = None,
                 plot_dir: str | Path | None = None, plot_interval: float = 60.0, plot_seconds: float = 120.0,
                 step: float | None = None, silence_timeout: float = 120.0, max_component_lag: float = 30.0,
                 reorder_window: float = 30.0, history: float = 300.0, dedupe_tolerance: float = 0.2,
                 batch_stations: int = 64, batch_wait: float = 1.0, weights: str = "", band_priority=None,
                 direct: bool = True, stride: float | None = None, early_picks: bool = False,
                 early_blinding: float | None = None,
                 **annotate_kwargs):
        if getattr(model, "output_type", None) != "array":
            raise RealtimeError(f"{type(model).__name__}: real-time picking needs an array-output WaveformModel")
        for name, value in (("silence_timeout", silence_timeout), ("history", history),
                            ("max_component_lag", max_component_lag), ("reorder_window", reorder_window),
                            ("plot_interval", plot_interval), ("batch_wait", batch_wait)):
            if not value >= 0:
                raise RealtimeError(f"{name} must be >= 0, got {value!r}")
        if step is not None and not step > 0:
            raise RealtimeError(f"step must be > 0 seconds, got {step!r}")
        if int(batch_stations) < 1:
            raise RealtimeError(f"batch_stations must be >= 1, got {batch_stations!r}")
        if stride is not None:
            annotate_kwargs = {**annotate_kwargs, "overlap": early_mode.stride_overlap(model, stride, annotate_kwargs)}
        self.model = model
        self.model_label = getattr(model, "name", type(model).__name__)
        self.callback = callback
        self.annotate_kwargs = dict(annotate_kwargs)
        self.argdict = {**model.default_args, **annotate_kwargs}
        self.model_rate = model.sampling_rate
        self.in_samples, self.stride_model, self.pre_model, self.post_model = window_geometry(model, self.argdict)
        overlap = self.in_samples - self.stride_model
        context = max(0, math.ceil((overlap - self.pre_model - self.post_model) / self.stride_model))
        stride_s = self.stride_model / (self.model_rate or 100.0)
        self._comp_order = model.component_order or "ZNE"
        self.planner = Planner(max(1, round((step or stride_s) / stride_s)), context, max_component_lag,
                               self._comp_order)
        reason = direct_path.direct_reason(model) if direct else "direct=False"
        if direct and reason:
            logger.info("%s: the model runs through annotate (%s)", self.model_label, reason)
        self.direct = reason is None
        if early_picks and not self.direct:
            raise RealtimeError(f"early_picks needs the direct path, which {self.model_label} cannot use "
                                f"({reason}); run without early picks")
        self.early_picks = bool(early_picks)
        geometry = (self.in_samples, self.stride_model, self.pre_model, self.post_model)
        self.early = early_mode.early_settings(self.argdict, geometry, early_picks, self.model_rate or 100.0,
                                               early_blinding)
        if stride is not None:
            early_mode.check_unblinded(self.in_samples, self.stride_model, self.pre_model, self.post_model)
        self._stacking = str(model._argdict_get_with_default(self.argdict, "stacking")).lower()
        if self._stacking not in ("max", "avg"):  # SeisBench's _stack_options
            raise RealtimeError(f"stacking={self._stacking!r}: expected 'max' or 'avg'")
        self._batch_size = int(model._argdict_get_with_default(self.argdict, "batch_size"))
        self._label_names = [f"{type(model).__name__}_{label}" for label in (model.labels or [])]
        self.silence_timeout = silence_timeout
        self.reorder_window = reorder_window
        self.history = history
        self.dedupe_tolerance = dedupe_tolerance
        self.batch_stations = int(batch_stations)
        self.batch_wait = float(batch_wait)
        self._queued_at = 0.0  # wall time the queue last became non-empty
        self.band_priority = [b.strip().upper() for b in (band_priority.split(",") if isinstance(band_priority, str)
                                                          else band_priority or []) if b.strip()]
        self.plot_dir = Path(plot_dir) if plot_dir else None
        self.plot_interval, self.plot_seconds = plot_interval, plot_seconds
        if quakeml_dir:
            import warnings

            message = ("quakeml_dir is deprecated and ignored: single-station detections have no origin; "
                       "build located events with `seisbench-feq associate` on the picks CSV")
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            logger.warning("deprecated: %s", message)
        self.quakeml_dir = None
        self.csv = PickCSV(csv_path, weights) if csv_path else None
        self.picks: list[RealtimePick] = []
        #: (station, phase, early peak, final peak) of early picks their final samples confirmed
        self.early_revisions: list[tuple[str, str, float | None, float]] = []
        self.silence_flushed: dict[str, float] = {}  # station -> wall time of its last silence flush
        self.events_written: list[Path] = []
        self.stats = collections.Counter()
        self.warned = collections.Counter()  # distinct warning key -> occurrences
        self._stations: dict[str, Station] = {}
        # re-entrant: the Ctrl-C handler (stop) runs in the worker thread, maybe while it holds the lock
        self._lock = threading.RLock()
        self._ready = threading.Condition(self._lock)
        self._queue: collections.deque[str] = collections.deque()
        self._source: Source | None = None
        self._stop = threading.Event()
        self.ingest = Ingest(self)

    def _warn_once(self, key: str, message: str, *args) -> None:
        """Each distinct warning once per trace and job; the count is in the summary."""
        if self.warned[key] == 0:
            logger.warning(message, *args)
        self.warned[key] += 1

    def feed(self, trace: obspy.Trace, arrival: float | None = None) -> None:
        """Add one record (any length). Thread-safe; cheap: the model runs in :meth:`run`'s thread."""
        self.ingest.feed(trace, arrival)

    def _gaps(self, station: Station, ring: ChannelRing, gaps: list[tuple[int, int]]) -> None:
        self.ingest.gaps(station, ring, gaps)

    # ---- model and picks (worker thread) ------------------------------------------------------

    def _run_jobs(self, jobs: list[Job]) -> None:
        started = time.time()
        direct = [job for job in jobs if job.windows is not None]
        blocks = self._run_direct(direct) if direct else []
        annotations = self._run_annotate([job for job in jobs if job.windows is None])
        self.stats["windows_run"] += sum(len(job.starts) for job in direct)
        self.stats["windows_annotated"] += sum(
            max(0, (j.slice_end - j.slice_start - j.station.win) // j.station.stride + 1) for j in jobs
            if j.windows is None)
        by_job = dict(zip(map(id, direct), blocks))
        for job in jobs:
            station = job.station
            if job.windows is not None:
                finality.append_blocks(station, by_job[id(job)], job.new_final)
            else:
                net, sta, loc = station.key.split(".")
                finality.append_annotations(station, annotations.select(network=net, station=sta, location=loc), job)
            self._emit_final(station, job, started)
            if self.early_picks:
                self._emit_early(station, job, started)
        self.stats["model_seconds"] += time.time() - started

    def _run_direct(self, jobs: list[Job]) -> list[dict[str, np.ndarray]]:
        """New windows of every direct job through the model in one batch; per job the stacked
        annotations of its newly final samples (label channel -> array)."""
        def failed(job, exc):
            self.stats["failed_calls"] += 1
            logger.error("%s: the model failed on %s - %s (%s); these windows are skipped", job.station.key,
                         job.station.time(job.slice_start), job.station.time(job.slice_end), exc)

        outputs, calls = direct_path.run_windows(self.model, jobs, self.early.forward_argdict, self._batch_size, failed)
        self.stats["model_calls"] += calls
        blocks = []
        for job, out in zip(jobs, outputs):
            station = job.station
            if out is None:  # the model failed: these windows give no annotation (as annotate)
                out = np.full((len(job.starts), station.win, len(self._label_names)), np.nan, np.float32)
            for start, pred in zip(job.starts, out):
                station.preds[start] = pred.copy()  # not a view: the batch is freed
            stacked = direct_path.stack_final(station, station.final_end, job.new_final, len(self._label_names),
                                              self._stacking, self.early.final_blind_from)
            blocks.append({name: stacked[:, k] for k, name in enumerate(self._label_names)})
            if job.flush:
                station.preds = {}
            else:
                direct_path.forget_windows(station, job.new_final)
        return blocks

    def _run_annotate(self, jobs: list[Job]) -> obspy.Stream:
        """The reference path: ``annotate`` on the jobs' slices (with their context windows)."""
        stream = obspy.Stream()
        for job in jobs:
            stream += job.stream
        if not len(stream):
            return stream
        try:
            return self._annotate(stream)
        except Exception as exc:  # noqa: BLE001 - isolate the station whose data breaks the model
            logger.error("annotate failed on %d stations (%s); retrying them one by one", len(jobs), exc)
            annotations = obspy.Stream()
            for job in jobs:
                try:
                    annotations += self._annotate(job.stream)
                except Exception as exc_one:  # noqa: BLE001
                    self.stats["failed_calls"] += 1
                    logger.error("%s: annotate failed on %s - %s (%s); these windows are skipped",
                                 job.station.key, job.station.time(job.slice_start),
                                 job.station.time(job.slice_end), exc_one)
            return annotations

    def _annotate(self, stream: obspy.Stream) -> obspy.Stream:
        if not len(stream):
            return obspy.Stream()
        self.stats["model_calls"] += 1
        return self.model.annotate(stream, **self.annotate_kwargs)

    def _emit_final(self, station: Station, job: Job, model_start: float) -> None:
        if not station.ann:
            if job.flush:
                finality.reset_annotations(station)
            return
        picks, detections, triggers = finality.final_items(self.model, self.argdict, station, job,
                                                           self.dedupe_tolerance)
        if station.early_triggers:  # emitted early already: not again (each pick once)
            picks, confirmed = early_mode.split_confirmed(station, picks)
            self.early_revisions += confirmed
            station.emitted.extend((phase, final) for _, phase, _, final in confirmed)
            self.stats["early_confirmed"] += len(confirmed)
        for pick in picks:
            self._emit(station, pick, job, model_start)
        self.stats["detections"] += len(detections)
        if job.flush:
            if self.plot_dir is not None:  # the segment's last figure, before its buffer goes
                self._safe_plot(station, time.time())
            finality.reset_annotations(station)
        else:
            finality.trim_annotations(station, triggers, self.history, self._warn_once)
            kept = station.final_end - station.ann_start
            self.stats["max_annotation_samples"] = max(self.stats["max_annotation_samples"], kept)
        finality.forget_emitted(station, self.history)
        early_mode.forget(station, self.history)
        self._trim_rings(station)

    def _emit_early(self, station: Station, job: Job, model_start: float) -> None:
        if job.windows is None:  # a station at another rate goes through annotate: final picks only
            self._warn_once(f"early:{station.key}", "%s: not at the model's rate (annotate path): its picks "
                            "are emitted when final, not early", station.key)
            return
        for pick in early_mode.early_picks(self.model, self.argdict, self.early, station, job,
                                           self._label_names, self._stacking, self.dedupe_tolerance):
            early_mode.remember(station, pick)
            self.stats["early_picks"] += 1
            self._emit(station, pick, job, model_start, early=True)

    def _trim_rings(self, station: Station) -> None:
        # the next call re-reads the last window(s) before o_next (context, or the end-aligned window)
        if station.seg_start is None:
            keep = station.scan_pos
        else:
            keep = min(station.o_next - max(self.planner.context_windows, 1) * station.stride, station.scan_pos)
        if self.plot_dir is not None:
            keep = min(keep, station.final_end - int(self.plot_seconds * station.sampling_rate))
        keep = min(keep, station.final_end - int(10 * station.sampling_rate))  # pick amplitudes
        with self._lock:
            for ring in station.channels.values():
                ring.trim(keep)
            while len(station.marks) > 1 and station.marks[1][0] <= keep:
                station.marks.popleft()

    def _measure(self, station: Station, pick) -> tuple[dict | None, str]:
        from ..io.picks import measure_pick

        a = station.index(pick.peak_time - 5.0)
        b = station.index(pick.peak_time + 3.0)
        with self._lock:
            waveforms = station_stream(station, a, b)
        m = measure_pick(list(waveforms), pick.peak_time, pick.phase)
        channel = m["channel"] if m else ""
        if not channel:  # no data left to measure: the convention of the phase
            from ..io.quakeml import phase_channel

            channel = phase_channel(station.band or "", pick.phase) or ""
        return m, channel

    def _emit(self, station: Station, pick, job: Job, model_start: float, early: bool = False) -> None:
        now = time.time()
        pick_wall = self._source.data_time_to_wall(pick.peak_time) if self._source is not None else None
        ready = job.ready_wall  # early: the newest window's end made it visible
        data_end = job.slice_end
        with self._lock:
            if pick_wall is None:
                pick_wall = arrival_of(station, station.index(pick.peak_time) + 1)
            if not job.flush and not early:
                # the data that made this pick final: the grid window whose blinded start passes it
                end_index = station.index(pick.end_time)
                k = max(0, math.ceil((end_index + 2 - station.stride - station.pre - job.grid_start) / station.stride))
                ready = arrival_of(station, job.grid_start + k * station.stride + station.win)
                data_end = min(job.grid_start + k * station.stride + station.win, job.slice_end)
        ready = min(max(ready, min(pick_wall, model_start)), model_start)
        measures, channel = self._measure(station, pick)
        realtime_pick = RealtimePick(
            trace_id=pick.trace_id, phase=pick.phase, time=pick.peak_time,
            probability=float(pick.peak_value), start_time=pick.start_time, end_time=pick.end_time,
            emitted_at=now, wait_data_s=ready - pick_wall, queue_s=model_start - ready,
            model_s=now - model_start, model=self.model_label, channel=channel, early=early,
            data_end=station.time(data_end))
        if not early:  # early picks are remembered by their trigger (early_mode.remember)
            station.emitted.append((pick.phase, pick.peak_time.timestamp))
        self.picks.append(realtime_pick)
        self.stats["picks"] += 1
        logger.info("%s %s %s %s p=%.2f latency %.1f s (data %.1f, queue %.1f, model %.2f)",
                    "early pick" if early else "pick", realtime_pick.trace_id, realtime_pick.phase,
                    realtime_pick.time, realtime_pick.probability,
                    realtime_pick.latency_s, realtime_pick.wait_data_s, realtime_pick.queue_s,
                    realtime_pick.model_s)
        if self.csv is not None:
            self.csv.write(realtime_pick, measures)
        if self.callback is not None:
            try:
                self.callback(realtime_pick)
            except Exception:  # noqa: BLE001 - a user callback must not stop the service
                logger.exception("pick callback failed for %s %s", realtime_pick.trace_id, realtime_pick.time)

    # ---- outputs -----------------------------------------------------------------------------

    def _safe_plot(self, station: Station, now: float) -> None:
        try:
            self._plot(station, now)
        except Exception:  # noqa: BLE001 - a figure must not stop the picker
            logger.exception("%s: plot failed", station.key)

    def _plot(self, station: Station, now: float) -> None:
        if not station.ann or station.final_end == station.plotted_final:
            return
        t1 = station.time(station.final_end)
        t0 = max(t1 - self.plot_seconds, station.time(station.ann_start))
        annotations = finality.annotation_stream(station).slice(t0, t1)
        comps = sorted(station.channels, key=lambda c: self._comp_order.find(c))
        with self._lock:
            waveforms = station_stream(station, station.index(t0), station.final_end, fill=True)
        waveforms.traces.sort(key=lambda tr: comps.index(COMPONENT_ALIASES.get(tr.stats.channel[-1], tr.stats.channel[-1]))
                              if COMPONENT_ALIASES.get(tr.stats.channel[-1], tr.stats.channel[-1]) in comps else 9)
        picks = [p for p in self.picks if p.trace_id == station.key and t0 <= p.time <= t1]
        defaults = getattr(self.model, "_annotate_args", {})  # classify_aggregate's defaults
        thresholds = {label: self.argdict.get(key, defaults.get(key, defaults.get("*_threshold", (None, None)))[1])
                      for label, key in (("P", "P_threshold"), ("S", "S_threshold"),
                                         ("Detection", "detection_threshold"))}
        plot_station(self.plot_dir, station, waveforms, annotations, picks,
                     f"{station.key}  {self.model_label}  final up to {t1.strftime('%Y-%m-%dT%H:%M:%S')}",
                     thresholds={k: v for k, v in thresholds.items() if v is not None},
                     highpass=float(getattr(self.model, "highpass", None) or 1.0))
        station.plotted_final = station.final_end
        station.last_plot = now

    def close(self) -> None:
        """Flush and close the CSV (called by :meth:`run`)."""
        if self.csv is not None:
            self.csv.close()

    # ---- main loop ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to finish: stop the source, flush every station, close the outputs."""
        self._stop.set()
        with self._ready:
            self._ready.notify_all()

    def run(self, source: Source, duration: float | None = None) -> list[RealtimePick]:
        """Pick until the source ends, ``duration`` wall seconds pass, :meth:`stop` or Ctrl-C.

        Ctrl-C (SIGINT) finishes gracefully: the buffered data is processed to the end, the picks in
        it are emitted and the outputs flushed; a second Ctrl-C skips that processing.
        """
        self._source = source
        self._stop.clear()
        source_done = threading.Event()
        source_error: list[BaseException] = []

        def source_main():
            try:
                source.run(self.feed)
            except BaseException as exc:  # noqa: BLE001 - reported in the picker thread
                source_error.append(exc)
                logger.error("%s source failed: %s", source.name, exc)
            finally:
                source_done.set()
                with self._ready:
                    self._ready.notify_all()

        thread = threading.Thread(target=source_main, name=f"{source.name}-source", daemon=True)
        previous_handler = None
        if threading.current_thread() is threading.main_thread():
            def on_sigint(signum, frame):
                if self._stop.is_set():
                    raise KeyboardInterrupt
                logger.warning("Ctrl-C: finishing the buffered data and flushing outputs (Ctrl-C again to skip)")
                self.stats["interrupted"] += 1
                self.stop()

            previous_handler = signal.signal(signal.SIGINT, on_sigint)
        started = last_housekeeping = time.time()
        thread.start()
        drain = True
        try:
            while not self._stop.is_set():
                if duration is not None and time.time() - started > duration:
                    break
                jobs = self._next_jobs(timeout=0.25, batch_wait=self.batch_wait)
                if jobs:
                    self._run_jobs(jobs)
                elif source_done.is_set():
                    with self._lock:
                        idle = not self._queue
                    if idle:
                        break
                if time.time() - last_housekeeping >= 0.5:  # also while busy: silent stations, figures
                    self._housekeeping()
                    last_housekeeping = time.time()
        except KeyboardInterrupt:
            logger.warning("interrupted: outputs flushed without processing the buffered data")
            drain = False
        finally:
            source.stop()
            thread.join(timeout=10)
            try:
                if drain:
                    self.flush()
            finally:
                self.close()
                if previous_handler is not None:
                    signal.signal(signal.SIGINT, previous_handler)
        if source_error and not isinstance(source_error[0], Exception):
            raise source_error[0]
        if source_error:
            raise RealtimeError(f"{source.name} source failed: {source_error[0]}") from source_error[0]
        self._log_summary()
        return self.picks

    def _next_jobs(self, timeout: float, batch_wait: float = 0.0) -> list[Job]:
        with self._ready:
            if not self._queue:
                self._ready.wait(timeout)
            if self._queue and batch_wait > 0:
                # stations whose windows complete within batch_wait of the first share one model
                # call: per window, a batch of one costs several times a batch of many
                deadline = self._queued_at + batch_wait
                while (0 < len(self._queue) < min(self.batch_stations, len(self._stations))
                       and not self._stop.is_set() and time.time() < deadline):
                    self._ready.wait(deadline - time.time())
            now = time.time()
            jobs = []
            for _ in range(min(len(self._queue), self.batch_stations)):
                station = self._stations[self._queue.popleft()]
                station.queued = False
                job = self.planner.plan(station, final=False, now=now)
                if job is None:
                    continue  # fed again when more data arrives
                jobs.append(job)  # one job per station per call; more (after a gap) next time
                if self.planner.has_work(station):
                    station.queued = True
                    self._queue.append(station.key)
                    self._queued_at = 0.0  # a backlog: no waiting for more
            return jobs

    def _housekeeping(self) -> None:
        now = time.time()
        silent = []
        with self._lock:
            for station in self._stations.values():
                if station.seg_start is not None and now - station.last_arrival > self.silence_timeout:
                    silent.append(station)
        for station in silent:
            logger.warning("%s: no data for %.0f s; flushing its buffered data", station.key, now - station.last_arrival)
            self.stats["silence_flushes"] += 1
            self.silence_flushed[station.key] = now
            self._flush_station(station)
        if self.plot_dir is not None:
            for station in self._station_list():
                if now - station.last_plot >= self.plot_interval:
                    self._safe_plot(station, now)

    def _station_list(self) -> list[Station]:
        with self._lock:  # the source thread may add a station meanwhile
            return list(self._stations.values())

    def _flush_station(self, station: Station) -> None:
        with self._lock:  # records held for reordering: their gaps are final now
            for ring in station.channels.values():
                if ring.pending:
                    self._gaps(station, ring, ring.flush_pending())
        while True:
            with self._lock:
                job = self.planner.plan(station, final=True, now=time.time())
            if job is None:
                return
            self._run_jobs([job])

    def process_pending(self) -> int:
        """Run the model on every complete window fed so far (synchronously); returns the calls.

        :meth:`run` does this in its loop; use it with :meth:`feed` to drive the picker yourself.
        """
        calls = 0
        while True:
            jobs = self._next_jobs(timeout=0)
            if not jobs:
                return calls
            self._run_jobs(jobs)
            calls += 1

    def flush(self) -> None:
        """End of the stream: process what is buffered, close every segment (emitting the picks
        in it, as ``classify`` ends a stream) and draw the last figures. Outputs stay open."""
        self.process_pending()
        for station in self._station_list():
            self._flush_station(station)  # also draws each station's last figure

    def summary(self) -> list[str]:
        """What the run skipped or repaired, and why (one line each)."""
        s, lines = self.stats, []
        if s["gaps"]:
            lines.append(f"{s['gaps']} gap(s), {s['gap_seconds']:.1f} s in all, left as gaps "
                         "(data missing or later than the reorder window)")
        if s["held_records"]:
            lines.append(f"{s['held_records']} record(s) arrived out of order and were held back "
                         f"(reorder window {self.reorder_window:g} s)")
        if s["late_samples_dropped"]:
            lines.append(f"{s['late_samples_dropped']} sample(s) dropped: they came after their gap was given up")
        if s["duplicate_records"]:
            lines.append(f"{s['duplicate_records']} duplicate record(s) dropped (same samples received again)")
        if s["bad_records"]:
            lines.append(f"{s['bad_records']} record(s) skipped (bad rate, band or header)")
        if s["ignored_records"]:
            lines.append(f"{s['ignored_records']} record(s) of components the model does not use ignored")
        if s["nan_samples"]:
            lines.append(f"{s['nan_samples']} NaN/inf sample(s) treated as gaps")
        if s["failed_calls"]:
            lines.append(f"{s['failed_calls']} model call(s) failed; their windows were skipped")
        for key, n in sorted(self.warned.items()):
            if n > 1:
                lines.append(f"warning {key} repeated {n} times")
        return lines

    def _log_summary(self) -> None:
        for line in self.summary():
            logger.warning("summary: %s", line)
        if not self.picks:
            logger.info("no picks; %d records from %d stations", self.stats["records"], len(self._stations))
            return
        latency = np.array([p.latency_s for p in self.picks])
        logger.info("%d picks from %d stations; latency median %.1f s, p95 %.1f s; %d model calls, %.1f s model time",
                    len(self.picks), len(self._stations), np.median(latency), np.percentile(latency, 95),
                    self.stats["model_calls"], self.stats["model_seconds"])
