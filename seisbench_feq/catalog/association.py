"""Association and location: picks across stations become located events (PyOcto).

PyOcto (``pip install pyocto``) is imported only inside :func:`associate`.
"""

from __future__ import annotations

import hashlib
import logging
import time as _time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .readers import match_station_ids, read_picks, read_stations
from .times import from_seconds, seconds
from .velocity import pyocto_velocity_model

logger = logging.getLogger("seisbench_feq.catalog")


@dataclass
class AssociationResult:
    """What :func:`associate` found.

    ``events``: one row per event (``event_id, time, latitude, longitude, depth_km, x, y`` (km in
    the local projection), ``n_picks, n_p_picks, n_s_picks, n_stations, rms_residual_s,
    azimuthal_gap, min_distance_km``, and ``magnitude, magnitude_type`` when a magnitude was
    computed). ``picks``: the associated picks (``event_id, station`` (``NET.STA.LOC``), ``phase,
    time, probability, residual_s`` (observed minus predicted), ``distance_km, azimuth`` plus the
    pick table's other columns). ``magnitudes`` / ``station_magnitudes``: see
    :func:`seisbench_feq.catalog.magnitude.local_magnitudes`. ``reason`` says why nothing was
    associated, when nothing was.
    """

    events: pd.DataFrame
    picks: pd.DataFrame
    stations: pd.DataFrame
    n_input_picks: int
    parameters: dict[str, Any]
    picker: str | None = None
    reason: str | None = None
    runtime_s: float = 0.0
    diagnostics: list[str] = field(default_factory=list)
    magnitudes: pd.DataFrame | None = None
    station_magnitudes: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.events)

    def summary(self) -> str:
        if self.reason:
            return f"no events: {self.reason}"
        text = (f"{len(self.events)} events from {len(self.picks)} of {self.n_input_picks} picks "
                f"({len(self.stations)} stations) in {self.runtime_s:.1f} s")
        if self.magnitudes is not None and len(self.magnitudes):
            text += f"; {len(self.magnitudes)} with {self.magnitudes['magnitude_type'].iloc[0]}"
        return text


def default_parameters() -> dict[str, Any]:
    """The defaults of :func:`associate`, tuned for a local network (tens of km, shallow crust)."""
    return dict(
        velocity_model="socal", vp=6.0, vp_vs_ratio=1.73, tolerance=1.0, pick_match_tolerance=1.0,
        min_p_picks=4, min_s_picks=2, min_p_and_s_stations=2, min_picks=8, depth_range_km=(0.0, 30.0),
        margin_km=30.0, min_interevent_time=1.0, min_probability=0.0, duplicate_tolerance=0.1,
        time_slicing=1200.0, n_threads=None, block_seconds=3600.0, magnitude="hutton-boore-1987",
        dominant_frequency_hz=5.0,
    )


def associate(
    picks,
    stations,
    velocity_model="socal",
    *,
    vp: float = 6.0,
    vp_vs_ratio: float = 1.73,
    tolerance: float = 1.0,
    pick_match_tolerance: float = 1.0,
    min_p_picks: int = 4,
    min_s_picks: int = 2,
    min_p_and_s_stations: int = 2,
    min_picks: int = 8,
    depth_range_km: tuple[float, float] = (0.0, 30.0),
    margin_km: float = 30.0,
    area: dict[str, tuple[float, float]] | None = None,
    min_interevent_time: float = 1.0,
    min_probability: float = 0.0,
    duplicate_tolerance: float = 0.1,
    time_slicing: float = 1200.0,
    n_threads: int | None = None,
    picker: str | None = None,
    table_dir=None,
    block_seconds: float | None = 3600.0,
    checkpoint_dir=None,
    magnitude: str | None = "hutton-boore-1987",
    dominant_frequency_hz: float = 5.0,
    **pyocto_params,
) -> AssociationResult:
    """Associate picks into events and locate them with PyOcto.

    :param picks: anything :func:`~seisbench_feq.catalog.readers.read_picks` reads (PickList,
        ClassifyOutput, DataFrame, pick file).
    :param stations: anything :func:`~seisbench_feq.catalog.readers.read_stations` reads
        (Inventory, DataFrame, CSV, StationXML).
    :param velocity_model: ``"socal"`` (Hadley-Kanamori 1-D layered model of Southern California,
        the default), ``"homogeneous"`` (constant ``vp`` and ``vp / vp_vs_ratio``), a DataFrame or
        CSV of layers (``depth`` of the layer top in km, ``vp``, optional ``vs`` in km/s), or a
        ``pyocto`` velocity model object.
    :param vp: P velocity (km/s) of the homogeneous model.
    :param vp_vs_ratio: Vp/Vs, for the homogeneous model and for layered models without ``vs``.
    :param tolerance: travel-time tolerance (s) while grouping picks: how far an observed arrival
        may be from the model's prediction (model error plus pick error).
    :param pick_match_tolerance: after locating, picks within this many seconds of the predicted
        arrival are attached to the event.
    :param min_p_picks: minimum number of P picks (one per station) for an event.
    :param min_s_picks: minimum number of S picks.
    :param min_p_and_s_stations: minimum number of stations with both a P and an S pick.
    :param min_picks: minimum number of picks (P + S) for an event.
    :param depth_range_km: depth range searched for hypocentres, km below sea level.
    :param margin_km: the search area is the stations' bounding box plus this margin (km).
    :param area: or an explicit search area ``{"latitude": (min, max), "longitude": (min, max)}``.
    :param min_interevent_time: two events closer in origin time than this (s) are one event.
    :param min_probability: picks below this probability are not used.
    :param duplicate_tolerance: see :func:`~seisbench_feq.catalog.readers.read_picks`.
    :param time_slicing: PyOcto processes the picks in blocks of this many seconds.
    :param n_threads: PyOcto threads (default: all cores).
    :param picker: name of the picking model, recorded in the QuakeML (e.g. ``"FEQ3"``).
    :param table_dir: where layered travel-time tables are cached (default: the temp dir).
    :param block_seconds: picks are associated in blocks of this length (with a tqdm bar when
        there are several); each block also sees the picks one network travel time before and
        after it, and keeps the events whose origin time falls inside it. ``None``: one block.
    :param checkpoint_dir: finished blocks are saved here, and a rerun with the same picks,
        stations and parameters resumes from them.
    :param magnitude: local-magnitude formula for events whose picks carry amplitudes in
        physical units (see :mod:`seisbench_feq.catalog.magnitude`); ``None``: no magnitudes.
    :param dominant_frequency_hz: turns peak velocities into Wood-Anderson amplitudes (see there).
    :param pyocto_params: passed to ``pyocto.OctoAssociator`` unchanged (e.g. ``min_pick_fraction``).
    :return: :class:`AssociationResult`; ``reason`` tells why it is empty when it is.
    """
    import pyocto

    started = _time.perf_counter()
    params = dict(
        velocity_model=velocity_model if isinstance(velocity_model, str) else type(velocity_model).__name__,
        vp=vp, vp_vs_ratio=vp_vs_ratio, tolerance=tolerance, pick_match_tolerance=pick_match_tolerance,
        min_p_picks=min_p_picks, min_s_picks=min_s_picks, min_p_and_s_stations=min_p_and_s_stations,
        min_picks=min_picks, depth_range_km=tuple(depth_range_km), margin_km=margin_km, area=area,
        min_interevent_time=min_interevent_time, min_probability=min_probability,
        duplicate_tolerance=duplicate_tolerance, time_slicing=time_slicing, block_seconds=block_seconds,
        **pyocto_params,
    )
    if picker is None and hasattr(picks, "creator"):
        picker = picks.creator
    pick_df = read_picks(picks, duplicate_tolerance=duplicate_tolerance)
    if picker is None and "model" in pick_df.columns and pick_df["model"].astype(str).str.len().gt(0).any():
        picker = str(pick_df.loc[pick_df["model"].astype(str).str.len() > 0, "model"].iloc[0])
    station_df = read_stations(stations)
    n_input = len(pick_df)
    diagnostics: list[str] = []

    def empty(reason: str) -> AssociationResult:
        logger.warning("nothing associated: %s", reason)
        return AssociationResult(_empty_result_events(), _empty_result_picks(), station_df, n_input, params,
                                 picker, reason, _time.perf_counter() - started, diagnostics + [reason])

    if n_input == 0:
        return empty("the pick set is empty")
    if min_probability > 0:
        keep = pick_df["probability"].fillna(1.0) >= min_probability
        if (~keep).any():
            diagnostics.append(f"{int((~keep).sum())} picks below probability {min_probability} not used")
        pick_df = pick_df[keep]

    matched = match_station_ids(pick_df["station"], station_df["id"])
    unknown = matched.isna().to_numpy()
    if unknown.any():
        counts = pick_df.loc[unknown, "station"].value_counts().to_dict()
        msg = f"{int(unknown.sum())} picks from stations missing from the station list are not used: {counts}"
        logger.warning(msg)
        diagnostics.append(msg)
    pick_df = pick_df.assign(station=matched)[~unknown].reset_index(drop=True)
    if len(pick_df) == 0:
        return empty("no pick comes from a station with coordinates (station ids in the picks and in the "
                     "station list do not match, or the stations lack latitude/longitude)")
    n_p_stations = pick_df.loc[pick_df["phase"] == "P", "station"].nunique()
    n_stations = pick_df["station"].nunique()
    need = max(min_p_picks, min_p_and_s_stations)
    if n_p_stations < need:
        return empty(
            f"too few stations: {n_p_stations} stations with P picks and coordinates "
            f"({n_stations} with any pick), an event needs {need} (min_p_picks={min_p_picks}, "
            f"min_p_and_s_stations={min_p_and_s_stations})"
        )

    st = station_df[station_df["id"].isin(pick_df["station"].unique())].reset_index(drop=True)
    # PyOcto's projection: transverse Mercator (km) centred on the stations' (or area's) box
    bounds = st if area is None else pd.DataFrame({"latitude": area["latitude"], "longitude": area["longitude"]})
    crs = pyocto.OctoAssociator.get_crs(bounds)
    from pyproj import CRS, Transformer

    left, bottom, right, top = Transformer.from_crs(CRS.from_epsg(4326), crs).transform_bounds(
        bounds["latitude"].min(), bounds["longitude"].min(), bounds["latitude"].max(), bounds["longitude"].max())
    margin = 0.0 if area is not None else margin_km
    xlim, ylim = (float(left - margin), float(right + margin)), (float(bottom - margin), float(top + margin))
    zlim = (float(depth_range_km[0]), float(depth_range_km[1]))
    max_distance = float(np.hypot(xlim[1] - xlim[0], ylim[1] - ylim[0])) + 10.0

    model, model_name, vs_min = pyocto_velocity_model(
        velocity_model, vp=vp, vp_vs_ratio=vp_vs_ratio, tolerance=tolerance, max_distance_km=max_distance,
        max_depth_km=zlim[1], table_dir=table_dir)
    params["velocity_model_name"] = model_name
    if zlim[0] < 0 and isinstance(model, pyocto.VelocityModel1D):
        raise ValueError("depth_range_km must start at or below 0 km with a layered model (PyOcto limit)")

    # longest S travel time across the area: time slices must overlap by this much
    time_before = max_distance / vs_min + 5.0
    associator = pyocto.OctoAssociator(
        xlim=xlim, ylim=ylim, zlim=zlim, velocity_model=model, time_before=time_before,
        n_picks=min_picks, n_p_picks=min_p_picks, n_s_picks=min_s_picks,
        n_p_and_s_picks=min_p_and_s_stations, pick_match_tolerance=pick_match_tolerance,
        min_interevent_time=min_interevent_time, time_slicing=time_slicing, n_threads=n_threads,
        crs=crs, **pyocto_params,
    )
    st = associator.transform_stations(st.copy())  # x, y (km) and z = -elevation (km)
    octo_picks = pd.DataFrame({"station": pick_df["station"].to_numpy(), "time": seconds(pick_df["time"]),
                               "phase": pick_df["phase"].to_numpy(), "pick_row": np.arange(len(pick_df))})
    run_key = hashlib.sha1(
        repr((sorted((k, str(v)) for k, v in params.items()), st.round(6).to_csv(index=False))).encode()
    ).hexdigest()[:12]
    events, assignments = _associate_blocks(associator, octo_picks, st[["id", "x", "y", "z"]].copy(), block_seconds,
                                            time_before, checkpoint_dir, run_key)
    if len(events) == 0:
        return empty(
            f"PyOcto formed no event from {len(pick_df)} picks on {n_stations} stations with "
            f"min_p_picks={min_p_picks}, min_s_picks={min_s_picks}, "
            f"min_p_and_s_stations={min_p_and_s_stations}, tolerance={tolerance} s"
        )

    events = associator.transform_events(events.copy())  # latitude, longitude from x, y
    ev = pd.DataFrame({
        "event_id": [f"ev{i:06d}" for i in range(len(events))],
        "time": from_seconds(events["time"].to_numpy()),
        "latitude": events["latitude"].to_numpy(dtype=float),
        "longitude": events["longitude"].to_numpy(dtype=float),
        "depth_km": events["z"].to_numpy(dtype=float),
        "x": events["x"].to_numpy(dtype=float),
        "y": events["y"].to_numpy(dtype=float),
    })
    ids = dict(zip(events["idx"], ev["event_id"]))
    out_picks = pick_df.iloc[assignments["pick_row"].to_numpy()].reset_index(drop=True)
    out_picks.insert(0, "event_id", assignments["event_idx"].map(ids).to_numpy())
    out_picks["residual_s"] = assignments["residual"].to_numpy(dtype=float)
    out_picks = _add_distances(out_picks, ev, st)

    g = out_picks.groupby("event_id")
    ev = ev.set_index("event_id")
    ev["n_picks"] = g.size()
    ev["n_p_picks"] = g["phase"].apply(lambda p: int((p == "P").sum()))
    ev["n_s_picks"] = g["phase"].apply(lambda p: int((p == "S").sum()))
    ev["n_stations"] = g["station"].nunique()
    ev["rms_residual_s"] = g["residual_s"].apply(lambda r: float(np.sqrt(np.mean(r**2))))
    ev["azimuthal_gap"] = g["azimuth"].apply(azimuthal_gap)
    ev["min_distance_km"] = g["distance_km"].min()
    ev = ev.reset_index().sort_values("time").reset_index(drop=True)
    result = AssociationResult(ev, out_picks, st, n_input, params, picker, None, 0.0, diagnostics)
    if magnitude:
        from .magnitude import add_local_magnitudes

        add_local_magnitudes(result, formula=magnitude, dominant_frequency_hz=dominant_frequency_hz)
    result.runtime_s = _time.perf_counter() - started
    logger.info("association: %s", result.summary())
    return result


def _add_distances(picks: pd.DataFrame, events: pd.DataFrame, stations: pd.DataFrame) -> pd.DataFrame:
    """Epicentral distance (km) and event-to-station azimuth (degrees from north) on the WGS84
    ellipsoid (pyproj.Geod), as QuakeML arrivals give them."""
    from pyproj import Geod

    st = stations.set_index("id")
    ev = events.set_index("event_id")
    az, _, dist = Geod(ellps="WGS84").inv(
        ev.loc[picks["event_id"], "longitude"].to_numpy(), ev.loc[picks["event_id"], "latitude"].to_numpy(),
        st.loc[picks["station"], "longitude"].to_numpy(), st.loc[picks["station"], "latitude"].to_numpy())
    picks = picks.assign(distance_km=np.asarray(dist) / 1000.0, azimuth=np.asarray(az) % 360.0)
    return picks.sort_values(["event_id", "time"]).reset_index(drop=True)


def _associate_blocks(associator, picks: pd.DataFrame, stations: pd.DataFrame, block_seconds, pad: float,
                      checkpoint_dir, run_key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run PyOcto block by block. Returns events (``idx, time, x, y, z``) and assignments
    (``event_idx, pick_row, residual``) with ``idx`` unique over all blocks."""
    from tqdm.auto import tqdm

    t = picks["time"].to_numpy()
    if block_seconds is None or len(t) == 0 or t.max() - t.min() <= block_seconds:
        edges = [t.min() if len(t) else 0.0, (t.max() if len(t) else 0.0) + 1.0]
    else:
        start = np.floor(t.min() / block_seconds) * block_seconds
        edges = list(np.arange(start, t.max() + block_seconds, block_seconds))
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    all_events, all_assignments, offset = [], [], 0
    blocks = list(zip(edges[:-1], edges[1:]))
    for b0, b1 in tqdm(blocks, desc="associating", unit="block", disable=len(blocks) < 2):
        sel = (t >= b0 - pad) & (t < b1 + pad)
        block = picks[sel].reset_index(drop=True)
        key = hashlib.sha1(run_key.encode() + block[["station", "phase", "time"]].to_csv(index=False).encode()).hexdigest()[:16]
        ev_path = asg_path = None
        if folder is not None:
            ev_path = folder / f"block_{b0:.0f}_{key}_events.csv"
            asg_path = folder / f"block_{b0:.0f}_{key}_assignments.csv"
        if ev_path is not None and ev_path.exists() and asg_path.exists():
            events, asg = pd.read_csv(ev_path), pd.read_csv(asg_path)
        else:
            if len(block):
                with warnings.catch_warnings():  # pandas deprecation inside pyocto 0.1.4, not ours
                    warnings.filterwarnings("ignore", message="The inplace keyword", module="pyocto")
                    events, asg = associator.associate(block, stations)
            else:
                events, asg = pd.DataFrame(), pd.DataFrame()
            events = events.reindex(columns=["idx", "time", "x", "y", "z"])
            asg = asg.reindex(columns=["event_idx", "pick_row", "residual"])
            # keep the block's events plus a seam of 10 s on each side; duplicates across the seam
            # are removed below, so an event whose origin moves across a boundary is not lost
            events = events[(events["time"] >= b0 - 10.0) & (events["time"] < b1 + 10.0)]
            asg = asg[asg["event_idx"].isin(events["idx"])]
            if ev_path is not None:  # assignments first: the events file marks a block done
                from ..io.files import atomic_write

                atomic_write(asg_path, lambda p, a=asg: a.to_csv(p, index=False))
                atomic_write(ev_path, lambda p, e=events: e.to_csv(p, index=False))
        all_events.append(events.assign(idx=events["idx"] + offset, block=b0))
        all_assignments.append(asg.assign(event_idx=asg["event_idx"] + offset))
        offset += int(events["idx"].max()) + 1 if len(events) else 0
    events = pd.concat(all_events, ignore_index=True).sort_values("time").reset_index(drop=True)
    assignments = pd.concat(all_assignments, ignore_index=True)
    assignments["pick_row"] = assignments["pick_row"].astype(int)
    return _drop_seam_duplicates(events, assignments)


def _drop_seam_duplicates(events: pd.DataFrame, assignments: pd.DataFrame):
    """One event found by two neighbouring blocks shares most of its picks: keep the copy with
    more picks (the earlier block on a tie)."""
    if len(events) == 0 or events["block"].nunique() < 2:
        return events.drop(columns="block"), assignments
    block = dict(zip(events["idx"], events["block"]))
    n = assignments.groupby("event_idx").size()
    pairs = assignments.merge(assignments, on="pick_row")
    pairs = pairs[(pairs["event_idx_x"] < pairs["event_idx_y"])]
    pairs = pairs[pairs["event_idx_x"].map(block) != pairs["event_idx_y"].map(block)]
    shared = pairs.groupby(["event_idx_x", "event_idx_y"]).size()
    drop = set()
    for (a, b), k in shared.items():
        if k >= 0.5 * min(n[a], n[b]):
            drop.add(b if (n[a], -block[a]) >= (n[b], -block[b]) else a)
    events = events[~events["idx"].isin(drop)].drop(columns="block").reset_index(drop=True)
    return events, assignments[~assignments["event_idx"].isin(drop)].reset_index(drop=True)


def wadati_vp_vs(picks: pd.DataFrame, min_stations: int = 4) -> tuple[float, int]:
    """Vp/Vs from a Wadati diagram of associated picks (``event_id, station, phase, time``).

    For each event, S-P times grow with P arrival times as ``ts - tp = (Vp/Vs - 1) (tp - t0)``.
    Removing each event's mean of both axes eliminates its origin time, so the pooled slope needs
    neither origin times nor station coordinates nor a velocity model. Events with fewer than
    ``min_stations`` stations with both phases are skipped. Returns ``(vp_vs, n_stations_used)``.
    """
    both = picks.pivot_table(index=["event_id", "station"], columns="phase", values="time", aggfunc="first")
    if not {"P", "S"} <= set(both.columns):
        raise ValueError("Wadati diagram needs P and S picks on the same stations")
    both = both.dropna(subset=["P", "S"]).reset_index()
    tp = seconds(both["P"])
    sp = seconds(both["S"]) - tp
    df = pd.DataFrame({"event": both["event_id"], "tp": tp, "sp": sp})
    df = df[df.groupby("event")["tp"].transform("size") >= min_stations]
    if len(df) < min_stations:
        raise ValueError(f"Wadati diagram needs events with at least {min_stations} stations with P and S")
    x = df["tp"] - df.groupby("event")["tp"].transform("mean")
    y = df["sp"] - df.groupby("event")["sp"].transform("mean")
    return 1.0 + float((x * y).sum() / (x * x).sum()), len(df)


def azimuthal_gap(azimuths) -> float:
    """Largest gap (degrees) between the event-to-station azimuths."""
    a = np.sort(np.unique(np.asarray(azimuths, dtype=float) % 360.0))
    if len(a) < 2:
        return 360.0
    return float(np.max(np.diff(np.append(a, a[0] + 360.0))))


def _empty_result_events() -> pd.DataFrame:
    cols = ["event_id", "time", "latitude", "longitude", "depth_km", "x", "y", "n_picks", "n_p_picks",
            "n_s_picks", "n_stations", "rms_residual_s", "azimuthal_gap", "min_distance_km"]
    df = pd.DataFrame(columns=cols)
    df["time"] = pd.Series(dtype="datetime64[ns, UTC]")
    return df


def _empty_result_picks() -> pd.DataFrame:
    df = pd.DataFrame(columns=["event_id", "station", "phase", "time", "probability", "residual_s",
                               "distance_km", "azimuth"])
    df["time"] = pd.Series(dtype="datetime64[ns, UTC]")
    return df
