"""Figures and a markdown report for a :class:`~seisbench_feq.catalog.CatalogComparison`.

Plain matplotlib (Agg backend, no basemap or tiles to download): residual histograms, an event
map in longitude/latitude with an equal-distance aspect, stations, a scale bar and a depth
section, and recall per magnitude bin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _subplots(*args, figsize, **kwargs):
    """A figure without pyplot: no global backend switch, nothing left open."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def _save(fig, path, layout: bool = True) -> Path:
    from ..io.files import atomic_write

    if layout:
        fig.tight_layout()
    path = Path(path)
    return atomic_write(path, lambda p: fig.savefig(p, dpi=110, format=path.suffix.lstrip(".") or "png"))


def plot_residuals(comparison, path) -> Path:
    """Histograms: origin-time and epicentre differences of matched events, depth differences,
    and P and S pick residuals (ours minus reference when the reference has picks; otherwise the
    travel-time residuals of our located events)."""
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
    fig, axes = _subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2))
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


def _scale_bar_km(span_km: float) -> float:
    """A round length near a fifth of the map width."""
    target = max(span_km / 5.0, 1e-3)
    base = 10 ** np.floor(np.log10(target))
    return float(max((m * base for m in (1, 2, 5, 10) if m * base <= target), default=base))


def plot_map(comparison, path, stations: pd.DataFrame | None = None) -> Path:
    """Map and depth section of matched (reference location), missed and new events, with the
    stations when known and a scale bar. Drawing order, bottom to top: new, missed, matched,
    stations (matched events are drawn above missed ones, as asked for by readers who look for
    what was found)."""
    from pyproj import Geod

    m, missed, new = comparison.matches, comparison.missed, comparison.new
    stations = stations if stations is not None else comparison.ours.stations
    layers = [  # (label, lon, lat, depth, style, zorder)
        (f"new ({len(new)})", new["longitude"], new["latitude"], new["depth_km"],
         dict(s=8, c="tab:blue", marker="+", alpha=0.45, linewidths=0.8), 2),
        (f"missed ({len(missed)})", missed["longitude"], missed["latitude"], missed["depth_km"],
         dict(s=16, c="tab:red", marker="x", linewidths=1.0), 3),
        (f"matched ({len(m)}, reference location)", m["ref_longitude"], m["ref_latitude"],
         _ref_depth(comparison), dict(s=9, c="tab:green", alpha=0.7, edgecolors="none"), 4),
    ]
    has_stations = stations is not None and len(stations)
    lons = np.concatenate([np.asarray(x, dtype=float) for _, x, _, _, _, _ in layers]
                          + ([stations["longitude"].to_numpy(dtype=float)] if has_stations else []) + [[np.nan]])
    lats = np.concatenate([np.asarray(y, dtype=float) for _, _, y, _, _, _ in layers]
                          + ([stations["latitude"].to_numpy(dtype=float)] if has_stations else []) + [[np.nan]])
    if not np.isfinite(lons).any():
        lons, lats = np.array([-0.5, 0.5]), np.array([-0.5, 0.5])
    lat0 = float(np.nanmedian(lats))
    squash = np.cos(np.radians(lat0))
    pad_lon = 0.06 * (np.nanmax(lons) - np.nanmin(lons)) + 0.01
    pad_lat = 0.08 * (np.nanmax(lats) - np.nanmin(lats)) + 0.01
    xlim = (np.nanmin(lons) - pad_lon, np.nanmax(lons) + pad_lon)
    ylim = (np.nanmin(lats) - 1.6 * pad_lat, np.nanmax(lats) + pad_lat)  # room for the scale bar
    # the map's height follows the area's shape, so that map and section share one longitude axis
    ratio = (ylim[1] - ylim[0]) / ((xlim[1] - xlim[0]) * squash)
    map_height = float(np.clip(5.6 * ratio, 2.5, 9.0))
    fig, (ax, sec) = _subplots(2, 1, figsize=(7.0, map_height + 2.9), sharex=True,
                               gridspec_kw={"height_ratios": [map_height, 2.0]})
    for label, lon, lat, depth, style, z in layers:
        ax.scatter(lon, lat, label=label, zorder=z, **style)
        sec.scatter(lon, depth, zorder=z, **style)
    if has_stations:
        ax.scatter(stations["longitude"], stations["latitude"], s=70, marker="^", c="k", zorder=5,
                   label=f"stations ({len(stations)})")
        sec.scatter(stations["longitude"], -stations["elevation"].astype(float) / 1000.0, s=50, marker="^",
                    c="k", zorder=5, clip_on=False)
        for s in stations.itertuples(index=False):
            ax.annotate(str(s.id).split(".")[1], (s.longitude, s.latitude), fontsize=7, xytext=(3, 3),
                        textcoords="offset points", zorder=6)
    ax.tick_params(labelbottom=True)
    width_km = Geod(ellps="WGS84").inv(xlim[0], lat0, xlim[1], lat0)[2] / 1000.0
    bar = _scale_bar_km(width_km)
    deg = bar / (111.195 * squash)
    x0, y0 = xlim[0] + 0.04 * (xlim[1] - xlim[0]), ylim[0] + 0.35 * 1.6 * pad_lat
    ax.plot([x0, x0 + deg], [y0, y0], color="k", lw=3, solid_capstyle="butt", zorder=7)
    ax.annotate(f"{bar:g} km", (x0 + deg / 2, y0), xytext=(0, 4), textcoords="offset points", ha="center",
                fontsize=8, zorder=7)
    ax.set_ylabel("latitude (°)")
    # above the map, so that it covers neither events nor stations
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=2, frameon=False)
    ax.grid(alpha=0.3)
    sec.invert_yaxis()
    sec.set_xlabel("longitude (°)")
    sec.set_ylabel("depth (km)")
    sec.set_title("depth section (all latitudes, projected on longitude)", fontsize=9)
    sec.grid(alpha=0.3)
    fig.tight_layout()
    _equal_distance_limits(ax, xlim, ylim, squash)
    return _save(fig, path, layout=False)


def _equal_distance_limits(ax, xlim, ylim, squash: float) -> None:
    """Widen the longitude or latitude range (never narrow it) so that one km is as long in x as
    in y on the axes as laid out; the axes keep their full width, so a shared longitude axis
    below lines up (``set_aspect`` would shrink the box or crop the limits instead)."""
    bbox = ax.get_position()
    width, height = bbox.width * ax.figure.get_figwidth(), bbox.height * ax.figure.get_figheight()
    dx, dy = (xlim[1] - xlim[0]) * squash, ylim[1] - ylim[0]
    if dy / dx < height / width:  # too little latitude for the box: widen it
        extra = (dx * height / width - dy) / 2
        ylim = (ylim[0] - extra, ylim[1] + extra)
    else:
        extra = (dy * width / height - dx) / 2 / squash
        xlim = (xlim[0] - extra, xlim[1] + extra)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)


def _ref_depth(comparison) -> pd.Series:
    """Reference depth of each matched pair (the matches table holds the depth difference only)."""
    ref = comparison.reference.events.set_index("event_id")["depth_km"]
    return comparison.matches["ref_event_id"].map(ref).astype(float)


def plot_recall_by_magnitude(comparison, path) -> Path:
    bm = comparison.by_magnitude
    fig, ax = _subplots(figsize=(6, 3.2))
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
            f"Recall for M >= 1.5: {_fmt(comparison.recall(1.5))}. Precision for M >= 1.5 (lower bound: every "
            f"new event counts as false whatever its size): {_fmt(comparison.precision(1.5))}.",
            "",
        ]
    dm = comparison.magnitude_differences()
    if len(dm):
        med = float(np.median(dm))
        lines += [
            "## Magnitudes",
            "",
            f"Our magnitude minus the reference's over {len(dm)} matched events: median {med:+.2f}, "
            f"median absolute deviation {np.median(np.abs(dm - med)):.2f}. Among our events with our magnitude "
            f">= 1.5, {_fmt(comparison.precision_by_our_magnitude(1.5))} are matched (a precision that uses "
            "our magnitudes).",
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
        from ..io.files import atomic_write

        for table_name, table in (("matches", comparison.matches), ("missed", comparison.missed), ("new", comparison.new)):
            atomic_write(out / f"{table_name}.csv", lambda p, t=table: t.to_csv(p, index=False))
    from ..io.files import atomic_write_text

    return atomic_write_text(out / name, markdown(comparison, figures, title, preamble))
