"""Catalogs: associate picks across stations with PyOcto, export QuakeML, compare with an agency catalog.

The path is the one EQTransformer's authors used to validate their picker against an agency:
picks -> events (association and a 1-D location, local magnitude) -> QuakeML -> a matched
comparison with the agency's catalog. Only picks are needed, so any picker (FEQ models,
EQTransformer, PhaseNet) works.

Stages, one module each:

* :mod:`~seisbench_feq.catalog.readers`: picks (through :mod:`seisbench_feq.io.picks`) and stations;
  :mod:`~seisbench_feq.catalog.times`: UTC time stamps;
* :mod:`~seisbench_feq.catalog.velocity`: 1-D velocity models and PyOcto travel-time tables;
* :mod:`~seisbench_feq.catalog.association`: :func:`associate` (PyOcto);
* :mod:`~seisbench_feq.catalog.magnitude`: local magnitudes (Hutton & Boore 1987 by default);
* QuakeML: :mod:`seisbench_feq.io.quakeml` (the package's one builder);
* :mod:`~seisbench_feq.catalog.tables` and :mod:`~seisbench_feq.catalog.comparison`:
  :func:`read_catalog` and :func:`compare`;
* :mod:`~seisbench_feq.catalog.report`: figures and a markdown report.

PyOcto (``pip install pyocto``) is imported only inside the functions that need it.
"""

from __future__ import annotations

from ..io.quakeml import NAMESPACE as QUAKEML_NAMESPACE
from .association import AssociationResult, associate, azimuthal_gap, default_parameters, wadati_vp_vs
from .comparison import DEFAULT_MAGNITUDE_BINS, CatalogComparison, compare, epicentral_km
from .magnitude import FORMULAS as MAGNITUDE_FORMULAS
from .magnitude import local_magnitudes
from .readers import (
    PHASES, match_station_ids, normalize_station_id, read_phasenet_hourly, read_picks, read_stations, read_table,
)
from .tables import CatalogTable, read_catalog
from .times import EPOCH, from_seconds, seconds, to_utc
from .velocity import SOCAL_MODEL, layered_travel_times, write_pyocto_table

__all__ = [
    "AssociationResult", "CatalogComparison", "CatalogTable", "DEFAULT_MAGNITUDE_BINS", "MAGNITUDE_FORMULAS",
    "PHASES", "QUAKEML_NAMESPACE", "SOCAL_MODEL", "associate", "compare", "default_parameters", "layered_travel_times",
    "local_magnitudes", "normalize_station_id", "read_catalog", "read_phasenet_hourly", "read_picks",
    "read_stations", "to_obspy_catalog", "to_utc", "wadati_vp_vs", "write_pyocto_table", "write_quakeml",
]

# names of the single-module catalog, kept for one release
_epicentral_km = epicentral_km
_seconds = seconds
_from_seconds = from_seconds
_match_station_ids = match_station_ids
_azimuthal_gap = azimuthal_gap
_read_table = read_table


def to_obspy_catalog(result: AssociationResult, *, agency_id: str | None = None, **kwargs):
    """The ObsPy ``Catalog`` of an association result: :func:`seisbench_feq.io.quakeml.catalog_from_result`
    (``agency_id`` is its ``agency``)."""
    from ..io.quakeml import catalog_from_result

    if agency_id is not None:
        kwargs.setdefault("agency", agency_id)
    return catalog_from_result(result, **kwargs)


def write_quakeml(result, path, *, agency_id: str | None = None, **kwargs):
    """Write an association result (or a built ``Catalog``) as QuakeML, atomically:
    :func:`seisbench_feq.io.quakeml.write_quakeml` (``agency_id`` is its ``agency``)."""
    from ..io.quakeml import write_quakeml as _write

    if agency_id is not None:
        kwargs.setdefault("agency", agency_id)
    return _write(result, path, **kwargs)

