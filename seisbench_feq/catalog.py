"""Catalogs: associate picks across stations with PyOcto, export QuakeML, compare with an agency catalog.

The path is the one EQTransformer's authors used to validate their picker against an agency:
picks -> events (association and a 1-D location) -> QuakeML -> a matched comparison with the
agency's catalog. Only picks are needed, so any picker (FEQ models, EQTransformer, PhaseNet) works.

Conventions used throughout:

* A *pick table* is a DataFrame with the columns ``station`` (``NET.STA.LOC``), ``phase`` (``P`` or
  ``S``), ``time`` (``datetime64[UTC]``) and ``probability``; extra columns are kept.
* A *station table* has ``id`` (``NET.STA.LOC``), ``latitude``, ``longitude`` (degrees) and
  ``elevation`` (metres above sea level).
* Times are UTC. Naive timestamps (no time zone) are taken as UTC and a log line says so; aware
  timestamps in any zone are converted to UTC; a column that mixes naive and aware values is rejected.

PyOcto (``pip install pyocto``) is imported only inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import time as _time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
QUAKEML_NAMESPACE = "urn:x-seisbench-feq:quakeml:1.0"  # for the pick probability, an extra QuakeML field
PHASES = ("P", "S")

# Hadley & Kanamori (1977) 1-D P model of Southern California, the SCSN's routine layered model.
# Depth of each layer top (km) and P velocity (km/s); S follows from Vp/Vs.
SOCAL_MODEL = pd.DataFrame({"depth": [0.0, 5.5, 16.0, 32.0], "vp": [5.5, 6.3, 6.7, 7.8]})

_PICK_ALIASES = {
    "station": ["station", "station_id", "trace_id", "id", "seed_id", "waveform_id"],
    "phase": ["phase", "phase_type", "phase_hint", "type", "label"],
    "time": ["time", "phase_time", "peak_time", "pick_time", "timestamp"],
    "probability": ["probability", "phase_score", "peak_value", "prob", "score", "confidence"],
}
_STATION_ALIASES = {
    "id": ["id", "station", "station_id", "trace_id", "seed_id"],
    "latitude": ["latitude", "lat"],
    "longitude": ["longitude", "lon", "lng", "long"],
    "elevation": ["elevation", "elevation(m)", "elevation_m", "elev", "altitude"],
}
_EVENT_ALIASES = {
    "time": ["time", "origin_time", "datetime", "event_time", "otime"],
    "latitude": ["latitude", "lat"],
    "longitude": ["longitude", "lon", "lng", "long"],
    "magnitude": ["magnitude", "mag", "ml", "mw"],
    "event_id": ["event_id", "eventid", "evid", "id", "event_index", "event_idx"],
}
# depth columns: name -> factor to km
_DEPTH_COLUMNS = {"depth_km": 1.0, "depth(km)": 1.0, "z(km)": 1.0, "depth(m)": 1e-3, "depth_m": 1e-3}


# --------------------------------------------------------------------------------------------
# Time stamps
# --------------------------------------------------------------------------------------------

_TZ_SUFFIX = re.compile(r"(Z|[+-]\d\d:?\d\d)$")


def to_utc(values, what: str = "time") -> pd.Series:
    """Convert time stamps to ``datetime64[UTC]``.

    Accepts datetimes (naive or aware), ISO strings, ObsPy ``UTCDateTime`` objects and POSIX
    seconds. Naive values are taken as UTC (logged); aware values in any zone are converted to UTC;
    a mix of naive and aware values raises ``ValueError`` naming ``what`` and the first offending
    rows, because guessing the zone of the naive ones could shift them by hours.
    """
    s = pd.Series(values).reset_index(drop=True) if not isinstance(values, pd.Series) else values
    if len(s) == 0:
        return pd.Series(pd.to_datetime([], utc=True), index=s.index)
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        if getattr(s.dt, "tz", None) is None:
            logger.info("%s: timestamps without time zone are taken as UTC", what)
            return s.dt.tz_localize("UTC")
        return s.dt.tz_convert("UTC")
    if pd.api.types.is_numeric_dtype(s.dtype):
        return pd.to_datetime(s.astype(float), unit="s", utc=True)

    def kind(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "missing"
        if hasattr(v, "timestamp") and type(v).__name__ == "UTCDateTime":
            return "aware"
        if hasattr(v, "tzinfo"):
            return "naive" if v.tzinfo is None else "aware"
        if isinstance(v, str):
            return "aware" if _TZ_SUFFIX.search(v.strip()) else "naive"
        return "other"

    kinds = s.map(kind)
    if (kinds == "other").any():
        bad = s[kinds == "other"].index[:3].tolist()
        raise ValueError(f"{what}: cannot read time stamps of type {type(s[bad[0]]).__name__} (rows {bad})")
    if (kinds == "naive").any() and (kinds == "aware").any():
        naive = s[kinds == "naive"].index[:3].tolist()
        aware = s[kinds == "aware"].index[:3].tolist()
        raise ValueError(
            f"{what}: mixes time stamps with a time zone (rows {aware}, e.g. {s[aware[0]]!r}) and "
            f"without one (rows {naive}, e.g. {s[naive[0]]!r}); give all in UTC or all with an offset"
        )
    # UTCDateTime is UTC by definition: hand pandas an aware datetime
    converted = s.map(lambda v: pd.Timestamp(v.datetime, tz="UTC") if type(v).__name__ == "UTCDateTime" else v)
    iso = "ISO8601" if converted.map(type).eq(str).all() else None
    if (kinds == "naive").any():
        logger.info("%s: timestamps without time zone are taken as UTC", what)
        return pd.to_datetime(converted, format=iso).dt.tz_localize("UTC")
    # all aware (possibly with different offsets): convert each to UTC
    return pd.to_datetime(converted, utc=True, format=iso)


def _seconds(times: pd.Series) -> np.ndarray:
    """POSIX seconds (float) of a UTC datetime series."""
    return ((times - EPOCH) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)


def _from_seconds(seconds) -> pd.Series:
    return pd.to_datetime(np.asarray(seconds, dtype=float), unit="s", utc=True)


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def _rename_aliases(df: pd.DataFrame, aliases: dict[str, list[str]]) -> pd.DataFrame:
    lower = {c.lower().strip(): c for c in df.columns}
    mapping = {}
    for target, names in aliases.items():
        if target in df.columns:
            continue
        for name in names:
            if name in lower and lower[name] not in mapping:
                mapping[lower[name]] = target
                break
    return df.rename(columns=mapping)


def _read_table(path: Path) -> pd.DataFrame:
    """CSV (comma, tab or whitespace separated) or Parquet; clear errors for missing/empty files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes)")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    with open(path) as f:
        head = f.readline()
    sep = "\t" if "\t" in head else ("," if "," in head else r"\s+")
    df = pd.read_csv(path, sep=sep)
    if len(df.columns) == 0:
        raise ValueError(f"{path} holds no table")
    return df


def normalize_station_id(code: str) -> str:
    """``NET.STA.LOC`` from ``NET.STA``, ``NET.STA.LOC`` or ``NET.STA.LOC.CHA`` (channel dropped)."""
    parts = str(code).strip().split(".")
    if len(parts) == 2:
        parts.append("")
    if len(parts) < 3 or not parts[1]:
        raise ValueError(f"station code {code!r} is not of the form NET.STA[.LOC[.CHA]]")
    return ".".join(parts[:3])


def _picks_from_imperial_valley(df: pd.DataFrame, sampling_rate: float) -> pd.DataFrame:
    """Expand the PhaseNet/GaMMA layout: one row per station-hour, list columns of sample indices.

    ``fname`` is ``<hour start>.<NET.STA.LOC.CHA-prefix>`` (e.g. ``2020-10-01T00.CI.BOM..HH``) and
    ``t0`` an extra offset in seconds; the hour start has no time zone and is taken as UTC.
    """
    rows = []
    for rec in df.itertuples(index=False):
        start, _, seed = str(rec.fname).partition(".")
        t0 = pd.Timestamp(start if ":" in start else start + ":00:00") + pd.Timedelta(seconds=float(rec.t0 or 0))
        station = normalize_station_id(seed)
        for phase in PHASES:
            idx = _parse_list(getattr(rec, f"idx_{phase.lower()}"))
            prob = _parse_list(getattr(rec, f"prob_{phase.lower()}", None), len(idx))
            amp = _parse_list(getattr(rec, f"amp_{phase.lower()}", None), len(idx))
            for i, p, a in zip(idx, prob, amp):
                rows.append((station, phase, t0 + pd.Timedelta(seconds=i / sampling_rate), p, a))
    out = pd.DataFrame(rows, columns=["station", "phase", "time", "probability", "amplitude"])
    logger.info("Imperial Valley/PhaseNet pick layout: hour starts without time zone are taken as UTC")
    out["time"] = out["time"].dt.tz_localize("UTC") if len(out) else pd.Series(dtype="datetime64[ns, UTC]")
    return out


def _parse_list(text, n: int | None = None) -> list[float]:
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return [np.nan] * (n or 0)
    text = str(text).strip().strip("[]")
    values = [float(v) for v in text.split(",") if v.strip()] if text else []
    if n is not None and len(values) != n:
        raise ValueError(f"list column has {len(values)} values, expected {n}: {text[:60]}...")
    return values


def read_picks(
    source,
    *,
    sampling_rate: float = 100.0,
    duplicate_tolerance: float = 0.1,
    what: str | None = None,
) -> pd.DataFrame:
    """Read picks into a pick table (``station, phase, time, probability`` plus extra columns).

    :param source: a SeisBench ``PickList`` (or list of ``Pick``), a ``ClassifyOutput``, a
        DataFrame, or a path to a CSV/Parquet file: ``seisbench-feq pick`` output
        (``station, phase, time, probability``), ``PickList.to_dataframe()`` output, PhaseNet's
        ``picks.csv`` (``station_id, phase_time, phase_score, phase_type``) or the Imperial Valley /
        GaMMA layout (``fname, t0, idx_p, prob_p, idx_s, prob_s``).
    :param sampling_rate: samples per second, only for layouts that give sample indices.
    :param duplicate_tolerance: picks of the same station and phase closer than this (s) are one
        pick seen twice (e.g. from overlapping windows or files); the most probable is kept and the
        number dropped is logged.
    """
    what = what or (str(source) if isinstance(source, (str, Path)) else "picks")
    if hasattr(source, "picks") and not isinstance(source, pd.DataFrame):  # ClassifyOutput
        source = source.picks
    if isinstance(source, (str, Path)):
        df = _read_table(Path(source))
    elif isinstance(source, pd.DataFrame):
        df = source.copy()
    elif isinstance(source, (list, tuple)):
        df = pd.DataFrame(
            [
                {
                    "station": p.trace_id,
                    "phase": p.phase,
                    "time": (p.peak_time if p.peak_time is not None else p.start_time).datetime,
                    "probability": p.peak_value,
                    "start_time": p.start_time.datetime,
                    "end_time": p.end_time.datetime if p.end_time is not None else pd.NaT,
                }
                for p in source
            ],
            columns=["station", "phase", "time", "probability", "start_time", "end_time"],
        )
        if len(df):  # UTCDateTime is UTC by definition
            for col in ("time", "start_time", "end_time"):
                df[col] = pd.to_datetime(df[col]).dt.tz_localize("UTC")
    else:
        raise TypeError(f"cannot read picks from {type(source).__name__}")

    if {"fname", "idx_p", "idx_s"} <= set(df.columns):
        df = _picks_from_imperial_valley(df, sampling_rate)
    df = _rename_aliases(df, _PICK_ALIASES)
    for col in ("station", "phase", "time"):
        if col not in df.columns:
            raise ValueError(f"{what}: no '{col}' column (columns: {list(df.columns)})")
    if "probability" not in df.columns:
        df["probability"] = np.nan
    df = df.drop(columns=[c for c in ("index", "level_0") if c in df.columns])
    if len(df) == 0:
        return _empty_picks(df.columns)

    df["station"] = df["station"].map(normalize_station_id)
    df["phase"] = df["phase"].astype(str).str.strip().str.upper()
    other = ~df["phase"].isin(PHASES)
    if other.any():
        counts = df.loc[other, "phase"].value_counts().to_dict()
        logger.warning("%s: %d picks with phases other than P/S are not used: %s", what, other.sum(), counts)
        df = df[~other]
    for col in ("time", "start_time", "end_time"):
        if col in df.columns:
            df[col] = to_utc(df[col].reset_index(drop=True), f"{what}: column '{col}'").set_axis(df.index)
    if df["time"].isna().any():
        bad = df.index[df["time"].isna()][:5].tolist()
        raise ValueError(f"{what}: {df['time'].isna().sum()} picks have no time (rows {bad})")
    df["probability"] = pd.to_numeric(df["probability"], errors="coerce").astype(float)
    df = df.sort_values(["station", "phase", "time"]).reset_index(drop=True)
    return _drop_duplicate_picks(df, duplicate_tolerance, what).sort_values("time").reset_index(drop=True)


def _empty_picks(columns=()) -> pd.DataFrame:
    cols = list(dict.fromkeys(["station", "phase", "time", "probability", *columns]))
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    df["time"] = pd.Series(dtype="datetime64[ns, UTC]")
    df["probability"] = pd.Series(dtype=float)
    return df


def _drop_duplicate_picks(df: pd.DataFrame, tolerance: float, what: str) -> pd.DataFrame:
    """Collapse runs of same station+phase picks closer than ``tolerance`` to their most probable one."""
    if len(df) < 2:
        return df
    t = _seconds(df["time"])
    same = (df["station"].to_numpy()[1:] == df["station"].to_numpy()[:-1]) & (
        df["phase"].to_numpy()[1:] == df["phase"].to_numpy()[:-1]
    )
    new_group = np.concatenate([[True], ~(same & (np.diff(t) <= tolerance))])
    if new_group.all():
        return df
    group = np.cumsum(new_group)
    prob = df["probability"].fillna(-1.0).to_numpy()
    best = pd.Series(prob).groupby(group).idxmax().to_numpy()
    n_dup = len(df) - len(best)
    logger.warning(
        "%s: %d duplicate picks (same station and phase within %.2f s) dropped; the most probable kept",
        what, n_dup, tolerance,
    )
    return df.iloc[best].reset_index(drop=True)


def read_stations(source, *, what: str | None = None) -> pd.DataFrame:
    """Read stations into a station table (``id, latitude, longitude, elevation`` in m).

    :param source: an ObsPy ``Inventory``, a StationXML path (``.xml``), a DataFrame, or a CSV path.
        Ids may be ``NET.STA``, ``NET.STA.LOC`` or ``NET.STA.LOC.CHA`` (channel dropped); separate
        ``network``/``station``/``location`` columns also work.

    Stations without latitude/longitude are dropped with a warning naming them; a missing elevation
    becomes 0 m with a warning (the travel-time error this causes is about elevation / Vp).
    """
    what = what or (str(source) if isinstance(source, (str, Path)) else "stations")
    if isinstance(source, (str, Path)) and Path(source).suffix.lower() == ".xml":
        import obspy

        source = obspy.read_inventory(str(source))
    if type(source).__name__ == "Inventory":
        rows = []
        for net in source:
            for sta in net:
                locs = sorted({ch.location_code for ch in sta.channels}) or [""]
                for loc in locs:
                    rows.append(
                        {
                            "id": f"{net.code}.{sta.code}.{loc}",
                            "latitude": sta.latitude,
                            "longitude": sta.longitude,
                            "elevation": sta.elevation,
                        }
                    )
        df = pd.DataFrame(rows, columns=["id", "latitude", "longitude", "elevation"])
    elif isinstance(source, (str, Path)):
        df = _read_table(Path(source))
    elif isinstance(source, pd.DataFrame):
        df = source.copy()
    else:
        raise TypeError(f"cannot read stations from {type(source).__name__}")

    if "id" not in df.columns and {"network", "station"} <= set(df.columns):
        loc = df["location"].fillna("").astype(str) if "location" in df.columns else ""
        df["id"] = df["network"].astype(str) + "." + df["station"].astype(str) + "." + loc
        df = df.drop(columns=["station"])
    df = _rename_aliases(df, _STATION_ALIASES)
    if len(df) == 0:
        raise ValueError(f"{what}: the station table is empty")
    for col in ("id", "latitude", "longitude"):
        if col not in df.columns:
            raise ValueError(f"{what}: no '{col}' column (columns: {list(df.columns)})")
    df["id"] = df["id"].map(normalize_station_id)
    for col in ("latitude", "longitude"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    no_coords = df["latitude"].isna() | df["longitude"].isna()
    if no_coords.any():
        logger.warning(
            "%s: stations without coordinates are left out (their picks cannot be used): %s",
            what, sorted(df.loc[no_coords, "id"].unique()),
        )
        df = df[~no_coords]
    if "elevation" not in df.columns:
        logger.warning("%s: no elevation column; all stations are placed at 0 m (sea level)", what)
        df["elevation"] = 0.0
    df["elevation"] = pd.to_numeric(df["elevation"], errors="coerce")
    if df["elevation"].isna().any():
        logger.warning(
            "%s: stations without elevation are placed at 0 m: %s",
            what, sorted(df.loc[df["elevation"].isna(), "id"].unique()),
        )
        df["elevation"] = df["elevation"].fillna(0.0)
    # one row per NET.STA.LOC: a station listed per channel (HH, HN, ...) is one site
    dup = df["id"].duplicated(keep="first")
    if dup.any():
        spread = df.groupby("id")[["latitude", "longitude"]].agg(lambda x: x.max() - x.min()).max(axis=1)
        moved = spread[spread > 1e-3].index.tolist()
        if moved:
            logger.warning("%s: stations listed twice with different coordinates, first kept: %s", what, moved)
        df = df[~dup]
    return df[["id", "latitude", "longitude", "elevation"]].reset_index(drop=True)


@dataclass
class CatalogTable:
    """A catalog as tables: ``events`` (``event_id, time, latitude, longitude, depth_km,
    magnitude``; NaN where unknown) and ``picks`` (``event_id, station, phase, time``; may be empty)."""

    events: pd.DataFrame
    picks: pd.DataFrame
    name: str = "catalog"
    stations: pd.DataFrame | None = None


def read_catalog(source, *, name: str | None = None, sampling_rate: float = 100.0,
                 expect_magnitude: bool = True) -> CatalogTable:
    """Read a catalog: QuakeML path, ObsPy ``Catalog``, :class:`AssociationResult`, a CSV catalog
    (the Imperial Valley ``events.csv`` too), or a picks table (with or without ``event_id``).

    Missing depth or magnitude is kept as NaN and logged: comparisons then match on epicentre
    only, and the magnitude breakdown leaves those events in an "unknown" bin. With
    ``expect_magnitude=False`` (our own catalogs) missing magnitudes are not logged.
    """
    label = name or (Path(source).name if isinstance(source, (str, Path)) else type(source).__name__)
    if isinstance(source, AssociationResult):
        return CatalogTable(source.events.copy(), source.picks.copy(), name or "associated", source.stations)
    if isinstance(source, CatalogTable):
        return source
    if isinstance(source, (str, Path)) and Path(source).suffix.lower() in (".xml", ".quakeml", ".qml"):
        import obspy

        source = obspy.read_events(str(source))
    if type(source).__name__ == "Catalog":
        table = _catalog_table_from_obspy(source, label)
    else:
        df = _read_table(Path(source)) if isinstance(source, (str, Path)) else source.copy()
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
        events.append(
            {
                "event_id": eid,
                "time": origin.time.datetime,
                "latitude": origin.latitude,
                "longitude": origin.longitude,
                "depth_km": origin.depth / 1000.0 if origin.depth is not None else np.nan,
                "magnitude": mag.mag if mag is not None else np.nan,
            }
        )
        for pick in ev.picks:
            w = pick.waveform_id
            picks.append(
                {
                    "event_id": eid,
                    "station": f"{w.network_code or ''}.{w.station_code}.{w.location_code or ''}",
                    "phase": (pick.phase_hint or "").upper()[:1],
                    "time": pick.time.datetime,
                }
            )
    ev_df = pd.DataFrame(events, columns=["event_id", "time", "latitude", "longitude", "depth_km", "magnitude"])
    if len(ev_df):
        ev_df["time"] = pd.to_datetime(ev_df["time"]).dt.tz_localize("UTC")  # QuakeML times are UTC
    pk_df = pd.DataFrame(picks, columns=["event_id", "station", "phase", "time"])
    if len(pk_df):
        pk_df["time"] = pd.to_datetime(pk_df["time"]).dt.tz_localize("UTC")
    return CatalogTable(ev_df, pk_df, label)


def _catalog_table_from_frame(df: pd.DataFrame, label: str, sampling_rate: float) -> CatalogTable:
    df = _rename_aliases(df, _EVENT_ALIASES)
    if {"fname", "idx_p"} <= set(df.columns) or ("phase" in df.columns or "phase_type" in df.columns) and (
        "station" in df.columns or "station_id" in df.columns
    ):
        picks = read_picks(df, sampling_rate=sampling_rate, what=label)
        if "event_id" not in picks.columns:  # a bare picks table: pick-level comparison only
            return CatalogTable(_empty_events(), picks.assign(event_id=pd.NA), label)
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
        ev = ev[["event_id", "time", "latitude", "longitude", "depth_km", "magnitude"]]
        return CatalogTable(ev, picks[["event_id", "station", "phase", "time"]], label)

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
    out = out[["event_id", "time", "latitude", "longitude", "depth_km", "magnitude"]]
    return CatalogTable(out.sort_values("time").reset_index(drop=True), _empty_catalog_picks(), label)


def _empty_events() -> pd.DataFrame:
    df = pd.DataFrame(columns=["event_id", "time", "latitude", "longitude", "depth_km", "magnitude"])
    df["time"] = pd.Series(dtype="datetime64[ns, UTC]")
    return df


def _empty_catalog_picks() -> pd.DataFrame:
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


# --------------------------------------------------------------------------------------------
# Velocity models
# --------------------------------------------------------------------------------------------


def layered_travel_times(
    layers: pd.DataFrame, distances_km, depths_km, phase: str = "P", vp_vs_ratio: float = 1.73
) -> np.ndarray:
    """First-arrival times (s) in a flat layered model, source at depth, receiver at the surface.

    ``layers`` has ``depth`` (top of each layer, km, first 0) and ``vp`` (km/s), optionally ``vs``.
    Velocities are constant inside a layer. The first arrival is the earliest of the direct wave
    (ray parameter found by bisection) and the head waves along the top of each faster layer below
    the source. Returns an array of shape ``(len(distances_km), len(depths_km))``.
    """
    tops = layers["depth"].to_numpy(float)
    v = layers["vs"].to_numpy(float) if phase == "S" and "vs" in layers else layers["vp"].to_numpy(float)
    if phase == "S" and "vs" not in layers:
        v = v / vp_vs_ratio
    if tops[0] != 0 or np.any(np.diff(tops) <= 0) or np.any(v <= 0):
        raise ValueError("velocity model: layer tops must start at 0 and increase; velocities must be positive")
    x = np.asarray(distances_km, dtype=float)
    bottoms = np.append(tops[1:], np.inf)
    out = np.empty((len(x), len(np.atleast_1d(depths_km))))
    for iz, zs in enumerate(np.atleast_1d(depths_km)):
        h = np.clip(np.minimum(bottoms, zs) - tops, 0, None)  # path length per layer, surface to source
        used = h > 0
        if not used.any():
            best = x / v[0]
        else:
            hv, vv = h[used], v[used]
            vmax = vv.max()
            lo, hi = np.zeros_like(x), np.full_like(x, 1.0 - 1e-12)  # u = p * vmax in [0, 1)
            for _ in range(60):
                u = 0.5 * (lo + hi)
                pv = (u[:, None] / vmax) * vv[None, :]
                xu = np.sum(hv * pv / np.sqrt(1 - pv**2), axis=1)
                lo, hi = np.where(xu < x, u, lo), np.where(xu < x, hi, u)
            pv = (0.5 * (lo + hi))[:, None] / vmax * vv[None, :]
            best = np.sum(hv / (vv * np.sqrt(1 - pv**2)), axis=1)
        for k in range(1, len(tops)):
            if tops[k] < zs or v[k] <= v[:k].max():
                continue
            up = np.clip(np.minimum(bottoms[:k], tops[k]) - tops[:k], 0, None)  # surface to interface
            down = np.clip(np.minimum(bottoms[:k], tops[k]) - np.maximum(tops[:k], zs), 0, None)  # source down
            q = v[:k] / v[k]
            t_head = x / v[k] + np.sum((up + down) * np.sqrt(1 / v[:k] ** 2 - 1 / v[k] ** 2))
            x_crit = np.sum((up + down) * q / np.sqrt(1 - q**2))
            best = np.where(x >= x_crit, np.minimum(best, t_head), best)
        out[:, iz] = best
    return out


def write_pyocto_table(
    layers: pd.DataFrame, path, *, max_distance_km: float, max_depth_km: float, delta_km: float = 0.25,
    vp_vs_ratio: float = 1.73,
) -> Path:
    """Write the binary travel-time table of ``pyocto.VelocityModel1D`` for a layered model.

    PyOcto's own ``create_model`` needs pyrocko's eikonal solver; for flat layers the analytic
    first arrivals of :func:`layered_travel_times` are exact, so no extra dependency is needed.
    The layout is PyOcto's: header ``(nx, nz, delta)`` then P and S times as (nx, nz) float64.
    """
    import struct

    nx, nz = int(np.ceil(max_distance_km / delta_km)) + 1, int(np.ceil(max_depth_km / delta_km)) + 1
    x, z = np.arange(nx) * delta_km, np.arange(nz) * delta_km
    tp = layered_travel_times(layers, x, z, "P", vp_vs_ratio)
    ts = layered_travel_times(layers, x, z, "S", vp_vs_ratio)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("iid", nx, nz, delta_km))
        f.write(np.ascontiguousarray(tp, dtype=np.float64).tobytes())
        f.write(np.ascontiguousarray(ts, dtype=np.float64).tobytes())
    return path


def _layers_frame(model) -> pd.DataFrame:
    if isinstance(model, (str, Path)) and str(model).lower() in ("socal", "hadley-kanamori", "hk"):
        return SOCAL_MODEL.copy()
    if isinstance(model, (str, Path)):
        df = _read_table(Path(model))
    else:
        df = pd.DataFrame(model).copy()
    df.columns = [str(c).lower() for c in df.columns]
    if not {"depth", "vp"} <= set(df.columns):
        raise ValueError(f"velocity model needs columns depth (km) and vp (km/s), optionally vs; got {list(df.columns)}")
    return df.sort_values("depth").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Association
# --------------------------------------------------------------------------------------------


@dataclass
class AssociationResult:
    """What :func:`associate` found.

    ``events``: one row per event (``event_id, time, latitude, longitude, depth_km, x, y`` (km in
    the local projection), ``n_picks, n_p_picks, n_s_picks, n_stations, rms_residual_s,
    azimuthal_gap, min_distance_km``). ``picks``: the associated picks (``event_id, station, phase,
    time, probability, residual_s`` (observed minus predicted), ``distance_km, azimuth`` plus the
    input's extra columns). ``reason`` says why nothing was associated, when nothing was.
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

    def __len__(self) -> int:
        return len(self.events)

    def summary(self) -> str:
        if self.reason:
            return f"no events: {self.reason}"
        return (
            f"{len(self.events)} events from {len(self.picks)} of {self.n_input_picks} picks "
            f"({len(self.stations)} stations) in {self.runtime_s:.1f} s"
        )


def default_parameters() -> dict[str, Any]:
    """The defaults of :func:`associate`, tuned for a local network (tens of km, shallow crust)."""
    return dict(
        velocity_model="socal",
        vp=6.0,
        vp_vs_ratio=1.73,
        tolerance=1.0,
        pick_match_tolerance=1.0,
        min_p_picks=4,
        min_s_picks=2,
        min_p_and_s_stations=2,
        min_picks=8,
        depth_range_km=(0.0, 30.0),
        margin_km=30.0,
        min_interevent_time=1.0,
        min_probability=0.0,
        duplicate_tolerance=0.1,
        time_slicing=1200.0,
        n_threads=None,
        block_seconds=3600.0,
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
    **pyocto_params,
) -> AssociationResult:
    """Associate picks into events and locate them with PyOcto.

    :param picks: anything :func:`read_picks` reads (PickList, ClassifyOutput, DataFrame, file).
    :param stations: anything :func:`read_stations` reads (Inventory, DataFrame, CSV, StationXML).
    :param velocity_model: ``"socal"`` (Hadley-Kanamori 1-D layered model of Southern California,
        the default), ``"homogeneous"`` (constant ``vp`` and ``vp / vp_vs_ratio``), a DataFrame or
        CSV of layers (``depth`` of the layer top in km, ``vp``, optional ``vs`` in km/s), or a
        ``pyocto`` velocity model object.
    :param vp: P velocity (km/s) of the homogeneous model.
    :param vp_vs_ratio: Vp/Vs, for the homogeneous model and for layered models without ``vs``.
    :param tolerance: travel-time tolerance (s) while grouping picks: how far an observed arrival
        may be from the model's prediction. It absorbs model error and pick error; grow it with
        the network's size and the model's crudeness (about 1 s for a local 1-D model).
    :param pick_match_tolerance: after locating, picks within this many seconds of the predicted
        arrival are attached to the event.
    :param min_p_picks: minimum number of P picks (one per station) for an event.
    :param min_s_picks: minimum number of S picks.
    :param min_p_and_s_stations: minimum number of stations with both a P and an S pick; S-P times
        pin the distance, so 2 or more keeps false events out.
    :param min_picks: minimum number of picks (P + S) for an event.
    :param depth_range_km: depth range searched for hypocentres, km below sea level.
    :param margin_km: the search area is the stations' bounding box plus this margin (km).
    :param area: or an explicit search area ``{"latitude": (min, max), "longitude": (min, max)}``.
    :param min_interevent_time: two events closer in origin time than this (s) are one event.
    :param min_probability: picks below this probability are not used.
    :param duplicate_tolerance: see :func:`read_picks`.
    :param time_slicing: PyOcto processes the picks in blocks of this many seconds.
    :param n_threads: PyOcto threads (default: all cores).
    :param picker: name of the picking model, recorded in the QuakeML (e.g. ``"FEQ3"``).
    :param table_dir: where layered travel-time tables are cached (default: the temp dir).
    :param block_seconds: picks are associated in blocks of this length (with a tqdm bar when
        there are several); each block also sees the picks one network travel time before and
        after it, and keeps the events whose origin time falls inside it. ``None``: one block.
    :param checkpoint_dir: finished blocks are saved here, and a rerun with the same picks,
        stations and parameters resumes from them (an interrupted 48 h run loses one block).
    :param pyocto_params: passed to ``pyocto.OctoAssociator`` unchanged (e.g. ``min_pick_fraction``).
    :return: :class:`AssociationResult`; ``reason`` tells why it is empty when it is.
    """
    import pyocto
    from pyproj import CRS, Transformer

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
    station_df = read_stations(stations)
    n_input = len(pick_df)
    diagnostics: list[str] = []

    def empty(reason: str) -> AssociationResult:
        logger.warning("nothing associated: %s", reason)
        return AssociationResult(
            _empty_result_events(), _empty_result_picks(), station_df, n_input, params, picker, reason,
            _time.perf_counter() - started, diagnostics + [reason],
        )

    if n_input == 0:
        return empty("the pick set is empty")
    if min_probability > 0:
        keep = pick_df["probability"].fillna(1.0) >= min_probability
        if (~keep).any():
            diagnostics.append(f"{int((~keep).sum())} picks below probability {min_probability} not used")
        pick_df = pick_df[keep]

    matched = _match_station_ids(pick_df["station"], station_df["id"])
    unknown = matched.isna().to_numpy()
    if unknown.any():
        counts = pick_df.loc[unknown, "station"].value_counts().to_dict()
        msg = f"{int(unknown.sum())} picks from stations missing from the station list are not used: {counts}"
        logger.warning(msg)
        diagnostics.append(msg)
    pick_df = pick_df.assign(station=matched)[~unknown].reset_index(drop=True)
    if len(pick_df) == 0:
        return empty(
            "no pick comes from a station with coordinates (station ids in the picks and in the "
            "station list do not match, or the stations lack latitude/longitude)"
        )
    n_p_stations = pick_df.loc[pick_df["phase"] == "P", "station"].nunique()
    n_stations = pick_df["station"].nunique()
    need = max(min_p_picks, min_p_and_s_stations)
    if n_p_stations < need:
        return empty(
            f"too few stations: {n_p_stations} stations with P picks and coordinates "
            f"({n_stations} with any pick), an event needs {need} (min_p_picks={min_p_picks}, "
            f"min_p_and_s_stations={min_p_and_s_stations})"
        )

    used_ids = pick_df["station"].unique()
    st = station_df[station_df["id"].isin(used_ids)].reset_index(drop=True)
    if area is not None:
        lat_lim, lon_lim = tuple(area["latitude"]), tuple(area["longitude"])
    else:
        lat_lim = (st["latitude"].min(), st["latitude"].max())
        lon_lim = (st["longitude"].min(), st["longitude"].max())
    lat0, lon0 = np.mean(lat_lim), np.mean(lon_lim)
    crs = CRS(f"+proj=tmerc +lat_0={lat0} +lon_0={lon0} +units=km")
    to_local = Transformer.from_crs(CRS.from_epsg(4326), crs)
    sx, sy = to_local.transform(st["latitude"].to_numpy(), st["longitude"].to_numpy())
    st = st.assign(x=sx, y=sy, z=-st["elevation"].to_numpy() / 1000.0)
    corner_x, corner_y = to_local.transform(np.array(lat_lim)[[0, 1, 0, 1]], np.array(lon_lim)[[0, 0, 1, 1]])
    margin = 0.0 if area is not None else margin_km
    xlim = (float(np.min(corner_x) - margin), float(np.max(corner_x) + margin))
    ylim = (float(np.min(corner_y) - margin), float(np.max(corner_y) + margin))
    zlim = (float(depth_range_km[0]), float(depth_range_km[1]))
    max_distance = float(np.hypot(xlim[1] - xlim[0], ylim[1] - ylim[0])) + 10.0

    vs_min = vp / vp_vs_ratio
    if isinstance(velocity_model, str) and velocity_model.lower() == "homogeneous":
        model = pyocto.VelocityModel0D(p_velocity=vp, s_velocity=vp / vp_vs_ratio, tolerance=tolerance)
        model_name = f"homogeneous Vp={vp:g} km/s Vp/Vs={vp_vs_ratio:g}"
    elif isinstance(velocity_model, (str, Path, pd.DataFrame)):
        layers = _layers_frame(velocity_model)
        if "vs" not in layers:
            layers["vs"] = layers["vp"] / vp_vs_ratio
        vs_min = float(layers["vs"].min())
        key = hashlib.sha1(
            (layers.to_csv(index=False) + f"{max_distance:.0f}/{zlim[1]:.1f}").encode()
        ).hexdigest()[:16]
        table = Path(table_dir or Path(tempfile.gettempdir()) / "seisbench_feq_pyocto") / f"{key}.bin"
        if not table.exists():
            write_pyocto_table(layers, table, max_distance_km=max_distance, max_depth_km=zlim[1] + 1.0)
        model = pyocto.VelocityModel1D(
            str(table), tolerance=tolerance,
            surface_p_velocity=float(layers["vp"].iloc[0]), surface_s_velocity=float(layers["vs"].iloc[0]),
        )
        model_name = "socal (Hadley-Kanamori 1977)" if isinstance(velocity_model, str) else "layered (user)"
    else:
        model = velocity_model
        model_name = type(velocity_model).__name__
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
    octo_picks = pd.DataFrame(
        {
            "station": pick_df["station"].to_numpy(),
            "time": _seconds(pick_df["time"]),
            "phase": pick_df["phase"].to_numpy(),
            "pick_row": np.arange(len(pick_df)),
        }
    )
    octo_stations = st[["id", "x", "y", "z"]].copy()
    run_key = hashlib.sha1(
        repr((sorted((k, str(v)) for k, v in params.items()), st.round(6).to_csv(index=False))).encode()
    ).hexdigest()[:12]
    events, assignments = _associate_blocks(
        associator, octo_picks, octo_stations, block_seconds, time_before, checkpoint_dir, run_key
    )
    if len(events) == 0:
        return empty(
            f"PyOcto formed no event from {len(pick_df)} picks on {n_stations} stations with "
            f"min_p_picks={min_p_picks}, min_s_picks={min_s_picks}, "
            f"min_p_and_s_stations={min_p_and_s_stations}, tolerance={tolerance} s"
        )

    from_local = Transformer.from_crs(crs, CRS.from_epsg(4326))
    lat, lon = from_local.transform(events["x"].to_numpy(), events["y"].to_numpy())
    ev = pd.DataFrame(
        {
            "event_id": [f"ev{i:06d}" for i in range(len(events))],
            "time": _from_seconds(events["time"].to_numpy()),
            "latitude": lat,
            "longitude": lon,
            "depth_km": events["z"].to_numpy(dtype=float),
            "x": events["x"].to_numpy(dtype=float),
            "y": events["y"].to_numpy(dtype=float),
        }
    )
    ids = dict(zip(events["idx"], ev["event_id"]))
    asg = assignments[["event_idx", "pick_row", "residual"]].copy()
    out_picks = pick_df.iloc[asg["pick_row"].to_numpy()].reset_index(drop=True)
    out_picks.insert(0, "event_id", asg["event_idx"].map(ids).to_numpy())
    out_picks["residual_s"] = asg["residual"].to_numpy(dtype=float)
    stxy = st.set_index("id")
    evxy = ev.set_index("event_id")
    dx = stxy.loc[out_picks["station"], "x"].to_numpy() - evxy.loc[out_picks["event_id"], "x"].to_numpy()
    dy = stxy.loc[out_picks["station"], "y"].to_numpy() - evxy.loc[out_picks["event_id"], "y"].to_numpy()
    out_picks["distance_km"] = np.hypot(dx, dy)
    out_picks["azimuth"] = np.degrees(np.arctan2(dx, dy)) % 360.0  # grid azimuth, close to true north locally
    out_picks = out_picks.sort_values(["event_id", "time"]).reset_index(drop=True)

    g = out_picks.groupby("event_id")
    ev = ev.set_index("event_id")
    ev["n_picks"] = g.size()
    ev["n_p_picks"] = g["phase"].apply(lambda p: int((p == "P").sum()))
    ev["n_s_picks"] = g["phase"].apply(lambda p: int((p == "S").sum()))
    ev["n_stations"] = g["station"].nunique()
    ev["rms_residual_s"] = g["residual_s"].apply(lambda r: float(np.sqrt(np.mean(r**2))))
    ev["azimuthal_gap"] = g["azimuth"].apply(_azimuthal_gap)
    ev["min_distance_km"] = g["distance_km"].min()
    ev = ev.reset_index().sort_values("time").reset_index(drop=True)
    runtime = _time.perf_counter() - started
    result = AssociationResult(ev, out_picks, st, n_input, params, picker, None, runtime, diagnostics)
    logger.info("association: %s", result.summary())
    return result


def _associate_blocks(associator, picks: pd.DataFrame, stations: pd.DataFrame, block_seconds, pad: float,
                      checkpoint_dir, run_key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run PyOcto block by block. Returns events (``idx, time, x, y, z``) and assignments
    (``event_idx, pick_row, residual``) with ``idx`` unique over all blocks."""
    import warnings

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
            if ev_path is not None:  # write assignments first: the events file marks a block done
                asg.to_csv(asg_path, index=False)
                events.to_csv(ev_path, index=False)
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
    tp = _seconds(both["P"])
    sp = _seconds(both["S"]) - tp
    df = pd.DataFrame({"event": both["event_id"], "tp": tp, "sp": sp})
    df = df[df.groupby("event")["tp"].transform("size") >= min_stations]
    if len(df) < min_stations:
        raise ValueError(f"Wadati diagram needs events with at least {min_stations} stations with P and S")
    x = df["tp"] - df.groupby("event")["tp"].transform("mean")
    y = df["sp"] - df.groupby("event")["sp"].transform("mean")
    return 1.0 + float((x * y).sum() / (x * x).sum()), len(df)


def _azimuthal_gap(azimuths) -> float:
    a = np.sort(np.unique(np.asarray(azimuths, dtype=float) % 360.0))
    if len(a) < 2:
        return 360.0
    return float(np.max(np.diff(np.append(a, a[0] + 360.0))))


def _match_station_ids(pick_ids: pd.Series, station_ids: pd.Series) -> pd.Series:
    """Map pick station ids onto station-table ids: exact ``NET.STA.LOC`` first, else ``NET.STA``
    when the table has a single location for it. Unmatched ids map to None."""
    table = set(station_ids)
    by_netsta: dict[str, list[str]] = {}
    for sid in station_ids:
        by_netsta.setdefault(sid.rsplit(".", 1)[0], []).append(sid)

    def match(pid: str):
        if pid in table:
            return pid
        candidates = by_netsta.get(pid.rsplit(".", 1)[0], [])
        return candidates[0] if len(candidates) == 1 else None

    return pick_ids.map({pid: match(pid) for pid in pick_ids.unique()})


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


# --------------------------------------------------------------------------------------------
# QuakeML
# --------------------------------------------------------------------------------------------


def to_obspy_catalog(
    result: AssociationResult,
    *,
    picker: str | None = None,
    agency_id: str | None = None,
    author: str = "seisbench_feq",
    pick_uncertainty: float | None = None,
    channel_prefix: str | None = None,
):
    """Build an ObsPy ``Catalog`` from :func:`associate`'s result.

    Each event gets one origin (time, latitude, longitude, depth; ``quality`` with phase and
    station counts, RMS residual as ``standard_error``, azimuthal gap and minimum distance;
    PyOcto gives no formal location uncertainty, so none is invented), its picks and the arrivals
    that link them. Picks carry the waveform id, phase hint, time, ``time_errors`` (from a pick
    table column ``uncertainty`` in s, else ``pick_uncertainty``), the picker as ``method_id`` and
    ``creation_info.author``, and the probability as an extra ``probability`` field. No magnitude
    is computed, so none is written. The catalog round-trips through QuakeML.

    :param picker: picking model name, e.g. ``"FEQ3"`` (default: ``result.picker``).
    :param channel_prefix: band+instrument code (e.g. ``"HH"``) to write ``HHZ``/``HHN`` channel
        codes (Z for P, N for S); by default the channel is left empty, as SeisBench ids lack it.
    """
    from obspy import UTCDateTime
    from obspy.core.event import (
        Arrival, Catalog, Comment, CreationInfo, Event, Origin, OriginQuality, Pick, QuantityError,
        ResourceIdentifier, WaveformStreamID,
    )
    from obspy.geodetics import kilometer2degrees

    picker = picker or result.picker or "unknown"
    now = UTCDateTime()
    model = result.parameters.get("velocity_model_name", result.parameters.get("velocity_model"))
    catalog = Catalog(
        resource_id=ResourceIdentifier(prefix="smi:seisbench_feq/catalog"),
        creation_info=CreationInfo(agency_id=agency_id, author=author, creation_time=now),
        description=f"seisbench_feq: picks by {picker}, associated and located by PyOcto ({model})",
    )
    if result.reason:
        catalog.comments.append(Comment(text=f"no events: {result.reason}"))
    picks_by_event = dict(tuple(result.picks.groupby("event_id"))) if len(result.picks) else {}
    pick_method = ResourceIdentifier(f"smi:seisbench_feq/picker/{picker}")
    for ev in result.events.itertuples(index=False):
        event = Event(
            resource_id=ResourceIdentifier(prefix="smi:seisbench_feq/event"),
            event_type="earthquake", event_type_certainty="suspected",
            creation_info=CreationInfo(agency_id=agency_id, author=author, creation_time=now),
        )
        origin = Origin(
            resource_id=ResourceIdentifier(prefix="smi:seisbench_feq/origin"),
            time=UTCDateTime(ns=int(ev.time.value)),
            latitude=float(ev.latitude), longitude=float(ev.longitude),
            depth=float(ev.depth_km) * 1000.0, depth_type="from location",
            method_id=ResourceIdentifier("smi:seisbench_feq/associator/pyocto"),
            earth_model_id=ResourceIdentifier(f"smi:seisbench_feq/velocity_model/{_slug(model)}"),
            evaluation_mode="automatic", evaluation_status="preliminary",
            creation_info=CreationInfo(agency_id=agency_id, author=author, creation_time=now),
            quality=OriginQuality(
                associated_phase_count=int(ev.n_picks), used_phase_count=int(ev.n_picks),
                associated_station_count=int(ev.n_stations), used_station_count=int(ev.n_stations),
                standard_error=float(ev.rms_residual_s), azimuthal_gap=float(ev.azimuthal_gap),
                minimum_distance=kilometer2degrees(float(ev.min_distance_km)),
            ),
        )
        for p in picks_by_event.get(ev.event_id, pd.DataFrame()).itertuples(index=False):
            net, sta, loc = p.station.split(".")
            channel = f"{channel_prefix}{'Z' if p.phase == 'P' else 'N'}" if channel_prefix else None
            unc = getattr(p, "uncertainty", None)
            unc = pick_uncertainty if unc is None or pd.isna(unc) else float(unc)
            pick = Pick(
                resource_id=ResourceIdentifier(prefix="smi:seisbench_feq/pick"),
                time=UTCDateTime(ns=int(p.time.value)),
                time_errors=QuantityError(uncertainty=unc) if unc is not None else QuantityError(),
                waveform_id=WaveformStreamID(net, sta, loc, channel),
                phase_hint=p.phase, method_id=pick_method,
                evaluation_mode="automatic", evaluation_status="preliminary",
                creation_info=CreationInfo(agency_id=agency_id, author=picker, creation_time=now),
            )
            if not pd.isna(p.probability):
                pick.extra = {"probability": {"value": f"{float(p.probability):.4f}", "namespace": QUAKEML_NAMESPACE}}
            event.picks.append(pick)
            origin.arrivals.append(
                Arrival(
                    resource_id=ResourceIdentifier(prefix="smi:seisbench_feq/arrival"),
                    pick_id=pick.resource_id, phase=p.phase, time_residual=float(p.residual_s),
                    distance=kilometer2degrees(float(p.distance_km)), azimuth=float(p.azimuth),
                    time_weight=1.0,
                )
            )
        event.origins.append(origin)
        event.preferred_origin_id = origin.resource_id
        catalog.events.append(event)
    return catalog


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_")


def write_quakeml(result: AssociationResult, path, **kwargs) -> Path:
    """Write :func:`to_obspy_catalog`'s catalog as QuakeML (``kwargs`` go to it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_obspy_catalog(result, **kwargs).write(str(path), format="QUAKEML", nsmap={"sbfeq": QUAKEML_NAMESPACE})
    return path


# --------------------------------------------------------------------------------------------
# Comparison with a reference catalog
# --------------------------------------------------------------------------------------------

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
        that magnitude or more, over those plus our unmatched events. Our events carry no
        magnitude, so every unmatched event counts as a false one in every magnitude range: a
        lower bound."""
        if min_magnitude is None:
            n = self.counts["ours"]
            return float(self.counts["matched"] / n) if n else float("nan")
        tp = int((self.matches["magnitude"] >= min_magnitude).sum())
        denom = tp + len(self.new)
        return float(tp / denom) if denom else float("nan")

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


def _epicentral_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance (km), haversine on a 6371 km sphere."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(a, dtype=float)) for a in (lat1, lon1, lat2, lon2))
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


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

    to, tr = _seconds(ev_o["time"]), _seconds(ev_r["time"])
    order = np.argsort(tr)
    tr_sorted = tr[order]
    cand = []
    for i, t in enumerate(to):
        lo, hi = np.searchsorted(tr_sorted, [t - time_tolerance, t + time_tolerance + 1e-9])
        for j in order[lo:hi]:
            dt = abs(t - tr[j])
            dist = _epicentral_km(ev_o.at[i, "latitude"], ev_o.at[i, "longitude"], ev_r.at[j, "latitude"], ev_r.at[j, "longitude"])
            if np.isfinite(dist) and dist > distance_tolerance_km:
                continue
            cand.append((dt, dist if np.isfinite(dist) else 0.0, i, j))
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
            "distance_km": _epicentral_km(ev_o["latitude"].to_numpy()[oi], ev_o["longitude"].to_numpy()[oi],
                                          ev_r["latitude"].to_numpy()[ri], ev_r["longitude"].to_numpy()[ri]),
            "ddepth_km": ev_o["depth_km"].to_numpy(dtype=float)[oi] - ev_r["depth_km"].to_numpy(dtype=float)[ri],
            "ref_latitude": ev_r["latitude"].to_numpy()[ri],
            "ref_longitude": ev_r["longitude"].to_numpy()[ri],
            "our_latitude": ev_o["latitude"].to_numpy()[oi],
            "our_longitude": ev_o["longitude"].to_numpy()[oi],
            "magnitude": ev_r["magnitude"].to_numpy(dtype=float)[ri],
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
    po = po.assign(key=_netsta(po["station"]), t=_seconds(po["time"]))
    pr = pr.assign(key=_netsta(pr["station"]), t=_seconds(pr["time"]))
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


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_subcommands(subparsers) -> None:
    """Register ``seisbench-feq associate`` and ``seisbench-feq compare``."""
    d = default_parameters()
    p = subparsers.add_parser(
        "associate",
        help="associate picks into events with PyOcto and write QuakeML",
        description="Associate picks across stations (PyOcto), locate the events in a 1-D model and "
        "write them as QuakeML. Naive pick times are taken as UTC.",
    )
    p.add_argument("picks", help="pick file: CSV/Parquet (station, phase, time, probability), PhaseNet or Imperial Valley layout")
    p.add_argument("--stations", required=True, help="station table: CSV (id/station, latitude, longitude, elevation in m) or StationXML")
    p.add_argument("--out", required=True, help="QuakeML file to write")
    p.add_argument("--events-csv", help="also write the events as CSV")
    p.add_argument("--picks-csv", help="also write the associated picks (with event_id, residual) as CSV")
    p.add_argument("--velocity-model", default=d["velocity_model"],
                   help="'socal' (Hadley-Kanamori 1-D, default), 'homogeneous', or a CSV of layers: depth,vp[,vs]")
    p.add_argument("--vp", type=float, default=d["vp"], help="P velocity of the homogeneous model, km/s (default %(default)s)")
    p.add_argument("--vp-vs", type=float, default=d["vp_vs_ratio"], help="Vp/Vs (default %(default)s)")
    p.add_argument("--tolerance", type=float, default=d["tolerance"], help="travel-time tolerance while associating, s (default %(default)s)")
    p.add_argument("--pick-match-tolerance", type=float, default=d["pick_match_tolerance"], help="s (default %(default)s)")
    p.add_argument("--min-p", type=int, default=d["min_p_picks"], help="minimum P picks per event (default %(default)s)")
    p.add_argument("--min-s", type=int, default=d["min_s_picks"], help="minimum S picks per event (default %(default)s)")
    p.add_argument("--min-ps-stations", type=int, default=d["min_p_and_s_stations"],
                   help="minimum stations with both P and S (default %(default)s)")
    p.add_argument("--min-picks", type=int, default=d["min_picks"], help="minimum picks per event (default %(default)s)")
    p.add_argument("--max-depth", type=float, default=d["depth_range_km"][1], help="deepest hypocentre searched, km (default %(default)s)")
    p.add_argument("--margin", type=float, default=d["margin_km"], help="search area margin around the stations, km (default %(default)s)")
    p.add_argument("--min-probability", type=float, default=d["min_probability"], help="ignore picks below this probability")
    p.add_argument("--picker", help="picking model name written to the QuakeML (e.g. FEQ3)")
    p.add_argument("--agency", help="agency id written to the QuakeML")
    p.add_argument("--threads", type=int, help="PyOcto threads (default: all cores)")
    p.add_argument("--checkpoint-dir", help="save finished hour blocks here; a rerun resumes from them")
    p.add_argument("--start", help="only picks from this time (UTC, ISO 8601)")
    p.add_argument("--end", help="only picks before this time (UTC, ISO 8601)")
    p.set_defaults(func=_cmd_associate)

    c = subparsers.add_parser(
        "compare",
        help="compare a catalog with a reference (agency) catalog",
        description="Match events one-to-one (time, then distance tolerance) and picks (station, phase, "
        "time tolerance); print counts, precision and recall; optionally write a markdown report with figures.",
    )
    c.add_argument("ours", help="our catalog: QuakeML, CSV catalog or picks table")
    c.add_argument("reference", help="reference catalog: QuakeML, CSV catalog (e.g. an agency events.csv) or picks table")
    c.add_argument("--time-tolerance", type=float, default=3.0, help="origin-time tolerance, s (default %(default)s)")
    c.add_argument("--distance-tolerance", type=float, default=15.0, help="epicentre tolerance, km (default %(default)s)")
    c.add_argument("--pick-tolerance", type=float, default=0.5, help="pick time tolerance, s (default %(default)s)")
    c.add_argument("--start", help="only events from this time (UTC)")
    c.add_argument("--end", help="only events before this time (UTC)")
    c.add_argument("--report-dir", help="write report.md and figures here")
    c.add_argument("--tables", action="store_true", help="also write matches.csv, missed.csv, new.csv into the report dir")
    c.set_defaults(func=_cmd_compare)


def _cmd_associate(args) -> int:
    picks = read_picks(args.picks)
    for bound, keep in ((args.start, lambda t, b: t >= b), (args.end, lambda t, b: t < b)):
        if bound:
            picks = picks[keep(picks["time"], to_utc(pd.Series([bound]), "--start/--end")[0])]
    result = associate(
        picks, args.stations, args.velocity_model, vp=args.vp, vp_vs_ratio=args.vp_vs,
        tolerance=args.tolerance, pick_match_tolerance=args.pick_match_tolerance,
        min_p_picks=args.min_p, min_s_picks=args.min_s, min_p_and_s_stations=args.min_ps_stations,
        min_picks=args.min_picks, depth_range_km=(0.0, args.max_depth), margin_km=args.margin,
        min_probability=args.min_probability, n_threads=args.threads, picker=args.picker,
        checkpoint_dir=args.checkpoint_dir,
    )
    write_quakeml(result, args.out, agency_id=args.agency)
    if args.events_csv:
        result.events.to_csv(args.events_csv, index=False)
    if args.picks_csv:
        result.picks.to_csv(args.picks_csv, index=False)
    print(result.summary())
    print(f"wrote {args.out}")
    return 0


def _cmd_compare(args) -> int:
    comparison = compare(
        args.ours, args.reference, time_tolerance=args.time_tolerance,
        distance_tolerance_km=args.distance_tolerance, pick_tolerance=args.pick_tolerance,
        start=args.start, end=args.end,
    )
    print(comparison.summary())
    print(comparison.by_magnitude.to_string(index=False))
    if args.report_dir:
        from .catalog_report import write_report

        path = write_report(comparison, args.report_dir, tables=args.tables)
        print(f"wrote {path}")
    return 0
