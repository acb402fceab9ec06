"""Local magnitudes (ML) of associated events from pick amplitudes.

``ML = log10(A) - log10(A0(r))``, with ``A`` the Wood-Anderson amplitude in mm and ``r`` the
hypocentral distance in km. The default distance correction is Hutton & Boore (1987) for
southern California::

    -log10 A0(r) = 1.110 log10(r / 100) + 0.00189 (r - 100) + 3.0

(:data:`FORMULAS` names the choices; a callable ``(log10_A_mm, r_km) -> ML`` works too.)

The pick amplitudes must be in physical units (``amplitude_unit`` ``m`` or ``m/s``; counts give no
magnitude). A displacement ``d`` (m) becomes ``A = gain * d * 1000`` mm with the Wood-Anderson
gain 2080 (Uhrhammer & Collins 1990). A peak velocity ``v`` (m/s), as PhaseNet reports, is first
turned into displacement at one dominant frequency, ``d = v / (2 pi f)``: an approximation, since
the true spectrum is not known from one number; ``dominant_frequency_hz`` is settable, and the
Imperial Valley comparison with the SCSN's magnitudes (docs/catalog.md) shows how well it does.
The station magnitude uses the largest amplitude among a station's picks of the event; the event
magnitude is the median of its station magnitudes, with 1.4826 x their median absolute deviation
as uncertainty.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import pandas as pd

logger = logging.getLogger("seisbench_feq.catalog")

WOOD_ANDERSON_GAIN = 2080.0


def hutton_boore_1987(log10_amplitude_mm, hypocentral_km):
    """ML of Hutton & Boore (1987), southern California."""
    r = np.asarray(hypocentral_km, dtype=float)
    return np.asarray(log10_amplitude_mm, dtype=float) + 1.110 * np.log10(r / 100.0) + 0.00189 * (r - 100.0) + 3.0


def bakun_joyner_1984(log10_amplitude_mm, hypocentral_km):
    """ML with the distance correction of Bakun & Joyner (1984), central California:
    ``-log A0 = log10(r) + 0.00301 r + 0.7``."""
    r = np.asarray(hypocentral_km, dtype=float)
    return np.asarray(log10_amplitude_mm, dtype=float) + np.log10(r) + 0.00301 * r + 0.7


#: name -> (description written to QuakeML, function)
FORMULAS: dict[str, tuple[str, Callable]] = {
    "hutton-boore-1987": ("Hutton & Boore (1987), southern California: ML = log10(A_WA mm) + 1.110 log10(r/100) "
                          "+ 0.00189 (r - 100) + 3.0", hutton_boore_1987),
    "bakun-joyner-1984": ("Bakun & Joyner (1984), central California: ML = log10(A_WA mm) + log10(r) + 0.00301 r + 0.7",
                          bakun_joyner_1984),
}


def wood_anderson_mm(amplitude, unit, *, dominant_frequency_hz: float = 5.0,
                     gain: float = WOOD_ANDERSON_GAIN) -> np.ndarray:
    """Wood-Anderson amplitude (mm) of peak displacement (``m``) or velocity (``m/s``); NaN for
    other units."""
    a = np.abs(np.asarray(amplitude, dtype=float))
    unit = np.asarray(pd.Series(unit).fillna("").astype(str).str.strip().str.lower())
    displacement = np.where(unit == "m", a, np.where(unit == "m/s", a / (2 * np.pi * dominant_frequency_hz), np.nan))
    return gain * displacement * 1000.0


def local_magnitudes(picks: pd.DataFrame, events: pd.DataFrame, *, formula="hutton-boore-1987",
                     dominant_frequency_hz: float = 5.0, gain: float = WOOD_ANDERSON_GAIN,
                     min_stations: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Event and station ML from associated picks.

    :param picks: ``event_id, station, amplitude, amplitude_unit, distance_km`` (epicentral).
    :param events: ``event_id, depth_km``.
    :param formula: a key of :data:`FORMULAS` or a callable ``(log10_A_mm, r_km) -> ML``.
    :return: ``(magnitudes, station_magnitudes)``: ``event_id, magnitude, magnitude_type, method,
        uncertainty, station_count`` and ``event_id, station, magnitude, magnitude_type,
        amplitude_mm, hypocentral_km``. Both empty when no pick has a usable amplitude.
    """
    if callable(formula):
        method, fn = getattr(formula, "__name__", "user formula"), formula
    else:
        if formula not in FORMULAS:
            raise ValueError(f"unknown magnitude formula {formula!r}; choose from {', '.join(FORMULAS)} or give a function")
        method, fn = FORMULAS[formula]
    empty = (pd.DataFrame(columns=["event_id", "magnitude", "magnitude_type", "method", "uncertainty", "station_count"]),
             pd.DataFrame(columns=["event_id", "station", "magnitude", "magnitude_type", "amplitude_mm", "hypocentral_km"]))
    if len(picks) == 0 or "amplitude" not in picks.columns or "amplitude_unit" not in picks.columns:
        return empty
    wa = wood_anderson_mm(picks["amplitude"], picks["amplitude_unit"], dominant_frequency_hz=dominant_frequency_hz, gain=gain)
    usable = np.isfinite(wa) & (wa > 0) & np.isfinite(picks["distance_km"].to_numpy(dtype=float))
    if not usable.any():
        units = sorted(set(picks["amplitude_unit"].fillna("").astype(str)) - {""})
        logger.info("no magnitudes: no pick amplitude in m or m/s (units found: %s)", units or "none")
        return empty
    p = picks.loc[usable, ["event_id", "station", "distance_km"]].assign(amplitude_mm=wa[usable])
    p = p.loc[p.groupby(["event_id", "station"])["amplitude_mm"].idxmax()]
    depth = events.set_index("event_id")["depth_km"].reindex(p["event_id"]).fillna(0.0).to_numpy(dtype=float)
    p["hypocentral_km"] = np.hypot(p["distance_km"].to_numpy(dtype=float), np.clip(depth, 0, None))
    p["magnitude"] = fn(np.log10(p["amplitude_mm"].to_numpy()), np.maximum(p["hypocentral_km"].to_numpy(), 1.0))
    p["magnitude_type"] = "ML"
    stations = p[["event_id", "station", "magnitude", "magnitude_type", "amplitude_mm", "hypocentral_km"]].reset_index(drop=True)
    g = stations.groupby("event_id")["magnitude"]
    mags = pd.DataFrame({
        "magnitude": g.median(),
        "uncertainty": g.apply(lambda m: 1.4826 * float(np.median(np.abs(m - np.median(m)))) if len(m) > 1 else np.nan),
        "station_count": g.size(),
    }).reset_index()
    mags = mags[mags["station_count"] >= min_stations]
    mags.insert(2, "magnitude_type", "ML")
    mags.insert(3, "method", method)
    stations = stations[stations["event_id"].isin(mags["event_id"])].reset_index(drop=True)
    return mags[["event_id", "magnitude", "magnitude_type", "method", "uncertainty", "station_count"]], stations


def add_local_magnitudes(result, **kwargs) -> None:
    """Compute :func:`local_magnitudes` for an association result and store them on it
    (``magnitudes``, ``station_magnitudes`` and the events' ``magnitude``/``magnitude_type``)."""
    mags, stations = local_magnitudes(result.picks, result.events, **kwargs)
    if len(mags) == 0:
        return
    result.magnitudes, result.station_magnitudes = mags, stations
    by_event = mags.set_index("event_id")
    result.events["magnitude"] = result.events["event_id"].map(by_event["magnitude"]).astype(float)
    result.events["magnitude_type"] = result.events["event_id"].map(by_event["magnitude_type"])
    result.parameters["magnitude"] = mags["method"].iloc[0]
