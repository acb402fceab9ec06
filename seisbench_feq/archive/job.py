"""``pick_archive``: plan a job, resume it, run its units, merge and report."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from obspy import UTCDateTime

from ..io.sources import SourceError, open_source, station_matches
from .manifest import JobLock, Manifest, check_run_file, remove_stale_temporaries
from .plan import (DEFAULT_CHANNEL_PRIORITY, ArchiveError, PickSettings, border_geometry,
                   check_classify_kwargs, default_span, iso, parse_duration, parse_time,
                   plan_units)
from .report import ArchiveReport, log_summary, merge_and_report
from .runner import choose_parallelism, run_units

if TYPE_CHECKING:
    from seisbench.models import WaveformModel

logger = logging.getLogger("seisbench_feq.archive")

OUTPUT_FORMATS = ("csv", "parquet", "quakeflow")


def load_model(model: str = "feq3", weights: str | None = "default") -> "WaveformModel":
    """A model by spec through :func:`seisbench_feq.loading.load_model`, errors as ArchiveError."""
    from ..loading import load_model as load

    try:
        return load(model, weights).eval()
    except (ValueError, OSError, ImportError) as exc:  # ModelSpecError, missing or broken files
        label = f"{model}:{weights}" if weights else model
        raise ArchiveError(f"cannot load model {label}: {exc}") from None


def weights_label(model) -> str:
    from ..loading import weights_label as label

    return label(model)


def weights_fingerprint(model) -> str:
    """Hash of the model's parameters: a resumed job must use exactly the same weights."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_out(out) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArchiveError(f"--out {out} is a file; give a folder for the job's outputs")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArchiveError(f"cannot create the output folder {out}: {exc.strerror}") from None
    return out


def pick_archive(
    archive,
    out: str | os.PathLike,
    model: "str | WaveformModel" = "feq3",
    weights: str | None = "default",
    *,
    start=None,
    end=None,
    stations: str | Sequence[str] | None = None,
    channel_priority: str | Sequence[str] = DEFAULT_CHANNEL_PRIORITY,
    chunk: str | float = "1d",
    classify_span: str | float = "1h",
    border_margin: float = 30.0,
    output_format: str = "csv",
    detections: bool = False,
    polarity: bool = False,
    uncertainty_samples: int = 0,
    plot_detections: int = 0,
    workers: int | None = None,
    scheduler: str | None = None,
    torch_threads: int | None = None,
    classify_kwargs: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ArchiveReport:
    """Pick a whole archive; resumable (rerun the same call after an interruption).

    :param archive: SDS root directory, a directory / glob / list of MiniSEED files, or a
        :class:`~seisbench_feq.io.sources.WaveformSource`.
    :param out: output folder (see :mod:`seisbench_feq.archive` for its layout).
    :param model: a model spec (see :func:`seisbench_feq.loading.load_model`) or any SeisBench
        ``WaveformModel``.
    :param weights: weights for a model given by name (ignored for an instance).
    :param start, end: time span (anything ``UTCDateTime`` parses); default: the data's span.
    :param stations: ``NET.STA`` or ``NET.STA.LOC`` codes (comma-separated or a list, wildcards ok).
    :param channel_priority: band codes tried in order per unit, e.g. ``"HH,BH,EH,HN"``.
    :param chunk: work-unit length (``"1d"``, ``"1h"``, seconds).
    :param classify_span: longest span given to one ``classify`` call (bounds memory).
    :param border_margin: extra seconds read beyond one window + blinding at each border.
    :param output_format: ``"csv"``, ``"parquet"`` or ``"quakeflow"`` (PhaseNet/QuakeFlow's
        columns in ``picks.quakeflow.csv``, the full table in ``picks.csv`` beside it).
    :param detections: also write detections.
    :param polarity: also estimate the first-motion polarity of P picks.
    :param uncertainty_samples: MC-dropout passes per pick for ``uncertainty_s``
        (:func:`seisbench_feq.models.annotate.pick_uncertainties`); 0: none. Costs that many
        extra forward passes of one window per pick.
    :param plot_detections: write the per-detection figure
        (:func:`seisbench_feq.plotting.plot_detection`) of up to this many detections per work
        unit into ``out/figures/``; each costs one ``annotate`` of the detection +- one window.
    :param workers: Dask ``LocalCluster`` worker processes; ``0`` runs in this process; None
        chooses from the cores and the job's size: one worker per core, each with one torch
        thread, when the units to run hold a station-day per worker, else in-process
        (:func:`seisbench_feq.archive.runner.choose_parallelism`).
    :param scheduler: address of an existing Dask scheduler (overrides ``workers``).
    :param torch_threads: torch threads per unit (default: ``OMP_NUM_THREADS``, else 1 with the
        default workers, else cores // workers).
    :param classify_kwargs: passed to ``model.classify`` (thresholds, batch_size, ...).
    :param overwrite: discard a previous job in ``out`` instead of resuming it.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ArchiveError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, "
                           f"not {output_format!r}")
    if isinstance(stations, str):
        stations = [s.strip() for s in stations.split(",") if s.strip()]
    if isinstance(channel_priority, str):
        channel_priority = [c.strip() for c in channel_priority.split(",") if c.strip()]
    channel_priority = tuple(c.upper() for c in channel_priority)
    if not channel_priority or any(len(c) != 2 for c in channel_priority):
        raise ArchiveError(f"channel priority must list 2-letter band codes, got {channel_priority}")
    chunk_s, span_s = parse_duration(chunk), parse_duration(classify_span)
    classify_kwargs = check_classify_kwargs(classify_kwargs or {})
    if workers is not None and workers < 0:
        raise ArchiveError(f"workers must be >= 0, got {workers}")
    if torch_threads is not None and torch_threads < 1:
        raise ArchiveError(f"torch_threads must be >= 1, got {torch_threads}")
    from ..models.annotate import check_uncertainty_samples

    try:
        uncertainty_samples = check_uncertainty_samples(uncertainty_samples)
    except ValueError as exc:
        raise ArchiveError(str(exc)) from None
    t_start, t_end = parse_time(start, "--start"), parse_time(end, "--end")
    out = _check_out(out)

    with JobLock(out):
        return _pick_locked(archive, out, model, weights, t_start, t_end, stations,
                            channel_priority, chunk_s, span_s, border_margin, output_format,
                            detections, polarity, workers, scheduler, torch_threads,
                            classify_kwargs, overwrite, progress, uncertainty_samples,
                            plot_detections)


def _pick_locked(archive, out, model, weights, t_start, t_end, stations, channel_priority,
                 chunk_s, span_s, border_margin, output_format, detections, polarity, workers,
                 scheduler, torch_threads, classify_kwargs, overwrite, progress,
                 uncertainty_samples=0, plot_detections=0):
    if isinstance(model, str):
        model = load_model(model, weights)
    model.eval()
    model_name = model.name
    label = weights_label(model)
    from ..models.annotate import check_annotate_args

    try:  # classify's own checks, before any work (batch_size=0 made classify loop forever)
        check_annotate_args(model, {**getattr(model, "default_args", {}), **classify_kwargs})
    except (ValueError, TypeError) as exc:
        raise ArchiveError(f"classify arguments: {exc}") from None
    window_s, step_s, pad_s, blinding_s = border_geometry(model, classify_kwargs, border_margin)

    try:
        source = open_source(archive, index_cache=out / "file_index.json", progress=progress)
    except SourceError as exc:
        raise ArchiveError(str(exc)) from None
    all_stations = source.stations()
    selected = [s for s in all_stations if station_matches(s, stations)]
    if stations and not selected:
        raise ArchiveError(f"no station of {source.describe()} matches {', '.join(stations)} "
                           f"(available: {', '.join(all_stations) or 'none'})")
    missing_requested = [p for p in (stations or [])
                         if not any(station_matches(s, [p]) for s in all_stations)]

    if t_start is None or t_end is None:
        default_start, default_end = default_span(source, selected, chunk_s, blinding_s)
        t_start = default_start if t_start is None else t_start
        t_end = default_end if t_end is None else t_end
    if t_end <= t_start:
        raise ArchiveError(f"end {t_end} is not after start {t_start}")

    run = {
        "archive": source.describe(), "model": model_name, "weights": label,
        "weights_fingerprint": weights_fingerprint(model), "chunk_s": chunk_s,
        "classify_span_s": span_s, "pad_s": pad_s, "grid_step_s": step_s,
        "channel_priority": list(channel_priority), "classify_kwargs": classify_kwargs,
        "output_format": output_format, "detections": detections,
        **({"uncertainty_samples": uncertainty_samples} if uncertainty_samples else {}),
    }
    check_run_file(out, run, overwrite)
    remove_stale_temporaries(out)
    manifest = Manifest(out / "manifest.jsonl")
    from ..io.picks import read_picks
    from .unit import read_detections

    manifest.verify(out, lambda p: read_picks(p) if ".picks." in p.name else read_detections(p))

    units, without_data = plan_units(selected, t_start, t_end, chunk_s,
                                     {s: source.coverage(s) for s in selected}, blinding_s)
    todo = [u for u in units if not manifest.finished(u.key)]
    station_days = sum(UTCDateTime(u.end) - UTCDateTime(u.start) for u in todo) / 86400
    workers, threads = choose_parallelism(workers, torch_threads, scheduler, station_days=station_days)
    settings = PickSettings(
        chunk_s=chunk_s, classify_span_s=span_s, pad_s=pad_s, grid_step_s=step_s,
        window_s=window_s, blinding_s=blinding_s, channel_priority=channel_priority,
        classify_kwargs=classify_kwargs, output_format=output_format, detections=detections,
        model_name=model_name, weights=label, torch_threads=threads, polarity=polarity,
        uncertainty_samples=uncertainty_samples, plot_detections=plot_detections,
    )
    logger.info("%s: %d stations, %s - %s, %d units (%d already finished), model %s weights %s, "
                "%s, %d torch thread(s) per unit", source.describe(), len(selected), iso(t_start),
                iso(t_end), len(units), len(units) - len(todo), model_name, label,
                f"Dask scheduler {scheduler}" if scheduler else
                (f"{workers} Dask worker(s)" if workers else "in-process"), threads)
    for station, n in without_data.items():
        logger.warning("%s: no data files cover %d chunk(s) of the span: not run", station, n)

    timing = {"cluster_start_s": 0.0, "cluster_stop_s": 0.0, "workers": workers, "torch_threads": threads}
    wall = time.perf_counter()
    run_results = run_units(todo, source, model, settings, out, manifest, workers, scheduler,
                            progress, timing)
    timing["wall_s"] = time.perf_counter() - wall

    summary = merge_and_report(out, units, manifest, settings, run, source, run_results, timing,
                               (t_start, t_end), selected, missing_requested, without_data)
    report = ArchiveReport(out, summary)
    log_summary(summary, out, report.exit_code)
    return report
