"""What the real-time picker writes: the picks CSV and station figures.

Located events (QuakeML) come from ``seisbench-feq associate`` on the picks CSV: one station
cannot locate an event, and the package's one QuakeML builder writes no event without an origin.

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


#: fixed order and colours of the probability curves and pick lines (the same in every figure)
CURVES = (("Detection", "tab:green", "detection"), ("P", "tab:blue", "P probability"),
          ("S", "tab:red", "S probability"))


def plot_station(plot_dir: Path, station, waveforms: obspy.Stream, annotations: obspy.Stream,
                 picks: list[RealtimePick], title: str, thresholds: dict | None = None,
                 highpass: float = 1.0) -> Path:
    """The station's figure: the waveforms filtered as the model sees them (demeaned, the model's
    zero-phase ``highpass`` in Hz: raw data is all microseism), the probabilities in a fixed order with their
    thresholds, the emitted picks on every panel, and one legend outside the panels."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    shown = waveforms.copy()
    for tr in shown:
        tr.data = np.asarray(tr.data, dtype=np.float64)
    try:
        shown.detrend("demean")
        shown.taper(max_percentage=0.02, type="cosine")  # no filter transient at the edges
        if highpass:
            shown.filter("highpass", freq=highpass, corners=2, zerophase=True)
    except Exception:  # noqa: BLE001 - a figure must show something even on odd data
        pass
    if not len(shown):
        raise RealtimeError(f"{station.key}: no waveform to plot")
    t0 = min(tr.stats.starttime for tr in shown)
    fig = Figure(figsize=(11, 1.4 * len(shown) + 2.4))
    axes = fig.subplots(len(shown) + 1, 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [1] * len(shown) + [1.4]})[:, 0]
    for ax, trace in zip(axes, shown):
        ax.plot(trace.times(reftime=t0), trace.data, "k", lw=0.5)
        ax.set_ylabel(trace.stats.channel, rotation=0, ha="right", va="center")
        ax.set_yticks([])
    prob = axes[-1]
    handles = []
    by_label = {tr.stats.channel.rsplit("_", 1)[-1]: tr for tr in annotations}
    for label, colour, name in CURVES:
        trace = by_label.get(label)
        if trace is not None:
            handles += prob.plot(trace.times(reftime=t0), trace.data, color=colour, lw=1.2, label=name)
        threshold = (thresholds or {}).get(label)
        if threshold is not None and trace is not None:
            prob.axhline(threshold, color=colour, ls=":", lw=0.8)
    prob.set_ylim(-0.02, 1.02)
    prob.set_ylabel("probability")
    prob.set_xlabel(f"seconds after {t0.strftime('%Y-%m-%dT%H:%M:%S')} UTC")
    for pick in picks:
        colour = "tab:blue" if pick.phase == "P" else "tab:red"
        for ax in axes:
            ax.axvline(pick.time - t0, color=colour, ls="--", lw=1)
    for phase, colour in (("P", "tab:blue"), ("S", "tab:red")):
        if any(p.phase == phase for p in picks):
            handles.append(Line2D([], [], color=colour, ls="--", lw=1, label=f"{phase} pick"))
    if thresholds:
        handles.append(Line2D([], [], color="grey", ls=":", lw=0.8, label="threshold"))
    # outside the panels, to the right: it never covers a curve
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.86, 0.98), fontsize="small",
               frameon=False)
    axes[0].set_title(title, loc="left", fontsize="medium")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    path = path_inside(plot_dir, f"{safe_station(station.key)}.png")

    def draw(tmp):
        png = tmp.with_suffix(".png")
        fig.savefig(png, dpi=110)
        png.replace(tmp)

    atomic_write(path, draw)
    return path
