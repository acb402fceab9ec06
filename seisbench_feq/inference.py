"""Fast inference for LEQNet and FEQ1-3: a fused forward pass, optional ONNX Runtime, chunked annotate.

Everything here computes the same function as the plain modules of :mod:`seisbench_feq.models`
(``tests/test_performance_equivalence.py`` compares both on real data); only the arithmetic is
rearranged. ``LEQNet.forward`` calls :func:`fused_forward` in inference (``eval()`` and no
autograd) unless ``model.inference_backend`` says otherwise:

``"fused"`` (default)
    PyTorch, restructured for the CPU (see "where the time goes" in ``docs/performance.md``):

    * the decoders never materialise the nearest-upsampled signal. Upsampling by ``f`` followed
      by a depthwise and a pointwise convolution equals, per output phase ``r``, a short dense
      convolution of the low-rate signal (polyphase form); its ``f`` phases land in the channel
      axis of a channels-last tensor, so interleaving them back into time is a free reshape. The
      head convolution of the last stage is applied to the phases directly, so the 6000-sample
      intermediate never exists. Samples next to a Keras crop, where the zero padding of the
      plain path cuts a repeated sample in two, are recomputed the plain way;
    * convolutions run channels-last (``NHWC``), where oneDNN's small-channel kernels are 3-6x
      faster than in ``NCW``; the encoder's first separable convolution is one dense 3->8 conv;
    * the additive attention evaluates ``tanh(z) = 2 sigmoid(2z) - 1`` (ATen's sigmoid is about
      3x faster than its tanh) in cache-sized batch chunks, keeping the Keras semantics of
      ``SeqSelfAttention`` (maximum over the whole row, ``K.epsilon()``, band mask).

``"plain"``
    The straightforward module path (the reference every test compares against).

``"onnxruntime"``
    The fused graph exported to ONNX in memory and run by ONNX Runtime; if ``onnxruntime`` is
    missing or the export fails, a warning is logged once and ``"fused"`` is used.

Long streams (bounded memory, same output):

* :func:`annotate_chunked_async` cuts every continuous segment into pieces (``chunk_seconds``,
  30 minutes by default) that overlap by whole windows on the segment's own window grid, runs
  SeisBench's own windowing, batching and stacking on each piece and keeps each piece's core:
  every output sample sees exactly the windows it sees without chunking. The output traces are
  filled in place (no stacked copy of the day), the input stream is shared read-only instead
  of copied, and the heap pages a finished piece freed go back to the OS;
* :func:`picks_from_annotations` / :func:`detections_from_annotations` give SeisBench's picks
  from ObsPy's ``trigger_onset`` run piece by piece, without whole-day temporaries.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import sys

import numpy as np
import obspy
import torch
import torch.nn.functional as F

__all__ = [
    "BACKENDS",
    "fused_forward",
    "fused_weights",
    "plain_forward",
    "set_inference_backend",
    "use_backend",
    "additive_attention",
    "annotate_chunked_async",
    "DEFAULT_CHUNK_SECONDS",
    "picks_from_annotations",
    "detections_from_annotations",
    "trigger_onsets",
]

logger = logging.getLogger(__name__)

BACKENDS = ("fused", "plain", "onnxruntime")

#: Length of the pieces long streams are annotated in (seconds of data at the model rate).
DEFAULT_CHUNK_SECONDS = 1800.0

_CHANNELS_LAST = torch.channels_last


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


# --- additive attention ------------------------------------------------------------------------


def additive_attention(attention, x: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """SeisBench's/Keras' additive ``SeqSelfAttention`` applied to x (batch, channels, time).

    Same result as ``attention(x)[0]``: ``e_ij = Wa . tanh(q_i + k_j + bh) + ba``, ``exp(e - max_j e)``
    over the whole row, band mask if ``attention_width`` is set, ``a = e / (sum + eps)``.
    """
    xt = x.transpose(1, 2)  # (B, T, C)
    batch, steps = xt.shape[0], int(xt.shape[1])  # time is static in a traced graph, batch is not
    if _exporting():
        # ONNX: one broadcast expression (ORT's tanh is fast, loops would fix the batch size).
        h = torch.tanh(
            (torch.matmul(xt, attention.Wt) + attention.bh).unsqueeze(2)
            + torch.matmul(xt, attention.Wx).unsqueeze(1)
        )
        e = torch.matmul(h, attention.Wa[:, 0]) + attention.ba
    else:
        # tanh(z) = 2 sigmoid(2z) - 1, so e = (2 Wa) . sigmoid(2q + 2k) + (ba - sum(Wa)).
        q2 = torch.matmul(xt, 2 * attention.Wt) + 2 * attention.bh  # (B, T, U)
        k2 = torch.matmul(xt, 2 * attention.Wx)
        wa2 = 2 * attention.Wa[:, 0]
        e = torch.empty(batch, steps, steps, dtype=x.dtype, device=x.device)
        for start in range(0, batch, chunk):  # (chunk, T, T, U) stays in L2
            stop = min(start + chunk, batch)
            h = q2[start:stop, :, None, :] + k2[start:stop, None, :, :]
            e[start:stop] = torch.matmul(h.sigmoid_(), wa2)
        e += attention.ba - attention.Wa.sum()
    e = torch.exp(e - e.amax(dim=-1, keepdim=True))
    if attention.attention_width is not None:
        index = torch.arange(steps, device=x.device)
        lower = index - attention.attention_width // 2
        offset = index.unsqueeze(1) - lower.unsqueeze(0)  # [i, j] = i - lower_j, SeisBench's band
        mask = (offset >= 0) & (offset < attention.attention_width)
        e = e.masked_fill(~mask, 0.0)
    a = e / (e.sum(dim=-1, keepdim=True) + attention.eps)
    return torch.matmul(a, xt).transpose(1, 2)


def _transformer(transformer, x: torch.Tensor) -> torch.Tensor:
    """SeisBench's ``Transformer`` block with the fast attention (its output, without weights)."""
    y = transformer.norm1(x + additive_attention(transformer.attention, x))
    return transformer.norm2(y + transformer.ff(y))


# --- channels-last convolution helpers ----------------------------------------------------------
# A (batch, time, channels) tensor is the memory of an NHWC image of height 1: conv2d on the
# (B, C, 1, T) view runs oneDNN's channels-last kernels without copies.


def _conv_tc(x_tc: torch.Tensor, weight: torch.Tensor, bias, pad: tuple[int, int]) -> torch.Tensor:
    """1-D convolution of x (B, T, C) with weight (O, C, K) and zero padding (left, right)."""
    p = max(pad)
    x4 = x_tc.transpose(1, 2).unsqueeze(2)
    if not _exporting():
        x4 = x4.contiguous(memory_format=_CHANNELS_LAST)
    y = F.conv2d(x4, weight.unsqueeze(2), bias, padding=(0, p)).squeeze(2).transpose(1, 2)
    if pad[0] != pad[1]:
        y = y[:, p - pad[0] : int(y.shape[1]) - (p - pad[1])]
    return y


def _same_pads(kernel: int) -> tuple[int, int]:
    return (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2  # TensorFlow "same", stride 1


def _separable_tc(x_tc: torch.Tensor, conv, dense=None) -> torch.Tensor:
    """``SeparableConv1d`` (depthwise, pointwise, relu) on a (B, T, C) tensor.

    ``dense``: (weight, bias) of the same conv as one dense conv (fewer passes over a long, thin
    input: the encoder's 3-channel input)."""
    pads = _same_pads(conv.depthwise.kernel_size[0])
    if dense is not None:
        return torch.relu_(_conv_tc(x_tc, dense[0], dense[1], pads))
    y = _conv_tc_depthwise(x_tc, conv.depthwise.weight, pads)
    return torch.relu_(_conv_tc(y, conv.pointwise.weight, conv.pointwise.bias, (0, 0)))


def _conv_tc_depthwise(x_tc: torch.Tensor, weight: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    p = max(pad)
    x4 = x_tc.transpose(1, 2).unsqueeze(2)
    if not _exporting():
        x4 = x4.contiguous(memory_format=_CHANNELS_LAST)
    y = F.conv2d(x4, weight.unsqueeze(2), None, padding=(0, p), groups=int(weight.shape[0]))
    y = y.squeeze(2).transpose(1, 2)
    if pad[0] != pad[1]:
        y = y[:, p - pad[0] : int(y.shape[1]) - (p - pad[1])]
    return y


def _max_pool_tc(x_tc: torch.Tensor, pool: int) -> torch.Tensor:
    """``max_pool_same`` (TensorFlow "same" alignment) on a (B, T, C) tensor."""
    length = int(x_tc.shape[1])
    out = math.ceil(length / pool)
    total = max((out - 1) * pool + pool - length, 0)
    left, right = total // 2, total - total // 2
    x4 = x_tc.transpose(1, 2).unsqueeze(2)
    if left == 0:  # a partial window at the end only: ceil_mode is TF's -inf padding
        y = F.max_pool2d(x4, (1, pool), ceil_mode=True)
    elif left == right:
        y = F.max_pool2d(x4, (1, pool), padding=(0, left))
    else:
        y = F.max_pool2d(F.pad(x4, (left, right), value=float("-inf")), (1, pool))
    return y.squeeze(2).transpose(1, 2)


def _encoder_tc(encoder, x: torch.Tensor, dense_first) -> torch.Tensor:
    """Encoder on (B, C, N) input; returns (B, T, C) channels-last features."""
    x_tc = x.transpose(1, 2)
    for step, (index, pool) in enumerate(zip(encoder.conv_order, encoder.pools)):
        x_tc = _max_pool_tc(_separable_tc(x_tc, encoder.convs[index], dense_first if step == 0 else None), pool)
    return x_tc


# --- polyphase decoders -------------------------------------------------------------------------


def _phase_taps(kernel: int, factor: int, pad_left: int, shift: int = 0):
    """Selection P[r, t, s] = 1 if tap t of output phase r reads low-rate offset s_min + s."""
    s_min = (shift - pad_left) // factor
    s_max = (factor - 1 + shift + kernel - 1 - pad_left) // factor
    select = torch.zeros(factor, kernel, s_max - s_min + 1)
    for r in range(factor):
        for t in range(kernel):
            select[r, t, (r + shift + t - pad_left) // factor - s_min] = 1.0
    return select, s_min, s_max


def _polyphase_weight(conv, factor: int, shift: int):
    """Dense weight (f*O, C, S) of "upsample by f (offset by shift), separable conv" at the low rate.

    Output channel r*O + o is output channel o at phase r, so a (B, T, f*O) result reshaped to
    (B, f*T, O) is already interleaved in time.
    """
    depthwise = conv.depthwise.weight[:, 0, :]  # (C, k)
    pointwise = conv.pointwise.weight[:, :, 0]  # (O, C)
    kernel = depthwise.shape[-1]
    select, s_min, s_max = _phase_taps(kernel, factor, _same_pads(kernel)[0], shift)
    taps = torch.einsum("ct,rts->rcs", depthwise, select.to(depthwise))  # (f, C, S)
    weight = pointwise.unsqueeze(0).unsqueeze(-1) * taps.unsqueeze(1)  # (f, O, C, S)
    bias = conv.pointwise.bias.repeat(factor)
    return weight.reshape(-1, depthwise.shape[0], taps.shape[-1]), bias, s_min, s_max


def _plain_stage_edge(x_tc: torch.Tensor, conv, factor: int, length: int, crop: int, side: str):
    """The plain path (upsample, crop, zero-padded separable conv) for the outputs next to an edge."""
    kernel = conv.depthwise.kernel_size[0]
    pad_left, pad_right = _same_pads(kernel)
    x = x_tc.transpose(1, 2)
    if side == "left":
        n_low = (kernel - 2 + crop) // factor + 1
        u = torch.repeat_interleave(x[..., :n_low], factor, dim=-1)[..., crop:]
        d = F.conv1d(F.pad(u, (pad_left, 0)), conv.depthwise.weight, groups=int(x.shape[1]))[..., :pad_left]
    else:
        first = max((length - kernel + 1 + crop) // factor, 0)
        u = torch.repeat_interleave(x[..., first:], factor, dim=-1)
        u = u[..., : length - (factor * first - crop)]
        d = F.conv1d(F.pad(u, (0, pad_right)), conv.depthwise.weight, groups=int(x.shape[1]))[..., -pad_right:]
    return torch.relu(conv.pointwise(d)).transpose(1, 2)


def _upsample_separable_tc(x_tc: torch.Tensor, conv, factor: int, length: int, poly) -> torch.Tensor:
    """Decoder stage on (B, L_in, C): nearest upsampling by ``factor``, Keras crop to ``length``,
    separable conv, relu -> (B, length, O). ``poly`` = :func:`_polyphase_weight` of ``conv``."""
    weight, bias, s_min, s_max = poly
    low, channels_out = int(x_tc.shape[1]), conv.pointwise.out_channels
    crop = (factor * low - length + 1) // 2  # crop_to: ceil(excess / 2) on the left
    y = torch.relu_(_conv_tc(x_tc, weight, bias, (-s_min, s_max)))
    y = y.reshape(-1, factor * low, channels_out)[:, crop : crop + length]
    pad_left, pad_right = _same_pads(conv.depthwise.kernel_size[0])
    # Next to a crop the plain path pads with zeros where the low-rate signal still holds the
    # cropped copies: recompute those few outputs the plain way.
    fix_left = pad_left if crop else 0
    fix_right = pad_right if factor * low - length - crop else 0
    left = _plain_stage_edge(x_tc, conv, factor, length, crop, "left") if fix_left else None
    right = _plain_stage_edge(x_tc, conv, factor, length, crop, "right") if fix_right else None
    if _exporting():  # no in-place writes in an exported graph
        parts = [p for p in (left, y[:, fix_left : length - fix_right], right) if p is not None]
        return torch.cat(parts, dim=1) if len(parts) > 1 else y
    if left is not None:
        y[:, :fix_left] = left  # y is a view of the conv output: no copy (torch.cat is 5x slower)
    if right is not None:
        y[:, length - fix_right :] = right
    return y.contiguous()  # a plain copy: 3x faster than conv2d's own reorder of the view


def _head_polyphase_weight(head, factor: int, channels: int):
    """Weight (f, f*O, S) of the head conv applied to phase-split input channels (rho, o)."""
    weight = head.weight[0]  # (O, K)
    kernel = weight.shape[-1]
    pad = head.padding[0]
    s_min = -pad // factor
    s_max = (factor - 1 + kernel - 1 - pad) // factor
    taps = s_max - s_min + 1
    # tap t of output phase r reading input phase rho at low-rate offset s: t = f*s + rho - r + pad
    select = torch.zeros(factor, factor, taps, kernel)
    for r in range(factor):
        for rho in range(factor):
            for s in range(s_min, s_max + 1):
                t = factor * s + rho - r + pad
                if 0 <= t < kernel:
                    select[r, rho, s - s_min, t] = 1.0
    full = torch.einsum("ok,rpsk->rpos", weight, select.to(weight))  # (f, f, O, S)
    return full.reshape(factor, factor * channels, taps), head.bias.repeat(factor), s_min, s_max


def _decoder_stages(decoder):
    return list(zip(decoder.conv_order, decoder.upsampling, decoder.lengths))


def _polyphase_head(decoder) -> bool:
    """Can the last stage and the head run on the phases (no crop, symmetric head padding)?"""
    index, factor, length = _decoder_stages(decoder)[-1]
    low = math.ceil(length / factor)
    return factor * low == length and decoder.head.padding[0] * 2 + 1 == decoder.head.kernel_size[0]


def _decoder_weights(decoder) -> dict:
    stages = _decoder_stages(decoder)
    weights = {"stages": [_polyphase_weight(decoder.convs[i], f, 0) for i, f, _ in stages]}
    if _polyphase_head(decoder):
        index, factor, _ = stages[-1]
        weights["head"] = _head_polyphase_weight(decoder.head, factor, decoder.convs[index].pointwise.out_channels)
    return weights


def fused_weights(model) -> dict:
    """The precomputed weights of the fused path (dense encoder input conv, polyphase decoders)."""
    first = model.encoder.convs[model.encoder.conv_order[0]]
    with torch.no_grad():
        return {
            "encoder": (first.pointwise.weight * first.depthwise.weight[:, 0, :].unsqueeze(0), first.pointwise.bias),
            "decoders": [_decoder_weights(d) for d in model.decoders],
        }


def _cached_fused_weights(model) -> dict:
    """:func:`fused_weights`, recomputed only when a parameter changed (load, training step, .to())."""
    key = _weights_key(model)
    cache = model.__dict__.get("_fused_weights_cache")
    if cache is None or cache[0] != key:
        cache = (key, fused_weights(model))
        model.__dict__["_fused_weights_cache"] = cache
    return cache[1]


def _decoder_tc(decoder, x_tc: torch.Tensor, weights: dict) -> torch.Tensor:
    """One decoder on (B, T, 16) -> logits (B, in_samples)."""
    stages = _decoder_stages(decoder)
    for (index, factor, length), poly in zip(stages[:-1], weights["stages"]):
        x_tc = _upsample_separable_tc(x_tc, decoder.convs[index], factor, length, poly)
    index, factor, length = stages[-1]
    conv = decoder.convs[index]
    if "head" not in weights:  # cropping last stage (in_samples not 6000): plain head conv
        x_tc = _upsample_separable_tc(x_tc, conv, factor, length, weights["stages"][-1])
        return _conv_tc(x_tc, decoder.head.weight, decoder.head.bias, (decoder.head.padding[0],) * 2)[..., 0]
    weight, bias, s_min, s_max = weights["stages"][-1]
    z = torch.relu_(_conv_tc(x_tc, weight, bias, (-s_min, s_max)))  # (B, L_in, (rho, o))
    weight, bias, s_min, s_max = weights["head"]
    y = _conv_tc(z, weight, bias, (-s_min, s_max))  # (B, L_in, r): already interleaved
    return y.reshape(-1, length)


# --- full forward passes ------------------------------------------------------------------------


#: Windows per pass of the fused path: larger batches are split, which bounds the memory of the
#: intermediates (about 1 MB per window) and keeps them closer to the caches; no faster above 64.
FUSED_BATCH = 64


def fused_forward(model, x: torch.Tensor, logits: bool = False) -> tuple[torch.Tensor, ...]:
    """The fused inference path of :class:`~seisbench_feq.models.LEQNet` (same outputs)."""
    if x.shape[0] > FUSED_BATCH and not _exporting():
        parts = [fused_forward(model, x[i : i + FUSED_BATCH], logits) for i in range(0, x.shape[0], FUSED_BATCH)]
        return tuple(torch.cat(outputs) for outputs in zip(*parts))
    weights = _cached_fused_weights(model)
    h = _encoder_tc(model.encoder, x, weights["encoder"]).transpose(1, 2)
    h = model.res_stack(h)
    h = model.rnn_stack(h)
    h = _transformer(model.transformer_d0, h)
    h = _transformer(model.transformer_d, h)
    branches = [h]
    for rnn, attention in zip(model.pick_rnns, model.pick_attentions):
        px = rnn(h.permute(2, 0, 1))[0].permute(1, 2, 0)
        branches.append(additive_attention(attention, px))
    outputs = [
        _decoder_tc(d, b.transpose(1, 2), w) for d, b, w in zip(model.decoders, branches, weights["decoders"])
    ]
    if not logits:
        outputs = [torch.sigmoid(y) for y in outputs]
    return tuple(outputs)


def plain_forward(model, x: torch.Tensor, logits: bool = False) -> tuple[torch.Tensor, ...]:
    """The straightforward module path (reference for every optimisation)."""
    with use_backend(model, "plain"):
        return model(x, logits=logits)


@contextlib.contextmanager
def use_backend(model, backend: str):
    """Run ``model`` with another inference backend inside a ``with`` block."""
    previous = model.__dict__.get("inference_backend")
    set_inference_backend(model, backend)
    try:
        yield model
    finally:
        if previous is None:
            model.__dict__.pop("inference_backend", None)  # back to the class default
        else:
            model.inference_backend = previous


def set_inference_backend(model, backend: str):
    """Select ``"fused"`` (default), ``"plain"`` or ``"onnxruntime"`` for ``model``'s inference."""
    if backend not in BACKENDS:
        raise ValueError(f"inference backend {backend!r}: expected one of {BACKENDS}")
    model.inference_backend = backend
    return model


def dispatch_forward(model, x: torch.Tensor, logits: bool):
    """Inference entry point used by ``LEQNet.forward``; ``None`` means "run the plain modules"."""
    backend = getattr(model, "inference_backend", "fused")
    if backend == "plain":
        return None
    if backend == "onnxruntime" and not _exporting():
        session = _ort_session(model)
        if session is not None:
            return session(x, logits)
    return fused_forward(model, x, logits)


# --- ONNX Runtime backend -----------------------------------------------------------------------


class _OrtRunner:
    def __init__(self, model, threads: int | None = None):
        import onnxruntime as ort

        from seisbench_feq.export import onnx_bytes

        self.key = _weights_key(model, buffers=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            onnx_bytes(model, logits=True), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, x: torch.Tensor, logits: bool):
        out = self.session.run(None, {"waveforms": x.detach().cpu().numpy()})
        out = tuple(torch.from_numpy(y) for y in out)
        return out if logits else tuple(torch.sigmoid(y) for y in out)


def _weights_key(model, buffers: bool = False) -> tuple:
    """Changes whenever a parameter (or buffer) is replaced or modified in place."""
    tensors = model.state_dict(keep_vars=True).values() if buffers else model.parameters()
    return tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)


def _ort_session(model):
    runner = getattr(model, "_ort_runner", None)
    if runner is not None and runner.key == _weights_key(model, buffers=True):
        return runner
    if getattr(model, "_ort_failed", False):
        return None
    try:
        runner = _OrtRunner(model)
    except Exception as error:  # missing package, exporter or provider: fall back, say so once
        logger.warning(f"{type(model).__name__}: ONNX Runtime backend unavailable ({error!r}); using 'fused'")
        model._ort_failed = True
        return None
    model._ort_runner = runner
    return runner


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


async def _stack_piece(model, piece, argdict: dict):
    """SeisBench's own windowing, batching, prediction and stacking for one piece."""

    async def one():
        yield piece

    fragments = model._iter_fragments_array(one(), argdict)
    blocks = model._iter_predictions(fragments, argdict)
    stacked = [s async for s in model._iter_reassemble_predictions(blocks, argdict)]
    return stacked[0] if stacked else None


def _copy_for_annotate(model, stream: obspy.Stream) -> obspy.Stream:
    """``stream.copy()`` without duplicating the samples when nothing will write to them.

    LEQNet's pre-processing (sanitising, filtering, resampling) and SeisBench's grouping only ever
    assign new arrays; the copy shares the data as read-only views, so an in-place write would
    raise instead of changing the caller's stream. Subclasses that override
    ``annotate_stream_pre`` get a real copy (SeisBench allows in-place changes there).
    """
    from .models import LEQNet

    if type(model).annotate_stream_pre is not LEQNet.annotate_stream_pre:
        return stream.copy()
    out = obspy.Stream()
    for trace in stream:
        data = trace.data.view()
        data.flags.writeable = False
        out.append(obspy.Trace(data=data, header=copy.deepcopy(trace.stats)))
    return out


def _release_freed_memory() -> None:
    """Hand the heap pages a finished piece freed back to the OS (glibc keeps them otherwise, and
    the process RSS would grow to the largest piece plus the output however small the piece)."""
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
        and all(hasattr(model, name) for name in ("_iter_fragments_array", "_iter_predictions", "_iter_reassemble_predictions"))
    )


async def annotate_chunked_async(model, stream: obspy.Stream, copy: bool = True, **kwargs) -> obspy.Stream:
    """``WaveformModel.annotate_async`` with long segments processed in overlapping pieces.

    Same steps as SeisBench (argument check, copy, merge, ``annotate_stream_pre``/``validate``,
    grouping); each continuous segment longer than ``chunk_seconds`` (annotate argument, default
    one hour; 0 disables) is annotated piece by piece (see :func:`_chunk_plan`). The output equals
    SeisBench's unchunked output up to float rounding; peak memory is one piece's windows and
    predictions plus the output traces.
    """
    argdict = model.default_args.copy()
    argdict.update(kwargs)
    chunk_seconds = argdict.get("chunk_seconds", DEFAULT_CHUNK_SECONDS)
    step = model.in_samples - model._get_overlap(model.in_samples, argdict)
    if not chunk_seconds or not _can_chunk(model) or step <= 0:
        from seisbench.models import WaveformModel

        return await WaveformModel.annotate_async(model, stream, copy=copy, **kwargs)

    model._verify_argdict(kwargs)
    if copy:
        stream = _copy_for_annotate(model, stream)
    stream.merge(-1)
    if len(stream) == 0:
        return obspy.Stream()
    model.annotate_stream_pre(stream, argdict)
    stream = model.annotate_stream_validate(stream, argdict)
    if len(stream) == 0:
        return obspy.Stream()
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
    del stream  # the groups hold what is still needed
    chunk = int(round(float(chunk_seconds) * sampling_rate))

    output = obspy.Stream()
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
                    output += model._predictions_to_stream(stacked)
                continue
            # One float32 array per label (the output traces themselves), filled piece by piece.
            labels = np.full((len(model.labels), layout["n_samples"]), np.nan, dtype=np.float32)
            rate = None
            for start, stop, core_start, core_stop in plan:
                stacked = await _stack_piece(model, _piece(layout, start, stop), argdict)
                if stacked is None:
                    continue
                rate = stacked.sampling_rate
                core = stacked.data[core_start - start : core_stop - start]
                labels[:, core_start : core_start + len(core)] = core.T
                del stacked, core
                _release_freed_memory()
            if rate is not None:
                output += _label_traces(model, layout, labels, rate)
    finally:
        if train_mode:
            model.train()
    return output


# --- pick extraction ------------------------------------------------------------------------------
# SeisBench's picks_from_annotations/detections_from_annotations call ObsPy's trigger_onset on a
# whole trace and build trace.times(): for a station-day that is several 70 MB arrays, and up to
# 300 MB when a probability stays above the off threshold all day. These give the same picks
# piece by piece.

TRIGGER_PIECE = 1 << 20  # samples


def trigger_onsets(data: np.ndarray, threshold: float, piece: int = TRIGGER_PIECE) -> list[tuple[int, int]]:
    """``obspy.signal.trigger.trigger_onset(data, threshold, threshold / 2)``, in bounded memory.

    ObsPy's triggers: a trigger switches on at a sample >= ``threshold`` that is not already in a
    trigger and stays on to the last sample of the run of samples >= ``threshold / 2`` (NaN ends a
    run). ``trigger_onset`` runs on pieces of ``piece`` samples; a trigger still on at the end of
    a piece is extended to the end of its run, and the next piece starts after it.
    """
    from obspy.signal.trigger import trigger_onset

    low = threshold / 2
    n = len(data)
    triggers: list[tuple[int, int]] = []
    start = 0
    while start < n:
        stop = min(start + piece, n)
        part = [(start + int(on), start + int(off)) for on, off in trigger_onset(data[start:stop], threshold, low)]
        if part and stop < n and part[-1][1] == stop - 1 and data[stop] >= low:
            stop = _run_end(data, stop, low, piece)  # the last trigger continues past the cut
            part[-1] = (part[-1][0], stop - 1)
        triggers.extend(part)
        start = stop
    return triggers


def _run_end(data: np.ndarray, index: int, low: float, block: int) -> int:
    """First index >= ``index`` where ``data`` is below ``low`` (or NaN), else ``len(data)``."""
    while index < len(data):
        below = np.flatnonzero(~(data[index : index + block] >= low))
        if len(below):
            return index + int(below[0])
        index += block
    return len(data)


def _trace_id(trace) -> str:
    return f"{trace.stats.network}.{trace.stats.station}.{trace.stats.location}"


def picks_from_annotations(annotations, threshold, phase):
    """``WaveformModel.picks_from_annotations`` (same picks) in bounded memory."""
    import seisbench.util as sbu

    picks = []
    for trace in annotations:
        start, rate, data = trace.stats.starttime, trace.stats.sampling_rate, trace.data
        for s0, s1 in trigger_onsets(data, threshold):
            window = data[s0 : s1 + 1]
            peak = s0 + int(np.argmax(window))
            picks.append(
                sbu.Pick(
                    trace_id=_trace_id(trace),
                    start_time=start + s0 / rate,  # trace.times()[i] is i / sampling_rate
                    end_time=start + s1 / rate,
                    peak_time=start + peak / rate,
                    peak_value=np.max(window),
                    phase=phase,
                )
            )
    return sbu.PickList(sorted(picks))


def detections_from_annotations(annotations, threshold):
    """``WaveformModel.detections_from_annotations`` (same detections) in bounded memory."""
    import seisbench.util as sbu

    detections = []
    for trace in annotations:
        start, rate, data = trace.stats.starttime, trace.stats.sampling_rate, trace.data
        for s0, s1 in trigger_onsets(data, threshold):
            detections.append(
                sbu.Detection(
                    trace_id=_trace_id(trace),
                    start_time=start + s0 / rate,
                    end_time=start + s1 / rate,
                    peak_value=np.max(data[s0 : s1 + 1]),
                )
            )
    return sbu.DetectionList(sorted(detections))
