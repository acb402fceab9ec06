"""What the real-time picker writes: the picks CSV, QuakeML per detection, station figures.

Every file name made from SEED codes goes through :func:`seisbench_feq.io.files.safe_station`
and :func:`~seisbench_feq.io.files.path_inside`: a network code ``/`` cannot write outside the
output folder.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import obspy
from obspy import UTCDateTime

from ..io.files import atomic_write, path_inside, safe_station
from .common import CSV_COLUMNS, RealtimeError, RealtimePick

logger = logging.getLogger("seisbench_feq.realtime")


class PickCSV:
    """Appends picks to a CSV (header written once), flushed per pick; refuses a file with other
    columns instead of mixing two layouts."""

    def __init__(self, path: str | Path, weights: str = ""):
        self.path = Path(path)
        self.weights = weights
        self._file = None
        self._writer = None
        if self.path.exists() and self.path.is_dir():
            raise RealtimeError(f"--out {self.path} is a folder; give the picks CSV file to append to")

    def write(self, pick: RealtimePick, measures: dict | None = None) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            if not fresh:
                with open(self.path, newline="") as existing:
                    header = next(csv.reader(existing), [])
                if header != CSV_COLUMNS:
                    raise RealtimeError(f"{self.path} exists with other columns {header}; "
                                        f"choose another --out (expected {CSV_COLUMNS})")
            self._file = open(self.path, "a", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=CSV_COLUMNS)
            if fresh:
                self._writer.writeheader()
        self._writer.writerow(pick.to_row(self.weights, measures))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._file.close()
            self._file = None


def write_detection_event(quakeml_dir: Path, station_key: str, det, picks: list[RealtimePick],
                          model_label: str) -> Path | None:
    """One QuakeML file for a single-station detection with its picks, or None without picks.

    There is no origin: one station cannot locate an event. The file carries the picks (P on the
    vertical, S on a horizontal; probability in the package's agreed ``seisbench_feq:probability``
    extra, see :mod:`seisbench_feq.io.quakeml`) for a locator downstream; ``associate`` builds
    located events from the picks CSV.
    """
    from obspy.core.event import (Catalog, Comment, CreationInfo, Event, EventDescription, Pick,
                                  WaveformStreamID)

    from ..io.quakeml import NAMESPACE, PROBABILITY_KEY, phase_channel, write_quakeml

    mine = [p for p in picks if det.start_time - 2.0 <= p.time <= det.end_time]
    if not mine:
        return None
    creation = CreationInfo(agency_id="seisbench_feq", author=f"seisbench_feq realtime {model_label}",
                            creation_time=UTCDateTime())
    event = Event(event_type="earthquake", event_type_certainty="suspected", creation_info=creation)
    event.event_descriptions.append(EventDescription(
        text=f"single-station detection at {station_key} by {model_label} (not located)",
        type="region name"))
    event.comments.append(Comment(
        text=f"detection {det.start_time} - {det.end_time}, peak probability {det.peak_value:.3f}"))
    net, sta, loc = station_key.split(".")
    for pick in mine:
        qml = Pick(time=pick.time, phase_hint=pick.phase, evaluation_mode="automatic",
                   waveform_id=WaveformStreamID(net, sta, loc, phase_channel(pick.channel, pick.phase) or ""),
                   method_id=f"smi:seisbench_feq/realtime/{model_label}", creation_info=creation)
        qml.extra = {PROBABILITY_KEY: {"value": f"{pick.probability:.4f}", "namespace": NAMESPACE}}
        event.picks.append(qml)
    path = path_inside(quakeml_dir, f"{safe_station(station_key)}_"
                                    f"{det.start_time.strftime('%Y%m%dT%H%M%S.%f')}.xml")
    write_quakeml(Catalog([event]), path)
    logger.info("event %s written (%d picks)", path.name, len(event.picks))
    return path


def plot_station(plot_dir: Path, station, waveforms: obspy.Stream, annotations: obspy.Stream,
                 picks: list[RealtimePick], title: str, model=None) -> Path:
    """The station's figure: waveforms filtered as the model sees them, probabilities, picks."""
    import matplotlib.pyplot as plt
    import seisbench.util as sbu

    from ..plotting import plot_annotations

    shown = waveforms.copy()
    for tr in shown:
        tr.data = np.asarray(tr.data, dtype=np.float64)
    try:  # the model's view: demeaned and high-passed (raw data is all microseism)
        shown.detrend("demean")
        shown.filter("highpass", freq=1.0, corners=2, zerophase=False)
    except Exception:  # noqa: BLE001 - a figure must show something even on odd data
        pass
    sb_picks = sbu.PickList(sbu.Pick(p.trace_id, p.start_time, p.end_time, p.time, p.probability, p.phase)
                            for p in picks)
    path = path_inside(plot_dir, f"{safe_station(station.key)}.png")

    def draw(tmp):
        fig = plot_annotations(shown, annotations, sb_picks, tmp, title=title)
        plt.close(fig)

    atomic_write(path, lambda tmp: draw(tmp.with_suffix(".png")) or tmp.with_suffix(".png").replace(tmp))
    return path
