"""Batch picking of MiniSEED / SDS archives: resumable, bounded memory, scales out on Dask.

A job is split into independent *work units*: one station (``NET.STA.LOC``) x one time chunk
(default one day). Each unit

1. reads its chunk plus a border pad (one model window + blinding + a margin) on both sides,
   through ObsPy's SDS client or from indexed MiniSEED files;
2. cleans the stream (channel band by priority, overlaps, gaps, NaN, mixed rates; every fix is
   noted in the report);
3. runs ``model.classify`` over sub-spans of at most ``classify_span`` (this bounds memory, whatever
   the chunk length), each read with the same pad, its start snapped to the model's window-step
   grid so that every span sees exactly the windows a single run over the whole archive would;
4. keeps only picks whose peak time lies in ``[span_start, span_end)``: every pick belongs to
   exactly one unit, none is lost or doubled at borders;
5. writes its picks (and optionally detections) atomically (temporary file + ``os.replace``).

The driver records each finished unit in ``manifest.jsonl``; a rerun of the same command skips
those, so a job killed at any moment finishes the rest and ends with output identical to an
uninterrupted run. Units run in-process (``workers=0``), on a ``distributed.LocalCluster`` or on
any existing Dask cluster (``scheduler=ADDRESS``); results are gathered as they finish.

Output folder::

    OUT/run.json                 settings of the job (a rerun with other settings is refused)
    OUT/manifest.jsonl           one line per finished (or failed) unit
    OUT/units/<station>/<station>.<YYYYmmddTHHMMSS>.picks.csv   per-unit outputs
    OUT/picks.csv                merged picks of all units of the job (.parquet with format="parquet")
    OUT/detections.csv           merged detections (with detections=True)
    OUT/report.json, report.md   units done/skipped/failed with reasons, data hours, picks per
                                 station, throughput
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # heavy imports stay out of `seisbench-feq --help`
    import obspy
    import pandas as pd
    from seisbench.models import WaveformModel

logger = logging.getLogger(__name__)

#: Band/instrument codes tried in this order for each unit; the first with data is used.
DEFAULT_CHANNEL_PRIORITY = ("HH", "BH", "EH", "SH", "HN", "EN")
#: Model names accepted by ``--model`` (besides ``module:Class``).
MODEL_NAMES = ("feq3", "feq2", "feq1", "leqnet", "eqtransformer")
#: Seed used for ``weights="random"`` so that reruns (resume) use identical weights.
RANDOM_WEIGHTS_SEED = 0
PICK_COLUMNS = [
    "station", "phase", "time", "probability", "uncertainty", "start_time", "end_time",
    "model", "weights",
]
DETECTION_COLUMNS = ["station", "start_time", "end_time", "probability", "model", "weights"]
# Extensions that are certainly not waveform files when a whole directory is scanned.
_NON_WAVEFORM_SUFFIXES = {".txt", ".md", ".json", ".jsonl", ".csv", ".xml", ".py", ".yaml",
                          ".yml", ".parquet", ".log", ".png", ".pdf", ".html", ".tmp"}
_SDS_FILE_GLOB = "[0-9][0-9][0-9][0-9]/*/*/*.*/*.*.*.*.*.[0-9][0-9][0-9][0-9].[0-9][0-9][0-9]"


class ArchiveError(ValueError):
    """A job cannot start: bad archive path, bad settings, or an output folder from another job."""


class UnitInputError(RuntimeError):
    """The data of one unit cannot be read (e.g. a corrupt MiniSEED file); the unit fails."""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

def parse_duration(value: str | float | int) -> float:
    """Seconds from ``"1d"``, ``"6h"``, ``"30min"``, ``"90s"`` or a plain number of seconds."""
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(d|h|min|m|s)?\s*", str(value))
        if not match:
            raise ArchiveError(f"cannot parse duration {value!r}; use e.g. 1d, 6h, 30min, 90s")
        unit = match.group(2) or "s"
        seconds = float(match.group(1)) * {"d": 86400, "h": 3600, "min": 60, "m": 60, "s": 1}[unit]
    if seconds <= 0:
        raise ArchiveError(f"duration must be positive, got {value!r}")
    return seconds


def _utc(value) -> "obspy.UTCDateTime | None":
    from obspy import UTCDateTime

    if value is None:
        return None
    try:
        return UTCDateTime(value)
    except Exception as exc:  # ObsPy raises TypeError/ValueError depending on the input
        raise ArchiveError(f"cannot parse time {value!r}: {exc}") from None


def _floor_to(t: "obspy.UTCDateTime", step: float) -> "obspy.UTCDateTime":
    """Largest multiple of ``step`` seconds since the epoch that is <= t (exact for integer steps)."""
    from obspy import UTCDateTime

    ns = t.ns
    step_ns = int(round(step * 1e9))
    return UTCDateTime(ns=(ns // step_ns) * step_ns)


def _iso(t: "obspy.UTCDateTime") -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(path: Path, obj) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def _intervals_union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _overlap_s(intervals, a: float, b: float) -> float:
    return sum(max(0.0, min(y, b) - max(x, a)) for x, y in intervals)


def _station_matches(station: str, patterns: Sequence[str] | None) -> bool:
    """``station`` is ``NET.STA.LOC``; a pattern ``NET.STA`` matches any location."""
    if not patterns:
        return True
    net_sta = ".".join(station.split(".")[:2])
    return any(fnmatch.fnmatchcase(station, p) or fnmatch.fnmatchcase(net_sta, p) for p in patterns)


# --------------------------------------------------------------------------------------------
# Waveform sources
# --------------------------------------------------------------------------------------------

class WaveformSource:
    """Where a job reads waveforms. Subclasses must be picklable (they are sent to Dask workers)."""

    kind = "abstract"

    def stations(self) -> list[str]:
        """All ``NET.STA.LOC`` codes of the archive."""
        raise NotImplementedError

    def data_span(self, stations: Sequence[str]):
        """``(first sample time, end of last sample)`` over ``stations``, or None without data."""
        raise NotImplementedError

    def read(self, station: str, band: str, starttime, endtime) -> tuple["obspy.Stream", list[str]]:
        """Traces of ``station`` whose channel starts with ``band`` in [starttime, endtime], plus
        notes on the input files (e.g. truncation). Raises :class:`UnitInputError` for unreadable
        files, naming the file."""
        raise NotImplementedError

    def coverage(self, station: str) -> list[tuple[int, int]] | None:
        """Where ``station`` may have data, as merged ``(start_ns, end_ns)`` intervals from the
        file layout or index (cheap, no data read); None when unknown. Chunks outside are not
        planned as units (they are counted in the report instead)."""
        return None

    def problems(self) -> list[dict]:
        """Input files that could not be used at all (``{"file", "reason"}``), for the report."""
        return []

    def describe(self) -> str:
        raise NotImplementedError


def _truncation_note(path: str) -> str | None:
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


class SDSSource(WaveformSource):
    """An SDS archive (``YEAR/NET/STA/CHAN.TYPE/NET.STA.LOC.CHAN.TYPE.YEAR.DAY``), read with
    :class:`obspy.clients.filesystem.sds.Client`."""

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

    def _files(self, station: str, channel: str = "*") -> list[str]:
        net, sta, loc = station.split(".")
        # the client's file name template, with any year and day
        template = re.sub(r"\{(year|doy)(:[^}]*)?\}", "*", self.client.FMTSTR)
        pattern = template.format(network=net, station=sta, location=loc, channel=channel,
                                  sds_type=self.sds_type)
        return sorted(glob.glob(os.path.join(self.root, pattern)))

    def data_span(self, stations):
        import obspy

        starts, ends = [], []
        for station in stations:
            files = self._files(station)
            if not files:
                continue
            # SDS day files sort by (year, day) through their names' last two fields
            by_day = sorted(files, key=lambda f: f.rsplit(".", 2)[-2:])
            first_day, last_day = by_day[0].rsplit(".", 2)[-2:], by_day[-1].rsplit(".", 2)[-2:]
            for f in by_day:
                day = f.rsplit(".", 2)[-2:]
                if day not in (first_day, last_day):
                    continue
                try:
                    st = obspy.read(f, headonly=True)
                except Exception as exc:
                    logger.warning("cannot read header of %s (%s); span guessed from others", f, exc)
                    continue
                starts += [tr.stats.starttime for tr in st]
                ends += [tr.stats.endtime + tr.stats.delta for tr in st]
        if not starts:
            return None
        return min(starts), max(ends)

    def coverage(self, station):
        from obspy import UTCDateTime

        days = []
        for f in self._files(station):
            year, doy = f.rsplit(".", 2)[-2:]
            t = UTCDateTime(year=int(year), julday=int(doy))
            # day files may hold a few samples of the neighbouring days: widen by a minute
            days.append(((t - 60).ns, (t + 86400 + 60).ns))
        return [(int(a), int(b)) for a, b in _intervals_union(days)]

    def read(self, station, band, starttime, endtime):
        import obspy

        net, sta, loc = station.split(".")
        channel = f"{band}?"
        # the client's own file lookup (private, hence guarded): to check the files for
        # truncation and to name a corrupt one
        find = getattr(self.client, "_get_filenames", None)
        files = sorted(find(net, sta, loc, channel, starttime, endtime)) if find else []
        notes = [n for n in map(_truncation_note, files) if n]
        try:
            st = self.client.get_waveforms(net, sta, loc, channel, starttime, endtime, merge=False)
        except Exception as exc:
            # The client does not say which file failed: find it, so the report can name it.
            for f in files:
                try:
                    obspy.read(f, format=self.client.format, headonly=True)
                except Exception as file_exc:
                    raise UnitInputError(f"unreadable MiniSEED file {f}: "
                                         f"{type(file_exc).__name__}: {file_exc}") from None
            raise UnitInputError(f"reading {station} {channel} from SDS {self.root} failed: "
                                 f"{type(exc).__name__}: {exc}") from None
        return st, notes

    def describe(self) -> str:
        return f"SDS archive {self.root}"


@dataclass
class _FileEntry:
    path: str
    trace_id: str  # NET.STA.LOC.CHA
    start_ns: int
    end_ns: int


class MiniSEEDSource(WaveformSource):
    """MiniSEED files of any length and content (hourly, daily, multi-station): a directory
    (scanned recursively), a glob pattern, or a list of files. Headers are scanned once; a scan
    cache (``index_cache``) makes reruns cheap."""

    kind = "miniseed"

    def __init__(self, inputs: str | os.PathLike | Sequence[str | os.PathLike],
                 index_cache: str | os.PathLike | None = None, progress: bool = False):
        self.inputs = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else list(map(str, inputs))
        self._entries: list[_FileEntry] = []
        self._problems: list[dict] = []
        self._truncated: dict[str, str] = {}
        self._scan(self._list_files(), index_cache, progress)

    def _list_files(self) -> list[str]:
        files: set[str] = set()
        for item in self.inputs:
            path = Path(item)
            if path.is_dir():
                for root, dirs, names in os.walk(path):
                    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                    files.update(os.path.join(root, n) for n in names if not n.startswith(".")
                                 and Path(n).suffix.lower() not in _NON_WAVEFORM_SUFFIXES)
            elif path.is_file():
                files.add(str(path))
            else:
                matches = [m for m in glob.glob(item, recursive=True) if os.path.isfile(m)]
                if not matches:
                    raise ArchiveError(f"archive input {item!r} is neither a directory, a file "
                                       "nor a glob pattern matching any file")
                files.update(matches)
        return sorted(str(Path(f).resolve()) for f in files)

    def _scan(self, files, index_cache, progress):
        import obspy
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
            stat = os.stat(f)
            signature = [stat.st_size, stat.st_mtime_ns]
            cached = cache.get(f)
            if cached and cached["sig"] == signature:
                record = cached
            else:
                record = {"sig": signature, "traces": [], "error": None, "truncated": None}
                try:
                    st = obspy.read(f, headonly=True, format="MSEED")
                    spans: dict[str, list[int]] = {}
                    for tr in st:
                        a, b = tr.stats.starttime.ns, (tr.stats.endtime + tr.stats.delta).ns
                        s = spans.setdefault(tr.id, [a, b])
                        s[0], s[1] = min(s[0], a), max(s[1], b)
                    record["traces"] = [[i, a, b] for i, (a, b) in sorted(spans.items())]
                    record["truncated"] = _truncation_note(f)
                except Exception as exc:
                    record["error"] = f"unreadable MiniSEED: {type(exc).__name__}: {exc}"
            new_cache[f] = record
            if record["error"]:
                self._problems.append({"file": f, "reason": record["error"]})
                logger.error("skipping input file %s: %s", f, record["error"])
                continue
            if record["truncated"]:
                self._truncated[f] = record["truncated"]
                logger.warning("%s", record["truncated"])
            self._entries += [_FileEntry(f, i, a, b) for i, a, b in record["traces"]]
        if cache_path:
            _write_json(cache_path, new_cache)

    def stations(self):
        return sorted({e.trace_id.rsplit(".", 1)[0] for e in self._entries})

    def data_span(self, stations):
        from obspy import UTCDateTime

        wanted = set(stations)
        sel = [e for e in self._entries if e.trace_id.rsplit(".", 1)[0] in wanted]
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
        sub._problems = []
        return sub

    def _by_station(self) -> dict[str, list[_FileEntry]]:
        if getattr(self, "_station_index", None) is None:
            self._station_index: dict[str, list[_FileEntry]] = {}
            for e in self._entries:
                self._station_index.setdefault(e.trace_id.rsplit(".", 1)[0], []).append(e)
        return self._station_index

    def read(self, station, band, starttime, endtime):
        import obspy

        a, b = starttime.ns, endtime.ns
        files = sorted({e.path for e in self._by_station().get(station, [])
                        if e.trace_id.rsplit(".", 1)[1].startswith(band)
                        and e.start_ns <= b and e.end_ns >= a})
        st = obspy.Stream()
        notes = [self._truncated[f] for f in files if f in self._truncated]
        net, sta, loc = station.split(".")
        for f in files:
            try:
                part = obspy.read(f, format="MSEED", starttime=starttime, endtime=endtime,
                                  sourcename=f"{station}.{band}?")
            except Exception as exc:
                raise UnitInputError(f"unreadable MiniSEED file {f}: "
                                     f"{type(exc).__name__}: {exc}") from None
            st += part.select(network=net, station=sta, location=loc, channel=f"{band}?")
        st.trim(starttime, endtime)
        return st, notes

    def coverage(self, station):
        return [(int(a), int(b)) for a, b in _intervals_union(
            (e.start_ns, e.end_ns) for e in self._by_station().get(station, []))]

    def problems(self):
        return list(self._problems)

    def describe(self) -> str:
        return f"MiniSEED files {', '.join(self.inputs)}"


def open_source(archive, index_cache=None, progress=False) -> WaveformSource:
    """An SDS archive when ``archive`` is a directory with the SDS layout, MiniSEED files otherwise."""
    if isinstance(archive, WaveformSource):
        return archive
    if isinstance(archive, (str, os.PathLike)) and SDSSource.looks_like_sds(archive):
        return SDSSource(archive)
    return MiniSEEDSource(archive, index_cache=index_cache, progress=progress)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

def load_model(name: str = "feq3", weights: str | None = "default") -> "WaveformModel":
    """A WaveformModel by name (feq3, feq2, feq1, leqnet, eqtransformer, or ``module:Class``).

    ``weights``: a pretrained name (``"default"`` → ``from_pretrained``), a path to SeisBench weight
    files (``model.pt`` + ``model.json``, passed without or with suffix), a Keras ``.h5`` file for
    ``eqtransformer`` (converted with :func:`seisbench_feq.convert.eqtransformer_from_keras`), or
    ``"random"`` (initialised with a fixed seed: for timing and plumbing only, picks are meaningless).
    """
    import importlib

    import torch

    key = name.lower()
    if key in ("feq3", "feq2", "feq1", "leqnet"):
        cls = importlib.import_module("seisbench_feq").MODELS[key]
    elif key == "eqtransformer":
        from seisbench.models import EQTransformer as cls
    elif ":" in name:
        module, _, attr = name.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    else:
        raise ArchiveError(f"unknown model {name!r}; use one of {', '.join(MODEL_NAMES)} "
                           "or module:Class")

    if weights in (None, "random"):
        logger.warning("model %s with RANDOM weights (seed %d): picks are meaningless; use this "
                       "for timing and plumbing only", name, RANDOM_WEIGHTS_SEED)
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = cls()
        model._archive_weights_label = f"random(seed={RANDOM_WEIGHTS_SEED})"
        return model.eval()
    path = Path(weights)
    if path.suffix == ".h5":
        if key != "eqtransformer":
            raise ArchiveError(f"Keras weights {weights} are only converted here for eqtransformer")
        from seisbench_feq.convert import eqtransformer_from_keras

        model = eqtransformer_from_keras(path)
        model._archive_weights_label = path.name
        return model.eval()
    if path.suffix in (".pt", ".json") or path.with_suffix(".json").exists():
        model = cls.load(str(path.with_suffix("")), map_location="cpu")
        model._archive_weights_label = f"{path.stem}@{model.weights_version}"
        return model.eval()
    try:
        model = cls.from_pretrained(weights)
    except Exception as exc:
        raise ArchiveError(f"cannot load weights {weights!r} for {cls.__name__}: "
                           f"{type(exc).__name__}: {exc}") from None
    model._archive_weights_label = f"{weights}@{model.weights_version}"
    return model.eval()


def weights_label(model) -> str:
    label = getattr(model, "_archive_weights_label", None)
    if label:
        return label
    version = getattr(model, "weights_version", None)
    return f"v{version}" if version else "unnamed"


def weights_fingerprint(model) -> str:
    """Hash of the model's parameters: a resumed job must use exactly the same weights."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class ShippedModel:
    """A model as pickled bytes, unpickled once per worker process.

    Dask serialises ``nn.Module`` objects field by field, which fails on the weak references
    inside PyTorch's RNN modules (FEQ/LEQNet/EQTransformer all have some); ordinary pickling
    goes through ``RNNBase.__getstate__`` and works. cloudpickle also ships classes defined in
    a user's ``__main__`` script.
    """

    _cache: dict[str, object] = {}  # per process: payload digest -> model

    def __init__(self, model):
        try:
            import cloudpickle as pickler
        except ImportError:  # pragma: no cover - cloudpickle comes with dask
            import pickle as pickler
        self.payload = pickler.dumps(model)
        self.digest = hashlib.sha256(self.payload).hexdigest()

    def get(self):
        import pickle

        model = self._cache.get(self.digest)
        if model is None:
            model = pickle.loads(self.payload).eval()
            self._cache.clear()  # one job's model at a time
            self._cache[self.digest] = model
        return model


# --------------------------------------------------------------------------------------------
# Work units and settings
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkUnit:
    """One station x one time chunk ``[start, end)`` (times as ISO strings: picklable, hashable)."""

    station: str
    start: str
    end: str

    @property
    def key(self) -> str:
        return f"{self.station}|{self.start}|{self.end}"

    def file_stem(self) -> str:
        from obspy import UTCDateTime

        return f"{self.station}.{UTCDateTime(self.start).strftime('%Y%m%dT%H%M%S')}"


@dataclass
class PickSettings:
    """Everything a worker needs to process a unit, apart from the model and the source."""

    chunk_s: float
    classify_span_s: float
    pad_s: float
    grid_step_s: float
    window_s: float
    blinding_s: float
    channel_priority: tuple[str, ...]
    classify_kwargs: dict
    output_format: str
    detections: bool
    model_name: str
    weights: str
    torch_threads: int | None = None


@dataclass
class UnitResult:
    station: str
    start: str
    end: str
    status: str  # "done", "skipped" or "failed"
    reason: str = ""
    channels: list[str] = field(default_factory=list)
    data_seconds: float = 0.0
    picks: dict[str, int] = field(default_factory=dict)
    detections: int = 0
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    outputs: list[str] = field(default_factory=list)
    worker: str = ""  # host:pid that processed the unit

    @property
    def key(self) -> str:
        return WorkUnit(self.station, self.start, self.end).key


def border_geometry(model, classify_kwargs: dict,
                    margin_s: float = 30.0) -> tuple[float, float, float, float]:
    """``(window_s, grid_step_s, pad_s, blinding_s)`` for a model.

    Reads start on a grid of the window step (window length minus overlap) so that chunked runs
    place windows exactly where one run over everything would; the pad (one window + blinding +
    margin) makes the probabilities inside a chunk identical to that run's. Picks whose trigger is
    longer than about the margin can still differ at a border (see docs/archive.md).
    """
    args = {**getattr(model, "default_args", {}), **classify_kwargs}
    annotate_args = getattr(model, "_annotate_args", {})

    def arg(key, default):
        return args.get(key, annotate_args.get(key, (None, default))[1])

    if not model.sampling_rate or not model.in_samples:
        raise ArchiveError(f"model {model.name} must define sampling_rate and in_samples")
    sr, n = float(model.sampling_rate), int(model.in_samples)
    overlap = arg("overlap", 0)
    overlap = int(overlap * n) if 0 < overlap < 1 else int(overlap)
    step = n - overlap if 0 < n - overlap <= n else n
    blinding = arg("blinding", (0, 0)) or (0, 0)
    window_s, grid_step_s = n / sr, step / sr
    blinding_s = max(blinding) / sr
    return window_s, grid_step_s, window_s + blinding_s + margin_s, blinding_s


def default_span(source: WaveformSource, stations: Sequence[str], chunk_s: float,
                 blinding_s: float = 0.0):
    """The data's span, its start floored to the chunk grid (multiples of ``chunk_s`` since the
    epoch: midnight for one-day chunks).

    The first and last ``blinding_s`` seconds of data can never carry a pick, so the few samples
    around midnight that SDS day files often hold do not open chunks of their own.
    """
    span = source.data_span(stations)
    if span is None:
        raise ArchiveError(f"{source.describe()} holds no readable data for "
                           f"{', '.join(stations) or 'any station'}; give --start and --end")
    return _floor_to(span[0] + blinding_s, chunk_s), span[1] - blinding_s


def plan_units(stations: Sequence[str], start, end, chunk_s: float,
               coverage: dict[str, list[tuple[int, int]] | None] | None = None,
               min_overlap_s: float = 0.0) -> tuple[list[WorkUnit], dict[str, int]]:
    """Units on a chunk grid anchored at ``start``; the last chunk of a station ends at ``end``.

    With ``coverage`` (station -> data intervals in ns, or None for unknown), chunks that no
    interval overlaps by more than ``min_overlap_s`` (the blinding: a data segment's first and
    last blinding seconds carry no picks) are left out; the second return value counts them per
    station, for the report.
    """
    units, without_data = [], {}
    min_ns = int(min_overlap_s * 1e9)
    for station in stations:
        intervals = (coverage or {}).get(station)
        t = start
        while t < end:
            t1 = min(t + chunk_s, end)
            if intervals is None or any(min(b, t1.ns) - max(a, t.ns) > min_ns
                                        for a, b in intervals):
                units.append(WorkUnit(station, _iso(t), _iso(t1)))
            else:
                without_data[station] = without_data.get(station, 0) + 1
            t = t1
    return units, without_data


# --------------------------------------------------------------------------------------------
# Processing one unit (runs in a Dask worker or in-process)
# --------------------------------------------------------------------------------------------

def _clean_stream(st: "obspy.Stream", model, notes: list[str]) -> "obspy.Stream":
    """Make a stream safe for ``classify``; note every change so nothing is silently lost."""
    import numpy as np
    import obspy

    st = obspy.Stream([tr for tr in st if tr.stats.npts > 0])
    # NaN/inf and masked samples become gaps (SeisBench would turn whole windows around them to NaN)
    for tr in st:
        if np.ma.isMaskedArray(tr.data):
            notes.append(f"{tr.id}: {int(np.ma.count_masked(tr.data))} masked samples treated as gaps")
        elif tr.data.dtype.kind == "f" and not np.isfinite(tr.data).all():
            bad = int((~np.isfinite(tr.data)).sum())
            notes.append(f"{tr.id}: {bad} NaN/inf samples treated as gaps")
            tr.data = np.ma.masked_invalid(tr.data)
    st = st.split()

    other_rates = sorted({tr.stats.sampling_rate for tr in st} - {model.sampling_rate})
    if other_rates:
        notes.append(f"sampling rate(s) {other_rates} Hz resampled to {model.sampling_rate} Hz")
    by_id: dict[str, list] = {}
    for tr in st:
        by_id.setdefault(tr.id, []).append(tr)
    for trace_id, traces in by_id.items():
        rates = {tr.stats.sampling_rate for tr in traces}
        if len(rates) > 1:  # ObsPy cannot merge these: resample with SeisBench's own routine first
            notes.append(f"{trace_id}: mixed sampling rates {sorted(rates)} Hz resampled to "
                         f"{model.sampling_rate} Hz")
            model.resample(obspy.Stream(traces), model.sampling_rate)
        if len({tr.data.dtype for tr in traces}) > 1:
            for tr in traces:
                tr.data = tr.data.astype(np.float64)
        traces.sort(key=lambda tr: tr.stats.starttime)
        overlap, end = 0.0, None
        for tr in traces:
            if end is not None and tr.stats.starttime < end:
                overlap += min(end, tr.stats.endtime) - tr.stats.starttime
            end = tr.stats.endtime if end is None else max(end, tr.stats.endtime)
        if overlap > 0:
            notes.append(f"{trace_id}: overlapping records ({overlap:.2f} s): later record kept")
    # method=1 resolves overlaps deterministically; gaps become masked, split turns them back
    # into separate traces that SeisBench annotates as separate segments.
    st.merge(method=1)
    return st.split()


def _coverage(st, chunk_a: float, chunk_b: float) -> tuple[list, dict[str, float]]:
    """Union of data intervals (epoch s) over all traces, and seconds in the chunk per channel."""
    per_channel: dict[str, list] = {}
    for tr in st:
        a = tr.stats.starttime.timestamp
        b = tr.stats.endtime.timestamp + tr.stats.delta
        per_channel.setdefault(tr.stats.channel, []).append((a, b))
    union = _intervals_union(iv for ivs in per_channel.values() for iv in ivs)
    seconds = {ch: _overlap_s(_intervals_union(ivs), chunk_a, chunk_b)
               for ch, ivs in per_channel.items()}
    return union, seconds


def _picks_frame(picks, settings: PickSettings, t0, t1) -> "pd.DataFrame":
    import numpy as np
    import pandas as pd

    kept = type(picks)([p for p in picks if t0 <= p.peak_time < t1])
    df = kept.to_dataframe()
    if len(df) == 0:
        df = pd.DataFrame({c: pd.Series(dtype=object) for c in PICK_COLUMNS})
    else:
        # to_dataframe's "index" column points back into the list: carry optional uncertainties
        df["uncertainty"] = [getattr(kept[i], "uncertainty", None) for i in df["index"]]
    df["uncertainty"] = pd.to_numeric(df["uncertainty"], errors="coerce").astype(np.float64)
    df["model"], df["weights"] = settings.model_name, settings.weights
    return df[PICK_COLUMNS]


def _detections_frame(detections, settings: PickSettings, t0, t1) -> "pd.DataFrame":
    import pandas as pd

    kept = type(detections)([d for d in detections if t0 <= d.start_time < t1])
    df = kept.to_dataframe()
    if len(df) == 0:
        df = pd.DataFrame({c: pd.Series(dtype=object) for c in DETECTION_COLUMNS})
    df["model"], df["weights"] = settings.model_name, settings.weights
    return df[DETECTION_COLUMNS]


def _normalise_frame(df: "pd.DataFrame", time_columns: Sequence[str], sort: Sequence[str]):
    import pandas as pd

    df = df.copy()
    for col in time_columns:
        df[col] = pd.to_datetime(df[col], utc=True).astype("datetime64[us, UTC]")
    df["probability"] = pd.to_numeric(df["probability"]).astype("float64")
    return df.sort_values(list(sort), kind="mergesort").reset_index(drop=True)


def _write_table(df: "pd.DataFrame", path: Path, fmt: str) -> None:
    if fmt == "parquet":
        _atomic_write(path, lambda p: df.to_parquet(p, index=False))
    else:
        _atomic_write(path, lambda p: df.to_csv(p, index=False))


def _read_table(path: Path, fmt: str, time_columns: Sequence[str]) -> "pd.DataFrame":
    import pandas as pd

    if fmt == "parquet":
        return pd.read_parquet(path)
    df = pd.read_csv(path, dtype={"station": str})
    for col in time_columns:
        df[col] = pd.to_datetime(df[col], utc=True).astype("datetime64[us, UTC]")
    return df


def unit_output_paths(out: Path, unit: WorkUnit, settings: PickSettings) -> dict[str, Path]:
    base = Path(out) / "units" / unit.station / unit.file_stem()
    paths = {"picks": base.with_name(base.name + f".picks.{settings.output_format}")}
    if settings.detections:
        paths["detections"] = base.with_name(base.name + f".detections.{settings.output_format}")
    return paths


def process_unit(unit: WorkUnit, source: WaveformSource, model, settings: PickSettings,
                 out: str | os.PathLike) -> UnitResult:
    """Pick one unit and write its outputs atomically. Never raises for bad data: the returned
    result says ``failed`` with the reason."""
    started = time.perf_counter()
    if isinstance(model, ShippedModel):
        model = model.get()
    result = UnitResult(unit.station, unit.start, unit.end, status="done",
                        worker=f"{socket.gethostname()}:{os.getpid()}")
    try:
        _process_unit(unit, source, model, settings, Path(out), result)
    except UnitInputError as exc:
        result.status, result.reason = "failed", str(exc)
    except Exception as exc:  # a bad unit must not stop the job; the report shows the reason
        logger.exception("unit %s failed", unit.key)
        result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
    result.elapsed_s = time.perf_counter() - started
    return result


def _process_unit(unit, source, model, settings, out, result):
    import torch

    previous = torch.get_num_threads()
    if settings.torch_threads and settings.torch_threads != previous:
        torch.set_num_threads(settings.torch_threads)
    try:
        _pick_unit(unit, source, model, settings, out, result)
    finally:  # a worker living inside the caller's process must not keep our setting
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def _pick_unit(unit, source, model, settings, out, result):
    import obspy

    t0, t1 = obspy.UTCDateTime(unit.start), obspy.UTCDateTime(unit.end)
    read_a = _floor_to(t0 - settings.pad_s, settings.grid_step_s)
    read_b = t1 + settings.pad_s

    st = obspy.Stream()
    for band in settings.channel_priority:
        st, notes = source.read(unit.station, band, read_a, read_b)
        if len(st):
            result.notes += notes
            break
    if not len(st):
        result.status = "skipped"
        result.reason = (f"no data for channels {'/'.join(b + '?' for b in settings.channel_priority)}"
                         f" in {_iso(read_a)} - {_iso(read_b)}")
        return

    st = _clean_stream(st, model, result.notes)
    result.channels = sorted({tr.stats.channel for tr in st})
    union, per_channel = _coverage(st, t0.timestamp, t1.timestamp)
    result.data_seconds = _overlap_s(union, t0.timestamp, t1.timestamp)
    if result.data_seconds <= 0:
        result.status = "skipped"
        result.reason = "no data inside the chunk (only in its border pad)"
        return
    if max(_overlap_s([iv], t0.timestamp, t1.timestamp) for iv in union) <= settings.blinding_s:
        result.status = "skipped"
        result.reason = (f"only {result.data_seconds:.3f} s of data at the chunk's edge, inside the "
                         f"model's blinding ({settings.blinding_s:g} s): no pick is possible")
        return
    short = [(a, b) for a, b in union if b - a < settings.window_s]
    short_in_chunk = _overlap_s(short, t0.timestamp, t1.timestamp)
    if short_in_chunk >= result.data_seconds:
        result.status = "skipped"
        result.reason = (f"only {result.data_seconds:.1f} s of data in fragments shorter than one "
                         f"model window ({settings.window_s:g} s)")
        return
    if short_in_chunk > 0:
        result.notes.append(f"{short_in_chunk:.1f} s of data in fragments shorter than one model "
                            f"window ({settings.window_s:g} s) cannot be annotated")
    present = {ch[-1] for ch in result.channels}
    expected = set(model.component_order)
    flexible = {"N": "1", "E": "2"}
    missing = sorted(c for c in expected if c not in present and flexible.get(c) not in present)
    if missing:
        result.notes.append(f"missing component(s) {', '.join(missing)}: filled with zeros by "
                            "SeisBench")
    for ch, secs in sorted(per_channel.items()):
        if secs < result.data_seconds - 1.0:
            result.notes.append(f"{ch} has gaps: {secs:.1f} s of the station's "
                                f"{result.data_seconds:.1f} s in the chunk")

    pick_frames, det_frames = [], []
    s0 = t0
    while s0 < t1:  # sub-spans bound memory; the same border rule makes them seamless
        s1 = min(s0 + settings.classify_span_s, t1)
        a = _floor_to(s0 - settings.pad_s, settings.grid_step_s)
        sub = st.slice(a, s1 + settings.pad_s)
        if len(sub):
            output = model.classify(sub, **settings.classify_kwargs)
            pick_frames.append(_picks_frame(getattr(output, "picks", []) or
                                            _empty_picklist(), settings, s0, s1))
            if settings.detections:
                det_frames.append(_detections_frame(getattr(output, "detections", []) or
                                                    _empty_detectionlist(), settings, s0, s1))
        s0 = s1

    import pandas as pd

    paths = unit_output_paths(out, unit, settings)
    picks = pd.concat(pick_frames or [_picks_frame(_empty_picklist(), settings, t0, t1)],
                      ignore_index=True)
    picks = _normalise_frame(picks, ["time", "start_time", "end_time"], ["time", "phase"])
    _write_table(picks, paths["picks"], settings.output_format)
    result.picks = {str(k): int(v) for k, v in picks["phase"].value_counts().sort_index().items()}
    if settings.detections:
        dets = pd.concat(det_frames or [_detections_frame(_empty_detectionlist(), settings, t0, t1)],
                         ignore_index=True)
        dets = _normalise_frame(dets, ["start_time", "end_time"], ["start_time"])
        _write_table(dets, paths["detections"], settings.output_format)
        result.detections = len(dets)
    result.outputs = [str(p.relative_to(out)) for p in paths.values()]


def _empty_picklist():
    from seisbench.util import PickList

    return PickList()


def _empty_detectionlist():
    from seisbench.util import DetectionList

    return DetectionList()


# --------------------------------------------------------------------------------------------
# Manifest (resume)
# --------------------------------------------------------------------------------------------

class Manifest:
    """Append-only JSON lines, one per finished or failed unit; the last entry of a unit wins.

    A line is appended (and fsynced) only after the unit's outputs were renamed into place, so a
    unit listed as done always has its files. A job killed mid-append leaves a partial last line,
    which is dropped on the next start (the unit is then simply redone)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            raw = self.path.read_text()
            lines = raw.split("\n")
            complete, partial = lines[:-1], lines[-1]
            for line in complete:
                if line.strip():
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry
            if partial.strip():
                logger.warning("dropping an incomplete last manifest line (interrupted job)")
                _atomic_write(self.path, lambda p: p.write_text(
                    "".join(line + "\n" for line in complete if line.strip())))

    def finished(self, key: str) -> bool:
        return self.entries.get(key, {}).get("status") in ("done", "skipped")

    def record(self, result: UnitResult) -> None:
        entry = {"key": result.key, **asdict(result)}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.entries[entry["key"]] = entry


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------

@dataclass
class ArchiveReport:
    """What :func:`pick_archive` returns (also written as ``report.json`` / ``report.md``)."""

    out: Path
    summary: dict

    @property
    def exit_code(self) -> int:
        """0 when every unit is done or skipped and every input file was readable, else 1."""
        return 0 if not self.summary["failed"] and not self.summary["input_problems"] else 1

    @property
    def picks_path(self) -> Path:
        return self.out / self.summary["outputs"]["picks"]

    def picks(self) -> "pd.DataFrame":
        fmt = self.summary["settings"]["output_format"]
        return _read_table(self.picks_path, fmt, ["time", "start_time", "end_time"])


_RUN_KEYS_THAT_MUST_MATCH = ("archive", "model", "weights", "weights_fingerprint", "chunk_s",
                             "classify_span_s", "pad_s", "grid_step_s", "channel_priority",
                             "classify_kwargs", "output_format", "detections")


def _check_run_file(out: Path, run: dict, overwrite: bool) -> None:
    path = out / "run.json"
    if overwrite:
        for name in ("manifest.jsonl", "run.json"):
            (out / name).unlink(missing_ok=True)
        import shutil

        shutil.rmtree(out / "units", ignore_errors=True)
    elif path.exists():
        previous = json.loads(path.read_text())
        differing = [k for k in _RUN_KEYS_THAT_MUST_MATCH if previous.get(k) != run.get(k)]
        if differing:
            detail = "; ".join(f"{k}: {previous.get(k)!r} -> {run.get(k)!r}" for k in differing)
            raise ArchiveError(f"{out} holds a job with other settings ({detail}); use another "
                               "--out, or --overwrite to start over")
    _write_json(path, run)


def _remove_stale_temporaries(out: Path) -> None:
    for tmp in list((out / "units").glob("*/.*.tmp-*")) + list(out.glob(".*.tmp-*")):
        tmp.unlink(missing_ok=True)


def pick_archive(
    archive,
    out: str | os.PathLike,
    model: "str | WaveformModel" = "feq3",
    weights: str | None = "default",
    *,
    start=None,
    end=None,
    stations: str | Sequence[str] | None = None,
    channel_priority: str | Sequence[str] = DEFAULT_CHANNEL_PRIORITY,
    chunk: str | float = "1d",
    classify_span: str | float = "1h",
    border_margin: float = 30.0,
    output_format: str = "csv",
    detections: bool = False,
    workers: int = 1,
    scheduler: str | None = None,
    torch_threads: int | None = None,
    classify_kwargs: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ArchiveReport:
    """Pick a whole archive; resumable (rerun the same call after an interruption).

    :param archive: SDS root directory, a directory / glob / list of MiniSEED files, or a
        :class:`WaveformSource`.
    :param out: output folder (see the module docstring for its layout).
    :param model: a model name (see :func:`load_model`) or any SeisBench ``WaveformModel``.
    :param weights: weights for a model given by name (ignored for an instance).
    :param start, end: time span (anything ``UTCDateTime`` parses); default: the data's span.
    :param stations: ``NET.STA`` or ``NET.STA.LOC`` codes (comma-separated or a list, wildcards ok).
    :param channel_priority: band codes tried in order per unit, e.g. ``"HH,BH,EH,HN"``.
    :param chunk: work-unit length (``"1d"``, ``"1h"``, seconds).
    :param classify_span: longest span given to one ``classify`` call (bounds memory).
    :param border_margin: extra seconds read beyond one window + blinding at each border.
    :param output_format: ``"csv"`` or ``"parquet"``.
    :param detections: also write detections.
    :param workers: Dask ``LocalCluster`` worker processes; ``0`` runs in this process.
    :param scheduler: address of an existing Dask scheduler (overrides ``workers``).
    :param torch_threads: torch threads per worker (default: cores // workers; 1 on a remote cluster).
    :param classify_kwargs: passed to ``model.classify`` (thresholds, batch_size, ...).
    :param overwrite: discard a previous job in ``out`` instead of resuming it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if output_format not in ("csv", "parquet"):
        raise ArchiveError(f"output_format must be csv or parquet, not {output_format!r}")
    if isinstance(stations, str):
        stations = [s.strip() for s in stations.split(",") if s.strip()]
    if isinstance(channel_priority, str):
        channel_priority = [c.strip() for c in channel_priority.split(",") if c.strip()]
    channel_priority = tuple(c.upper() for c in channel_priority)
    if not channel_priority or any(len(c) != 2 for c in channel_priority):
        raise ArchiveError(f"channel priority must list 2-letter band codes, got {channel_priority}")
    chunk_s, span_s = parse_duration(chunk), parse_duration(classify_span)
    classify_kwargs = dict(classify_kwargs or {})
    if workers < 0:
        raise ArchiveError(f"workers must be >= 0, got {workers}")

    if isinstance(model, str):
        model = load_model(model, weights)
    model.eval()
    model_name = model.name
    label = weights_label(model)
    window_s, step_s, pad_s, blinding_s = border_geometry(model, classify_kwargs, border_margin)

    source = open_source(archive, index_cache=out / "file_index.json", progress=progress)
    all_stations = source.stations()
    selected = [s for s in all_stations if _station_matches(s, stations)]
    if stations and not selected:
        raise ArchiveError(f"no station of {source.describe()} matches {', '.join(stations)} "
                           f"(available: {', '.join(all_stations) or 'none'})")
    missing_requested = [p for p in (stations or [])
                         if not any(_station_matches(s, [p]) for s in all_stations)]

    t_start, t_end = _utc(start), _utc(end)
    if t_start is None or t_end is None:
        default_start, default_end = default_span(source, selected, chunk_s, blinding_s)
        t_start = default_start if t_start is None else t_start
        t_end = default_end if t_end is None else t_end
    if t_end <= t_start:
        raise ArchiveError(f"end {t_end} is not after start {t_start}")

    settings = PickSettings(
        chunk_s=chunk_s, classify_span_s=span_s, pad_s=pad_s, grid_step_s=step_s,
        window_s=window_s, blinding_s=blinding_s, channel_priority=channel_priority,
        classify_kwargs=classify_kwargs,
        output_format=output_format, detections=detections, model_name=model_name, weights=label,
        torch_threads=torch_threads,
    )
    run = {
        "archive": source.describe(), "model": model_name, "weights": label,
        "weights_fingerprint": weights_fingerprint(model), "chunk_s": chunk_s,
        "classify_span_s": span_s, "pad_s": pad_s, "grid_step_s": step_s,
        "channel_priority": list(channel_priority), "classify_kwargs": classify_kwargs,
        "output_format": output_format, "detections": detections,
    }
    _check_run_file(out, run, overwrite)
    _remove_stale_temporaries(out)
    manifest = Manifest(out / "manifest.jsonl")

    units, without_data = plan_units(selected, t_start, t_end, chunk_s,
                                     {s: source.coverage(s) for s in selected}, blinding_s)
    todo = [u for u in units if not manifest.finished(u.key)]
    logger.info("%s: %d stations, %s - %s, %d units (%d already finished), model %s weights %s",
                source.describe(), len(selected), _iso(t_start), _iso(t_end), len(units),
                len(units) - len(todo), model_name, label)
    for station, n in without_data.items():
        logger.warning("%s: no data files cover %d chunk(s) of the span: not run", station, n)

    timing = {"cluster_start_s": 0.0, "cluster_stop_s": 0.0}
    wall = time.perf_counter()
    run_results = _run_units(todo, source, model, settings, out, manifest, workers, scheduler,
                             torch_threads, progress, timing)
    timing["wall_s"] = time.perf_counter() - wall

    summary = _merge_and_report(out, units, manifest, settings, run, source, run_results, timing,
                                (t_start, t_end), selected, missing_requested, without_data)
    report = ArchiveReport(out, summary)
    level = logging.INFO if report.exit_code == 0 else logging.ERROR
    logger.log(level, "finished: %d done, %d skipped, %d failed, %d unreadable input files; "
               "report %s", summary["units"]["done"], summary["units"]["skipped"],
               summary["units"]["failed"], len(summary["input_problems"]), out / "report.md")
    return report


def _log_result(result: UnitResult) -> None:
    picks = ", ".join(f"{n} {p}" for p, n in result.picks.items()) or "no picks"
    where = f"{result.station} {result.start[:19]}"
    if result.status == "done":
        logger.info("%s done: %s, %.2f data-h in %.1f s%s", where, picks,
                    result.data_seconds / 3600, result.elapsed_s,
                    "".join(f"\n    note: {n}" for n in result.notes))
    elif result.status == "skipped":
        logger.warning("%s skipped: %s", where, result.reason)
    else:
        logger.error("%s FAILED: %s", where, result.reason)


def _run_units(todo, source, model, settings, out, manifest, workers, scheduler, torch_threads,
               progress, timing) -> list[UnitResult]:
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    results: list[UnitResult] = []
    bar = tqdm(total=len(todo), unit="unit", desc="picking", disable=not progress or not todo)
    started = time.perf_counter()

    def finish(result: UnitResult):
        manifest.record(result)
        results.append(result)
        _log_result(result)
        hours = sum(r.data_seconds for r in results) / 3600
        bar.set_postfix_str(f"{hours / max(time.perf_counter() - started, 1e-9):.2f} data-h/s")
        bar.update(1)

    def unit_source(unit):
        if not isinstance(source, MiniSEEDSource):
            return source
        # generous bounds: the unit reads at most one pad (plus one grid step) beyond its chunk
        margin = settings.pad_s + settings.grid_step_s
        return source.subset(unit.station, _utc(unit.start) - margin, _utc(unit.end) + margin)

    # log lines go above the bar instead of through it
    with logging_redirect_tqdm(loggers=[logging.getLogger()]):
        try:
            if scheduler is None and workers == 0:
                for unit in todo:
                    finish(process_unit(unit, unit_source(unit), model, settings, out))
            elif todo:
                _run_on_dask(todo, unit_source, model, settings, out, workers, scheduler,
                             torch_threads, finish, timing)
        finally:
            bar.close()
    return results


def _run_on_dask(todo, unit_source, model, settings, out, workers, scheduler, torch_threads,
                 finish, timing) -> None:
    import dataclasses

    from distributed import Client, LocalCluster, as_completed

    # Dask logs every worker start and stop at INFO; keep them for --verbose only
    dask_logger = logging.getLogger("distributed")
    dask_level = dask_logger.level
    if not logger.isEnabledFor(logging.DEBUG):
        dask_logger.setLevel(logging.WARNING)
    cluster = None
    started = time.perf_counter()
    if scheduler:
        client = Client(scheduler)
        # remote workers run one task per Dask thread; one torch thread each avoids
        # oversubscribing their cores unless the user says otherwise
        threads = torch_threads or 1
    else:
        import dask

        threads = torch_threads or max(1, (os.cpu_count() or 1) // workers)
        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536; glibc then hands every freed
        # block above 64 KiB back to the OS, and picking a unit took twice as long (measured
        # with FEQ3, docs/archive.md). None removes it from the workers' environment.
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
        client = Client(cluster)
    settings = dataclasses.replace(settings, torch_threads=threads)
    logger.info("Dask: %s, %d worker thread(s), %d torch thread(s) per task",
                getattr(client.scheduler, "address", scheduler), sum(client.nthreads().values()),
                threads)
    try:
        model_future = client.scatter(ShippedModel(model), broadcast=True)
        # load the model (and torch, SeisBench) on every worker before timing the units
        client.gather([client.submit(_warm_up, model_future, workers=[address], pure=False,
                                     allow_other_workers=False)
                       for address in client.nthreads()])
        timing["cluster_start_s"] = time.perf_counter() - started
        # bounded number of tasks in flight: the scheduler never holds the whole archive's plan
        in_flight = max(2, 2 * sum(client.nthreads().values()))
        pending = iter(todo)

        units_of = {}

        def submit(unit):
            future = client.submit(process_unit, unit, unit_source(unit), model_future, settings,
                                   str(out), key=f"pick-{uuid.uuid4().hex}", pure=False)
            units_of[future.key] = unit
            return future

        queue = as_completed([submit(u) for _, u in zip(range(in_flight), pending)])
        for future in queue:
            unit = units_of.pop(future.key)
            try:
                result = future.result()
            except Exception as exc:  # e.g. the worker died (out of memory): a failed unit
                result = UnitResult(unit.station, unit.start, unit.end, status="failed",
                                    reason=f"Dask task failed: {type(exc).__name__}: {exc}")
            finish(result)
            future.release()
            nxt = next(pending, None)
            if nxt is not None:
                queue.add(submit(nxt))
    finally:
        stopping = time.perf_counter()
        client.close()
        if cluster is not None:
            cluster.close()
        timing["cluster_stop_s"] = time.perf_counter() - stopping
        dask_logger.setLevel(dask_level)


def _warm_up(model: ShippedModel) -> str:
    model.get()
    return f"{socket.gethostname()}:{os.getpid()}"


def _merge_and_report(out, units, manifest, settings, run, source, run_results, timing, span,
                      selected, missing_requested, without_data) -> dict:
    import pandas as pd

    fmt = settings.output_format
    wall = timing["wall_s"]
    entries = [manifest.entries.get(u.key) for u in units]
    done = [e for e in entries if e and e["status"] == "done"]
    skipped = [e for e in entries if e and e["status"] == "skipped"]
    failed = [e for e in entries if e and e["status"] == "failed"]
    this_run = {r.key for r in run_results}

    tables = {"picks": (PICK_COLUMNS, ["time", "start_time", "end_time"])}
    if settings.detections:
        tables["detections"] = (DETECTION_COLUMNS, ["start_time", "end_time"])
    outputs = {}
    for name, (columns, time_cols) in tables.items():
        frames = []
        for entry in done:
            stem = WorkUnit(entry["station"], entry["start"], entry["end"]).file_stem()
            path = out / "units" / entry["station"] / f"{stem}.{name}.{fmt}"
            df = _read_table(path, fmt, time_cols)
            if len(df):
                frames.append(df)
        merged = (pd.concat(frames, ignore_index=True) if frames
                  else pd.DataFrame({c: pd.Series(dtype=object) for c in columns}))
        sort = ["station", "time", "phase"] if name == "picks" else ["station", "start_time"]
        merged = _normalise_frame(merged[columns], time_cols, sort)
        outputs[name] = f"{name}.{fmt}"
        _write_table(merged, out / outputs[name], fmt)

    picks_per_station: dict[str, dict[str, int]] = {s: {} for s in selected}
    for entry in done:
        counts = picks_per_station.setdefault(entry["station"], {})
        for phase, n in entry["picks"].items():
            counts[phase] = counts.get(phase, 0) + n
    ran = [r for r in run_results if r.status == "done"]
    data_h_run = sum(r.data_seconds for r in ran) / 3600
    summary = {
        "archive": source.describe(),
        "model": run["model"], "weights": run["weights"],
        "span": [_iso(span[0]), _iso(span[1])],
        "stations": selected,
        "requested_stations_without_data": missing_requested,
        "settings": {k: run[k] for k in ("chunk_s", "classify_span_s", "pad_s", "grid_step_s",
                                          "channel_priority", "classify_kwargs", "output_format",
                                          "detections")},
        "units": {
            "total": len(units), "done": len(done), "skipped": len(skipped),
            "failed": len(failed), "not_run": sum(e is None for e in entries),
            "processed_this_run": len(this_run),
            "finished_in_earlier_runs": sum(1 for e in done + skipped if e["key"] not in this_run),
        },
        "data_hours": sum(e["data_seconds"] for e in done) / 3600,
        "picks_total": sum(sum(c.values()) for c in picks_per_station.values()),
        "picks_per_station": picks_per_station,
        "throughput": {
            # wall_s includes starting and stopping Dask (loading the model on the workers
            # included) but not the file scan
            "wall_s": wall, "cluster_start_s": timing["cluster_start_s"],
            "cluster_stop_s": timing["cluster_stop_s"],
            "units_this_run": len(run_results), "data_hours_this_run": data_h_run,
            "data_hours_per_s": data_h_run / wall if wall > 0 and ran else 0.0,
            "unit_seconds_total": sum(r.elapsed_s for r in run_results),
        },
        "skipped": [_brief(e) for e in skipped],
        # chunks that no input file covers are not planned as units; counted here per station
        "chunks_without_data": without_data,
        "failed": [_brief(e) for e in failed],
        "warnings": [{**_brief(e), "notes": e["notes"]} for e in done if e["notes"]],
        "input_problems": source.problems(),
        "outputs": {**outputs, "report": "report.md", "manifest": "manifest.jsonl"},
    }
    _write_json(out / "report.json", summary)
    _atomic_write(out / "report.md", lambda p: p.write_text(_report_markdown(summary)))
    return summary


def _brief(entry: dict) -> dict:
    return {"station": entry["station"], "start": entry["start"], "end": entry["end"],
            "reason": entry["reason"]}


def _report_markdown(s: dict) -> str:
    u, t = s["units"], s["throughput"]
    lines = [
        "# Archive picking report", "",
        f"- archive: {s['archive']}",
        f"- model: {s['model']}, weights: {s['weights']}",
        f"- span: {s['span'][0]} - {s['span'][1]}, stations: {', '.join(s['stations'])}",
        f"- units: {u['total']} total, {u['done']} done, {u['skipped']} skipped, "
        f"{u['failed']} failed, {u['not_run']} not run "
        f"({u['finished_in_earlier_runs']} finished in earlier runs); "
        f"{sum(s['chunks_without_data'].values())} chunks without input data",
        f"- data hours picked: {s['data_hours']:.2f}; picks: {s['picks_total']}",
        f"- this run: {t['units_this_run']} units, {t['data_hours_this_run']:.2f} data hours in "
        f"{t['wall_s']:.1f} s ({t['data_hours_per_s']:.3f} data-h/s)",
        "", "## Picks per station", "", "| station | " + " | ".join(["P", "S", "other"]) + " |",
        "|---|---|---|---|",
    ]
    for station, counts in s["picks_per_station"].items():
        other = sum(n for p, n in counts.items() if p not in ("P", "S"))
        lines.append(f"| {station} | {counts.get('P', 0)} | {counts.get('S', 0)} | {other} |")
    for title, key in (("Failed units", "failed"), ("Skipped units", "skipped")):
        lines += ["", f"## {title} ({len(s[key])})", ""]
        lines += [f"- {e['station']} {e['start']} - {e['end']}: {e['reason']}" for e in s[key]]
    n_empty = sum(s["chunks_without_data"].values())
    lines += ["", f"## Chunks without any input data, not run ({n_empty})", ""]
    lines += [f"- {station}: {n} chunk(s)" for station, n in s["chunks_without_data"].items()]
    lines += ["", f"## Units with warnings ({len(s['warnings'])})", ""]
    for e in s["warnings"]:
        lines.append(f"- {e['station']} {e['start']} - {e['end']}:")
        lines += [f"    - {n}" for n in e["notes"]]
    lines += ["", f"## Unreadable input files ({len(s['input_problems'])})", ""]
    lines += [f"- {p['file']}: {p['reason']}" for p in s["input_problems"]]
    if s["requested_stations_without_data"]:
        lines += ["", "## Requested stations not in the archive", "",
                  *[f"- {p}" for p in s["requested_stations_without_data"]]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def add_subcommands(subparsers) -> None:
    parser = subparsers.add_parser(
        "pick", help="pick an SDS archive or MiniSEED files (resumable, Dask)",
        description="Pick P and S arrivals in an SDS archive or a set of MiniSEED files. Rerun the "
                    "same command to resume an interrupted job.")
    parser.add_argument("archive", nargs="+",
                        help="SDS root directory, or MiniSEED directories / files / glob patterns")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--model", default="feq3",
                        help=f"{', '.join(MODEL_NAMES)} or module:Class (default feq3)")
    parser.add_argument("--weights", default="default",
                        help="pretrained name, path to SeisBench weight files, .h5 (eqtransformer) "
                             "or 'random' (timing only) (default: default)")
    parser.add_argument("--start", help="start time, e.g. 2014-05-01 (default: data start)")
    parser.add_argument("--end", help="end time, exclusive (default: data end)")
    parser.add_argument("--stations", help="comma-separated NET.STA or NET.STA.LOC (wildcards ok)")
    parser.add_argument("--channels", default=",".join(DEFAULT_CHANNEL_PRIORITY),
                        help="band codes in order of priority (default %(default)s)")
    parser.add_argument("--chunk", default="1d", help="work-unit length: 1d, 6h, 3600 (default 1d)")
    parser.add_argument("--classify-span", default="1h",
                        help="longest span per classify call; bounds memory (default 1h)")
    parser.add_argument("--border-margin", type=float, default=30.0,
                        help="seconds read beyond one window + blinding at each border; raise it "
                             "if detections longer than this must match a single run (default 30)")
    parser.add_argument("--format", dest="output_format", choices=("csv", "parquet"), default="csv")
    parser.add_argument("--detections", action="store_true", help="also write detections")
    parser.add_argument("--workers", type=int, default=1,
                        help="Dask LocalCluster worker processes; 0 runs in-process (default 1)")
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. "
                                            "tcp://host:8786 (overrides --workers)")
    parser.add_argument("--torch-threads", type=int,
                        help="torch threads per worker (default: cores // workers)")
    parser.add_argument("--batch-size", type=int, help="windows per forward pass")
    parser.add_argument("--p-threshold", type=float)
    parser.add_argument("--s-threshold", type=float)
    parser.add_argument("--detection-threshold", type=float)
    parser.add_argument("--overwrite", action="store_true",
                        help="discard an earlier job in --out instead of resuming it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cli_pick)


def _cli_pick(args) -> int:
    archive = args.archive[0] if len(args.archive) == 1 else args.archive
    kwargs = {}
    for name, key in (("batch_size", "batch_size"), ("p_threshold", "P_threshold"),
                      ("s_threshold", "S_threshold"),
                      ("detection_threshold", "detection_threshold")):
        if getattr(args, name) is not None:
            kwargs[key] = getattr(args, name)
    try:
        report = pick_archive(
            archive, args.out, model=args.model, weights=args.weights, start=args.start,
            end=args.end, stations=args.stations, channel_priority=args.channels,
            chunk=args.chunk, classify_span=args.classify_span,
            border_margin=args.border_margin, output_format=args.output_format,
            detections=args.detections, workers=args.workers, scheduler=args.scheduler,
            torch_threads=args.torch_threads, classify_kwargs=kwargs, overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except ArchiveError as exc:
        logger.error("%s", exc)
        return 2
    s = report.summary
    print(f"{s['units']['done']} units done, {s['units']['skipped']} skipped, "
          f"{s['units']['failed']} failed; {s['picks_total']} picks in {report.picks_path}; "
          f"report {report.out / 'report.md'}")
    return report.exit_code
