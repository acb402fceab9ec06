"""Chunked ``annotate``, argument checks and window geometry: the only code that touches SeisBench internals.

Long streams are annotated in bounded memory with the same output (:func:`annotate_chunked_async`):
every continuous segment is cut into pieces (``chunk_seconds``, 30 minutes by default) that
overlap by whole windows on the segment's own window grid; SeisBench's own windowing, batching and
stacking run on each piece and each piece's core is kept, so every output sample sees exactly the
windows it sees without chunking. The output traces are filled in place (no stacked copy of the
day), the input stream is shared read-only instead of copied, and the heap pages the call freed
go back to the OS at its end.

SeisBench private methods used here (``_get_overlap``, ``_build_comp_dict``, ``_grouping``,
``_iter_fragments_array``, ``_predict_windows``, ``_iter_reassemble_predictions``,
``_predictions_to_stream``, ``_verify_argdict``) are checked by the real-data equivalence tests.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import logging
import math
import numbers
import sys
from dataclasses import dataclass

import numpy as np
import obspy

from .picking import PICK_MODES

__all__ = [
    "DEFAULT_CHUNK_SECONDS",
    "annotate_chunked_async",
    "check_annotate_args",
    "check_uncertainty_samples",
    "pick_uncertainties",
    "window_step",
    "window_starts",
]

logger = logging.getLogger(__name__)

#: Length of the pieces long streams are annotated in (seconds of data at the model rate).
DEFAULT_CHUNK_SECONDS = 1800.0

STACKING = ("max", "avg")


# --- window geometry and argument checks ----------------------------------------------------------


def window_step(model, argdict: dict | None = None) -> int:
    """Samples between the starts of consecutive annotate windows (``in_samples - overlap``)."""
    argdict = {**model.default_args, **(argdict or {})}
    return model.in_samples - model._get_overlap(model.in_samples, argdict)


def window_starts(n_samples: int, in_samples: int, step: int) -> np.ndarray:
    """First samples of SeisBench's annotate windows on a segment of ``n_samples``: every ``step``,
    plus one window aligned to the end when the grid does not reach it."""
    if n_samples < in_samples:
        return np.zeros(0, dtype=int)
    starts = np.arange(0, n_samples - in_samples + 1, step)
    if starts[-1] + in_samples < n_samples:
        starts = np.append(starts, n_samples - in_samples)
    return starts


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_annotate_args(model, argdict: dict) -> None:
    """Reject arguments that would make ``annotate``/``classify`` hang or fail deep inside SeisBench.

    Raises ValueError naming the argument before any work is done.
    """
    def get(key):
        return argdict.get(key, model.default_args.get(key, model._annotate_args.get(key, (None, None))[1]))

    batch_size = get("batch_size")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a whole number >= 1")
    overlap = get("overlap")
    if not isinstance(overlap, numbers.Real) or isinstance(overlap, bool):
        raise ValueError(f"overlap={overlap!r}: expected samples (0 <= overlap < {model.in_samples}) or a fraction < 1")
    samples = int(overlap * model.in_samples) if overlap < 1 else overlap
    if overlap < 0 or (overlap >= 1 and not float(overlap).is_integer()) or samples >= model.in_samples:
        raise ValueError(
            f"overlap={overlap!r}: expected whole samples 0 <= overlap < {model.in_samples} (the window length) "
            "or a fraction 0 <= overlap < 1 of it"
        )
    stacking = get("stacking")
    if stacking is not None and stacking not in STACKING:
        raise ValueError(f"stacking={stacking!r}: expected one of {STACKING}")
    blinding = get("blinding")
    if blinding is not None:
        if len(blinding) != 2 or any(not _is_int(b) or b < 0 for b in blinding) or sum(blinding) >= model.in_samples:
            raise ValueError(f"blinding={blinding!r}: expected two whole numbers >= 0 with a sum < {model.in_samples}")
    chunk = get("chunk_seconds")
    if chunk is not None and (not isinstance(chunk, numbers.Real) or chunk < 0 or not math.isfinite(chunk)):
        raise ValueError(f"chunk_seconds={chunk!r}: expected seconds >= 0 (0: no chunking)")
    pick_mode = argdict.get("pick_mode", "peak")
    if pick_mode not in PICK_MODES:
        raise ValueError(f"pick_mode={pick_mode!r}: expected one of {PICK_MODES}")
    for key, value in argdict.items():
        if key.endswith("_threshold") and (not isinstance(value, numbers.Real) or not 0 < value <= 1):
            raise ValueError(f"{key}={value!r}: expected a probability in (0, 1]")


# --- chunked annotate ---------------------------------------------------------------------------


def _chunk_plan(n_samples: int, in_samples: int, step: int, chunk: int) -> list[tuple[int, int, int, int]]:
    """Pieces (data_start, data_stop, core_start, core_stop) of a segment of ``n_samples``.

    Piece starts lie on the segment's window grid (multiples of ``step``) and pieces overlap their
    neighbours by at least one window, so every core sample is covered by exactly the windows
    that cover it in a single pass (the extra end-aligned window of a piece lies outside its core).
    """
    margin = math.ceil(in_samples / step) * step
    chunk = max(step, chunk // step * step)
    plan = []
    core = 0
    while core < n_samples:
        core_stop = min(core + chunk, n_samples)
        if n_samples - core_stop < margin:  # too little left for a piece of its own
            core_stop = n_samples
        start = max(core - margin, 0)
        stop = n_samples if core_stop == n_samples else min(core_stop + margin, n_samples)
        plan.append((start, stop, core, core_stop))
        core = core_stop
    return plan


def _group_layout(model, traces: list[obspy.Trace], argdict: dict):
    """What ``WaveformModel.stream_to_array`` computes for a group, without building the array."""
    comp_dict, comp_order = model._build_comp_dict(
        traces, model._argdict_get_with_default(argdict, "flexible_horizontal_components")
    )
    station_key = model._grouping.trace_id_without_component
    stations = np.unique([station_key(trace) for trace in traces]).tolist()
    sampling_rate = traces[0].stats.sampling_rate
    t_start = min(trace.stats.starttime for trace in traces)
    t_end = max(trace.stats.endtime for trace in traces)
    n_samples = int((t_end - t_start) * sampling_rate) + 1  # stream_to_array's length
    placed, t_offsets = [], []
    for trace in traces:
        if trace.id[-1] not in comp_dict:
            continue
        offset = int((trace.stats.starttime - t_start) * sampling_rate)
        placed.append((comp_dict[trace.id[-1]], offset, trace.data))
        t_offsets.append(trace.stats.get("t_offset", 0.0))
    return dict(
        stations=stations,
        component_order=comp_order,
        sampling_rate=sampling_rate,
        start_time=t_start + np.mean(t_offsets),
        n_samples=n_samples,
        placed=placed,
    )


def _piece(layout: dict, start: int, stop: int):
    """``GroupedTraceData`` of samples [start, stop) of a group (zero-filled like SeisBench)."""
    from seisbench.models.utils import GroupedTraceData

    data = np.zeros((len(layout["component_order"]), stop - start))
    for component, offset, values in layout["placed"]:
        lo, hi = max(start, offset), min(stop, offset + len(values))
        if lo < hi:
            data[component, lo - start : hi - start] = values[lo - offset : hi - offset]
    return GroupedTraceData(
        start_time=layout["start_time"] + start / layout["sampling_rate"],
        data=data,
        stations=layout["stations"],
        component_order=layout["component_order"],
        sampling_rate=layout["sampling_rate"],
        grouping="instrument",
    )


async def _predictions_in_this_thread(model, batches, argdict: dict):
    """SeisBench's ``_iter_predictions`` with the forward pass in the calling thread.

    SeisBench hands each batch to a worker thread (``asyncio.to_thread``), whose allocations live in
    a second glibc arena: the heap then holds the largest working set of both threads, or gives it
    back after each piece and faults it in again. Measured on a station-day of FEQ3 (1 thread):
    the same peak RSS in one arena without the page faults (docs/performance.md). A piece has a
    single batch or a few, so the worker thread overlapped nothing. Other tasks of the event loop
    wait for each batch (a fraction of a second for the light models).
    """
    pending = collections.defaultdict(list)
    async for batch in batches:
        for prediction in model._predict_windows(batch, argdict=argdict):
            pending[prediction.key, prediction.n_windows].append(prediction)
        for key in list(pending):  # complete windows sets in SeisBench's order
            if len(pending[key]) == key[1]:
                yield pending.pop(key)


async def _stack_piece(model, piece, argdict: dict):
    """SeisBench's own windowing, batching, prediction and stacking for one piece."""

    async def one():
        yield piece

    fragments = model._iter_fragments_array(one(), argdict)
    blocks = _predictions_in_this_thread(model, fragments, argdict)
    stacked = [s async for s in model._iter_reassemble_predictions(blocks, argdict)]
    return stacked[0] if stacked else None


def _copy_for_annotate(model, stream: obspy.Stream) -> obspy.Stream:
    """``stream.copy()`` without duplicating the samples when nothing will write to them.

    LEQNet's pre-processing (cleaning, filtering, resampling) and SeisBench's grouping only ever
    assign new arrays; the copy shares the data as read-only views, so an in-place write would
    raise instead of changing the caller's stream. Models whose ``annotate_stream_pre`` is not
    marked ``shares_input`` (a subclass overriding it) get a real copy (SeisBench allows in-place
    changes there).
    """
    if not getattr(type(model).annotate_stream_pre, "shares_input", False):
        return stream.copy()
    out = obspy.Stream()
    for trace in stream:
        data = trace.data.view()
        data.flags.writeable = False
        out.append(obspy.Trace(data=data, header=copy.deepcopy(trace.stats)))
    return out


def _release_freed_memory() -> None:
    """Hand the heap pages an annotation freed back to the OS (glibc keeps them otherwise, and the
    process would hold the largest working set after the call)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - musl has no malloc_trim
        return libc
    except (OSError, AttributeError):
        return None


def _label_traces(model, layout: dict, labels: np.ndarray, rate: float) -> obspy.Stream:
    """SeisBench's ``_predictions_to_stream`` for one instrument, without copying the arrays."""
    from seisbench.ext.utils import get_edge_indices

    network, station, location = layout["stations"][0].split(".")[:3]
    output = obspy.Stream()
    for label, data in zip(model.labels, labels):
        begin, end = get_edge_indices(data, edge_value=np.nan)
        output.append(
            obspy.Trace(
                data[begin:end],
                {
                    "starttime": layout["start_time"] + begin / rate,
                    "sampling_rate": rate,
                    "network": network,
                    "station": station,
                    "location": location,
                    "channel": f"{model.__class__.__name__}_{label}",
                },
            )
        )
    return output


def _can_chunk(model) -> bool:
    pred_sample = model.pred_sample if not isinstance(model.pred_sample, int) else (0, model.pred_sample)
    return (
        model.output_type == "array"
        and model._grouping.grouping == "instrument"
        and tuple(pred_sample) == (0, model.in_samples)
        and all(hasattr(model, name) for name in ("_iter_fragments_array", "_predict_windows", "_iter_reassemble_predictions"))
    )


@dataclass
class LabelPiece:
    """Stacked model output of samples ``[start, stop)`` of one continuous segment.

    ``labels``: (n labels, stop - start) float32, NaN where no window gave a value (blinded edges,
    failed windows). ``whole``: for a segment annotated in one pass, SeisBench's own stacked
    output instead (``labels`` is then None). ``last``: the segment's last piece."""

    layout: dict
    start: int
    stop: int
    rate: float | None
    labels: np.ndarray | None
    last: bool
    whole: object = None


def prepare_groups(model, stream: obspy.Stream, copy: bool, kwargs: dict):
    """SeisBench's annotate steps up to the grouping (argument check, copy, merge,
    ``annotate_stream_pre``/``validate``, grouping): ``(groups, argdict, step, chunk)``, or None
    where the chunked path does not apply (SeisBench's own ``annotate_async`` is then used)."""
    argdict = model.default_args.copy()
    argdict.update(kwargs)
    check_annotate_args(model, argdict)
    chunk_seconds = argdict.get("chunk_seconds", DEFAULT_CHUNK_SECONDS)
    step = model.in_samples - model._get_overlap(model.in_samples, argdict)
    if not chunk_seconds or not _can_chunk(model) or step <= 0:
        return None

    model._verify_argdict(kwargs)
    if copy:
        stream = _copy_for_annotate(model, stream)
    stream.merge(-1)
    groups: list = []
    if len(stream):
        model.annotate_stream_pre(stream, argdict)
        stream = model.annotate_stream_validate(stream, argdict)
    if len(stream):
        sampling_rate = stream[0].stats.sampling_rate
        argdict["sampling_rate"] = sampling_rate
        comp_dict, _ = model._build_comp_dict(
            stream, model._argdict_get_with_default(argdict, "flexible_horizontal_components")
        )
        groups = model._grouping.group_stream(
            stream,
            strict=model._argdict_get_with_default(argdict, "strict"),
            min_length_s=(model.in_samples - 1) / sampling_rate,
            comp_dict=comp_dict,
        )
        chunk = int(round(float(chunk_seconds) * sampling_rate))
    else:
        chunk = 0
    return groups, argdict, step, chunk


async def iter_label_pieces(model, groups: list, argdict: dict, step: int, chunk: int):
    """The stacked output of each group (continuous segment), piece by piece in time order
    (:class:`LabelPiece`; see :func:`_chunk_plan`). ``groups`` is consumed as it goes, so that a
    finished segment's samples can be freed."""
    train_mode = model.training
    model.eval()
    try:
        while groups:
            traces = groups.pop(0)
            layout = _group_layout(model, traces, argdict)
            del traces
            plan = _chunk_plan(layout["n_samples"], model.in_samples, step, chunk)
            if len(plan) == 1:  # short segment: exactly SeisBench's path
                stacked = await _stack_piece(model, _piece(layout, 0, layout["n_samples"]), argdict)
                if stacked is not None:
                    yield LabelPiece(layout, 0, layout["n_samples"], stacked.sampling_rate, None, True, stacked)
                continue
            for k, (start, stop, core_start, core_stop) in enumerate(plan):
                labels = np.full((len(model.labels), core_stop - core_start), np.nan, dtype=np.float32)
                stacked = await _stack_piece(model, _piece(layout, start, stop), argdict)
                rate = None
                if stacked is not None:
                    rate = stacked.sampling_rate
                    core = stacked.data[core_start - start : core_stop - start]
                    labels[:, : len(core)] = core.T
                    del stacked, core
                yield LabelPiece(layout, core_start, core_stop, rate, labels, k == len(plan) - 1)
    finally:
        # once per call, not per piece: a trim per piece made the next piece fault its working set
        # back in (a quarter of FEQ3's CPU time) and did not lower the peak
        _release_freed_memory()
        if train_mode:
            model.train()


async def annotate_chunked_async(model, stream: obspy.Stream, copy: bool = True, **kwargs) -> obspy.Stream:
    """``WaveformModel.annotate_async`` with long segments processed in overlapping pieces.

    Same steps as SeisBench (:func:`prepare_groups`); each continuous segment longer than
    ``chunk_seconds`` (annotate argument, default half an hour; 0 disables) is annotated piece by
    piece (:func:`iter_label_pieces`). The output equals SeisBench's unchunked output up to float
    rounding; peak memory is one piece's windows and predictions plus the output traces.
    """
    prepared = prepare_groups(model, stream, copy, kwargs)
    if prepared is None:
        from seisbench.models import WaveformModel

        return await WaveformModel.annotate_async(model, stream, copy=copy, **kwargs)
    groups, argdict, step, chunk = prepared
    del stream  # the groups hold what is still needed

    output = obspy.Stream()
    labels, rate = None, None
    async for piece in iter_label_pieces(model, groups, argdict, step, chunk):
        if piece.whole is not None:
            output += model._predictions_to_stream(piece.whole)
            continue
        if piece.start == 0:  # one float32 array per label (the output traces), filled piece by piece
            labels = np.full((len(model.labels), piece.layout["n_samples"]), np.nan, dtype=np.float32)
            rate = None
        labels[:, piece.start : piece.stop] = piece.labels
        rate = piece.rate or rate
        if piece.last and rate is not None:
            output += _label_traces(model, piece.layout, labels, rate)
    return output


# --- MC-dropout pick uncertainty ------------------------------------------------------------------

#: Seconds added on each side of a pick's trigger span when its time is searched in a dropout pass.
UNCERTAINTY_SEARCH_MARGIN_S = 0.5


def _mc_dropout_modules(model) -> list:
    """The dropouts that the original Keras EQTransformer/LEQNet ran at inference (``training=True``):
    the spatial ones, with a rate > 0."""
    import torch.nn as nn
    from seisbench.models.eqtransformer import SpatialDropout1d

    found = []
    for module in model.modules():
        if isinstance(module, (SpatialDropout1d, nn.Dropout1d)):
            rate = getattr(module, "p", None)
            if rate is None:
                rate = getattr(getattr(module, "dropout", None), "p", 0.0)
            if rate > 0:
                found.append(module)
    return found


def check_uncertainty_samples(samples) -> int:
    """``uncertainty_samples``: 0 (no estimate) or a whole number >= 2 of dropout passes."""
    if not _is_int(samples) or samples < 0 or samples == 1:
        raise ValueError(f"uncertainty_samples={samples!r}: expected 0 (no estimate) or a whole number >= 2 "
                         "of dropout passes (a spread needs at least two)")
    return int(samples)


def _pick_windows(model, stream: obspy.Stream, picks: list, argdict: dict):
    """One window of ``in_samples`` centred on each pick, in the model's component order, from the
    stream cleaned and resampled as ``annotate`` does. Returns (windows, window start times)."""
    stream = _copy_for_annotate(model, stream)
    stream.merge(-1)
    model.annotate_stream_pre(stream, argdict)
    rate = model.sampling_rate or stream[0].stats.sampling_rate
    n = model.in_samples
    windows = np.zeros((len(picks), len(model.component_order), n), dtype=np.float32)
    starts = []
    flexible = model._argdict_get_with_default(argdict, "flexible_horizontal_components")
    by_instrument: dict[str, list] = {}
    for trace in stream:
        key = model._grouping.trace_id_without_component(trace)
        by_instrument.setdefault(key, []).append(trace)
    for k, pick in enumerate(picks):
        t0 = pick.peak_time - (n // 2) / rate
        starts.append(t0)
        traces = by_instrument.get(pick.trace_id, [])
        if not traces:
            continue
        comp_dict, _ = model._build_comp_dict(traces, flexible)
        for trace in traces:
            component = comp_dict.get(trace.id[-1])
            if component is None:
                continue
            offset = int(round((trace.stats.starttime - t0) * rate))
            data = np.ma.filled(trace.data, 0)
            lo, hi = max(0, offset), min(n, offset + len(data))
            if lo < hi:
                windows[k, component, lo:hi] = data[lo - offset : hi - offset]
    return windows, starts, rate


def pick_uncertainties(model, stream: obspy.Stream, picks, samples: int, seed: int | None = 0,
                       **kwargs) -> list[float]:
    """MC-dropout uncertainty of each pick's time, in seconds (also set as ``pick.uncertainty``).

    For every pick, one window of ``in_samples`` centred on the pick is cut from ``stream`` (the
    stream the picks were made on, cleaned and resampled as ``annotate`` does), normalised as in
    ``annotate``, and run ``samples`` times with the spatial dropouts active (as the original
    Keras models ran; rate ``drop_rate``). In each pass the pick's time is the maximum of its
    phase curve within the pick's trigger span +- :data:`UNCERTAINTY_SEARCH_MARGIN_S`; the
    uncertainty is the standard deviation (``ddof=1``) of those times.

    Cost: ``samples`` extra forward passes of one window per pick (classify itself is unchanged).
    E.g. 30 picks per station-hour with ``samples=20`` are 600 windows against classify's 120 per
    station-hour at the default overlap: about 5 times the cost of classify.

    Returns NaN for every pick when ``samples`` is 0, when the model has no spatial dropout with a
    rate > 0, or for a pick whose instrument is not in ``stream``. ``seed`` makes the passes
    reproducible (None: the global torch generator as it is); torch's generator is restored after.
    """
    import torch

    from .backends import use_backend

    picks = list(picks)
    samples = check_uncertainty_samples(samples)
    result = [math.nan] * len(picks)
    dropouts = _mc_dropout_modules(model) if samples else []
    if samples and not dropouts:
        logger.warning("%s has no spatial dropout with a rate > 0: pick uncertainties are NaN",
                       type(model).__name__)
    if not picks or not dropouts or not len(stream):
        for pick, value in zip(picks, result):
            pick.uncertainty = value
        return result
    argdict = {**model.default_args, **kwargs}
    windows, starts, rate = _pick_windows(model, stream, picks, argdict)
    labels = list(model.labels)
    batch_size = int(argdict.get("batch_size", 256))
    blinding = argdict.get("blinding", model._annotate_args.get("blinding", (None, (0, 0)))[1]) or (0, 0)
    states = {m: m.training for m in model.modules()}
    generator_state = torch.random.get_rng_state()
    try:
        if seed is not None:
            torch.manual_seed(seed)
        model.eval()
        for module in dropouts:
            module.train()
        # The fused path runs res_stack (where the spatial dropouts are) as modules, so it samples
        # them; ONNX Runtime would not, hence "fused" for these passes.
        backend = use_backend(model, "fused") if hasattr(model, "inference_backend") else contextlib.nullcontext()
        with torch.no_grad(), backend:
            for k, pick in enumerate(picks):
                if pick.phase not in labels or not windows[k].any():
                    continue
                lo = int((pick.start_time - starts[k] - UNCERTAINTY_SEARCH_MARGIN_S) * rate)
                hi = int(math.ceil(((pick.end_time or pick.peak_time) - starts[k]
                                    + UNCERTAINTY_SEARCH_MARGIN_S) * rate)) + 1
                lo, hi = max(lo, blinding[0]), min(hi, model.in_samples - blinding[1])
                if lo >= hi:
                    continue
                x = model.annotate_batch_pre(torch.from_numpy(windows[k : k + 1]), argdict)
                times = []
                for done in range(0, samples, batch_size):
                    y = model(x.expand(min(batch_size, samples - done), *x.shape[1:]).contiguous())
                    curve = y[labels.index(pick.phase)][:, lo:hi]
                    times.append((lo + curve.argmax(dim=1).double()) / rate)
                result[k] = float(torch.cat(times).std())
    finally:
        for module, flag in states.items():
            module.train(flag)
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    for pick, value in zip(picks, result):
        pick.uncertainty = value
    return result

