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
