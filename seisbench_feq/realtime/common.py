"""What the real-time picker's parts share: its error, the emitted pick, stream selectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from obspy import UTCDateTime

from ..io.picks import PICK_COLUMNS

#: The real-time picks CSV: the package's one pick table, then the latency of each pick.
CSV_COLUMNS = PICK_COLUMNS + ["emitted_at", "latency_s", "wait_data_s", "queue_s", "model_s"]
COMPONENT_ALIASES = {"1": "N", "2": "E"}  # as SeisBench's flexible_horizontal_components
#: Rates within this relative difference are the nominal rate (the header is fixed, nothing is
#: resampled), the rule ``pick`` follows too: a digitiser's 100.0001 Hz is 100 Hz.
from ..models.preprocessing import NOMINAL_RATE_TOLERANCE as RATE_TOLERANCE  # noqa: E402


class RealtimeError(ValueError):
    """Bad input or configuration, with the file, trace or parameter named."""


def nominal_rate(rate: float, nominal: float | None) -> float:
    """``nominal`` when ``rate`` is within :data:`RATE_TOLERANCE` of it, else ``rate``."""
    if nominal and rate != nominal and abs(rate - nominal) <= RATE_TOLERANCE * nominal:
        return float(nominal)
    return float(rate)


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
    channel: str = ""  # the channel the pick is on: P on the vertical, S on a horizontal
    #: emitted early (low-latency mode), from the windows run so far, before its samples were final
    early: bool = False
    #: data time of the sample whose arrival made the pick visible (the end of the window that
    #: made it final, or for an early pick the newest window's end); None if unknown
    data_end: UTCDateTime | None = None

    @property
    def latency_s(self) -> float:
        return self.wait_data_s + self.queue_s + self.model_s

    def to_row(self, weights: str = "", measures: dict | None = None) -> dict[str, Any]:
        """The pick as a CSV row of :data:`CSV_COLUMNS` (times ISO 8601 UTC, ``Z``)."""
        net, sta, loc = (self.trace_id.split(".") + ["", "", ""])[:3]
        m = measures or {}

        def number(value, fmt):
            return "" if value is None or value != value else format(value, fmt)

        channel = m.get("channel") or self.channel
        return {
            "trace_id": f"{net}.{sta}.{loc}.{channel}", "network": net, "station": sta,
            "location": loc, "channel": channel, "phase": self.phase, "time": _iso(self.time),
            "probability": f"{self.probability:.4f}", "start_time": _iso(self.start_time),
            "end_time": _iso(self.end_time), "uncertainty_s": "",
            "amplitude": number(m.get("amplitude"), ".6g"),
            "amplitude_unit": m.get("amplitude_unit", "") if m.get("amplitude") is not None else "",
            "snr": number(m.get("snr"), ".2f"), "polarity": m.get("polarity", ""),
            "model": self.model, "weights": weights,
            "emitted_at": _iso(UTCDateTime(self.emitted_at)),
            "latency_s": f"{self.latency_s:.3f}",
            "wait_data_s": f"{self.wait_data_s:.3f}",
            "queue_s": f"{self.queue_s:.3f}",
            "model_s": f"{self.model_s:.3f}",
        }


def _iso(t: UTCDateTime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


def streams_from_stations(stations: str | Sequence[str], channels: str | Sequence[str]) -> list[str]:
    """``--stations`` (``NET.STA`` or ``NET.STA.LOC``, wildcards ok) x ``--channels`` (band codes
    in priority order) -> ``NET.STA.LOC.BB?`` stream patterns (location ``*`` when not given)."""
    items = [x.strip() for x in (stations.split(",") if isinstance(stations, str) else stations) if x.strip()]
    bands = [b.strip().upper() for b in (channels.split(",") if isinstance(channels, str) else channels)
             if b.strip()]
    if not items:
        raise RealtimeError("--stations is empty: give NET.STA or NET.STA.LOC, e.g. CX.PB01,CX.PB02")
    bad = [b for b in bands if len(b) != 2]
    if bad or not bands:
        raise RealtimeError(f"--channels {','.join(bands) or '(empty)'}: give two-letter band codes "
                            "in priority order, e.g. HH,BH")
    streams = []
    for item in items:
        parts = item.split(".")
        if len(parts) not in (2, 3):
            raise RealtimeError(f"--stations entry {item!r} is not NET.STA or NET.STA.LOC (e.g. CX.PB01)")
        net, sta = parts[:2]
        loc = parts[2] if len(parts) == 3 else "*"
        streams += [f"{net}.{sta}.{loc}.{band}?" for band in bands]
    return streams
