"""The continuous reference checked by eye: its P picks without an energy increase next to clear ones."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from .continuous import CLEAR_SNR, SNR_BAND_HZ, WEAK_SNR, band_pass, read_continuous_file

HALF_SPAN_S = 15.0
FILTER_PAD_S = 10.0  # filtered with this much data on each side, so the plotted part has no edge


def plot_reference_snr(
    picks: pd.DataFrame,
    files: Mapping[str, Path],
    path: str | Path,
    model: str | None = None,
    per_column: int = 6,
    seed: int = 0,
) -> Path | None:
    """``per_column`` random reference P picks without an energy increase (arrival SNR <
    ``WEAK_SNR``, left) and as many clear ones (SNR >= ``CLEAR_SNR``, right), each as the
    band-passed vertical 15 s around the pick, with ``model``'s P picks dashed. ``picks`` is
    :attr:`ContinuousResult.picks` (the reference rows carry ``snr``); ``files`` maps its file
    names to paths (:func:`continuous_file_paths`); only the files of the chosen picks are read.
    Returns None when the reference has no SNR column or nothing to show."""
    from matplotlib.figure import Figure  # no pyplot: no global backend switch, no figure registry
    from obspy import UTCDateTime

    if "snr" not in picks.columns:
        return None
    reference = picks[picks["snr"].notna() & (picks["phase"] == "P")]
    columns = []
    for title, sub in (
        (f"reference P without an energy increase (SNR < {WEAK_SNR:g})", reference[reference["snr"] < WEAK_SNR]),
        (f"clear reference P (SNR ≥ {CLEAR_SNR:g})", reference[reference["snr"] >= CLEAR_SNR]),
    ):
        columns.append((title, sub.sample(min(per_column, len(sub)), random_state=seed)))
    rows = max(len(chosen) for _, chosen in columns)
    if not rows:
        return None
    streams = {name: read_continuous_file(files[name]) for name in {f for _, c in columns for f in c["file"]}}
    mine = picks[(picks["model"] == model) & (picks["phase"] == "P")] if model else picks.iloc[:0]
    fig = Figure(figsize=(13, 1.25 * rows + 1.2))
    axes = fig.subplots(rows, 2, squeeze=False, sharex=True)
    for col, (title, chosen) in enumerate(columns):
        for row in range(rows):
            ax = axes[row, col]
            ax.set_yticks([])
            if row >= len(chosen):
                ax.axis("off")
                continue
            pick = chosen.iloc[row]
            at = UTCDateTime(pick["time"])
            part = streams[pick["file"]].slice(at - HALF_SPAN_S - FILTER_PAD_S, at + HALF_SPAN_S + FILTER_PAD_S)
            part = part.split().select(channel="*Z")
            for trace in part:
                if trace.id.rsplit(".", 1)[0] == pick["trace_id"] and len(trace.data) > 50:
                    trace.data = band_pass(trace.data, trace.stats.sampling_rate)
                    shown = trace.slice(at - HALF_SPAN_S, at + HALF_SPAN_S)
                    ax.plot(shown.times(reftime=at), shown.data, "k", lw=0.4)
            ax.axvline(0, color="tab:red", lw=1)
            near = mine[(mine["file"] == pick["file"]) & (mine["trace_id"] == pick["trace_id"])]
            for t in near["time"]:
                if abs(UTCDateTime(t) - at) < HALF_SPAN_S:
                    ax.axvline(UTCDateTime(t) - at, color="tab:blue", ls="--", lw=1)
            ax.text(0.005, 0.95, f"{pick['trace_id']} {str(at)[:19]}  SNR {pick['snr']:.1f}  p {pick['probability']:.2f}",
                    transform=ax.transAxes, fontsize=7, va="top")
        axes[0, col].set_title(title, fontsize=9)
        axes[-1, col].set_xlabel("s from the reference P (red)")
    fig.suptitle(f"Vertical, {SNR_BAND_HZ[0]:g}-{SNR_BAND_HZ[1]:g} Hz" + (f"; {model} P picks dashed" if model else ""),
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
