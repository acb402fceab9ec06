"""Figures and a markdown report for a :class:`~seisbench_feq.catalog.CatalogComparison`.

Plain matplotlib (Agg backend, no basemap or tiles to download): residual histograms, an event
map in longitude/latitude with an equal-distance aspect, and recall per magnitude bin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_residuals(comparison, path) -> Path:
    """Histograms: origin-time and epicentre differences of matched events, depth differences,
    and P and S pick residuals (ours minus reference when the reference has picks; otherwise the
    travel-time residuals of our located events)."""
    plt = _pyplot()
    m = comparison.matches
    pm = comparison.pick_matches
    ours_picks = comparison.ours.picks
    panels = [
        ("origin time, ours - reference (s)", m["dt_s"].to_numpy(dtype=float)),
        ("epicentre offset (km)", m["distance_km"].to_numpy(dtype=float)),
        ("depth, ours - reference (km)", m["ddepth_km"].to_numpy(dtype=float)),
    ]
    if len(pm):
        for phase in ("P", "S"):
            panels.append((f"{phase} pick time, ours - reference (s)", pm.loc[pm["phase"] == phase, "residual_s"].to_numpy(dtype=float)))
    elif "residual_s" in ours_picks.columns and len(ours_picks):
        for phase in ("P", "S"):
            sel = ours_picks["phase"] == phase
            panels.append((f"{phase} travel-time residual of our events (s)", ours_picks.loc[sel, "residual_s"].to_numpy(dtype=float)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2))
    for ax, (label, values) in zip(np.atleast_1d(axes), panels):
        values = values[np.isfinite(values)]
        if len(values):
            lo, hi = np.percentile(values, [0.5, 99.5])
            ax.hist(values, bins=40, range=(lo, hi) if hi > lo else None, color="0.35")
            ax.set_title(f"median {np.median(values):+.2f}, n={len(values)}", fontsize=9)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(label, fontsize=9)
    np.atleast_1d(axes)[0].set_ylabel("count")
    return _save(fig, path)


def plot_map(comparison, path, stations: pd.DataFrame | None = None) -> Path:
    """Map of matched (reference location), missed and new events, and stations when known."""
    plt = _pyplot()
    m, missed, new = comparison.matches, comparison.missed, comparison.new
    stations = stations if stations is not None else comparison.ours.stations
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    # new events first: in a swarm they are the most numerous and would hide the others
    ax.scatter(new["longitude"], new["latitude"], s=8, c="tab:blue", marker="+", label=f"new ({len(new)})", alpha=0.5)
    ax.scatter(m["ref_longitude"], m["ref_latitude"], s=8, c="tab:green", label=f"matched ({len(m)}, reference location)", alpha=0.6)
    ax.scatter(missed["longitude"], missed["latitude"], s=14, c="tab:red", marker="x", label=f"missed ({len(missed)})")
    if stations is not None and len(stations):
        ax.scatter(stations["longitude"], stations["latitude"], s=60, marker="^", c="k", label="stations")
        for s in stations.itertuples(index=False):
            ax.annotate(s.id.split(".")[1], (s.longitude, s.latitude), fontsize=7, xytext=(3, 3), textcoords="offset points")
    lat = np.nanmedian(np.concatenate([m["ref_latitude"].to_numpy(dtype=float), missed["latitude"].to_numpy(dtype=float),
                                       new["latitude"].to_numpy(dtype=float), [np.nan]])) if len(m) + len(missed) + len(new) else 0.0
    ax.set_aspect(1.0 / np.cos(np.radians(lat if np.isfinite(lat) else 0.0)))
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_recall_by_magnitude(comparison, path) -> Path:
    plt = _pyplot()
    bm = comparison.by_magnitude
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = np.arange(len(bm))
    ax.bar(x, bm["reference"], color="0.8", label="reference")
    ax.bar(x, bm["matched"], color="tab:green", label="matched")
    ax.set_xticks(x, bm["magnitude"], fontsize=8, rotation=20)
    ax.set_ylabel("events")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _fmt(x, digits=3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def markdown(comparison, figures: dict[str, str] | None = None, title: str = "Catalog comparison",
             preamble: str = "") -> str:
    """The report as markdown text; ``figures`` maps captions to relative image paths."""
    c, p = comparison.counts, comparison.parameters
    lines = [f"# {title}", ""]
    if preamble:
        lines += [preamble.strip(), ""]
    lines += [
        "## Matching rule",
        "",
        f"Events pair up when their origin times differ by at most {p['time_tolerance']} s and, when both "
        f"have epicentres, the epicentres lie within {p['distance_tolerance_km']} km. Pairs are taken "
        "greedily, smallest origin-time difference first; each event is used at most once. Picks pair up "
        f"by station, phase and nearest time within {p['pick_tolerance']} s.",
        "",
        "## Counts",
        "",
        "| reference | ours | matched | missed | new | precision | recall |",
        "|---|---|---|---|---|---|---|",
        f"| {c['reference']} | {c['ours']} | {c['matched']} | {c['missed']} | {c['new']} | "
        f"{_fmt(c['precision'])} | {_fmt(c['recall'])} |",
        "",
    ]
    bm = comparison.by_magnitude
    if bm["reference"].sum():
        lines += ["## Recall by reference magnitude", "", "| magnitude | reference | matched | recall |", "|---|---|---|---|"]
        lines += [f"| {r.magnitude} | {r.reference} | {r.matched} | {_fmt(r.recall)} |" for r in bm.itertuples(index=False)]
        lines += [
            "",
            f"Recall for M >= 1.5: {_fmt(comparison.recall(1.5))}. Precision for M >= 1.5 (lower bound: our "
            f"events carry no magnitude, so every new event counts as false): {_fmt(comparison.precision(1.5))}.",
            "",
        ]
    m = comparison.matches
    if len(m):
        lines += [
            "## Differences of matched events (ours minus reference)",
            "",
            "| quantity | median | median absolute deviation | 90th percentile of absolute value |",
            "|---|---|---|---|",
        ]
        for label, col in (("origin time (s)", "dt_s"), ("epicentre offset (km)", "distance_km"), ("depth (km)", "ddepth_km")):
            v = m[col].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            if len(v):
                med = np.median(v)
                lines.append(f"| {label} | {med:+.2f} | {np.median(np.abs(v - med)):.2f} | {np.percentile(np.abs(v), 90):.2f} |")
        lines.append("")
    if comparison.pick_counts:
        pc = comparison.pick_counts
        lines += [
            "## Picks",
            "",
            f"Reference picks {pc['reference']}, ours {pc['ours']}, matched {pc['matched']} "
            f"(P {pc['matched_P']}, S {pc['matched_S']}).",
            "",
        ]
        pm = comparison.pick_matches
        for phase in ("P", "S"):
            v = pm.loc[pm["phase"] == phase, "residual_s"].to_numpy(dtype=float)
            if len(v):
                lines.append(f"- {phase}: median residual {np.median(v):+.3f} s, MAD {np.median(np.abs(v - np.median(v))):.3f} s, n={len(v)}")
        lines.append("")
    for caption, rel in (figures or {}).items():
        lines += [f"![{caption}]({rel})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def write_report(comparison, out_dir, *, title: str = "Catalog comparison", preamble: str = "",
                 stations: pd.DataFrame | None = None, name: str = "report.md", tables: bool = False) -> Path:
    """Write ``report.md`` with residual histograms, an event map and recall per magnitude into
    ``out_dir``; with ``tables`` also ``matches.csv``, ``missed.csv`` and ``new.csv`` (these hold
    reference-catalog rows: leave them out where agency data must not be copied)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "Residuals of matched events": plot_residuals(comparison, out / "residuals.png").name,
        "Matched, missed and new events": plot_map(comparison, out / "map.png", stations).name,
    }
    if comparison.by_magnitude["reference"].sum():
        figures["Reference events and matches per magnitude bin"] = plot_recall_by_magnitude(comparison, out / "recall_by_magnitude.png").name
    if tables:
        comparison.matches.to_csv(out / "matches.csv", index=False)
        comparison.missed.to_csv(out / "missed.csv", index=False)
        comparison.new.to_csv(out / "new.csv", index=False)
    path = out / name
    path.write_text(markdown(comparison, figures, title, preamble))
    return path
