"""The one QuakeML builder: events, origins, picks, arrivals, amplitudes and magnitudes.

Every QuakeML file of the package (``seisbench-feq associate``, the real-time picker, the
examples) is built by :func:`build_catalog` and written by :func:`write_quakeml`, so that all of
them agree on these conventions:

* **Pick probability**: an extra element ``<seisbench_feq:probability>`` on each ``Pick``, in the
  namespace :data:`NAMESPACE` (``urn:x-seisbench-feq:quakeml:1.0``). In ObsPy it reads back as
  ``float(pick.extra["probability"]["value"])``. It is the model's peak probability (0-1) for
  that phase; it is not a QuakeML ``time_errors`` or weight.
* **Channel per phase**: P picks sit on the vertical component, S picks on a horizontal one. The
  channel comes from the pick table's ``channel`` or ``trace_id`` (``NET.STA.LOC.CHA``); a
  band+instrument code alone (``HH``) or a component that contradicts the phase is completed
  or corrected to ``..Z`` for P and ``..N`` for S (a station-level pick has no component of its
  own), see :func:`phase_channel`.
* **Only located events with picks**: an event row without origin time, latitude or longitude,
  or without any pick, is left out (logged); a QuakeML event is always an origin plus its picks.
* Pick time uncertainty: the pick table's ``uncertainty_s`` column (s), else ``pick_uncertainty``.
* Amplitudes (``amplitude`` and ``amplitude_unit`` columns) become ``Amplitude`` objects linked to
  their pick; magnitudes (``magnitudes=``) become a preferred ``Magnitude`` whose ``method_id``
  names the formula, with one ``StationMagnitude`` per station when given.

Files round-trip through ``obspy.read_events``.
"""

from __future__ import annotations

import io as _io
import logging
import math
import re
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Iterable

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

NAMESPACE = "urn:x-seisbench-feq:quakeml:1.0"
NAMESPACE_PREFIX = "seisbench_feq"
PROBABILITY_KEY = "probability"

# QuakeML's AmplitudeUnit enumeration; anything else is written as "other"
_AMPLITUDE_UNITS = {"m", "s", "m/s", "m/(s*s)", "m*s", "dimensionless", "other"}
_HORIZONTAL = set("NE12RT")
_VERTICAL = set("Z3")


def probability_of(pick) -> float | None:
    """The pick probability stored by :func:`build_catalog` (``None`` when absent)."""
    extra = getattr(pick, "extra", None) or {}
    entry = extra.get(PROBABILITY_KEY)
    if entry is None:
        return None
    value = entry.get("value") if isinstance(entry, Mapping) else entry  # ObsPy gives an AttribDict
    return float(value)


def phase_channel(channel: str | None, phase: str) -> str | None:
    """The channel code a pick of ``phase`` is written on.

    ``HHZ`` stays for P and ``HHE``/``HHN``/``HH1``/``HH2`` stay for S. A two-letter code
    (``HH``) gets ``Z`` for P and ``N`` for S; a P on a horizontal becomes ``..Z`` and an S on
    the vertical ``..N``: the models pick on all three components of a station, so the
    component is a convention, and QuakeML readers expect P on the vertical.
    """
    if channel is None or (isinstance(channel, float) and math.isnan(channel)):
        return None
    code = str(channel).strip().upper()
    if not code:
        return None
    if len(code) == 2:
        return code + ("Z" if phase == "P" else "N")
    if phase == "P" and code[-1] not in _VERTICAL:
        return code[:-1] + "Z"
    if phase == "S" and code[-1] in _VERTICAL:
        return code[:-1] + "N"
    return code


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "unknown"


def _finite(value) -> bool:
    try:
        return value is not None and not pd.isna(value) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _utc(value):
    from obspy import UTCDateTime

    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return UTCDateTime(ns=int(ts.tz_convert("UTC").value))


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()


def _seed_codes(row: dict) -> tuple[str, str, str, str | None]:
    """``(network, station, location, channel)`` of a pick row. The station is a ``station``
    column holding ``NET.STA.LOC[.CHA]`` (the catalog tables), else ``trace_id``, else separate
    ``network``/``station``/``location`` columns (the pick table); the channel is the ``channel``
    column, else the fourth part of ``trace_id`` or of the station id."""
    station, trace_id = _text(row.get("station")), _text(row.get("trace_id"))
    if "." in station:
        parts = station.split(".")
    elif trace_id.count(".") >= 2:
        parts = trace_id.split(".")
    else:
        parts = [_text(row.get("network")), station, _text(row.get("location"))]
    parts = parts + [""] * (4 - len(parts))
    channel = _text(row.get("channel")) or parts[3] or (trace_id.split(".")[3] if trace_id.count(".") == 3 else "")
    return parts[0], parts[1], parts[2], channel or None


def _polarity(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip().lower()
    return {"u": "positive", "up": "positive", "+": "positive", "1": "positive", "1.0": "positive",
            "positive": "positive", "d": "negative", "down": "negative", "-": "negative",
            "-1": "negative", "-1.0": "negative", "negative": "negative",
            "undecidable": "undecidable", "x": "undecidable"}.get(text)


def build_catalog(
    events: pd.DataFrame,
    picks: pd.DataFrame,
    stations: pd.DataFrame | None = None,
    *,
    agency: str | None = None,
    author: str = "seisbench_feq",
    picker: str | None = None,
    magnitudes: pd.DataFrame | None = None,
    station_magnitudes: pd.DataFrame | None = None,
    velocity_model: str | None = None,
    locator: str = "pyocto",
    pick_uncertainty: float | None = None,
    channel_prefix: str | None = None,
    description: str | None = None,
    comments: Iterable[str] = (),
    event_type_certainty: str = "suspected",
):
    """Build an ObsPy ``Catalog`` from an event table and a pick table.

    :param events: one row per event: ``event_id``, ``time`` (UTC), ``latitude``, ``longitude``,
        ``depth_km``; optional ``n_stations``, ``rms_residual_s``, ``azimuthal_gap``,
        ``min_distance_km`` (origin quality), ``magnitude`` and ``magnitude_type``.
        Rows without time, latitude or longitude, and rows without picks, are left out.
    :param picks: the pick table (``seisbench_feq.io.picks`` columns) plus ``event_id``;
        optional ``residual_s``, ``distance_km``, ``azimuth`` (arrival fields, computed from
        ``stations`` when missing), ``uncertainty_s``, ``amplitude``/``amplitude_unit``,
        ``polarity``, ``model``. The station may be given as ``trace_id``, as ``station``
        ``NET.STA.LOC`` or as separate ``network``/``station``/``location`` columns.
    :param stations: station table (``id`` ``NET.STA.LOC``, ``latitude``, ``longitude``) for
        arrival distances and azimuths the picks do not carry.
    :param agency: ``creation_info.agency_id`` of catalog, events, origins and magnitudes.
    :param picker: picking model, written as the picks' ``method_id`` and author
        (default: the picks' ``model`` column, else ``"unknown"``).
    :param magnitudes: ``event_id, magnitude, magnitude_type, method`` (the formula, e.g.
        ``"Hutton & Boore (1987)"``), optional ``uncertainty``, ``station_count``; overrides the
        events' ``magnitude`` column.
    :param station_magnitudes: ``event_id, station, magnitude, magnitude_type`` per station.
    :param velocity_model: name written as the origins' ``earth_model_id``.
    :param pick_uncertainty: pick time uncertainty (s) where the picks have no ``uncertainty_s``.
    :param channel_prefix: band+instrument code (``"HH"``) for picks that carry no channel.
    """
    from obspy import UTCDateTime
    from obspy.core.event import (
        Amplitude, Arrival, Catalog, Comment, CreationInfo, Event, Magnitude, Origin, OriginQuality, Pick,
        QuantityError, ResourceIdentifier, StationMagnitude, StationMagnitudeContribution, WaveformStreamID,
    )
    from obspy.geodetics import gps2dist_azimuth, kilometer2degrees

    now = UTCDateTime()

    def info(who: str | None = None):
        return CreationInfo(agency_id=agency, author=who or author, creation_time=now)

    catalog = Catalog(resource_id=ResourceIdentifier(prefix="smi:seisbench_feq/catalog"), creation_info=info())
    catalog.description = description
    for text in comments:
        catalog.comments.append(Comment(text=str(text)))
    events = pd.DataFrame(events) if events is not None else pd.DataFrame()
    picks = pd.DataFrame(picks) if picks is not None else pd.DataFrame()
    if len(events) == 0:
        return catalog
    for col in ("event_id", "time", "latitude", "longitude"):
        if col not in events.columns:
            raise ValueError(f"events: no '{col}' column (columns: {list(events.columns)})")
    if len(picks) and "event_id" not in picks.columns:
        raise ValueError(f"picks: no 'event_id' column linking them to events (columns: {list(picks.columns)})")

    located = events["time"].notna() & events["latitude"].notna() & events["longitude"].notna()
    if (~located).any():
        logger.warning("%d events without origin time or epicentre are not written to QuakeML: %s",
                       int((~located).sum()), events.loc[~located, "event_id"].tolist()[:10])
    picks_by_event = {k: g for k, g in picks.groupby("event_id", sort=False)} if len(picks) else {}
    no_picks = [eid for eid in events.loc[located, "event_id"] if eid not in picks_by_event]
    if no_picks:
        logger.warning("%d events without picks are not written to QuakeML: %s", len(no_picks), no_picks[:10])

    mags = {}
    if magnitudes is not None and len(magnitudes):
        mags = {r["event_id"]: r for r in pd.DataFrame(magnitudes).to_dict("records") if _finite(r.get("magnitude"))}
    elif "magnitude" in events.columns:
        mags = {r["event_id"]: r for r in events.to_dict("records") if _finite(r.get("magnitude"))}
    sta_mags: dict[Any, list[dict]] = {}
    if station_magnitudes is not None and len(station_magnitudes):
        for r in pd.DataFrame(station_magnitudes).to_dict("records"):
            sta_mags.setdefault(r["event_id"], []).append(r)
    coords = {}
    if stations is not None and len(stations):
        coords = {r["id"]: (float(r["latitude"]), float(r["longitude"])) for r in stations.to_dict("records")}

    models = [m for m in (picks["model"] if "model" in picks.columns else []) if _finite_str(m)]
    default_picker = picker or (str(models[0]) if models else "unknown")
    earth_model = ResourceIdentifier(f"smi:seisbench_feq/velocity_model/{_slug(velocity_model)}") if velocity_model else None
    for ev in events[located].to_dict("records"):
        ev_picks = picks_by_event.get(ev["event_id"])
        if ev_picks is None or len(ev_picks) == 0:
            continue
        event = Event(resource_id=ResourceIdentifier(prefix="smi:seisbench_feq/event"), event_type="earthquake",
                      event_type_certainty=event_type_certainty, creation_info=info())
        depth_km = ev.get("depth_km")
        n_picks = len(ev_picks)
        quality = OriginQuality(associated_phase_count=n_picks, used_phase_count=n_picks)
        if _finite(ev.get("n_stations")):
            quality.associated_station_count = quality.used_station_count = int(ev["n_stations"])
        if _finite(ev.get("rms_residual_s")):
            quality.standard_error = float(ev["rms_residual_s"])
        if _finite(ev.get("azimuthal_gap")):
            quality.azimuthal_gap = float(ev["azimuthal_gap"])
        if _finite(ev.get("min_distance_km")):
            quality.minimum_distance = kilometer2degrees(float(ev["min_distance_km"]))
        origin = Origin(
            resource_id=ResourceIdentifier(prefix="smi:seisbench_feq/origin"), time=_utc(ev["time"]),
            latitude=float(ev["latitude"]), longitude=float(ev["longitude"]),
            depth=float(depth_km) * 1000.0 if _finite(depth_km) else None,
            depth_type="from location" if _finite(depth_km) else None,
            method_id=ResourceIdentifier(f"smi:seisbench_feq/associator/{_slug(locator)}"),
            earth_model_id=earth_model, evaluation_mode="automatic", evaluation_status="preliminary",
            creation_info=info(), quality=quality,
        )
        n_station_set = set()
        for p in ev_picks.sort_values("time").to_dict("records"):
            net, sta, loc, channel = _seed_codes(p)
            n_station_set.add((net, sta, loc))
            channel = phase_channel(channel or channel_prefix, p["phase"])
            who = picker or (str(p["model"]) if _finite_str(p.get("model")) else default_picker)
            unc = p.get("uncertainty_s", p.get("uncertainty"))
            unc = float(unc) if _finite(unc) else pick_uncertainty
            pick = Pick(
                resource_id=ResourceIdentifier(prefix="smi:seisbench_feq/pick"), time=_utc(p["time"]),
                time_errors=QuantityError(uncertainty=unc) if unc is not None else QuantityError(),
                waveform_id=WaveformStreamID(net, sta, loc, channel), phase_hint=p["phase"],
                method_id=ResourceIdentifier(f"smi:seisbench_feq/picker/{_slug(who)}"),
                polarity=_polarity(p.get("polarity")), evaluation_mode="automatic",
                evaluation_status="preliminary", creation_info=info(who),
            )
            if _finite(p.get("probability")):
                pick.extra = {PROBABILITY_KEY: {"value": f"{float(p['probability']):.4f}", "namespace": NAMESPACE}}
            event.picks.append(pick)
            distance_km, azimuth = p.get("distance_km"), p.get("azimuth")
            sid = f"{net}.{sta}.{loc}"
            if not _finite(distance_km) and sid in coords:
                dist_m, azimuth, _ = gps2dist_azimuth(float(ev["latitude"]), float(ev["longitude"]), *coords[sid])
                distance_km = dist_m / 1000.0
            arrival = Arrival(resource_id=ResourceIdentifier(prefix="smi:seisbench_feq/arrival"),
                              pick_id=pick.resource_id, phase=p["phase"], time_weight=1.0)
            if _finite(p.get("residual_s")):
                arrival.time_residual = float(p["residual_s"])
            if _finite(distance_km):
                arrival.distance = kilometer2degrees(float(distance_km))
            if _finite(azimuth):
                arrival.azimuth = float(azimuth)
            origin.arrivals.append(arrival)
            if _finite(p.get("amplitude")):
                unit = str(p.get("amplitude_unit") or "other")
                event.amplitudes.append(Amplitude(
                    resource_id=ResourceIdentifier(prefix="smi:seisbench_feq/amplitude"),
                    generic_amplitude=float(p["amplitude"]), unit=unit if unit in _AMPLITUDE_UNITS else "other",
                    type=f"A{p['phase']}", category="point", pick_id=pick.resource_id,
                    waveform_id=WaveformStreamID(net, sta, loc, channel), evaluation_mode="automatic",
                    creation_info=info(who),
                ))
        if quality.associated_station_count is None:
            quality.associated_station_count = quality.used_station_count = len(n_station_set)
        event.origins.append(origin)
        event.preferred_origin_id = origin.resource_id
        mag = mags.get(ev["event_id"])
        if mag is not None:
            method = mag.get("method") or mag.get("magnitude_method")
            magnitude = Magnitude(
                resource_id=ResourceIdentifier(prefix="smi:seisbench_feq/magnitude"), mag=float(mag["magnitude"]),
                magnitude_type=str(mag.get("magnitude_type") or "ML"), origin_id=origin.resource_id,
                method_id=ResourceIdentifier(f"smi:seisbench_feq/magnitude/{_slug(method)}") if method else None,
                evaluation_mode="automatic", evaluation_status="preliminary", creation_info=info(),
            )
            if _finite(mag.get("uncertainty")):
                magnitude.mag_errors = QuantityError(uncertainty=float(mag["uncertainty"]))
            if _finite(mag.get("station_count")):
                magnitude.station_count = int(mag["station_count"])
            if method:
                magnitude.comments.append(Comment(text=f"formula: {method}"))
            for sm in sta_mags.get(ev["event_id"], []):
                net, sta, loc = (str(sm["station"]).split(".") + ["", ""])[:3]
                station_mag = StationMagnitude(
                    resource_id=ResourceIdentifier(prefix="smi:seisbench_feq/station_magnitude"),
                    origin_id=origin.resource_id, mag=float(sm["magnitude"]),
                    station_magnitude_type=str(sm.get("magnitude_type") or magnitude.magnitude_type),
                    waveform_id=WaveformStreamID(net, sta, loc), method_id=magnitude.method_id,
                    creation_info=info(),
                )
                event.station_magnitudes.append(station_mag)
                magnitude.station_magnitude_contributions.append(StationMagnitudeContribution(
                    station_magnitude_id=station_mag.resource_id, weight=1.0))
            event.magnitudes.append(magnitude)
            event.preferred_magnitude_id = magnitude.resource_id
        catalog.events.append(event)
    return catalog


def _finite_str(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def catalog_from_result(result, **kwargs):
    """:func:`build_catalog` of an association result (anything with ``events``, ``picks`` and
    optionally ``stations``, ``picker``, ``parameters``, ``reason``, ``magnitudes``)."""
    params = getattr(result, "parameters", None) or {}
    kwargs.setdefault("picker", getattr(result, "picker", None))
    kwargs.setdefault("velocity_model", params.get("velocity_model_name", params.get("velocity_model")))
    if getattr(result, "magnitudes", None) is not None:
        kwargs.setdefault("magnitudes", result.magnitudes)
        kwargs.setdefault("station_magnitudes", getattr(result, "station_magnitudes", None))
    reason = getattr(result, "reason", None)
    if reason:
        kwargs.setdefault("comments", [f"no events: {reason}"])
    kwargs.setdefault(
        "description",
        f"seisbench_feq: picks by {kwargs.get('picker') or 'unknown'}, associated and located by PyOcto "
        f"({kwargs.get('velocity_model') or 'unknown model'})",
    )
    return build_catalog(result.events, result.picks, getattr(result, "stations", None), **kwargs)


def write_quakeml(catalog_or_result, path, **kwargs) -> Path:
    """Write a QuakeML file atomically (temporary file, then rename).

    :param catalog_or_result: an ObsPy ``Catalog`` (written as it is; ``kwargs`` must be empty)
        or an association result, built with :func:`catalog_from_result` (``kwargs`` go to
        :func:`build_catalog`).
    """
    from obspy import Catalog

    from .files import atomic_write_bytes

    if isinstance(catalog_or_result, Catalog):
        if kwargs:
            raise TypeError(f"write_quakeml: options {sorted(kwargs)} apply to results, not to a built Catalog")
        catalog = catalog_or_result
    else:
        catalog = catalog_from_result(catalog_or_result, **kwargs)
    buffer = _io.BytesIO()
    catalog.write(buffer, format="QUAKEML", nsmap={NAMESPACE_PREFIX: NAMESPACE})
    return atomic_write_bytes(Path(path), buffer.getvalue())


def picks_with_probability(catalog) -> pd.DataFrame:
    """The picks of a catalog as a table (``event_id, trace_id, phase, time, probability``):
    a check of what :func:`build_catalog` wrote."""
    rows = []
    for ev in catalog:
        for p in ev.picks:
            w = p.waveform_id
            rows.append((str(ev.resource_id), f"{w.network_code}.{w.station_code}.{w.location_code or ''}.{w.channel_code or ''}",
                         p.phase_hint, pd.Timestamp(p.time.datetime, tz="UTC"), probability_of(p)))
    out = pd.DataFrame(rows, columns=["event_id", "trace_id", "phase", "time", "probability"])
    out["probability"] = out["probability"].astype(float) if len(out) else np.array([], float)
    return out
