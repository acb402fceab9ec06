"""Planning a job: settings, work units on a chunk grid, border geometry, argument checks."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

from ..io.sources import SourceError, SourceReadError

#: Band/instrument codes tried in this order for each unit; the first with data is used.
DEFAULT_CHANNEL_PRIORITY = ("HH", "BH", "EH", "SH", "HN", "EN")


class ArchiveError(SourceError):
    """A job cannot start: bad archive path, bad settings, or an output folder from another job."""


#: The data of one unit cannot be read (e.g. a corrupt MiniSEED file); the unit fails.
UnitInputError = SourceReadError


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
    if not math.isfinite(seconds) or seconds <= 0:
        raise ArchiveError(f"duration must be positive, got {value!r}")
    return seconds


def parse_time(value, what: str = "time"):
    """``UTCDateTime`` of anything ObsPy parses (``2014-05-01``, ``2014-05-01T01:30``); None
    passes. Raises :class:`ArchiveError` saying what was not understood."""
    from obspy import UTCDateTime

    if value is None:
        return None
    if isinstance(value, UTCDateTime):
        return value
    try:
        return UTCDateTime(value)
    except Exception:  # ObsPy raises TypeError/ValueError depending on the input
        raise ArchiveError(f"cannot understand {what} {value!r}: give a UTC date or time such "
                           "as 2014-05-01 or 2014-05-01T01:30:00") from None


_utc = parse_time  # older name


def floor_to(t, step: float):
    """Largest multiple of ``step`` seconds since the epoch that is <= t (exact for integer steps)."""
    from obspy import UTCDateTime

    step_ns = int(round(step * 1e9))
    return UTCDateTime(ns=(t.ns // step_ns) * step_ns)


def iso(t) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def overlap_s(intervals, a: float, b: float) -> float:
    return sum(max(0.0, min(y, b) - max(x, a)) for x, y in intervals)


def check_classify_kwargs(kwargs: dict) -> dict:
    """Refuse arguments that would make ``classify`` loop forever or fail after hours of work."""
    kwargs = dict(kwargs)
    batch = kwargs.get("batch_size")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ArchiveError(f"batch_size must be a whole number >= 1, got {batch!r}")
    for key in ("P_threshold", "S_threshold", "detection_threshold"):
        value = kwargs.get(key)
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise ArchiveError(f"{key} must be a probability between 0 and 1, got {value!r}")
    stacking = kwargs.get("stacking")
    if stacking is not None and stacking not in ("max", "avg"):
        raise ArchiveError(f"stacking must be 'max' or 'avg', got {stacking!r}")
    return kwargs


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
        """``NET.STA.LOC.<start>``, every code made path-safe (a station ``../x`` stays a name)."""
        from obspy import UTCDateTime

        return f"{station_dir(self.station)}.{UTCDateTime(self.start).strftime('%Y%m%dT%H%M%S')}"


def station_dir(station: str) -> str:
    """The folder name of a station's unit files (``CX.PB01.``), safe as one path component."""
    from ..io.files import safe_station

    return safe_station(station)


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
    polarity: bool = False
    uncertainty_samples: int = 0
    plot_detections: int = 0


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
    errors: list[str] = field(default_factory=list)  # files that decoded garbage: done with errors
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
    margin) makes the probabilities inside a chunk identical to that run's. The window step is the
    package's one window geometry (:func:`seisbench_feq.models.annotate.window_step`).
    """
    if not model.sampling_rate or not model.in_samples:
        raise ArchiveError(f"model {model.name} must define sampling_rate and in_samples")
    args = {**getattr(model, "default_args", {}), **classify_kwargs}
    annotate_args = getattr(model, "_annotate_args", {})
    for key in ("overlap", "blinding"):
        if key not in args and key in annotate_args:
            args[key] = annotate_args[key][1]
    args.setdefault("overlap", 0)
    sr, n = float(model.sampling_rate), int(model.in_samples)
    from ..models.annotate import window_step

    overlap = n - int(window_step(model, classify_kwargs))
    if not 0 <= overlap < n:
        raise ArchiveError(f"overlap {args['overlap']!r} must be smaller than the model's window "
                           f"({n} samples)")
    step = n - overlap
    blinding = args.get("blinding", (0, 0)) or (0, 0)
    window_s, grid_step_s = n / sr, step / sr
    blinding_s = max(blinding) / sr
    return window_s, grid_step_s, window_s + blinding_s + margin_s, blinding_s


def default_span(source, stations: Sequence[str], chunk_s: float, blinding_s: float = 0.0):
    """The data's span, its start floored to the chunk grid (multiples of ``chunk_s`` since the
    epoch: midnight for one-day chunks).

    The first and last ``blinding_s`` seconds of data can never carry a pick, so the few samples
    around midnight that SDS day files often hold do not open chunks of their own.
    """
    span = source.data_span(stations)
    if span is None:
        raise ArchiveError(f"{source.describe()} holds no readable data for "
                           f"{', '.join(stations) or 'any station'}; give --start and --end")
    return floor_to(span[0] + blinding_s, chunk_s), span[1] - blinding_s


def plan_units(stations: Sequence[str], start, end, chunk_s: float,
               coverage: dict[str, list[tuple[int, int]] | None] | None = None,
               min_overlap_s: float = 0.0) -> tuple[list[WorkUnit], dict[str, int]]:
    """Units on a chunk grid anchored at ``start``; the last chunk of a station ends at ``end``.

    With ``coverage`` (station -> data intervals in ns, or None for unknown), chunks that no
    interval overlaps by more than ``min_overlap_s`` (the blinding) are left out; the second
    return value counts them per station, for the report.
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
                units.append(WorkUnit(station, iso(t), iso(t1)))
            else:
                without_data[station] = without_data.get(station, 0) + 1
            t = t1
    return units, without_data
