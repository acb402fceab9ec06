"""Comparison of a catalog with a reference (agency) catalog: events one-to-one, then picks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .tables import CatalogTable, read_catalog
from .times import seconds, to_utc

DEFAULT_MAGNITUDE_BINS = (-np.inf, 1.0, 1.5, 2.0, 2.5, 3.0, np.inf)


@dataclass
class CatalogComparison:
    """Outcome of :func:`compare`.

    ``matches``: one row per matched pair (``ref_event_id, our_event_id, ref_time, our_time, dt_s``
    (ours minus reference), ``distance_km`` (epicentral), ``ddepth_km`` (ours minus reference),
    ``magnitude``). ``missed``: reference events without a match; ``new``: our events without one.
    ``pick_matches``: pick pairs (``station, phase, residual_s``) when both sides have picks.
    ``counts``: reference, ours, matched, missed, new, precision, recall.
    ``by_magnitude``: recall per reference-magnitude bin.
    """

    matches: pd.DataFrame
    missed: pd.DataFrame
    new: pd.DataFrame
    pick_matches: pd.DataFrame
    pick_counts: dict[str, Any]
    counts: dict[str, Any]
    by_magnitude: pd.DataFrame
    ours: CatalogTable
    reference: CatalogTable
    parameters: dict[str, Any]

    def recall(self, min_magnitude: float | None = None) -> float:
        """Matched reference events / reference events (with magnitude >= ``min_magnitude``)."""
        ref = self.reference.events
        if min_magnitude is not None:
            ref = ref[ref["magnitude"] >= min_magnitude]
        if len(ref) == 0:
            return float("nan")
        return float(ref["event_id"].isin(self.matches["ref_event_id"]).mean())

    def precision(self, min_magnitude: float | None = None) -> float:
        """Matched ours / ours. With ``min_magnitude``: our events matched to a reference event of
        that magnitude or more, over those plus our unmatched events. Every unmatched event
        counts as a false one in every magnitude range, whatever its own magnitude: a lower
        bound (see :meth:`precision_by_our_magnitude` for one that uses our magnitudes)."""
        if min_magnitude is None:
            n = self.counts["ours"]
            return float(self.counts["matched"] / n) if n else float("nan")
        tp = int((self.matches["magnitude"] >= min_magnitude).sum())
        denom = tp + len(self.new)
        return float(tp / denom) if denom else float("nan")

    def precision_by_our_magnitude(self, min_magnitude: float) -> float:
        """Among our events with our own magnitude >= ``min_magnitude``: the fraction matched.
        NaN when our catalog has no magnitudes. Its reliability is that of our magnitudes."""
        ours = self.ours.events
        if "magnitude" not in ours.columns or ours["magnitude"].isna().all():
            return float("nan")
        sel = ours[ours["magnitude"] >= min_magnitude]
        if len(sel) == 0:
            return float("nan")
        return float(sel["event_id"].isin(self.matches["our_event_id"]).mean())

    def magnitude_differences(self) -> np.ndarray:
        """Our magnitude minus the reference's, per matched pair where both exist."""
        d = self.matches["our_magnitude"].to_numpy(dtype=float) - self.matches["magnitude"].to_numpy(dtype=float)
        return d[np.isfinite(d)]

    def summary(self) -> str:
        c = self.counts
        lines = [
            f"reference {c['reference']}, ours {c['ours']}, matched {c['matched']}, "
            f"missed {c['missed']}, new {c['new']}",
            f"precision {c['precision']:.3f}, recall {c['recall']:.3f}",
        ]
        if len(self.matches):
            m = self.matches
            lines.append(
                f"origin time ours-ref: median {m['dt_s'].median():+.2f} s, MAD {_mad(m['dt_s']):.2f} s; "
                f"epicentre offset median {m['distance_km'].median():.2f} km"
                + (f"; depth ours-ref median {m['ddepth_km'].median():+.2f} km" if m["ddepth_km"].notna().any() else "")
            )
        if self.pick_counts:
            pc = self.pick_counts
            lines.append(
                f"picks: reference {pc['reference']}, ours {pc['ours']}, matched {pc['matched']} "
                f"(P {pc['matched_P']}, S {pc['matched_S']}) within {self.parameters['pick_tolerance']} s"
            )
        return "\n".join(lines)


def _mad(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.median(np.abs(x - np.median(x)))) if len(x) else float("nan")


def epicentral_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Epicentral distance (km) on the WGS84 ellipsoid (pyproj.Geod); NaN where a coordinate is NaN."""
    from pyproj import Geod

    lat1, lon1, lat2, lon2 = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (lat1, lon1, lat2, lon2)))
    _, _, dist = Geod(ellps="WGS84").inv(lon1.ravel(), lat1.ravel(), lon2.ravel(), lat2.ravel())
    dist = np.asarray(dist, dtype=float).reshape(lat1.shape) / 1000.0
    return np.where(np.isfinite(lat1 + lon1 + lat2 + lon2), dist, np.nan)


def compare(
    ours,
    reference,
    *,
    time_tolerance: float = 3.0,
    distance_tolerance_km: float = 15.0,
    pick_tolerance: float = 0.5,
    magnitude_bins=DEFAULT_MAGNITUDE_BINS,
    start=None,
    end=None,
) -> CatalogComparison:
    """Match our catalog with a reference (agency) catalog, event to event and pick to pick.

    Either side is anything :func:`read_catalog` reads. Matching rule: every pair of events
    within ``time_tolerance`` seconds in origin time, and - when both have epicentres - within
    ``distance_tolerance_km``, is a candidate; candidates are taken greedily in order of increasing
    origin-time difference (then distance), each event used at most once. Picks of matched events
    pair up one-to-one by station (``NET.STA``), phase and nearest time within ``pick_tolerance``.
    A side that is a bare picks table (no event ids) is compared pick by pick only.

    :param start: / :param end: restrict both catalogs to this time span (UTC), e.g. the span
        the picks cover.
    """
    ours_t = read_catalog(ours, name="ours", expect_magnitude=False)
    ref_t = read_catalog(reference, name="reference")
    for table in (ours_t, ref_t):
        if start is not None or end is not None:
            lo = to_utc(pd.Series([start]), "start")[0] if start is not None else None
            hi = to_utc(pd.Series([end]), "end")[0] if end is not None else None
            for attr in ("events", "picks"):
                df = getattr(table, attr)
                keep = np.ones(len(df), bool)
                if lo is not None:
                    keep &= (df["time"] >= lo).to_numpy()
                if hi is not None:
                    keep &= (df["time"] < hi).to_numpy()
                setattr(table, attr, df[keep].reset_index(drop=True))
    ev_o, ev_r = ours_t.events.reset_index(drop=True), ref_t.events.reset_index(drop=True)

    to, tr = seconds(ev_o["time"]), seconds(ev_r["time"])
    order = np.argsort(tr)
    tr_sorted = tr[order]
    pairs_i, pairs_j = [], []
    for i, t in enumerate(to):
        lo, hi = np.searchsorted(tr_sorted, [t - time_tolerance, t + time_tolerance + 1e-9])
        pairs_i += [i] * int(hi - lo)
        pairs_j += list(order[lo:hi])
    ci, cj = np.array(pairs_i, dtype=int), np.array(pairs_j, dtype=int)
    lat_o, lon_o = ev_o["latitude"].to_numpy(dtype=float), ev_o["longitude"].to_numpy(dtype=float)
    lat_r, lon_r = ev_r["latitude"].to_numpy(dtype=float), ev_r["longitude"].to_numpy(dtype=float)
    dist = epicentral_km(lat_o[ci], lon_o[ci], lat_r[cj], lon_r[cj]) if len(ci) else np.array([])
    keep = ~(np.isfinite(dist) & (dist > distance_tolerance_km))
    cand = [(abs(to[i] - tr[j]), d if np.isfinite(d) else 0.0, i, j)
            for i, j, d in zip(ci[keep], cj[keep], dist[keep])]
    cand.sort()
    used_o, used_r, pairs = set(), set(), []
    for dt, dist, i, j in cand:
        if i in used_o or j in used_r:
            continue
        used_o.add(i)
        used_r.add(j)
        pairs.append((i, j))
    oi = np.array([p[0] for p in pairs], dtype=int)
    ri = np.array([p[1] for p in pairs], dtype=int)
    matches = pd.DataFrame(
        {
            "ref_event_id": ev_r["event_id"].to_numpy()[ri],
            "our_event_id": ev_o["event_id"].to_numpy()[oi],
            "ref_time": ev_r["time"].to_numpy()[ri],
            "our_time": ev_o["time"].to_numpy()[oi],
            "dt_s": to[oi] - tr[ri],
            "distance_km": epicentral_km(ev_o["latitude"].to_numpy()[oi], ev_o["longitude"].to_numpy()[oi],
                                          ev_r["latitude"].to_numpy()[ri], ev_r["longitude"].to_numpy()[ri]),
            "ddepth_km": ev_o["depth_km"].to_numpy(dtype=float)[oi] - ev_r["depth_km"].to_numpy(dtype=float)[ri],
            "ref_latitude": ev_r["latitude"].to_numpy()[ri],
            "ref_longitude": ev_r["longitude"].to_numpy()[ri],
            "our_latitude": ev_o["latitude"].to_numpy()[oi],
            "our_longitude": ev_o["longitude"].to_numpy()[oi],
            "magnitude": ev_r["magnitude"].to_numpy(dtype=float)[ri],
            "our_magnitude": (ev_o["magnitude"].to_numpy(dtype=float)[oi] if "magnitude" in ev_o.columns
                              else np.full(len(oi), np.nan)),
        }
    ).sort_values("ref_time").reset_index(drop=True)
    missed = ev_r[~ev_r.index.isin(ri)].reset_index(drop=True)
    new = ev_o[~ev_o.index.isin(oi)].reset_index(drop=True)
    n_o, n_r, n_m = len(ev_o), len(ev_r), len(matches)
    counts = dict(
        reference=n_r, ours=n_o, matched=n_m, missed=len(missed), new=len(new),
        precision=n_m / n_o if n_o else float("nan"), recall=n_m / n_r if n_r else float("nan"),
    )

    mags = ev_r["magnitude"].to_numpy(dtype=float)
    matched_ref = ev_r.index.isin(ri)
    rows = []
    edges = list(magnitude_bins)
    for lo_m, hi_m in zip(edges[:-1], edges[1:]):
        sel = (mags >= lo_m) & (mags < hi_m)
        label = f"M < {hi_m:g}" if not np.isfinite(lo_m) else (f"M >= {lo_m:g}" if not np.isfinite(hi_m) else f"{lo_m:g} <= M < {hi_m:g}")
        rows.append((label, int(sel.sum()), int((sel & matched_ref).sum())))
    if np.isnan(mags).any():
        sel = np.isnan(mags)
        rows.append(("unknown", int(sel.sum()), int((sel & matched_ref).sum())))
    by_mag = pd.DataFrame(rows, columns=["magnitude", "reference", "matched"])
    by_mag["recall"] = by_mag["matched"] / by_mag["reference"].where(by_mag["reference"] > 0)

    pick_matches, pick_counts = _compare_picks(ours_t, ref_t, matches, pick_tolerance)
    params = dict(time_tolerance=time_tolerance, distance_tolerance_km=distance_tolerance_km,
                  pick_tolerance=pick_tolerance, start=start, end=end,
                  rule="greedy one-to-one, smallest origin-time difference first")
    return CatalogComparison(matches, missed, new, pick_matches, pick_counts, counts, by_mag, ours_t, ref_t, params)


def _netsta(ids: pd.Series) -> pd.Series:
    return ids.astype(str).str.split(".").str[:2].str.join(".")


def _compare_picks(ours: CatalogTable, ref: CatalogTable, matches: pd.DataFrame, tolerance: float):
    """Pair picks one-to-one by station, phase and nearest time; per matched event pair when both
    sides have event ids, else over the whole tables."""
    po, pr = ours.picks, ref.picks
    if len(po) == 0 or len(pr) == 0:
        return pd.DataFrame(columns=["ref_event_id", "our_event_id", "station", "phase", "ref_time", "our_time", "residual_s"]), {}
    po = po.assign(key=_netsta(po["station"]), t=seconds(po["time"]))
    pr = pr.assign(key=_netsta(pr["station"]), t=seconds(pr["time"]))
    by_event = po["event_id"].notna().all() and pr["event_id"].notna().all() and len(ours.events) and len(ref.events)
    if by_event:
        pair_of = dict(zip(matches["ref_event_id"], matches["our_event_id"]))
        pr = pr[pr["event_id"].isin(pair_of)].assign(pair=lambda d: d["event_id"].map(pair_of))
        po = po.assign(pair=po["event_id"])
    else:
        pr, po = pr.assign(pair=0), po.assign(pair=0)
    rows = []
    for (pair, key, phase), g_r in pr.groupby(["pair", "key", "phase"]):
        g_o = po[(po["pair"] == pair) & (po["key"] == key) & (po["phase"] == phase)]
        if len(g_o) == 0:
            continue
        d = np.abs(g_r["t"].to_numpy()[:, None] - g_o["t"].to_numpy()[None, :])
        cands = sorted((d[a, b], a, b) for a, b in zip(*np.nonzero(d <= tolerance)))
        ua, ub = set(), set()
        for dd, a, b in cands:
            if a in ua or b in ub:
                continue
            ua.add(a)
            ub.add(b)
            rr, oo = g_r.iloc[a], g_o.iloc[b]
            rows.append((rr["event_id"], oo["event_id"], key, phase, rr["time"], oo["time"], oo["t"] - rr["t"]))
    pm = pd.DataFrame(rows, columns=["ref_event_id", "our_event_id", "station", "phase", "ref_time", "our_time", "residual_s"])
    counts = dict(
        reference=len(pr), ours=len(po), matched=len(pm),
        matched_P=int((pm["phase"] == "P").sum()), matched_S=int((pm["phase"] == "S").sum()),
        by_event=bool(by_event),
    )
    return pm, counts
