"""Processing one work unit (in a Dask worker or in-process): read, clean, classify, write."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from ..io.files import path_inside, safe_code
from ..io.sources import SourceReadError
from .plan import PickSettings, UnitResult, WorkUnit, floor_to, iso, overlap_s, station_dir

logger = logging.getLogger("seisbench_feq.archive")

DETECTION_COLUMNS = ["station", "start_time", "end_time", "probability", "model", "weights"]


def clean_stream(st, model, notes: list[str]):
    """Make a unit's stream safe for ``classify`` with the package's one stream cleaner
    (:func:`seisbench_feq.models.preprocessing.clean_stream`: channel codes upper-cased, rates
    within 1e-4 nominal, other rates resampled, NaN/masked samples as gaps, overlaps resolved with
    the later record, as ObsPy's ``merge(method=1)`` did here before); every change is noted."""
    from ..models.preprocessing import clean_stream as clean

    return clean(st, float(model.sampling_rate), int(model.in_samples), "", conflicts="later",
                 resample=True, notes=notes)


def _coverage(st, chunk_a: float, chunk_b: float) -> tuple[list, dict[str, float]]:
    """Union of data intervals (epoch s) over all traces, and seconds in the chunk per channel."""
    from ..io.sources import intervals_union

    per_channel: dict[str, list] = {}
    for tr in st:
        a = tr.stats.starttime.timestamp
        b = tr.stats.endtime.timestamp + tr.stats.delta
        per_channel.setdefault(tr.stats.channel, []).append((a, b))
    union = intervals_union(iv for ivs in per_channel.values() for iv in ivs)
    seconds = {ch: overlap_s(intervals_union(ivs), chunk_a, chunk_b)
               for ch, ivs in per_channel.items()}
    return union, seconds


def unit_picks_frame(picks, settings: PickSettings, t0, t1, stream=None):
    """The unit's pick table: picks whose peak lies in ``[t0, t1)``, measured on ``stream``."""
    from ..io.picks import picks_frame

    kept = [p for p in picks if t0 <= p.peak_time < t1]
    return picks_frame(kept, stream=stream, model=settings.model_name, weights=settings.weights,
                       polarity=settings.polarity)


def detections_frame(detections, settings: PickSettings, t0, t1):
    import pandas as pd

    kept = type(detections)([d for d in detections if t0 <= d.start_time < t1])
    df = kept.to_dataframe()
    if len(df) == 0:
        df = pd.DataFrame({c: pd.Series(dtype=object) for c in DETECTION_COLUMNS})
    df["model"], df["weights"] = settings.model_name, settings.weights
    return normalise_detections(df[DETECTION_COLUMNS])


def normalise_detections(df):
    import pandas as pd

    df = df.copy()
    for col in ("start_time", "end_time"):
        df[col] = pd.to_datetime(df[col], utc=True, format="ISO8601").astype("datetime64[us, UTC]")
    df["probability"] = pd.to_numeric(df["probability"]).astype("float64")
    df["station"] = df["station"].astype(str)
    return df.sort_values(["station", "start_time"], kind="mergesort").reset_index(drop=True)


def write_detections(df, path: Path, fmt: str) -> None:
    from ..io.files import atomic_write

    df = normalise_detections(df)
    if fmt == "parquet":
        atomic_write(path, lambda p: df.to_parquet(p, index=False))
    else:
        out = df.copy()
        for col in ("start_time", "end_time"):
            out[col] = out[col].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        atomic_write(path, lambda p: out.to_csv(p, index=False))


def read_detections(path: Path):
    import pandas as pd

    if str(path).endswith(".parquet"):
        return normalise_detections(pd.read_parquet(path))
    return normalise_detections(pd.read_csv(path, dtype={"station": str}, keep_default_na=False))


def unit_output_paths(out: Path, unit: WorkUnit, settings: PickSettings) -> dict[str, Path]:
    """Where a unit's files go: inside ``out/units/`` whatever the station code holds."""
    suffix = "parquet" if settings.output_format == "parquet" else "csv"
    folder = path_inside(out, "units", station_dir(unit.station))
    stem = unit.file_stem()
    paths = {"picks": path_inside(folder, f"{stem}.picks.{suffix}")}
    if settings.detections:
        paths["detections"] = path_inside(folder, f"{stem}.detections.{suffix}")
    return paths


def process_unit(unit: WorkUnit, source, model, settings: PickSettings,
                 out: str | os.PathLike) -> UnitResult:
    """Pick one unit and write its outputs atomically. Never raises for bad data: the returned
    result says ``failed`` with the reason."""
    started = time.perf_counter()
    if hasattr(model, "get") and not hasattr(model, "classify"):
        model = model.get()  # a ShippedModel
    result = UnitResult(unit.station, unit.start, unit.end, status="done",
                        worker=f"{socket.gethostname()}:{os.getpid()}")
    try:
        _with_threads(unit, source, model, settings, Path(out), result)
    except SourceReadError as exc:
        result.status, result.reason = "failed", str(exc)
    except Exception as exc:  # a bad unit must not stop the job; the report shows the reason
        logger.exception("unit %s failed", unit.key)
        result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
    result.elapsed_s = time.perf_counter() - started
    return result


def _with_threads(unit, source, model, settings, out, result):
    import torch

    previous = torch.get_num_threads()
    if settings.torch_threads and settings.torch_threads != previous:
        torch.set_num_threads(settings.torch_threads)
    try:
        _pick_unit(unit, source, model, settings, out, result)
    finally:  # a worker living inside the caller's process must not keep our setting
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def plot_unit_detections(model, stream, output, s0, s1, limit: int, folder: Path,
                         classify_kwargs: dict) -> int:
    """The per-detection figure (:func:`seisbench_feq.plotting.plot_detection`) of up to ``limit``
    detections starting in ``[s0, s1)``, as ``folder/NET.STA.LOC_YYYYmmddTHHMMSS.png``. Each costs
    one ``annotate`` of the detection +- one window (the unit's classify keeps no curves).
    Returns the number written."""
    from ..io.files import atomic_write
    from ..plotting import plot_detection

    pad = model.in_samples / model.sampling_rate
    written = 0
    for det in getattr(output, "detections", None) or []:
        if written >= limit:
            break
        if not s0 <= det.start_time < s1:
            continue
        part = stream.slice(det.start_time - pad, det.end_time + pad)
        kwargs = {k: v for k, v in classify_kwargs.items() if not k.endswith("_threshold")}
        annotations = model.annotate(part, **kwargs)
        name = f"{det.trace_id.rstrip('.')}_{det.start_time.strftime('%Y%m%dT%H%M%S')}.png"
        fig = plot_detection(part, annotations, det, getattr(output, "picks", None))
        atomic_write(path_inside(folder, name), lambda p, fig=fig: fig.savefig(p, dpi=110, format="png"))
        written += 1
    return written


def _skip(result, reason):
    result.status, result.reason = "skipped", reason


def _pick_unit(unit, source, model, settings, out, result):
    import obspy
    import pandas as pd

    t0, t1 = obspy.UTCDateTime(unit.start), obspy.UTCDateTime(unit.end)
    read_a = floor_to(t0 - settings.pad_s, settings.grid_step_s)
    read_b = t1 + settings.pad_s

    st = obspy.Stream()
    for band in settings.channel_priority:
        read = source.read(unit.station, band, read_a, read_b)
        st = read.stream
        if len(st):
            result.notes += read.notes
            result.errors += read.errors
            break
    if not len(st):
        return _skip(result, f"no data for channels "
                             f"{'/'.join(b + '?' for b in settings.channel_priority)}"
                             f" in {iso(read_a)} - {iso(read_b)}")

    st = clean_stream(st, model, result.notes)
    # SeisBench groups and selects traces by their codes (wildcards, dots): hostile codes such
    # as "a/b" or "[X]" made classify wait forever. The model sees path-safe codes; the pick
    # table gets the real ones back.
    codes = tuple((unit.station.split(".") + ["", ""])[:3])
    safe = (safe_code(codes[0]), safe_code(codes[1]), safe_code(codes[2]) if codes[2] else "")
    for tr in st:
        tr.stats.network, tr.stats.station, tr.stats.location = safe
    result.channels = sorted({tr.stats.channel for tr in st})
    union, per_channel = _coverage(st, t0.timestamp, t1.timestamp)
    result.data_seconds = overlap_s(union, t0.timestamp, t1.timestamp)
    if result.data_seconds <= 0:
        return _skip(result, "no data inside the chunk (only in its border pad)")
    if max(overlap_s([iv], t0.timestamp, t1.timestamp) for iv in union) <= settings.blinding_s:
        return _skip(result, f"only {result.data_seconds:.3f} s of data at the chunk's edge, inside "
                             f"the model's blinding ({settings.blinding_s:g} s): no pick is possible")
    short = [(a, b) for a, b in union if b - a < settings.window_s]
    short_in_chunk = overlap_s(short, t0.timestamp, t1.timestamp)
    if short_in_chunk >= result.data_seconds:
        return _skip(result, f"only {result.data_seconds:.1f} s of data in fragments shorter than "
                             f"one model window ({settings.window_s:g} s)")
    if short_in_chunk > 0:
        result.notes.append(f"{short_in_chunk:.1f} s of data in fragments shorter than one model "
                            f"window ({settings.window_s:g} s) cannot be annotated")
    present = {ch[-1] for ch in result.channels}
    flexible = {"N": "1", "E": "2"}
    missing = sorted(c for c in model.component_order
                     if c not in present and flexible.get(c) not in present)
    if missing:
        result.notes.append(f"missing component(s) {', '.join(missing)}: filled with zeros by "
                            "SeisBench")
    for ch, secs in sorted(per_channel.items()):
        if secs < result.data_seconds - 1.0:
            result.notes.append(f"{ch} has gaps: {secs:.1f} s of the station's "
                                f"{result.data_seconds:.1f} s in the chunk")

    from seisbench.util import DetectionList, PickList

    pick_frames, det_frames = [], []
    plots_left = settings.plot_detections
    s0 = t0
    # Sub-spans (seamless by the same border rule) bound one classify call. The package's
    # models extract picks piece by piece (models.streamed_classify), so for them a longer
    # --classify-span costs little memory and saves recomputing the pads (about 5 % at 1 h);
    # other SeisBench models hold the span's annotation traces.
    while s0 < t1:
        s1 = min(s0 + settings.classify_span_s, t1)
        a = floor_to(s0 - settings.pad_s, settings.grid_step_s)
        sub = st.slice(a, s1 + settings.pad_s)
        if len(sub):
            output = model.classify(sub, **settings.classify_kwargs)
            if settings.uncertainty_samples and getattr(output, "picks", None):
                from ..models.annotate import pick_uncertainties

                kept = [p for p in output.picks if s0 <= p.peak_time < s1]
                pick_uncertainties(model, sub, kept, settings.uncertainty_samples,
                                   **settings.classify_kwargs)
            if plots_left:
                plots_left -= plot_unit_detections(model, sub, output, s0, s1, plots_left,
                                                   Path(out) / "figures", settings.classify_kwargs)
            pick_frames.append(unit_picks_frame(getattr(output, "picks", None) or PickList(),
                                                settings, s0, s1, stream=sub))
            if settings.detections:
                det_frames.append(detections_frame(getattr(output, "detections", None)
                                                   or DetectionList(), settings, s0, s1))
        s0 = s1

    from ..io.picks import empty_picks, normalise_picks, write_picks

    paths = unit_output_paths(out, unit, settings)
    frames = [f for f in pick_frames if len(f)]
    picks = normalise_picks(pd.concat(frames, ignore_index=True)) if frames else empty_picks()
    if safe != codes and len(picks):
        picks["network"], picks["station"], picks["location"] = codes
        picks["trace_id"] = ".".join(codes) + "." + picks["channel"]
    if not frames:
        picks["model"], picks["weights"] = settings.model_name, settings.weights
    write_picks(picks, paths["picks"], format="parquet" if settings.output_format == "parquet" else "csv")
    result.picks = {str(k): int(v) for k, v in picks["phase"].value_counts().sort_index().items()}
    if settings.detections:
        frames = [f for f in det_frames if len(f)]
        dets = (pd.concat(frames, ignore_index=True) if frames
                else detections_frame(DetectionList(), settings, t0, t1))
        write_detections(dets, paths["detections"], settings.output_format)
        result.detections = len(dets)
    result.outputs = [str(p.relative_to(Path(out).resolve())) for p in paths.values()]
