"""Batch picking of MiniSEED / SDS archives: resumable, bounded memory, scales out on Dask.

A job is split into independent *work units*: one station (``NET.STA.LOC``) x one time chunk
(default one day). Each unit (:mod:`.unit`)

1. reads its chunk plus a border pad (one model window + blinding + a margin) on both sides,
   through :mod:`seisbench_feq.io.sources` (ObsPy's SDS client, or indexed MiniSEED files);
2. cleans the stream (channel band by priority, overlaps, gaps, NaN, mixed rates; every fix is
   noted in the report);
3. runs ``model.classify`` over sub-spans of at most ``classify_span``, each read with the same
   pad, its start snapped to the model's window-step grid, so that every span sees exactly the
   windows a single run over the whole archive would;
4. keeps only picks whose peak time lies in ``[span_start, span_end)``: every pick belongs to
   exactly one unit, none is lost or doubled at borders;
5. writes its picks (:mod:`seisbench_feq.io.picks`) and optionally detections atomically.

The driver (:mod:`.job`) records each finished unit in ``manifest.jsonl`` (:mod:`.manifest`); a
rerun of the same command checks the finished units' files and skips them, so a job killed at any
moment finishes the rest and ends with output identical to an uninterrupted run. A lock file
keeps a second job out of the same folder. Units run in-process or on Dask (:mod:`.runner`).

Output folder::

    OUT/run.json                 settings of the job (a rerun with other settings is refused)
    OUT/manifest.jsonl           one line per finished (or failed) unit
    OUT/units/<station>/<station>.<YYYYmmddTHHMMSS>.picks.csv   per-unit outputs
    OUT/picks.csv                merged picks of all units of the job (.parquet with format="parquet")
    OUT/detections.csv           merged detections (with detections=True)
    OUT/report.json, report.md   units done/skipped/failed with reasons, data hours, picks per
                                 station, throughput
"""

from ..io.picks import PICK_COLUMNS
from ..io.sources import MiniSEEDSource, SDSSource, WaveformSource, open_source
from .job import load_model, pick_archive, weights_fingerprint, weights_label
from .manifest import JobLock, Manifest
from .plan import (DEFAULT_CHANNEL_PRIORITY, ArchiveError, PickSettings, UnitInputError,
                   UnitResult, WorkUnit, border_geometry, default_span, floor_to, iso,
                   parse_duration, parse_time, plan_units)
from .report import ArchiveReport
from .runner import ShippedModel, choose_parallelism
from .unit import DETECTION_COLUMNS, clean_stream, process_unit, unit_output_paths

__all__ = [
    "PICK_COLUMNS", "DETECTION_COLUMNS", "DEFAULT_CHANNEL_PRIORITY", "ArchiveError",
    "ArchiveReport", "JobLock", "Manifest", "MiniSEEDSource", "PickSettings", "SDSSource",
    "ShippedModel", "UnitInputError", "UnitResult", "WaveformSource", "WorkUnit",
    "border_geometry", "choose_parallelism", "clean_stream", "default_span", "floor_to", "iso",
    "load_model", "open_source", "parse_duration", "parse_time", "pick_archive", "plan_units",
    "process_unit", "unit_output_paths", "weights_fingerprint", "weights_label",
]
