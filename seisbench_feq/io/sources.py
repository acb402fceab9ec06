"""Where waveforms come from: one :class:`WaveformSource` for SDS archives, MiniSEED files and replays.

Both the archive picker (``seisbench-feq pick``) and the real-time picker's replay
(``seisbench-feq realtime --replay``) read through these classes:

- :class:`SDSSource`: an SDS tree read with ObsPy's :class:`obspy.clients.filesystem.sds.Client`
  (its own file-name template and lookup: no hand-written SDS paths);
- :class:`MiniSEEDSource`: MiniSEED files of any length and content (a folder, a glob, a list),
  their headers indexed once;
- :func:`replay_records`: the records of any source, in the order a digitiser would have sent
  them (by end time), for a replay.

Rules every source follows, so that a hostile or broken file cannot hang or flood a job:

- only regular files are opened: a FIFO or device named ``*.mseed`` is skipped with a warning;
- ObsPy's per-record ``InternalMSEEDWarning`` floods are collapsed into one note per file with
  a count (:func:`read_miniseed`), and a file that decoded garbage is named;
- channel codes are upper-cased (the one rule of :func:`normalise_codes`).
"""

from __future__ import annotations

import fnmatch
import glob
import json
import logging
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from .files import atomic_write_text

if TYPE_CHECKING:
    import obspy

logger = logging.getLogger(__name__)

# Extensions that are certainly not waveform files when a whole directory is scanned.
NON_WAVEFORM_SUFFIXES = {".txt", ".md", ".json", ".jsonl", ".csv", ".xml", ".py", ".yaml",
                         ".yml", ".parquet", ".log", ".png", ".pdf", ".html", ".tmp", ".lock"}
_SDS_FILE_GLOB = "[0-9][0-9][0-9][0-9]/*/*/*.*/*.*.*.*.*.[0-9][0-9][0-9][0-9].[0-9][0-9][0-9]"


class SourceError(ValueError):
    """A source cannot be opened (no such path, nothing readable); the message names the path."""


class SourceReadError(RuntimeError):
    """Data cannot be read from one file of a source; the message names the file."""


# --------------------------------------------------------------------------------------------
# Small shared rules
# --------------------------------------------------------------------------------------------

def is_regular_file(path: str | os.PathLike) -> bool:
    """True for a regular file (or a link to one). FIFOs, sockets and devices would block or
    stream forever when read, so no source ever opens them."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def normalise_codes(stream: "obspy.Stream") -> "obspy.Stream":
    """Upper-case every channel code in place (``hhz`` -> ``HHZ``), as ``classify`` does, and
    replace a ``.`` inside any code by ``_`` (a dot would make ``NET.STA.LOC.CHA`` ambiguous).

    Used until the one stream cleaner of :mod:`seisbench_feq.models.preprocessing` lands, so that
    ``pick`` and ``realtime`` follow the same rule as ``classify``.
    """
    for tr in stream:
        stats = tr.stats
        if stats.channel != stats.channel.upper():
            stats.channel = stats.channel.upper()
        for key in ("network", "station", "location", "channel"):
            if "." in stats[key]:
                stats[key] = stats[key].replace(".", "_")
    return stream


def trace_codes(tr) -> tuple[str, str, str, str]:
    """``(net, sta, loc, cha)`` of a trace after :func:`normalise_codes`."""
    s = tr.stats
    return s.network, s.station, s.location, s.channel


def select_exact(stream, net: str, sta: str, loc: str, channels) -> list:
    """Traces with exactly these codes (no wildcards: a station ``a*b`` is not a pattern)."""
    wanted = set(channels)
    return [tr for tr in stream if trace_codes(tr)[:3] == (net, sta, loc) and tr.stats.channel in wanted]


def truncation_note(path: str) -> str | None:
    """MiniSEED files are whole records; a partial trailing record means the file was cut off."""
    from obspy.io.mseed.util import get_record_information

    try:
        reclen = get_record_information(path)["record_length"]
        size = os.path.getsize(path)
    except Exception:
        return None
    if reclen and size % reclen:
        return (f"{path}: truncated MiniSEED ({size % reclen} bytes of a partial last "
                f"{reclen}-byte record); the readable part was used")
    return None


def read_miniseed(path: str, **kwargs) -> tuple["obspy.Stream", str | None]:
    """``obspy.read(path, format="MSEED", **kwargs)`` with ObsPy's warnings collected.

    Returns ``(stream, error)``; ``error`` names the file and counts the warnings when libmseed
    complained about its records (garbage records were skipped or decoded as garbage), so that a
    caller reports the file once instead of thousands of ``InternalMSEEDWarning`` lines.
    Raises :class:`SourceReadError` (naming the file) when the file cannot be read at all.
    """
    import obspy

    if not is_regular_file(path):
        raise SourceReadError(f"{path} is not a regular file (a FIFO or device?); not opened")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            st = obspy.read(path, format="MSEED", **kwargs)
        except Exception as exc:  # ObsPy raises several types for a broken file
            raise SourceReadError(f"unreadable MiniSEED file {path}: "
                                  f"{type(exc).__name__}: {exc}") from None
    problems = [w for w in caught if "MSEED" in type(w.message).__name__.upper()
                or "mseed" in str(w.message).lower() or "record" in str(w.message).lower()]
    # a cut-off last record is reported once, as a truncation note (truncation_note)
    problems = [w for w in problems if "Unexpected end of file" not in str(w.message)]
    for w in caught:
        if w not in problems:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    error = None
    if problems:
        first = str(problems[0].message).strip().splitlines()[0][:200]
        error = (f"{path}: {len(problems)} MiniSEED decoding warning(s) "
                 f"({type(problems[0].message).__name__}: {first})")
    return st, error


def station_matches(station: str, patterns: Sequence[str] | None) -> bool:
    """``station`` is ``NET.STA.LOC``; a pattern ``NET.STA`` matches any location."""
    if not patterns:
        return True
    net_sta = ".".join(station.split(".")[:2])
    return any(fnmatch.fnmatchcase(station, p) or fnmatch.fnmatchcase(net_sta, p) for p in patterns)


def intervals_union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


@dataclass
class ReadResult:
    """What :meth:`WaveformSource.read` returns: the traces, notes, and decoding errors."""

    stream: "obspy.Stream"
    notes: list[str]
    errors: list[str]  # files that decoded garbage (named, with a count): "done with errors"

    def __iter__(self):  # ``st, notes = source.read(...)`` keeps working
        return iter((self.stream, self.notes))


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------

class WaveformSource:
    """Where a job reads waveforms. Subclasses must be picklable (they are sent to Dask workers)."""

    kind = "abstract"

    def stations(self) -> list[str]:
        """All ``NET.STA.LOC`` codes of the source."""
        raise NotImplementedError

    def data_span(self, stations: Sequence[str]):
        """``(first sample time, end of last sample)`` over ``stations``, or None without data."""
        raise NotImplementedError

    def read(self, station: str, band: str, starttime, endtime) -> ReadResult:
        """Traces of ``station`` whose channel starts with ``band`` (any case) in
        [starttime, endtime] with upper-cased channel codes. Raises :class:`SourceReadError` for
        unreadable files, naming the file."""
        raise NotImplementedError

    def coverage(self, station: str) -> list[tuple[int, int]] | None:
        """Where ``station`` may have data, as merged ``(start_ns, end_ns)`` intervals from the
        file layout or index (cheap, no data read); None when unknown."""
        return None

    def problems(self) -> list[dict]:
        """Input files that could not be used at all (``{"file", "reason"}``), for the report."""
        return []

    def files(self) -> list[str]:
        """Every waveform file of the source (for a replay)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# SDS
# --------------------------------------------------------------------------------------------

class SDSSource(WaveformSource):
    """An SDS archive, read with :class:`obspy.clients.filesystem.sds.Client`."""

    kind = "sds"

    def __init__(self, root: str | os.PathLike, sds_type: str = "D"):
        self.root = str(Path(root).resolve())
        self.sds_type = sds_type
        self._nslc: list[tuple[str, str, str, str]] | None = None
        self._client = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_client"] = None  # rebuilt lazily in each process
        return state

    @staticmethod
    def looks_like_sds(path: str | os.PathLike) -> bool:
        path = Path(path)
        return path.is_dir() and next(glob.iglob(str(path / _SDS_FILE_GLOB)), None) is not None

    @property
    def client(self):
        if self._client is None:
            from obspy.clients.filesystem.sds import Client

            self._client = Client(self.root, sds_type=self.sds_type)
        return self._client

    def _all_nslc(self):
        if self._nslc is None:
            self._nslc = self.client.get_all_nslc(sds_type=self.sds_type)
        return self._nslc

    def stations(self) -> list[str]:
        return sorted({f"{n}.{s}.{l}" for n, s, l, _ in self._all_nslc()})

    def channels(self, station: str) -> list[str]:
        return sorted({c for n, s, l, c in self._all_nslc() if f"{n}.{s}.{l}" == station})

    def _day_files(self, station: str, channel: str = "*") -> list[str]:
        net, sta, loc = station.split(".")
        # the client's own file name template, with any year and day
        template = re.sub(r"\{(year|doy)(:[^}]*)?\}", "*", self.client.FMTSTR)
        pattern = template.format(network=net, station=sta, location=loc, channel=channel,
                                  sds_type=self.sds_type)
        return sorted(glob.glob(os.path.join(self.root, pattern)))

    def files(self) -> list[str]:
        return sorted(f for s in self.stations() for f in self._day_files(s))

    def data_span(self, stations):
        starts, ends = [], []
        for station in stations:
            by_day = sorted(self._day_files(station), key=lambda f: f.rsplit(".", 2)[-2:])
            if not by_day:
                continue
            ends_of = {tuple(by_day[0].rsplit(".", 2)[-2:]), tuple(by_day[-1].rsplit(".", 2)[-2:])}
            for f in by_day:
                if tuple(f.rsplit(".", 2)[-2:]) not in ends_of:
                    continue
                try:
                    st, _ = read_miniseed(f, headonly=True)
                except SourceReadError as exc:
                    logger.warning("%s; span guessed from the other files", exc)
                    continue
                starts += [tr.stats.starttime for tr in st]
                ends += [tr.stats.endtime + tr.stats.delta for tr in st]
        if not starts:
            return None
        return min(starts), max(ends)

    def coverage(self, station):
        from obspy import UTCDateTime

        days = []
        for f in self._day_files(station):
            year, doy = f.rsplit(".", 2)[-2:]
            t = UTCDateTime(year=int(year), julday=int(doy))
            # day files may hold a few samples of the neighbouring days: widen by a minute
            days.append(((t - 60).ns, (t + 86400 + 60).ns))
        return [(int(a), int(b)) for a, b in intervals_union(days)]

    def read(self, station, band, starttime, endtime):
        import obspy

        net, sta, loc = station.split(".")
        wanted = {c for c in self.channels(station) if c.upper().startswith(band.upper())}
        patterns = sorted({f"{c[:-1]}?" for c in wanted}) or [f"{band}?"]
        st, notes, errors = obspy.Stream(), [], []
        for channel in patterns:
            # the client's own file lookup (what get_waveforms reads); each file is then read
            # as get_waveforms does, but one by one, so that a broken file can be named, a FIFO
            # skipped and ObsPy's warnings collapsed per file
            files = sorted(self.client._get_filenames(net, sta, loc, channel, starttime, endtime,
                                                      sds_type=self.sds_type))
            for f in files:
                if not os.path.exists(f):
                    continue
                notes += [n for n in [truncation_note(f)] if n]
                part, error = read_miniseed(f, starttime=starttime, endtime=endtime,
                                            sourcename=f"{net}.{sta}.{loc}.{channel}")
                if error:
                    errors.append(error)
                st.extend([tr for tr in normalise_codes(part) if trace_codes(tr)[:3] == (net, sta, loc)
                           and tr.stats.channel.startswith(channel[:-1].upper())])
        st.trim(starttime, endtime)
        return ReadResult(st, notes, errors)

    def describe(self) -> str:
        return f"SDS archive {self.root}"


# --------------------------------------------------------------------------------------------
# MiniSEED files
# --------------------------------------------------------------------------------------------

@dataclass
class _FileEntry:
    path: str
    trace_id: str  # NET.STA.LOC.CHA as in the file (any case)
    start_ns: int
    end_ns: int

    @property
    def station(self) -> str:
        return self.trace_id.rsplit(".", 1)[0]

    @property
    def channel(self) -> str:
        return self.trace_id.rsplit(".", 1)[1]


class MiniSEEDSource(WaveformSource):
    """MiniSEED files of any length and content (hourly, daily, multi-station): a directory
    (scanned recursively), a glob pattern, or a list of files. Headers are scanned once; a scan
    cache (``index_cache``) makes reruns cheap."""

    kind = "miniseed"

    def __init__(self, inputs: str | os.PathLike | Sequence[str | os.PathLike],
                 index_cache: str | os.PathLike | None = None, progress: bool = False):
        self.inputs = ([str(inputs)] if isinstance(inputs, (str, os.PathLike))
                       else list(map(str, inputs)))
        self._entries: list[_FileEntry] = []
        self._problems: list[dict] = []
        self._truncated: dict[str, str] = {}
        self._errors: dict[str, str] = {}
        self._scan(self._list_files(), index_cache, progress)

    def _skip_special(self, path: str) -> None:
        reason = "not a regular file (a FIFO, socket or device): not opened"
        logger.warning("skipping input %s: %s", path, reason)
        self._problems.append({"file": path, "reason": reason})

    def _list_files(self) -> list[str]:
        files: set[str] = set()
        for item in self.inputs:
            path = Path(item)
            if path.is_dir():
                for root, dirs, names in os.walk(path):
                    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                    for name in names:
                        if name.startswith(".") or Path(name).suffix.lower() in NON_WAVEFORM_SUFFIXES:
                            continue
                        full = os.path.join(root, name)
                        if is_regular_file(full):
                            files.add(full)
                        else:
                            self._skip_special(full)
            elif is_regular_file(path):
                files.add(str(path))
            elif path.exists():
                self._skip_special(str(path))
            else:
                matches = glob.glob(item, recursive=True)
                for m in matches:
                    if is_regular_file(m):
                        files.add(m)
                    elif not os.path.isdir(m):
                        self._skip_special(m)
                if not matches:
                    raise SourceError(f"archive input {item!r} is neither a directory, a file "
                                      "nor a glob pattern matching any file")
        return sorted(str(Path(f).resolve()) for f in files)

    def _scan(self, files, index_cache, progress):
        from tqdm.auto import tqdm

        cache_path = Path(index_cache) if index_cache else None
        cache = {}
        if cache_path and cache_path.exists():
            try:
                cache = json.loads(cache_path.read_text())
            except ValueError:
                cache = {}
        new_cache = {}
        for f in tqdm(files, desc="scanning MiniSEED headers", unit="file", disable=not progress):
            st_ = os.stat(f)
            signature = [st_.st_size, st_.st_mtime_ns]
            cached = cache.get(f)
            if cached and cached.get("sig") == signature and cached.get("version") == 2:
                record = cached
            else:
                record = {"sig": signature, "traces": [], "error": None, "truncated": None,
                          "decode_error": None, "version": 2}
                try:
                    st, record["decode_error"] = read_miniseed(f, headonly=True)
                    normalise_codes(st)
                    spans: dict[str, list[int]] = {}
                    for tr in st:
                        a, b = tr.stats.starttime.ns, (tr.stats.endtime + tr.stats.delta).ns
                        s = spans.setdefault(tr.id, [a, b])
                        s[0], s[1] = min(s[0], a), max(s[1], b)
                    record["traces"] = [[i, a, b] for i, (a, b) in sorted(spans.items())]
                    record["truncated"] = truncation_note(f)
                except SourceReadError as exc:
                    record["error"] = str(exc).replace(f" file {f}", "")
            new_cache[f] = record
            if record["error"]:
                self._problems.append({"file": f, "reason": record["error"]})
                logger.error("skipping input file %s: %s", f, record["error"])
                continue
            if record["truncated"]:
                self._truncated[f] = record["truncated"]
                logger.warning("%s", record["truncated"])
            if record["decode_error"]:
                self._errors[f] = record["decode_error"]
            self._entries += [_FileEntry(f, i, a, b) for i, a, b in record["traces"]]
        if cache_path:
            atomic_write_text(cache_path, json.dumps(new_cache, indent=2, sort_keys=True) + "\n")

    def stations(self):
        return sorted({e.station for e in self._entries})

    def files(self) -> list[str]:
        return sorted({e.path for e in self._entries})

    def data_span(self, stations):
        from obspy import UTCDateTime

        wanted = set(stations)
        sel = [e for e in self._entries if e.station in wanted]
        if not sel:
            return None
        return (UTCDateTime(ns=min(e.start_ns for e in sel)),
                UTCDateTime(ns=max(e.end_ns for e in sel)))

    def subset(self, station: str, starttime, endtime) -> "MiniSEEDSource":
        """A copy holding only what one unit reads (small to send to a worker)."""
        a, b = starttime.ns, endtime.ns
        sub = object.__new__(MiniSEEDSource)
        sub.inputs = self.inputs
        sub._entries = [e for e in self._by_station().get(station, [])
                        if e.start_ns <= b and e.end_ns >= a]
        files = {e.path for e in sub._entries}
        sub._truncated = {f: n for f, n in self._truncated.items() if f in files}
        sub._errors = {f: n for f, n in self._errors.items() if f in files}
        sub._problems = []
        return sub

    def _by_station(self) -> dict[str, list[_FileEntry]]:
        if getattr(self, "_station_index", None) is None:
            self._station_index: dict[str, list[_FileEntry]] = {}
            for e in self._entries:
                self._station_index.setdefault(e.station, []).append(e)
        return self._station_index

    def read(self, station, band, starttime, endtime):
        import obspy

        a, b = starttime.ns, endtime.ns
        entries = [e for e in self._by_station().get(station, [])
                   if e.channel.upper().startswith(band.upper())
                   and e.start_ns <= b and e.end_ns >= a]
        files = sorted({e.path for e in entries})
        channels = sorted({e.channel for e in entries})
        st = obspy.Stream()
        notes = [self._truncated[f] for f in files if f in self._truncated]
        errors = []
        net, sta, loc = station.split(".")
        for f in files:
            part, error = read_miniseed(f, starttime=starttime, endtime=endtime)
            if error or f in self._errors:
                errors.append(error or self._errors[f])
            st.extend(select_exact(normalise_codes(part), net, sta, loc, channels))
        st.trim(starttime, endtime)
        return ReadResult(st, notes, errors)

    def coverage(self, station):
        return [(int(a), int(b)) for a, b in intervals_union(
            (e.start_ns, e.end_ns) for e in self._by_station().get(station, []))]

    def problems(self):
        return list(self._problems)

    def describe(self) -> str:
        return f"MiniSEED files {', '.join(self.inputs)}"


def open_source(inputs, index_cache=None, progress=False) -> WaveformSource:
    """An SDS archive when ``inputs`` is a directory with the SDS layout, MiniSEED files otherwise
    (a directory, a glob pattern, a file or a list of them). A :class:`WaveformSource` passes."""
    if isinstance(inputs, WaveformSource):
        return inputs
    if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
        inputs = inputs[0]
    if isinstance(inputs, (str, os.PathLike)) and SDSSource.looks_like_sds(inputs):
        return SDSSource(inputs)
    return MiniSEEDSource(inputs, index_cache=index_cache, progress=progress)


# --------------------------------------------------------------------------------------------
# Replay
# --------------------------------------------------------------------------------------------

def replay_records(source: WaveformSource, *, start=None, end=None, stations=None,
                   record_seconds: float = 10.0) -> Iterator["obspy.Trace"]:
    """The data of ``source`` as records in the order a digitiser sends them (by end time).

    Each station's data is read one ``record_seconds`` slab at a time through
    :meth:`WaveformSource.read` (so memory stays bounded whatever the archive length) and cut
    into pieces of about ``record_seconds``; pieces of all channels are merged by end time.
    ``start``/``end`` default to the source's data span (as ``pick`` does).
    """
    import heapq

    import obspy
    from obspy import UTCDateTime

    selected = [s for s in source.stations() if station_matches(s, stations)]
    if not selected:
        raise SourceError(f"{source.describe()}: no station matches {stations}")
    span = source.data_span(selected)
    if span is None:
        raise SourceError(f"{source.describe()} holds no readable data")
    t0 = UTCDateTime(start) if start is not None else span[0]
    t1 = UTCDateTime(end) if end is not None else span[1]
    slab = max(record_seconds * 30, 600.0)  # read ten minutes at a time, cut into records

    def pieces(station):
        a = t0
        while a < t1:
            b = min(a + slab, t1)
            result = source.read(station, "", a, b)
            for error in result.errors:
                logger.warning("%s", error)
            traces = []
            for tr in result.stream.split():
                tr.trim(a, b - 1e-6, nearest_sample=False)  # [a, b): each sample once
                n = max(int(round(record_seconds * tr.stats.sampling_rate)), 1)
                codes = {k: tr.stats[k] for k in ("network", "station", "location", "channel",
                                                  "sampling_rate")}
                for i in range(0, tr.stats.npts, n):
                    traces.append(obspy.Trace(tr.data[i:i + n].copy(), header=dict(
                        codes, starttime=tr.stats.starttime + i * tr.stats.delta)))
            traces.sort(key=lambda tr: (tr.stats.endtime.timestamp, tr.id))
            for tr in traces:
                yield tr.stats.endtime.timestamp + tr.stats.delta, tr.id, tr
            a = b

    for _, _, trace in heapq.merge(*(pieces(s) for s in selected), key=lambda x: (x[0], x[1])):
        yield trace
