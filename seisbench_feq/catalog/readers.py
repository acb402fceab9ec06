"""Reading picks and stations for association.

* Pick files go through the package's one pick table, :func:`seisbench_feq.io.picks.read_picks`
  (CSV or Parquet of ``seisbench-feq pick``/``realtime``, the older ``station, phase, time,
  probability`` CSV, PhaseNet/QuakeFlow columns); a SeisBench ``PickList`` through
  :func:`seisbench_feq.io.picks.picks_frame` (``PickList.to_dataframe``). The PhaseNet/GaMMA
  hour-file layout of the Imperial Valley data (``fname, t0, idx_p, prob_p, idx_s, prob_s``) has its
  own reader, :func:`read_phasenet_hourly`, returning the same columns.
* Inside the catalog, a station is named by its id ``NET.STA.LOC`` in the ``station`` column (one
  id per site, as PyOcto needs); the pick table's ``network``, ``location``, ``channel`` and
  ``trace_id`` columns are kept beside it, so QuakeML picks land on their channel.
* A *station table* has ``id`` (``NET.STA.LOC``), ``latitude``, ``longitude`` (degrees) and
  ``elevation`` (metres above sea level).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .times import seconds, to_utc

logger = logging.getLogger("seisbench_feq.catalog")

PHASES = ("P", "S")
_PHASENET_HOURLY = {"fname", "idx_p", "idx_s"}
# station-table columns as written by ObsPy/PyOcto users and by PhaseNet/GaMMA station files
_STATION_COLUMNS = {
    "id": ("id", "station_id", "trace_id", "seed_id"),
    "latitude": ("latitude", "lat"),
    "longitude": ("longitude", "lon", "lng", "long"),
    "elevation": ("elevation", "elevation(m)", "elevation_m", "elv(m)", "elev", "altitude"),
}


def read_table(path) -> pd.DataFrame:
    """CSV (comma, tab or whitespace separated) or Parquet; errors name missing or empty files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a table file")
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


# --------------------------------------------------------------------------------------------
# Picks
# --------------------------------------------------------------------------------------------


def _parse_list(text, n: int | None = None) -> list[float]:
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return [np.nan] * (n or 0)
    text = str(text).strip().strip("[]")
    values = [float(v) for v in text.split(",") if v.strip()] if text else []
    if n is not None and len(values) != n:
        raise ValueError(f"list column has {len(values)} values, expected {n}: {text[:60]}...")
    return values


def read_phasenet_hourly(source, *, sampling_rate: float = 100.0, amplitude_unit: str = "m/s",
                         model: str = "PhaseNet") -> pd.DataFrame:
    """Read the PhaseNet/GaMMA hour-file layout into the pick table.

    One row per station-hour: ``fname`` is ``<hour start>.<NET.STA.LOC.CHA-prefix>`` (e.g.
    ``2020-10-01T00.CI.BOM..HH``), ``t0`` an extra offset in seconds, and ``idx_p``/``idx_s``,
    ``prob_p``/``prob_s``, ``amp_p``/``amp_s`` lists per phase (sample indices at
    ``sampling_rate``). The hour start has no time zone and is taken as UTC (logged). P picks are
    put on the vertical (``..HHZ``) and S picks on a horizontal (``..HHN``); the amplitudes are
    PhaseNet's peak ground velocity, ``amplitude_unit`` (m/s).
    """
    from ..io.picks import PICK_COLUMNS, normalise_picks, split_id
    from ..io.quakeml import phase_channel

    df = read_table(source) if isinstance(source, (str, Path)) else source
    rows = []
    for rec in df.itertuples(index=False):
        start, _, seed = str(rec.fname).partition(".")
        t0 = pd.Timestamp(start if ":" in start else start + ":00:00") + pd.Timedelta(seconds=float(rec.t0 or 0))
        net, sta, loc, prefix = split_id(seed)
        for phase in PHASES:
            idx = _parse_list(getattr(rec, f"idx_{phase.lower()}"))
            prob = _parse_list(getattr(rec, f"prob_{phase.lower()}", None), len(idx))
            amp = _parse_list(getattr(rec, f"amp_{phase.lower()}", None), len(idx))
            channel = phase_channel(prefix, phase) or ""
            for i, p, a in zip(idx, prob, amp):
                t = t0 + pd.Timedelta(seconds=i / sampling_rate)
                rows.append((f"{net}.{sta}.{loc}.{channel}", net, sta, loc, channel, phase, t, p, t, t, a))
    columns = ["trace_id", "network", "station", "location", "channel", "phase", "time", "probability",
               "start_time", "end_time", "amplitude"]
    out = pd.DataFrame(rows, columns=columns)
    logger.info("PhaseNet hour-file layout: hour starts without time zone are taken as UTC")
    for col in ("time", "start_time", "end_time"):
        out[col] = pd.to_datetime(out[col]).dt.tz_localize("UTC") if len(out) else pd.Series(dtype="datetime64[ns, UTC]")
    out["amplitude_unit"] = np.where(np.isfinite(out["amplitude"].to_numpy(dtype=float)), amplitude_unit, "")
    out["model"] = model
    return normalise_picks(out.reindex(columns=PICK_COLUMNS))


def _is_phasenet_hourly(path: Path) -> bool:
    if path.suffix.lower() in (".parquet", ".pq") or not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path) as f:
        head = f.readline()
    names = {c.strip() for c in head.replace("\t", ",").split(",")}
    return _PHASENET_HOURLY <= names


def _station_ids(df: pd.DataFrame, what: str) -> pd.Series:
    """``NET.STA.LOC`` per row: a ``station`` column that holds ids, else ``network``/``station``/
    ``location`` codes (the pick table), else ``trace_id``."""
    if "station" in df.columns and df["station"].astype(str).str.contains(".", regex=False).all():
        return df["station"].map(normalize_station_id)
    if {"network", "station"} <= set(df.columns):
        loc = df["location"].fillna("").astype(str) if "location" in df.columns else ""
        return (df["network"].fillna("").astype(str) + "." + df["station"].astype(str) + "." + loc).map(normalize_station_id)
    if "trace_id" in df.columns:
        return df["trace_id"].map(normalize_station_id)
    raise ValueError(f"{what}: no 'station' (NET.STA.LOC), 'network'+'station' or 'trace_id' column "
                     f"(columns: {list(df.columns)})")


def read_picks(source, *, sampling_rate: float = 100.0, duplicate_tolerance: float = 0.1,
               what: str | None = None) -> pd.DataFrame:
    """Read picks for association: the pick table plus ``station`` as ``NET.STA.LOC``.

    :param source: a SeisBench ``PickList`` (or list of ``Pick``), a ``ClassifyOutput``, a pick
        file (anything :func:`seisbench_feq.io.picks.read_picks` reads, or the PhaseNet hour-file
        layout, see :func:`read_phasenet_hourly`) or a DataFrame with ``phase``, ``time``
        (``probability``) and a station: ``station`` as ``NET.STA.LOC``, or the pick table's
        ``network``/``station``/``location``, or ``trace_id``. Extra columns of a DataFrame
        (``event_id``...) are kept.
    :param sampling_rate: samples per second, only for the PhaseNet hour-file layout.
    :param duplicate_tolerance: picks of the same station and phase closer than this (s) are one
        pick seen twice (e.g. from overlapping windows or files); the most probable is kept and the
        number dropped is logged.
    """
    from ..io.picks import picks_frame
    from ..io.picks import read_picks as read_pick_table

    what = what or (str(source) if isinstance(source, (str, Path)) else "picks")
    if hasattr(source, "picks") and not isinstance(source, pd.DataFrame):  # ClassifyOutput
        model = getattr(source, "creator", "") or ""
        source = picks_frame(source.picks, model=model)
    if isinstance(source, (str, Path)):
        path = Path(source)
        df = read_phasenet_hourly(path, sampling_rate=sampling_rate) if _is_phasenet_hourly(path) else read_pick_table(path)
    elif isinstance(source, pd.DataFrame):
        df = read_phasenet_hourly(source, sampling_rate=sampling_rate) if _PHASENET_HOURLY <= set(source.columns) else source.copy()
    elif isinstance(source, (list, tuple)) or type(source).__name__ == "PickList":
        df = picks_frame(source)
    else:
        raise TypeError(f"cannot read picks from {type(source).__name__}")

    for col in ("phase", "time"):
        if col not in df.columns:
            raise ValueError(f"{what}: no '{col}' column (columns: {list(df.columns)})")
    if "probability" not in df.columns:
        df["probability"] = np.nan
    df = df.drop(columns=[c for c in ("index", "level_0") if c in df.columns])
    if len(df) == 0:
        return _empty_picks(df.columns)

    df["station"] = _station_ids(df, what)
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
    t = seconds(df["time"])
    same = (df["station"].to_numpy()[1:] == df["station"].to_numpy()[:-1]) & (
        df["phase"].to_numpy()[1:] == df["phase"].to_numpy()[:-1]
    )
    new_group = np.concatenate([[True], ~(same & (np.diff(t) <= tolerance))])
    if new_group.all():
        return df
    group = np.cumsum(new_group)
    prob = df["probability"].fillna(-1.0).to_numpy()
    best = pd.Series(prob).groupby(group).idxmax().to_numpy()
    logger.warning(
        "%s: %d duplicate picks (same station and phase within %.2f s) dropped; the most probable kept",
        what, len(df) - len(best), tolerance,
    )
    return df.iloc[best].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Stations
# --------------------------------------------------------------------------------------------


def _inventory_rows(inventory) -> pd.DataFrame:
    # Not pyocto's OctoAssociator.inventory_to_df: it needs an associator with a projection
    # first (the projection is chosen from these very rows), and it adds a blank-location row
    # "NET.STA." to every station, which then captures picks meant for "NET.STA.00".
    rows = []
    for net in inventory:
        for sta in net:
            for loc in sorted({ch.location_code for ch in sta.channels}) or [""]:
                rows.append({"id": f"{net.code}.{sta.code}.{loc}", "latitude": sta.latitude,
                             "longitude": sta.longitude, "elevation": sta.elevation})
    return pd.DataFrame(rows, columns=["id", "latitude", "longitude", "elevation"])


def _rename_station_columns(df: pd.DataFrame) -> pd.DataFrame:
    lower = {str(c).lower().strip(): c for c in df.columns}
    mapping = {}
    for target, names in _STATION_COLUMNS.items():
        if target in df.columns:
            continue
        found = next((lower[n] for n in names if n in lower), None)
        if found is not None:
            mapping[found] = target
    return df.rename(columns=mapping)


def read_stations(source, *, what: str | None = None) -> pd.DataFrame:
    """Read stations into a station table (``id, latitude, longitude, elevation`` in m).

    :param source: an ObsPy ``Inventory``, a StationXML path (``.xml``), a DataFrame, or a CSV path
        (also PhaseNet/GaMMA station files: ``station``, ``lat``/``lng``, ``elv(m)``).
        Ids may be ``NET.STA``, ``NET.STA.LOC`` or ``NET.STA.LOC.CHA`` (channel dropped), in an
        ``id`` or ``station`` column; separate ``network``/``station``/``location`` columns also work.

    Stations without latitude/longitude are dropped with a warning naming them; a missing elevation
    becomes 0 m with a warning (the travel-time error this causes is about elevation / Vp).
    """
    what = what or (str(source) if isinstance(source, (str, Path)) else "stations")
    if isinstance(source, (str, Path)) and Path(source).suffix.lower() == ".xml":
        import obspy

        if not Path(source).is_file():
            raise FileNotFoundError(f"no such file: {source}")
        source = obspy.read_inventory(str(source))
    if type(source).__name__ == "Inventory":
        df = _inventory_rows(source)
    elif isinstance(source, (str, Path)):
        df = read_table(Path(source))
    elif isinstance(source, pd.DataFrame):
        df = source.copy()
    else:
        raise TypeError(f"cannot read stations from {type(source).__name__}")

    df = _rename_station_columns(df)
    if "id" not in df.columns:
        if "station" in df.columns and df["station"].astype(str).str.contains(".", regex=False).all():
            df = df.rename(columns={"station": "id"})
        elif {"network", "station"} <= set(df.columns):
            loc = df["location"].fillna("").astype(str) if "location" in df.columns else ""
            df["id"] = df["network"].astype(str) + "." + df["station"].astype(str) + "." + loc
            df = df.drop(columns=["station"])
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
        logger.warning("%s: stations without coordinates are left out (their picks cannot be used): %s",
                       what, sorted(df.loc[no_coords, "id"].unique()))
        df = df[~no_coords]
    if "elevation" not in df.columns:
        logger.warning("%s: no elevation column; all stations are placed at 0 m (sea level)", what)
        df["elevation"] = 0.0
    df["elevation"] = pd.to_numeric(df["elevation"], errors="coerce")
    if df["elevation"].isna().any():
        logger.warning("%s: stations without elevation are placed at 0 m: %s",
                       what, sorted(df.loc[df["elevation"].isna(), "id"].unique()))
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


def match_station_ids(pick_ids: pd.Series, station_ids: pd.Series) -> pd.Series:
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
