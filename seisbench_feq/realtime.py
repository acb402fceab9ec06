"""Real-time picking: SeedLink or file replay -> per-station ring buffers -> ``annotate`` -> picks.

The model runs on the ring buffer through its own ``annotate`` (SeisBench windowing, blinding and
stacking, with the same defaults as ``classify``), so a real-time run gives the picks that
``model.classify`` gives on the same continuous data.

How it stays equal to ``classify`` (all in samples; ``in``/``overlap``/``blinding=(pre, post)``
are the model's annotate arguments, ``stride = in - overlap``):

* Windows lie on the grid ``segment start + k * stride``, as in ``classify``. A call computes the
  newest complete grid windows plus ``ceil((overlap - pre - post) / stride)`` earlier ones (one with
  the defaults), so ``annotate``'s max-stacking sees every window that overlaps the new samples.
* **Annotation finality:** after windows up to offset ``o`` have run, every sample before
  ``o + stride + pre`` is final: the next grid window only starts to contribute (past its blinded
  edge) at ``o + stride + pre``. Final samples are appended to a per-station annotation buffer and
  never recomputed.
* **Pick finality:** picks come from the model's own ``classify_aggregate`` (trigger on at the
  phase threshold, off at half of it) on the final annotation buffer. A pick is final, and
  emitted, once its trigger has switched off inside the final part, i.e. its trigger-off sample is
  not the last final sample. At the end of a segment (a gap in all components, a station silent
  for ``silence_timeout`` seconds, the end of a replay, Ctrl-C) the tail is flushed the way
  ``classify`` ends a stream: one more window aligned to the segment end, and triggers still on
  are closed at the last sample.
* **Exactly once:** final samples never change, so a final pick is recomputed identically on later
  updates; emitted picks are remembered per station (same phase, peak within
  ``dedupe_tolerance`` s) and never emitted again.

Known, bounded differences from ``classify`` on the same data: a station that goes silent for
longer than ``silence_timeout`` and then resumes without a gap starts a new segment (``classify``
would see one segment): picks within one window (60 s) of the junction can differ. Data arriving
later than ``max_component_lag`` behind its station's other components is zero-filled, as
``classify`` fills missing components. Traces at another rate than the model's are resampled per
call, so filter edges differ slightly from a whole-stream resampling.

Latency of a pick (all wall-clock seconds, in the CSV and the log):
``wait_data`` = arrival of the data that made the pick final - data time of the pick (on the
source's clock: UTC for SeedLink, the replay clock for a replay); ``queue`` = model start - that
arrival; ``model`` = emission - model start; ``latency`` = their sum.
"""

from __future__ import annotations

import argparse
import collections
import csv
import fnmatch
import heapq
import io
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import obspy
from obspy import UTCDateTime

logger = logging.getLogger("seisbench_feq.realtime")

CSV_COLUMNS = [
    "station", "phase", "time", "probability", "start_time", "end_time", "emitted_at",
    "latency_s", "wait_data_s", "queue_s", "model_s", "model",
]
COMPONENT_ALIASES = {"1": "N", "2": "E"}  # as SeisBench's flexible_horizontal_components


class RealtimeError(ValueError):
    """Bad input or configuration, with the file, trace or parameter named."""


# --------------------------------------------------------------------------------------------
# Picks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RealtimePick:
    """One emitted pick. ``time`` is the peak of the probability; latencies are in seconds."""

    trace_id: str  # NET.STA.LOC, as SeisBench's Pick
    phase: str
    time: UTCDateTime
    probability: float
    start_time: UTCDateTime  # trigger on
    end_time: UTCDateTime  # trigger off
    emitted_at: float  # wall clock, POSIX seconds
    wait_data_s: float
    queue_s: float
    model_s: float
    model: str = ""

    @property
    def latency_s(self) -> float:
        return self.wait_data_s + self.queue_s + self.model_s

    def to_row(self) -> dict[str, Any]:
        return {
            "station": self.trace_id,
            "phase": self.phase,
            "time": str(self.time),
            "probability": f"{self.probability:.4f}",
            "start_time": str(self.start_time),
            "end_time": str(self.end_time),
            "emitted_at": str(UTCDateTime(self.emitted_at)),
            "latency_s": f"{self.latency_s:.3f}",
            "wait_data_s": f"{self.wait_data_s:.3f}",
            "queue_s": f"{self.queue_s:.3f}",
            "model_s": f"{self.model_s:.3f}",
            "model": self.model,
        }


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def parse_streams(streams: str | Sequence[str] | None) -> list[tuple[str, str, str, str]]:
    """``"CX.PB01..HH?,CX.PB02..HH?"`` -> [(net, sta, loc, cha), ...] (wildcards kept)."""
    if streams is None:
        return []
    items = streams.split(",") if isinstance(streams, str) else list(streams)
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        parts = item.split(".")
        if len(parts) != 4:
            raise RealtimeError(f"--streams entry {item!r} is not NET.STA.LOC.CHA (e.g. CX.PB01..HH?)")
        out.append(tuple(parts))
    return out


class Source:
    """Delivers ObsPy traces (one MiniSEED record each) to a callable, from its own thread.

    Subclasses implement :meth:`run` (block until the data ends or :meth:`stop`) and may implement
    :meth:`data_time_to_wall` (the wall time at which a data time "happened" on this source's clock;
    ``None``: unknown, the picker then uses the arrival of the record holding that sample).
    """

    name = "source"

    def __init__(self) -> None:
        self._stop = threading.Event()

    def run(self, deliver: Callable[[obspy.Trace], None]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()

    def data_time_to_wall(self, t: UTCDateTime) -> float | None:
        return None


def _iter_file_records(path: Path, start: UTCDateTime | None = None,
                       end: UTCDateTime | None = None) -> Iterator[tuple[float, obspy.Trace]]:
    """``(end time, trace)`` for each record of a MiniSEED file overlapping ``[start, end)``.

    Records come in end-time order (a file may hold one channel after the other). Headers are
    read first and only the wanted records decoded. A malformed record is logged with the file
    and byte offset, and skipped.
    """
    from obspy.io.mseed.util import get_record_information

    size = path.stat().st_size
    index = []  # (end time, offset, length)
    with open(path, "rb") as fh:
        offset, sorted_channel = _first_offset(fh, size, start)
        while offset < size:
            try:
                fh.seek(offset)
                head = fh.read(8)
                # ObsPy silently falls back to the file's first record on a bad header: check it here
                if len(head) < 8 or head[6:7] not in (b"D", b"R", b"Q", b"M") or head[:6].strip(b" 0123456789"):
                    raise ValueError(f"no MiniSEED record header ({bytes(head)!r})")
                fh.seek(offset)
                info = get_record_information(fh)
                length = int(info["record_length"])
                if length < 128 or length > 1 << 20:
                    raise ValueError(f"record length {length}")
            except Exception as exc:  # noqa: BLE001 - libmseed raises several types
                logger.warning("%s: malformed MiniSEED at byte %d (%s); skipping 512 bytes", path, offset, exc)
                offset += 512
                continue
            if (start is None or info["endtime"] >= start) and (end is None or info["starttime"] < end):
                index.append((info["endtime"].timestamp + 1.0 / info["samp_rate"], offset, length))
            elif sorted_channel and end is not None and info["starttime"] >= end:
                break  # one channel in time order (an SDS day file): nothing wanted further on
            offset += length
        index.sort()
        for record_end, offset, length in index:
            fh.seek(offset)
            try:
                for trace in obspy.read(io.BytesIO(fh.read(length)), format="MSEED"):
                    yield record_end, trace
            except Exception as exc:  # noqa: BLE001
                logger.warning("%s: malformed MiniSEED record at byte %d (%s); skipped", path, offset, exc)


def _first_offset(fh, size: int, start: UTCDateTime | None) -> tuple[int, bool]:
    """Where to start reading, found by bisection in a one-channel, fixed-record-length file.

    Returns ``(offset, sorted_channel)``; ``(0, False)`` when the file is not of that kind.
    """
    from obspy.io.mseed.util import get_record_information

    def header(offset):
        fh.seek(offset)
        return get_record_information(fh)

    try:
        first = header(0)
        length = int(first["record_length"])
        count = size // length
        if size % length or count < 2:
            return 0, False
        last = header((count - 1) * length)
        keys = ("network", "station", "location", "channel")
        if any(first[k] != last[k] for k in keys) or last["starttime"] < first["starttime"]:
            return 0, False
        if start is None:
            return 0, True
        lo, hi = 0, count - 1
        while lo < hi:  # first record ending at or after start
            mid = (lo + hi) // 2
            if header(mid * length)["endtime"] < start:
                lo = mid + 1
            else:
                hi = mid
        return max(lo - 1, 0) * length, True
    except Exception:  # noqa: BLE001 - malformed: fall back to reading every header
        return 0, False


class ReplaySource(Source):
    """Replays MiniSEED files or an SDS archive in record order at ``speed`` x wall clock.

    ``paths``: files, folders (searched recursively for MiniSEED) or SDS roots (a folder with
    ``YEAR/NET/STA/CHA.D/`` below it; needs ``start`` and ``end``). Records of all files are
    merged by end time (the moment a digitiser could have sent them). ``speed=1`` is real time,
    ``speed=0`` as fast as possible. ``streams`` (NET.STA.LOC.CHA patterns) and ``start``/``end``
    select what is replayed; records are trimmed to ``[start, end)``.
    """

    name = "replay"

    def __init__(self, paths: str | Path | Sequence[str | Path], *, streams=None, start=None, end=None,
                 speed: float = 1.0):
        super().__init__()
        if isinstance(paths, (str, Path)):
            paths = [paths]
        self.streams = parse_streams(streams)
        self.start = UTCDateTime(start) if start is not None else None
        self.end = UTCDateTime(end) if end is not None else None
        if speed < 0:
            raise RealtimeError(f"speed={speed}: use a positive factor (1 = real time) or 0 (no waiting)")
        self.speed = float(speed)
        self.files = self._find_files([Path(p) for p in paths])
        if not self.files:
            raise RealtimeError(f"replay: no MiniSEED files found in {[str(p) for p in paths]}"
                                + (f" for streams {streams}" if streams else ""))
        self._wall0: float | None = None
        self._t0: float | None = None

    def _find_files(self, paths: list[Path]) -> list[Path]:
        files: list[Path] = []
        for path in paths:
            if not path.exists():
                raise RealtimeError(f"replay: {path} does not exist")
            if path.is_file():
                files.append(path)
            elif self._is_sds(path):
                files.extend(self._sds_files(path))
            else:
                files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        return files

    @staticmethod
    def _is_sds(path: Path) -> bool:
        return any(p.is_dir() and p.name.isdigit() and len(p.name) == 4 for p in path.iterdir())

    def _sds_files(self, root: Path) -> list[Path]:
        if self.start is None or self.end is None:
            raise RealtimeError(f"replay of the SDS archive {root} needs start and end times")
        patterns = self.streams or [("*", "*", "*", "*")]
        files = []
        day = UTCDateTime(self.start.date)
        while day < self.end:
            for net, sta, loc, cha in patterns:
                pattern = f"{day.year}/{net}/{sta}/{cha}.D/{net}.{sta}.{loc}.{cha}.D.{day.year}.{day.julday:03d}"
                files.extend(sorted(root.glob(pattern)))
            day += 86400
        # the previous day's file may hold the first records (they start just before midnight)
        return sorted(set(files))

    def _wanted(self, trace: obspy.Trace) -> bool:
        if self.streams and not any(fnmatch.fnmatch(trace.id, ".".join(p)) for p in self.streams):
            return False
        if self.start is not None and trace.stats.endtime < self.start:
            return False
        if self.end is not None and trace.stats.starttime >= self.end:
            return False
        return True

    def records(self) -> Iterator[obspy.Trace]:
        """Selected, trimmed records of all files, merged in end-time order (no waiting)."""

        def from_file(path):
            for record_end, trace in _iter_file_records(path, self.start, self.end):
                if not self._wanted(trace):
                    continue
                if self.start is not None or self.end is not None:
                    end = self.end - trace.stats.delta / 2 if self.end is not None else None
                    trace.trim(self.start, end)
                    if trace.stats.npts == 0:
                        continue
                yield record_end, trace

        merged = heapq.merge(*(from_file(p) for p in self.files), key=lambda item: item[0])
        for _, trace in merged:
            yield trace

    def run(self, deliver: Callable[[obspy.Trace], None]) -> None:
        for trace in self.records():
            if self._stop.is_set():
                return
            end = trace.stats.endtime.timestamp + trace.stats.delta  # the record exists from here
            if self._wall0 is None:
                self._wall0, self._t0 = time.time(), end
            if self.speed > 0:
                delay = self._wall0 + (end - self._t0) / self.speed - time.time()
                if delay > 0 and self._stop.wait(delay):
                    return
            deliver(trace)

    def data_time_to_wall(self, t: UTCDateTime) -> float | None:
        if self.speed <= 0 or self._wall0 is None:
            return None
        return self._wall0 + (UTCDateTime(t).timestamp - self._t0) / self.speed


def _seedlink_connection_class():
    """ObsPy's SeedLinkConnection with three fixes a long-running client needs (ObsPy 1.5.1)."""
    from obspy.clients.seedlink.client.seedlinkconnection import SeedLinkConnection
    from obspy.clients.seedlink.seedlinkexception import SeedLinkException

    class _Connection(SeedLinkConnection):
        def __init__(self, owner):
            super().__init__()
            self.owner = owner

        def is_connected(self, timeout=1.0):
            # connect() passes self.timeout, None by default, which ObsPy 1.5.1 compares with a float
            return super().is_connected(1.0 if timeout is None else timeout)

        def receive_data(self, maxbytes, code):
            data = super().receive_data(maxbytes, code)
            # recv() returns b"" only when the server closed the socket (it blocks up to netto
            # otherwise); ObsPy treats it as "no data yet" and would wait for the network timeout
            if data == b"" and maxbytes > 0:
                raise ConnectionResetError("the SeedLink server closed the connection")
            return data

        def connect(self):
            self.owner.connect_attempts += 1
            if self.owner.connect_attempts > 1:
                logger.warning("SeedLink %s: reconnecting (attempt %d); resuming %s", self.sladdr,
                               self.owner.connect_attempts,
                               ", ".join(f"{s.net}.{s.station} after #{s.seqnum}" for s in self.streams))
            super().connect()

        def update_stream(self, slpacket):
            try:
                super().update_stream(slpacket)
            except SeedLinkException as exc:
                self.owner.bad_records += 1
                logger.warning("SeedLink %s: malformed packet skipped (%s)", self.sladdr, exc)
                raise

    return _Connection


class SeedLinkSource(Source):
    """Live data through ObsPy's SeedLink client (``EasySeedLinkClient`` + ``SeedLinkConnection``).

    ``streams``: NET.STA.LOC.CHA patterns (``?``/``*`` in LOC.CHA become SeedLink selectors).
    When the connection drops, the client reconnects after ``backoff_initial`` s, doubling up to
    ``backoff_max`` s while attempts fail, and resumes each station after the last sequence number
    it received (``DATA <seq+1>``), so nothing that the server still holds is lost. ``netto``: a
    connection silent this long is re-opened; ``keepalive``: INFO ID every so many seconds (0: off).
    ``statefile``: ObsPy's state file, to resume across restarts.
    """

    name = "seedlink"

    def __init__(self, address: str, streams, *, netto: float = 60.0, keepalive: float = 20.0,
                 backoff_initial: float = 1.0, backoff_max: float = 60.0, statefile: str | None = None):
        super().__init__()
        self.address = address.replace("seedlink://", "")
        if ":" not in self.address:
            self.address += ":18000"
        self.streams = parse_streams(streams)
        if not self.streams:
            raise RealtimeError("SeedLink needs --streams, e.g. CX.PB01..HH?")
        self.netto, self.keepalive = netto, keepalive
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.statefile = statefile
        self.connect_attempts = 0
        self.bad_records = 0
        self.failures: list[tuple[float, str]] = []  # (wall time, reason) of failed attempts
        self._client = None

    def run(self, deliver: Callable[[obspy.Trace], None]) -> None:
        from obspy.clients.seedlink.easyseedlink import EasySeedLinkClient
        from obspy.clients.seedlink.seedlinkexception import SeedLinkException
        from obspy.clients.seedlink.slpacket import SLPacket

        client = EasySeedLinkClient(self.address, autoconnect=False)
        conn = _seedlink_connection_class()(self)
        conn.set_sl_address(self.address)
        conn.netto, conn.netdly, conn.keepalive = self.netto, self.backoff_initial, self.keepalive
        client.conn = conn
        self._client = client
        selected = False
        failures = 0
        while not self._stop.is_set():
            try:
                if not selected:
                    client.connect()  # HELLO; then INFO CAPABILITIES via select_stream
                    for net, sta, loc, cha in self.streams:
                        client.select_stream(net, sta, f"{loc}{cha}" if loc not in ("", "*", "??") else cha)
                    if self.statefile:
                        conn.set_state_file(self.statefile)
                    selected = True
                packet = conn.collect()
            except (SeedLinkException, OSError) as exc:
                if self._stop.is_set():
                    break
                delay = min(self.backoff_max, self.backoff_initial * 2 ** failures)
                failures += 1
                self.failures.append((time.time(), str(exc)))
                logger.warning("SeedLink %s: %s; next attempt in %.1f s", self.address, exc, delay)
                conn.disconnect()
                self._stop.wait(delay)
                continue
            if self._stop.is_set():
                break
            if packet == SLPacket.SLTERMINATE:
                logger.info("SeedLink %s: the server ended the stream", self.address)
                break
            if packet == SLPacket.SLERROR:
                delay = min(self.backoff_max, self.backoff_initial * 2 ** failures)
                failures += 1
                logger.warning("SeedLink %s: the server answered ERROR; retrying in %.1f s", self.address, delay)
                self._stop.wait(delay)
                continue
            if packet.get_type() in (SLPacket.TYPE_SLINF, SLPacket.TYPE_SLINFT):
                continue
            try:
                trace = packet.get_trace()
            except Exception as exc:  # noqa: BLE001
                self.bad_records += 1
                logger.warning("SeedLink %s: undecodable record skipped (%s)", self.address, exc)
                continue
            failures = 0
            deliver(trace)
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing a dead socket
            pass

    def stop(self) -> None:
        super().stop()
        client = self._client
        if client is not None:
            client.conn.terminate()
            sock = client.conn.socket
            if sock is not None:  # wake the blocking recv()
                try:
                    import socket as _socket

                    sock.shutdown(_socket.SHUT_RDWR)
                except OSError:
                    pass

    def data_time_to_wall(self, t: UTCDateTime) -> float | None:
        return UTCDateTime(t).timestamp  # live data: data time is UTC


# --------------------------------------------------------------------------------------------
# Ring buffers
# --------------------------------------------------------------------------------------------


class _ChannelRing:
    """Samples of one channel by absolute station sample index; NaN where nothing arrived."""

    def __init__(self, trace_id: str, start: int):
        self.trace_id = trace_id
        self.start = start
        self.data = np.empty(8192)
        self.n = 0

    @property
    def end(self) -> int:
        return self.start + self.n

    def append(self, index: int, values: np.ndarray) -> tuple[int, int]:
        """Store ``values`` from ``index``; returns (samples dropped as already present, gap size)."""
        dropped = 0
        if index < self.end:
            dropped = min(self.end - index, len(values))
            values = values[dropped:]
            index = self.end
            if len(values) == 0:
                return dropped, 0
        gap = index - self.end
        need = self.n + gap + len(values)
        if need > len(self.data):
            grown = np.empty(max(need, 2 * len(self.data)))
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n: self.n + gap] = np.nan
        self.data[self.n + gap: need] = values
        self.n = need
        return dropped, gap

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
class _Job:
    """One model call's worth of work for a station, cut from its ring under the lock."""

    station: "_Station"
    slice_start: int
    slice_end: int
    new_final: int  # annotation final up to this sample (exclusive) after the call
    flush: bool  # segment ends at slice_end
    stream: obspy.Stream
    ready_wall: float  # when the data that completes this job had arrived
    grid_start: int  # segment start (window grid anchor)


@dataclass
class _Station:
    key: str  # NET.STA.LOC
    sampling_rate: float
    anchor: UTCDateTime  # time of sample index 0
    win: int
    stride: int
    pre: int
    post: int
    channels: dict = field(default_factory=dict)  # component letter -> _ChannelRing
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

    def time(self, index: float) -> UTCDateTime:
        return self.anchor + index / self.sampling_rate

    def index(self, t: UTCDateTime) -> int:
        return int(round((t - self.anchor) * self.sampling_rate))


# --------------------------------------------------------------------------------------------
# The picker
# --------------------------------------------------------------------------------------------


class RealtimePicker:
    """Runs a SeisBench ``WaveformModel`` on live or replayed data and emits each pick once.

    :param model: any array-output ``WaveformModel`` (FEQ3, EQTransformer, ...).
    :param callback: called with each :class:`RealtimePick` as it is emitted (errors are logged).
    :param csv_path: picks are appended here (header written once), flushed per pick.
    :param quakeml_dir: one QuakeML file per final detection (the station's picks inside it).
    :param plot_dir: a PNG per station, rewritten every ``plot_interval`` s: the last
        ``plot_seconds`` of waveform, the three probabilities and the picks.
    :param step: seconds of new data between model calls (rounded to whole window strides; the
        default, one stride, gives the lowest latency).
    :param silence_timeout: wall seconds without data after which a station's buffered tail is
        flushed (picks in it emitted) as if its stream had ended.
    :param max_component_lag: seconds a component may trail its station's newest data before it
        is treated as missing (zero-filled, as ``classify`` does).
    :param history: seconds of final annotations kept per station (for picks and plots).
    :param dedupe_tolerance: seconds within which a same-phase pick at a station is a duplicate.
    :param batch_stations: stations whose windows go into one ``annotate`` call at most.
    :param annotate_kwargs: passed to ``annotate`` and ``classify_aggregate`` like ``classify``'s
        keyword arguments (e.g. ``P_threshold=0.2``, ``overlap=4000``).
    """

    def __init__(self, model, *, callback: Callable[[RealtimePick], Any] | None = None,
                 csv_path: str | Path | None = None, quakeml_dir: str | Path | None = None,
                 plot_dir: str | Path | None = None, plot_interval: float = 60.0, plot_seconds: float = 120.0,
                 step: float | None = None, silence_timeout: float = 120.0, max_component_lag: float = 30.0,
                 history: float = 300.0, dedupe_tolerance: float = 0.2, batch_stations: int = 64,
                 **annotate_kwargs):
        if getattr(model, "output_type", None) != "array":
            raise RealtimeError(f"{type(model).__name__}: real-time picking needs an array-output WaveformModel")
        self.model = model
        self.model_label = getattr(model, "name", type(model).__name__)
        self.callback = callback
        self.annotate_kwargs = dict(annotate_kwargs)
        self.argdict = {**model.default_args, **annotate_kwargs}
        self.in_samples = int(model.in_samples)
        self.model_rate = model.sampling_rate
        overlap = model._get_overlap(self.in_samples, self.argdict)
        self.stride_model = self.in_samples - int(overlap)
        if self.stride_model <= 0:
            raise RealtimeError(f"overlap={overlap} must be smaller than the window ({self.in_samples} samples)")
        blinding = self.argdict.get("blinding")
        if blinding is None:  # the model's annotate default (EQTransformer family: 500, 500)
            blinding = model._annotate_args.get("blinding", (None, (0, 0)))[1]
        self.pre_model, self.post_model = int(blinding[0]), int(blinding[1])
        self.context_windows = max(0, math.ceil((int(overlap) - self.pre_model - self.post_model) / self.stride_model))
        stride_s = self.stride_model / (self.model_rate or 100.0)
        self.windows_per_call = max(1, round((step or stride_s) / stride_s))
        self.silence_timeout = silence_timeout
        self.max_component_lag = max_component_lag
        self.history = history
        self.dedupe_tolerance = dedupe_tolerance
        self.batch_stations = batch_stations
        self.plot_dir = Path(plot_dir) if plot_dir else None
        self.plot_interval, self.plot_seconds = plot_interval, plot_seconds
        self.quakeml_dir = Path(quakeml_dir) if quakeml_dir else None
        self.csv_path = Path(csv_path) if csv_path else None
        self._csv_file = None
        self._csv_writer = None
        self.picks: list[RealtimePick] = []
        self.silence_flushed: dict[str, float] = {}  # station -> wall time of its last silence flush
        self.events_written: list[Path] = []
        self.stats = collections.Counter()
        self._stations: dict[str, _Station] = {}
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: collections.deque[str] = collections.deque()
        self._source: Source | None = None
        self._stop = threading.Event()
        self._expected_components = len(model.component_order or "ZNE")
        self._comp_order = model.component_order or "ZNE"

    # ---- input (source thread) ---------------------------------------------------------------

    def feed(self, trace: obspy.Trace, arrival: float | None = None) -> None:
        """Add one record (any length). Thread-safe; cheap: the model runs in :meth:`run`'s thread."""
        arrival = time.time() if arrival is None else arrival
        try:
            values = self._check_trace(trace)
        except RealtimeError as exc:
            self.stats["bad_records"] += 1
            logger.warning("%s", exc)
            return
        if values is None:
            return
        key = f"{trace.stats.network}.{trace.stats.station}.{trace.stats.location}"
        comp = COMPONENT_ALIASES.get(trace.stats.channel[-1:], trace.stats.channel[-1:])
        if comp not in self._comp_order:
            if self.stats[f"component:{trace.id}"] == 0:
                logger.warning("%s: component %r is not one of the model's %s; its records are ignored",
                               trace.id, trace.stats.channel[-1:], self._comp_order)
            self.stats[f"component:{trace.id}"] += 1
            return
        with self._lock:
            station = self._stations.get(key)
            if station is None:
                station = self._new_station(key, trace)
                if station is None:
                    return
                self._stations[key] = station
            if trace.stats.sampling_rate != station.sampling_rate:
                self.stats["bad_records"] += 1
                logger.warning("%s: %g Hz, but %s runs at %g Hz; record at %s skipped", trace.id,
                               trace.stats.sampling_rate, key, station.sampling_rate, trace.stats.starttime)
                return
            band = trace.stats.channel[:-1]
            if station.band is None:
                station.band = band
            elif band != station.band:
                self.stats["bad_records"] += 1
                if self.stats[f"band:{trace.id}"] == 0:
                    logger.warning("%s: %s already uses channels %s?; %s ignored (select one band in --streams)",
                                   trace.id, key, station.band, trace.id)
                self.stats[f"band:{trace.id}"] += 1
                return
            exact = (trace.stats.starttime - station.anchor) * station.sampling_rate
            index = int(round(exact))
            if abs(exact - index) > 0.25 and self.stats[f"tear:{trace.id}"] == 0:
                self.stats[f"tear:{trace.id}"] += 1
                logger.warning("%s: record at %s is %.2f samples off the station's sample grid; snapped",
                               trace.id, trace.stats.starttime, exact - index)
            ring = station.channels.get(comp)
            if ring is None:
                ring = station.channels[comp] = _ChannelRing(trace.id, index)
                if station.first_index is None or (index < station.first_index and station.seg_start is None):
                    station.first_index = station.scan_pos = index
            dropped, gap = ring.append(index, values)
            if dropped:
                self.stats["overlapping_samples_dropped"] += dropped
                if dropped == len(values):
                    self.stats["duplicate_records"] += 1
                    logger.debug("%s: record at %s already received; dropped", trace.id, trace.stats.starttime)
                    return
            if gap:
                self.stats["gaps"] += 1
                station.gap_pending = True
                logger.info("%s: gap of %.2f s before %s", trace.id, gap / station.sampling_rate, trace.stats.starttime)
            station.last_arrival = arrival
            ready = self._ready_index(station)
            if ready > station.ready_index:
                station.ready_index = ready
                station.marks.append((ready, arrival))
            self.stats["records"] += 1
            if not station.queued and (station.gap_pending or self._has_work(station)):
                station.queued = True
                self._queue.append(key)
                self._ready.notify()

    def _check_trace(self, trace: obspy.Trace) -> np.ndarray | None:
        if trace.stats.npts == 0:
            return None
        if trace.stats.sampling_rate <= 0:
            raise RealtimeError(f"{trace.id}: sampling rate {trace.stats.sampling_rate}; record skipped")
        data = trace.data
        if data.dtype.kind not in "iuf":
            raise RealtimeError(f"{trace.id}: non-numeric samples ({data.dtype}) at {trace.stats.starttime}; record skipped")
        values = np.ma.filled(np.ma.asarray(data).astype(np.float64), np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            values[bad] = np.nan  # treated as a gap in this component
            self.stats["nan_samples"] += int(bad.sum())
        return values

    def _new_station(self, key: str, trace: obspy.Trace) -> _Station | None:
        rate = float(trace.stats.sampling_rate)
        ratio = rate / (self.model_rate or rate)
        sizes = [self.in_samples * ratio, self.stride_model * ratio, self.pre_model * ratio, self.post_model * ratio]
        if any(abs(s - round(s)) > 1e-6 for s in sizes):
            self.stats["bad_records"] += 1
            logger.warning("%s: %g Hz does not divide the model's %g Hz windows into whole samples; station skipped",
                           trace.id, rate, self.model_rate)
            return None
        if self.model_rate and rate != self.model_rate:
            logger.warning("%s: %g Hz data is resampled to the model's %g Hz in every call", key, rate, self.model_rate)
        win, stride, pre, post = (int(round(s)) for s in sizes)
        logger.info("new station %s (%g Hz)", key, rate)
        return _Station(key=key, sampling_rate=rate, anchor=trace.stats.starttime, win=win, stride=stride,
                        pre=pre, post=post)

    def _ready_index(self, station: _Station, final: bool = False) -> int:
        """Sample index up to which every live component has arrived (or is given up on)."""
        ends = [ring.end for ring in station.channels.values()]
        newest = max(ends)
        if final:
            return newest
        lag = int(self.max_component_lag * station.sampling_rate)
        ready = min(e for e in ends if e >= newest - lag)
        if len(ends) < self._expected_components and station.first_index is not None:
            ready = min(ready, max(newest - lag, station.first_index))  # wait a while for the others
        return ready

    def _has_work(self, station: _Station) -> bool:
        if station.seg_start is None:
            return station.ready_index - station.scan_pos >= station.win
        need = station.o_next + (self.windows_per_call - 1) * station.stride + station.win
        return station.ready_index >= need

    # ---- planning (under the lock) ------------------------------------------------------------

    def _plan(self, station: _Station, final: bool, now: float) -> _Job | None:
        """The next job for a station, or None. ``final``: the station's stream has ended."""
        ready = self._ready_index(station, final) if station.channels else 0
        while True:
            if station.seg_start is None:
                start = self._first_valid(station, station.scan_pos, ready)
                if start is None:
                    return None
                station.seg_start = station.o_next = start
                station.final_end = start + station.pre
                station.scan_pos = start
                station.ann, station.ann_start = {}, None
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
                    first = max(station.seg_start,
                                min(station.o_next - self.context_windows * station.stride, last_grid))
                    job = self._cut(station, first, seg_end, seg_end - station.post, True, now)
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
            first = max(station.seg_start, station.o_next - self.context_windows * station.stride)
            job = self._cut(station, first, o_last + station.win, o_last + station.stride + station.pre, False, now)
            station.o_next = o_last + station.stride
            return job

    def _first_valid(self, station: _Station, a: int, b: int) -> int | None:
        if b <= a:
            return None
        valid = np.zeros(b - a, dtype=bool)
        for ring in station.channels.values():
            valid |= ~np.isnan(ring.get(a, b))
        hits = np.flatnonzero(valid)
        return a + int(hits[0]) if len(hits) else None

    def _first_all_missing(self, station: _Station, a: int, b: int) -> int | None:
        if b <= a:
            return None
        missing = np.ones(b - a, dtype=bool)
        for ring in station.channels.values():
            missing &= np.isnan(ring.get(a, b))
        hits = np.flatnonzero(missing)
        return a + int(hits[0]) if len(hits) else None

    def _cut(self, station: _Station, a: int, b: int, new_final: int, flush: bool, now: float) -> _Job:
        stream = obspy.Stream()
        net, sta, loc = station.key.split(".")
        for comp, ring in station.channels.items():
            values = ring.get(a, b)
            if np.isnan(values).all():
                continue
            channel = ring.trace_id.split(".")[-1]
            trace = obspy.Trace(np.ma.masked_invalid(values) if np.isnan(values).any() else values,
                                header=dict(network=net, station=sta, location=loc, channel=channel,
                                            sampling_rate=station.sampling_rate, starttime=station.time(a)))
            stream += trace.split() if np.ma.isMaskedArray(trace.data) else trace
        ready_wall = now if flush else self._arrival_of(station, b)
        return _Job(station, a, b, new_final, flush, stream, ready_wall, station.seg_start)

    def _arrival_of(self, station: _Station, index: int) -> float:
        """Wall time at which the station's data first reached ``index`` (complete components).

        The caller holds ``self._lock`` (the source thread appends marks)."""
        for ready, wall in station.marks:
            if ready >= index:
                return wall
        return time.time()

    # ---- model and picks (worker thread) ------------------------------------------------------

    def _run_jobs(self, jobs: list[_Job]) -> None:
        stream = obspy.Stream()
        for job in jobs:
            stream += job.stream
        started = time.time()
        try:
            annotations = self._annotate(stream)
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
        self.stats["windows_annotated"] += sum(
            max(0, (j.slice_end - j.slice_start - j.station.win) // j.station.stride + 1) for j in jobs)
        for job in jobs:
            station = job.station
            net, sta, loc = station.key.split(".")
            mine = annotations.select(network=net, station=sta, location=loc)
            self._append_annotations(station, mine, job)
            self._emit_final(station, job, started)
        self.stats["model_seconds"] += time.time() - started

    def _annotate(self, stream: obspy.Stream) -> obspy.Stream:
        if not len(stream):
            return obspy.Stream()
        self.stats["model_calls"] += 1
        return self.model.annotate(stream, **self.annotate_kwargs)

    def _append_annotations(self, station: _Station, annotations: obspy.Stream, job: _Job) -> None:
        a, b = station.final_end, job.new_final
        if b <= a:
            return
        if station.ann_start is None:
            station.ann_start = a
        for name, data in station.ann.items():  # keep every label aligned on the station grid
            if len(data) != a - station.ann_start:
                station.ann[name] = np.concatenate([data, np.full(a - station.ann_start, np.nan, np.float32)])[
                    : a - station.ann_start]
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
        for name in set(station.ann) | set(blocks):
            previous = station.ann.get(name)
            if previous is None:
                previous = np.full(a - station.ann_start, np.nan, dtype=np.float32)
            block = blocks.get(name)
            if block is None:  # a label missing from this output
                block = np.full(n_new, np.nan, dtype=np.float32)
            station.ann[name] = np.concatenate([previous, block])
        station.final_end = b

    def _annotation_stream(self, station: _Station) -> obspy.Stream:
        net, sta, loc = station.key.split(".")
        stream = obspy.Stream()
        for name, data in station.ann.items():
            stream += obspy.Trace(data, header=dict(network=net, station=sta, location=loc, channel=name,
                                                     sampling_rate=station.sampling_rate,
                                                     starttime=station.time(station.ann_start)))
        return stream

    def _emit_final(self, station: _Station, job: _Job, model_start: float) -> None:
        if not station.ann:
            if job.flush:
                self._reset_annotations(station)
            return
        output = self.model.classify_aggregate(self._annotation_stream(station), self.argdict)
        picks = list(getattr(output, "picks", []) or [])
        detections = list(getattr(output, "detections", []) or [])
        last = station.time(station.final_end - 1)
        half = 0.5 / station.sampling_rate

        def is_final(item) -> bool:
            if station.cut_at is not None and station.index(item.start_time) <= station.cut_at:
                return False  # the rest of a trigger longer than the history
            return job.flush or item.end_time < last - half

        for pick in sorted(picks, key=lambda p: p.peak_time):
            if not is_final(pick) or self._already_emitted(station, pick):
                continue
            self._emit(station, pick, job, model_start)
        pending_until = min((p.start_time for p in picks if not is_final(p)), default=None)
        for det in detections:
            if not is_final(det) or any(abs(det.start_time - t) < 1e-6 for t in station.done_detections):
                continue
            if pending_until is not None and pending_until <= det.end_time:
                continue  # a pick inside this detection is still open
            station.done_detections.append(det.start_time)
            self.stats["detections"] += 1
            if self.quakeml_dir is not None:
                self._write_event(station, det)
        if job.flush:
            if self.plot_dir is not None:  # the segment's last figure, before its buffer goes
                self._safe_plot(station, time.time())
            self._reset_annotations(station)
        else:
            self._trim_annotations(station, picks + detections)
            kept = station.final_end - station.ann_start
            self.stats["max_annotation_samples"] = max(self.stats["max_annotation_samples"], kept)
        self._forget_old(station)

    def _already_emitted(self, station: _Station, pick) -> bool:
        t = pick.peak_time.timestamp
        return any(phase == pick.phase and abs(t - other) <= self.dedupe_tolerance
                   for phase, other in station.emitted)

    def _emit(self, station: _Station, pick, job: _Job, model_start: float) -> None:
        now = time.time()
        pick_wall = self._source.data_time_to_wall(pick.peak_time) if self._source is not None else None
        ready = job.ready_wall
        with self._lock:
            if pick_wall is None:
                pick_wall = self._arrival_of(station, station.index(pick.peak_time) + 1)
            if not job.flush:
                # the data that made this pick final: the grid window whose blinded start passes it
                end_index = station.index(pick.end_time)
                k = max(0, math.ceil((end_index + 2 - station.stride - station.pre - job.grid_start) / station.stride))
                ready = self._arrival_of(station, job.grid_start + k * station.stride + station.win)
        ready = min(max(ready, min(pick_wall, model_start)), model_start)
        realtime_pick = RealtimePick(
            trace_id=pick.trace_id, phase=pick.phase, time=pick.peak_time,
            probability=float(pick.peak_value), start_time=pick.start_time, end_time=pick.end_time,
            emitted_at=now, wait_data_s=ready - pick_wall, queue_s=model_start - ready,
            model_s=now - model_start, model=self.model_label)
        station.emitted.append((pick.phase, pick.peak_time.timestamp))
        self.picks.append(realtime_pick)
        self.stats["picks"] += 1
        logger.info("pick %s %s %s p=%.2f latency %.1f s (data %.1f, queue %.1f, model %.2f)",
                    realtime_pick.trace_id, realtime_pick.phase, realtime_pick.time, realtime_pick.probability,
                    realtime_pick.latency_s, realtime_pick.wait_data_s, realtime_pick.queue_s,
                    realtime_pick.model_s)
        self._write_csv(realtime_pick)
        if self.callback is not None:
            try:
                self.callback(realtime_pick)
            except Exception:  # noqa: BLE001 - a user callback must not stop the service
                logger.exception("pick callback failed for %s %s", realtime_pick.trace_id, realtime_pick.time)

    def _reset_annotations(self, station: _Station) -> None:
        station.ann, station.ann_start, station.cut_at = {}, None, None

    def _trim_annotations(self, station: _Station, triggers: list) -> None:
        if station.ann_start is None:
            return
        history = int(self.history * station.sampling_rate)
        keep = station.final_end - history
        if keep <= station.ann_start:
            return
        t_keep = station.time(keep)
        for item in triggers:  # never cut through a trigger: its start must stay visible ...
            if item.start_time <= t_keep <= item.end_time:
                if station.final_end - station.index(item.start_time) <= 2 * history:
                    keep = min(keep, station.index(item.start_time) - 1)
                else:  # ... unless it is longer than the history: its remainder is never emitted
                    station.cut_at = keep
                    if self.stats[f"cut:{station.key}"] == 0:
                        logger.warning("%s: a trigger on %s has lasted since %s, longer than history=%g s; "
                                       "it is cut and not emitted (a model stuck above its threshold?)",
                                       station.key, getattr(item, "phase", None) or "Detection",
                                       item.start_time, self.history)
                    self.stats[f"cut:{station.key}"] += 1
        k = keep - station.ann_start
        if k > 0:
            for name in station.ann:
                station.ann[name] = station.ann[name][k:]
            station.ann_start = keep

    def _forget_old(self, station: _Station) -> None:
        # an emitted pick can be recomputed while its trigger is in the annotation buffer
        horizon = station.time(station.final_end).timestamp - self.history - 60
        if station.ann_start is not None:
            horizon = min(horizon, station.time(station.ann_start).timestamp - 1)
        while station.emitted and station.emitted[0][1] < horizon:
            station.emitted.popleft()
        while station.done_detections and station.done_detections[0].timestamp < horizon:
            station.done_detections.popleft()
        # the next call re-reads the last window(s) before o_next (context, or the end-aligned window)
        if station.seg_start is None:
            keep = station.scan_pos
        else:
            keep = min(station.o_next - max(self.context_windows, 1) * station.stride, station.scan_pos)
        if self.plot_dir is not None:
            keep = min(keep, station.final_end - int(self.plot_seconds * station.sampling_rate))
        with self._lock:
            for ring in station.channels.values():
                ring.trim(keep)
            while len(station.marks) > 1 and station.marks[1][0] <= keep:
                station.marks.popleft()

    # ---- outputs -----------------------------------------------------------------------------

    def _write_csv(self, pick: RealtimePick) -> None:
        if self.csv_path is None:
            return
        if self._csv_file is None:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
            if not fresh:
                with open(self.csv_path, newline="") as existing:
                    header = next(csv.reader(existing), [])
                if header != CSV_COLUMNS:
                    raise RealtimeError(f"{self.csv_path} exists with other columns {header}; "
                                        f"choose another --out (expected {CSV_COLUMNS})")
            self._csv_file = open(self.csv_path, "a", newline="")
            self._csv_writer = csv.DictWriter(self._csv_file, fieldnames=CSV_COLUMNS)
            if fresh:
                self._csv_writer.writeheader()
        self._csv_writer.writerow(pick.to_row())
        self._csv_file.flush()

    def _write_event(self, station: _Station, det) -> None:
        from obspy.core.event import (Catalog, Comment, CreationInfo, Event, EventDescription, Pick,
                                      WaveformStreamID)

        creation = CreationInfo(agency_id="seisbench_feq", author=f"seisbench_feq realtime {self.model_label}",
                                creation_time=UTCDateTime())
        event = Event(event_type="earthquake", creation_info=creation)
        event.event_descriptions.append(EventDescription(
            text=f"single-station detection at {station.key} by {self.model_label}", type="region name"))
        event.comments.append(Comment(
            text=f"detection {det.start_time} - {det.end_time}, peak probability {det.peak_value:.3f}"))
        net, sta, loc = station.key.split(".")
        channel = next(iter(station.channels.values())).trace_id.split(".")[-1] if station.channels else ""
        for pick in self.picks:
            if pick.trace_id != station.key or not (det.start_time - 2.0 <= pick.time <= det.end_time):
                continue
            event.picks.append(Pick(
                time=pick.time, phase_hint=pick.phase, evaluation_mode="automatic",
                waveform_id=WaveformStreamID(net, sta, loc, channel),
                method_id=f"smi:seisbench_feq/realtime/{self.model_label}", creation_info=creation,
                comments=[Comment(text=f"probability={pick.probability:.4f}")]))
        self.quakeml_dir.mkdir(parents=True, exist_ok=True)
        path = self.quakeml_dir / f"{station.key}_{det.start_time.strftime('%Y%m%dT%H%M%S.%f')}.xml"
        tmp = path.with_suffix(".xml.part")
        Catalog([event]).write(str(tmp), format="QUAKEML")
        os.replace(tmp, path)
        self.events_written.append(path)
        logger.info("event %s written (%d picks)", path.name, len(event.picks))

    def _safe_plot(self, station: _Station, now: float) -> None:
        try:
            self._plot(station, now)
        except Exception:  # noqa: BLE001 - a figure must not stop the picker
            logger.exception("%s: plot failed", station.key)

    def _plot(self, station: _Station, now: float) -> None:
        from .plotting import plot_annotations

        if not station.ann or station.final_end == station.plotted_final:
            return
        t1 = station.time(station.final_end)
        t0 = max(t1 - self.plot_seconds, station.time(station.ann_start))
        annotations = self._annotation_stream(station).slice(t0, t1)
        a, b = station.index(t0), station.final_end
        waveforms = obspy.Stream()
        net, sta, loc = station.key.split(".")
        with self._lock:
            for comp in sorted(station.channels, key=lambda c: self._comp_order.find(c)):
                ring = station.channels[comp]
                values = ring.get(a, b)
                waveforms += obspy.Trace(np.nan_to_num(values), header=dict(
                    network=net, station=sta, location=loc, channel=ring.trace_id.split(".")[-1],
                    sampling_rate=station.sampling_rate, starttime=station.time(a)))
        import seisbench.util as sbu
        import matplotlib.pyplot as plt

        picks = sbu.PickList(sbu.Pick(p.trace_id, p.start_time, p.end_time, p.time, p.probability, p.phase)
                             for p in self.picks if p.trace_id == station.key and t0 <= p.time <= t1)
        self.plot_dir.mkdir(parents=True, exist_ok=True)
        path = self.plot_dir / f"{station.key}.png"
        tmp = self.plot_dir / f".{station.key}.part.png"
        fig = plot_annotations(waveforms, annotations, picks, tmp,
                               title=f"{station.key} {self.model_label}, final up to {t1.strftime('%Y-%m-%dT%H:%M:%S')}")
        plt.close(fig)
        os.replace(tmp, path)
        station.plotted_final = station.final_end
        station.last_plot = now

    def close(self) -> None:
        """Flush and close the CSV (called by :meth:`run`)."""
        if self._csv_file is not None:
            self._csv_file.flush()
            self._csv_file.close()
            self._csv_file = None

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
                jobs = self._next_jobs(timeout=0.25)
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

    def _next_jobs(self, timeout: float) -> list[_Job]:
        now = time.time()
        with self._ready:
            if not self._queue:
                self._ready.wait(timeout)
            jobs = []
            for _ in range(min(len(self._queue), self.batch_stations)):
                station = self._stations[self._queue.popleft()]
                station.queued = False
                job = self._plan(station, final=False, now=now)
                if job is None:
                    continue  # fed again when more data arrives
                jobs.append(job)  # one job per station per call; more (after a gap) next time
                if self._has_work(station):
                    station.queued = True
                    self._queue.append(station.key)
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

    def _station_list(self) -> list[_Station]:
        with self._lock:  # the source thread may add a station meanwhile
            return list(self._stations.values())

    def _flush_station(self, station: _Station) -> None:
        while True:
            with self._lock:
                job = self._plan(station, final=True, now=time.time())
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

    def _log_summary(self) -> None:
        if not self.picks:
            logger.info("no picks; %d records from %d stations", self.stats["records"], len(self._stations))
            return
        latency = np.array([p.latency_s for p in self.picks])
        logger.info("%d picks from %d stations; latency median %.1f s, p95 %.1f s; %d model calls, %.1f s model time",
                    len(self.picks), len(self._stations), np.median(latency), np.percentile(latency, 95),
                    self.stats["model_calls"], self.stats["model_seconds"])


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _cli(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from .archive import load_model

    model = load_model(args.model, args.weights)
    if args.seedlink:
        source: Source = SeedLinkSource(args.seedlink, args.streams, netto=args.netto, keepalive=args.keepalive,
                                        backoff_max=args.backoff_max, statefile=args.statefile)
    else:
        source = ReplaySource(args.replay, streams=args.streams, start=args.start, end=args.end, speed=args.speed)
    kwargs = {}
    for name in ("P_threshold", "S_threshold", "detection_threshold"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    picker = RealtimePicker(model, csv_path=args.out, quakeml_dir=args.quakeml_dir, plot_dir=args.plot_dir,
                            plot_interval=args.plot_interval, step=args.step, silence_timeout=args.silence_timeout,
                            **kwargs)
    picks = picker.run(source, duration=args.duration)
    print(f"{len(picks)} picks written to {args.out}"
          + (f", {len(picker.events_written)} QuakeML events in {args.quakeml_dir}" if args.quakeml_dir else ""))
    return 0


def add_subcommands(subparsers) -> None:
    parser = subparsers.add_parser(
        "realtime", help="pick live SeedLink data or a replayed archive; each pick emitted once",
        description="Real-time picking with per-station ring buffers. Picks are appended to --out "
                    "(CSV, flushed per pick) with their latency. Ctrl-C finishes the buffered data and "
                    "flushes the outputs.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--seedlink", metavar="HOST:PORT", help="SeedLink server")
    where.add_argument("--replay", nargs="+", metavar="FILES_OR_SDS",
                       help="MiniSEED files/folders or an SDS root, replayed in record order")
    parser.add_argument("--streams", help='NET.STA.LOC.CHA list, e.g. "CX.PB01..HH?,CX.PB02..HH?"')
    parser.add_argument("--model", default="feq3", help="feq3, feq2, feq1, leqnet, eqtransformer or module:Class")
    parser.add_argument("--weights", default="default",
                        help="pretrained name, SeisBench weight file, Keras .h5 (eqtransformer) or 'random'")
    parser.add_argument("--out", default="picks.csv", help="CSV of picks (appended)")
    parser.add_argument("--quakeml-dir", help="write one QuakeML file per detected event here")
    parser.add_argument("--plot-dir", help="write a per-station figure here, every --plot-interval s")
    parser.add_argument("--plot-interval", type=float, default=60.0)
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed (1 = real time, 0 = no waiting)")
    parser.add_argument("--start", help="replay start time (needed for SDS)")
    parser.add_argument("--end", help="replay end time (needed for SDS)")
    parser.add_argument("--step", type=float, help="seconds of data between model calls (default: one stride)")
    parser.add_argument("--duration", type=float, help="stop after this many wall seconds")
    parser.add_argument("--silence-timeout", type=float, default=120.0,
                        help="flush a station after this many seconds without data")
    parser.add_argument("--P-threshold", dest="P_threshold", type=float)
    parser.add_argument("--S-threshold", dest="S_threshold", type=float)
    parser.add_argument("--detection-threshold", dest="detection_threshold", type=float)
    parser.add_argument("--netto", type=float, default=60.0, help="SeedLink network timeout (s)")
    parser.add_argument("--keepalive", type=float, default=20.0, help="SeedLink keep-alive interval (s, 0: off)")
    parser.add_argument("--backoff-max", type=float, default=60.0, help="longest wait between reconnects (s)")
    parser.add_argument("--statefile", help="SeedLink state file (resume across restarts)")
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.set_defaults(func=_cli)
