"""Catalogs as tables: QuakeML, ObsPy ``Catalog``, association results, agency CSV catalogs and
tables of associated picks all become one :class:`CatalogTable` for comparison."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .readers import read_picks, read_table
from .times import to_utc

logger = logging.getLogger("seisbench_feq.catalog")

EVENT_COLUMNS = ["event_id", "time", "latitude", "longitude", "depth_km", "magnitude"]
# Agency catalogs name their columns in many ways; these are the spellings read (first found wins).
_EVENT_COLUMNS = {
    "time": ["time", "origin_time", "datetime", "event_time", "otime"],
    "latitude": ["latitude", "lat"],
    "longitude": ["longitude", "lon", "lng", "long"],
    "magnitude": ["magnitude", "mag", "ml", "mw"],
    "event_id": ["event_id", "eventid", "evid", "id", "event_index", "event_idx"],
}
# depth columns: name -> factor to km
_DEPTH_COLUMNS = {"depth_km": 1.0, "depth(km)": 1.0, "z(km)": 1.0, "depth(m)": 1e-3, "depth_m": 1e-3}


@dataclass
class CatalogTable:
    """A catalog as tables: ``events`` (``event_id, time, latitude, longitude, depth_km,
    magnitude``; NaN where unknown) and ``picks`` (``event_id, station, phase, time``; may be empty)."""

    events: pd.DataFrame
    picks: pd.DataFrame
    name: str = "catalog"
    stations: pd.DataFrame | None = None


def _rename_event_columns(df: pd.DataFrame) -> pd.DataFrame:
    lower = {str(c).lower().strip(): c for c in df.columns}
    mapping = {}
    for target, names in _EVENT_COLUMNS.items():
        if target in df.columns:
            continue
        for name in names:
            if name in lower and lower[name] not in mapping:
                mapping[lower[name]] = target
                break
    return df.rename(columns=mapping)


def read_catalog(source, *, name: str | None = None, sampling_rate: float = 100.0,
                 expect_magnitude: bool = True) -> CatalogTable:
    """Read a catalog: QuakeML path, ObsPy ``Catalog``, association result, a CSV catalog
    (the Imperial Valley ``events.csv`` too), or a picks table (with or without ``event_id``).

    Missing depth or magnitude is kept as NaN and logged: comparisons then match on epicentre
    only, and the magnitude breakdown leaves those events in an "unknown" bin. With
    ``expect_magnitude=False`` (our own catalogs) missing magnitudes are not logged.
    """
    from .association import AssociationResult

    label = name or (Path(source).name if isinstance(source, (str, Path)) else type(source).__name__)
    if isinstance(source, AssociationResult):
        events = source.events.copy()
        if "magnitude" not in events.columns:
            events["magnitude"] = np.nan
        return CatalogTable(events, source.picks.copy(), name or "associated", source.stations)
    if isinstance(source, CatalogTable):
        return source
    if isinstance(source, (str, Path)) and Path(source).suffix.lower() in (".xml", ".quakeml", ".qml"):
        import obspy

        if not Path(source).is_file():
            raise FileNotFoundError(f"no such file: {source}")
        source = obspy.read_events(str(source))
    if type(source).__name__ == "Catalog":
        table = _catalog_table_from_obspy(source, label)
    else:
        df = read_table(Path(source)) if isinstance(source, (str, Path)) else source.copy()
        table = _catalog_table_from_frame(df, label, sampling_rate)
    _warn_missing(table.events, label, expect_magnitude)
    return table


def _catalog_table_from_obspy(catalog, label: str) -> CatalogTable:
    events, picks = [], []
    for i, ev in enumerate(catalog):
        origin = ev.preferred_origin() or (ev.origins[0] if ev.origins else None)
        mag = ev.preferred_magnitude() or (ev.magnitudes[0] if ev.magnitudes else None)
        eid = str(ev.resource_id.id) if ev.resource_id else str(i)
        if origin is None:
            logger.warning("%s: event %s has no origin and is skipped", label, eid)
            continue
        events.append({
            "event_id": eid, "time": origin.time.datetime, "latitude": origin.latitude,
            "longitude": origin.longitude,
            "depth_km": origin.depth / 1000.0 if origin.depth is not None else np.nan,
            "magnitude": mag.mag if mag is not None else np.nan,
        })
        for pick in ev.picks:
            w = pick.waveform_id
            picks.append({
                "event_id": eid, "station": f"{w.network_code or ''}.{w.station_code}.{w.location_code or ''}",
                "phase": (pick.phase_hint or "").upper()[:1], "time": pick.time.datetime,
            })
    ev_df = pd.DataFrame(events, columns=EVENT_COLUMNS)
    if len(ev_df):
        ev_df["time"] = pd.to_datetime(ev_df["time"]).dt.tz_localize("UTC")  # QuakeML times are UTC
    pk_df = pd.DataFrame(picks, columns=["event_id", "station", "phase", "time"])
    if len(pk_df):
        pk_df["time"] = pd.to_datetime(pk_df["time"]).dt.tz_localize("UTC")
    return CatalogTable(ev_df, pk_df, label)


def _is_pick_table(df: pd.DataFrame) -> bool:
    columns = set(df.columns)
    return {"fname", "idx_p"} <= columns or ("phase" in columns and bool({"station", "trace_id"} & columns))


def _catalog_table_from_frame(df: pd.DataFrame, label: str, sampling_rate: float) -> CatalogTable:
    if _is_pick_table(df):
        picks = read_picks(df, sampling_rate=sampling_rate, what=label)
        if "event_id" not in picks.columns:  # a bare picks table: pick-level comparison only
            return CatalogTable(empty_events(), picks.assign(event_id=pd.NA), label)
        picks = picks[picks["event_id"].notna()]
        has_origin = {"origin_time", "latitude", "longitude"} <= set(picks.columns)
        if has_origin:
            ev = picks.groupby("event_id").first().reset_index()
            ev["time"] = to_utc(ev["origin_time"], f"{label}: column 'origin_time'")
        else:  # no origin: the first pick stands in, without a location
            ev = picks.groupby("event_id")["time"].min().reset_index()
            ev["latitude"] = ev["longitude"] = np.nan
            logger.warning("%s: picks table without origins; the first pick time stands for the origin", label)
        ev["depth_km"] = ev["depth_km"] if "depth_km" in ev.columns else np.nan
        ev["magnitude"] = ev["magnitude"] if "magnitude" in ev.columns else np.nan
        return CatalogTable(ev[EVENT_COLUMNS], picks[["event_id", "station", "phase", "time"]], label)

    df = _rename_event_columns(df)
    if "time" not in df.columns:
        raise ValueError(f"{label}: no origin time column (columns: {list(df.columns)})")
    out = pd.DataFrame({"time": to_utc(df["time"].reset_index(drop=True), f"{label}: column 'time'")})
    out["event_id"] = df["event_id"].astype(str).to_numpy() if "event_id" in df.columns else np.arange(len(df)).astype(str)
    for col in ("latitude", "longitude", "magnitude"):
        out[col] = pd.to_numeric(df[col], errors="coerce").to_numpy() if col in df.columns else np.nan
    out["depth_km"] = np.nan
    for col, factor in _DEPTH_COLUMNS.items():
        if col in df.columns:
            out["depth_km"] = pd.to_numeric(df[col], errors="coerce").to_numpy() * factor
            break
    else:
        if "depth" in df.columns:  # unit-less: metres if any value is above 1000 (no quake is 1000 km deep)
            d = pd.to_numeric(df["depth"], errors="coerce").to_numpy()
            metres = np.nanmax(np.abs(d), initial=0) > 1000
            logger.info("%s: column 'depth' has no unit; read as %s", label, "metres" if metres else "km")
            out["depth_km"] = d / 1000.0 if metres else d
    if out["time"].isna().any():
        raise ValueError(f"{label}: {int(out['time'].isna().sum())} events have no origin time")
    out = out[EVENT_COLUMNS]
    return CatalogTable(out.sort_values("time").reset_index(drop=True), empty_catalog_picks(), label)


def empty_events() -> pd.DataFrame:
    df = pd.DataFrame(columns=EVENT_COLUMNS)
    df["time"] = pd.Series(dtype="datetime64[ns, UTC]")
    return df


def empty_catalog_picks() -> pd.DataFrame:
    df = pd.DataFrame(columns=["event_id", "station", "phase", "time"])
    df["time"] = pd.Series(dtype="datetime64[ns, UTC]")
    return df


def _warn_missing(events: pd.DataFrame, label: str, expect_magnitude: bool = True) -> None:
    n = len(events)
    if n == 0:
        return
    for col, consequence in (
        ("latitude", "matched on origin time only"),
        ("depth_km", "compared on epicentre only"),
        ("magnitude", "counted in the 'unknown' magnitude bin"),
    ):
        missing = int(events[col].isna().sum())
        if missing and (col != "magnitude" or expect_magnitude):
            logger.warning("%s: %d of %d events have no %s; they are %s", label, missing, n, col, consequence)
