"""The figure people look at: waveforms over detection/P/S probabilities, with the picks marked."""

from __future__ import annotations

from pathlib import Path

import obspy
import seisbench.util as sbu
from matplotlib.figure import Figure

PHASE_COLOURS = {"P": "tab:blue", "S": "tab:red", "Detection": "tab:green"}


def plot_annotations(
    stream: obspy.Stream,
    annotations: obspy.Stream,
    picks: sbu.PickList | None = None,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """One panel per waveform trace plus one panel of the model's probabilities.

    ``annotations`` is the output of ``model.annotate``; its channels end in ``_Detection``,
    ``_P`` and ``_S``. Picks are drawn as vertical lines on every panel. Times are seconds after
    the earliest waveform sample. Saves to ``path`` when given.
    """
    if len(stream) == 0:
        raise ValueError("plot_annotations: the waveform stream is empty")
    t0 = min(tr.stats.starttime for tr in stream)
    # A Figure without pyplot: drawn by Agg when saved, whatever backend the caller's session uses.
    fig = Figure(figsize=(10, 1.6 * (len(stream) + 1) + 0.6))
    axes = fig.subplots(len(stream) + 1, 1, sharex=True, squeeze=False)[:, 0]
    for ax, trace in zip(axes, stream):
        ax.plot(trace.times(reftime=t0), trace.data, "k", lw=0.5)
        ax.set_ylabel(trace.stats.channel, rotation=0, ha="right")
        ax.set_yticks([])
    prob_ax = axes[-1]
    for trace in annotations:
        label = trace.stats.channel.rsplit("_", 1)[-1]
        prob_ax.plot(trace.times(reftime=t0), trace.data, color=PHASE_COLOURS.get(label), lw=1, label=label)
    prob_ax.set_ylim(-0.02, 1.02)
    prob_ax.set_ylabel("probability")
    prob_ax.set_xlabel(f"seconds after {t0.isoformat()}")
    prob_ax.legend(loc="upper right", fontsize="small")
    for pick in picks or []:
        for ax in axes:
            ax.axvline(pick.peak_time - t0, color=PHASE_COLOURS.get(pick.phase, "k"), ls="--", lw=1)
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


#: Legend order of the per-detection figure (fixed, whatever is present).
CURVE_ORDER = ("Detection", "P", "S")


def plot_detection(
    stream: obspy.Stream,
    annotations: obspy.Stream,
    detection,
    picks: sbu.PickList | None = None,
    path: str | Path | None = None,
    before_s: float = 10.0,
    after_s: float = 20.0,
    freqmin: float = 1.0,
    freqmax: float | None = 45.0,
    title: str | None = None,
) -> Figure:
    """EQTransformer-style figure of one detection: the three components band-passed
    (``freqmin``-``freqmax`` Hz, as the model sees them: the raw records are mostly microseism),
    the detection/P/S probability curves, the picks marked, a legend in a fixed order outside the
    curves.

    ``detection`` is a SeisBench ``Detection`` (``start_time``/``end_time``) or a ``(start, end)``
    pair of times; the figure spans ``before_s`` before its start to ``after_s`` after its end.
    ``annotations`` is ``model.annotate``'s output, ``picks`` the picks to mark (those inside the
    span and on the detection's station are drawn). Saves to ``path`` when given.
    """
    start, end = ((detection.start_time, detection.end_time) if hasattr(detection, "start_time")
                  else (obspy.UTCDateTime(detection[0]), obspy.UTCDateTime(detection[1])))
    trace_id = getattr(detection, "trace_id", None)
    t0, t1 = start - before_s, end + after_s
    waves = stream.slice(t0, t1).copy()
    if trace_id:
        net, sta, loc = (trace_id.split(".") + ["", ""])[:3]
        waves = waves.select(network=net, station=sta, location=loc or None) or waves
    if len(waves) == 0:
        raise ValueError(f"plot_detection: no waveform in {t0} - {t1}" + (f" for {trace_id}" if trace_id else ""))
    waves.detrend("demean").taper(0.05, max_length=2.0)
    nyquist = min(tr.stats.sampling_rate for tr in waves) / 2
    if freqmax is not None and freqmax < nyquist:
        waves.filter("bandpass", freqmin=freqmin, freqmax=freqmax, zerophase=True)
    else:
        waves.filter("highpass", freq=freqmin, zerophase=True)
    waves.sort(keys=["channel"])
    waves.traces.sort(key=lambda tr: {"Z": 0, "N": 1, "1": 1, "E": 2, "2": 2}.get(tr.stats.channel[-1], 3))
    shown = [p for p in picks or [] if t0 <= p.peak_time <= t1
             and (not trace_id or p.trace_id.split(".")[:2] == trace_id.split(".")[:2])]

    fig = Figure(figsize=(10, 1.5 * (len(waves) + 1) + 0.9))
    axes = fig.subplots(len(waves) + 1, 1, sharex=True, squeeze=False)[:, 0]
    for ax, trace in zip(axes, waves):
        ax.plot(trace.times(reftime=t0), trace.data, "k", lw=0.5)
        ax.set_ylabel(trace.stats.channel, rotation=0, ha="right", va="center")
        ax.set_yticks([])
    prob_ax = axes[-1]
    curves = {tr.stats.channel.rsplit("_", 1)[-1]: tr for tr in annotations.slice(t0, t1)
              if not trace_id or tr.id.split(".")[:2] == trace_id.split(".")[:2]}
    for label in CURVE_ORDER:
        if label in curves:
            tr = curves[label]
            prob_ax.plot(tr.times(reftime=t0), tr.data, color=PHASE_COLOURS[label], lw=1.2,
                         label=f"{label} probability")
    prob_ax.axvspan(start - t0, end - t0, color=PHASE_COLOURS["Detection"], alpha=0.08, lw=0,
                    label="detection")
    prob_ax.set_ylim(-0.02, 1.05)
    prob_ax.set_ylabel("probability")
    prob_ax.set_xlim(0, t1 - t0)
    prob_ax.set_xlabel(f"seconds after {t0.isoformat()[:22]}Z")
    for phase in ("P", "S"):
        for k, pick in enumerate(p for p in shown if p.phase == phase):
            for ax in axes:
                ax.axvline(pick.peak_time - t0, color=PHASE_COLOURS[phase], ls="--", lw=1,
                           label=f"{phase} pick" if ax is prob_ax and k == 0 else None)
    # the legend sits right of the panels: it never covers a curve or a pick
    prob_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    axes[0].set_title(title or f"{trace_id or waves[0].id[:-1]}  detection {start.isoformat()[:22]}Z "
                               f"({end - start:.1f} s); waveforms {freqmin:g}-{freqmax or nyquist:g} Hz")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
