"""Time stamps of picks and catalogs: everything becomes ``datetime64[UTC]``.

Naive timestamps (no time zone) are taken as UTC and a log line says so; aware timestamps in any
zone are converted to UTC; a column that mixes naive and aware values is rejected, because
guessing the zone of the naive ones could shift them by hours.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

logger = logging.getLogger("seisbench_feq.catalog")

EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
_TZ_SUFFIX = re.compile(r"(Z|[+-]\d\d:?\d\d)$")


def to_utc(values, what: str = "time") -> pd.Series:
    """Convert time stamps to ``datetime64[UTC]``.

    Accepts datetimes (naive or aware), ISO strings, ObsPy ``UTCDateTime`` objects and POSIX
    seconds. Naive values are taken as UTC (logged); aware values in any zone are converted to UTC;
    a mix of naive and aware values raises ``ValueError`` naming ``what`` and the first offending
    rows.
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
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT:
            return "missing"
        if type(v).__name__ == "UTCDateTime":
            return "aware"
        if hasattr(v, "tzinfo"):
            return "naive" if v.tzinfo is None else "aware"
        if isinstance(v, str):
            if not v.strip():
                return "missing"
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
    converted = converted.where(kinds != "missing", None)
    iso = "ISO8601" if converted.dropna().map(type).eq(str).all() else None
    if (kinds == "naive").any():
        logger.info("%s: timestamps without time zone are taken as UTC", what)
        return pd.to_datetime(converted, format=iso).dt.tz_localize("UTC")
    # all aware (possibly with different offsets): convert each to UTC
    return pd.to_datetime(converted, utc=True, format=iso)


def seconds(times: pd.Series) -> np.ndarray:
    """POSIX seconds (float) of a UTC datetime series."""
    return ((pd.Series(times) - EPOCH) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)


def from_seconds(values) -> pd.Series:
    """UTC datetimes of POSIX seconds."""
    return pd.to_datetime(np.asarray(values, dtype=float), unit="s", utc=True)
