"""The fused inference path of LEQNet and FEQ1-3: same function as the plain modules, faster on CPUs.

``LEQNet.forward`` calls :func:`fused_forward` in inference (``eval()`` and no autograd) unless
``model.inference_backend`` says otherwise (:mod:`seisbench_feq.models.backends`);
``tests/test_performance_equivalence.py`` compares both on real data. Only the arithmetic is
rearranged (see "where the time goes" in ``docs/performance.md``):

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
  ``SeqSelfAttention`` (maximum over the whole row, ``K.epsilon()``, band mask); the 3-wide
  pick attentions are evaluated on their band only, with the whole-row maximum recovered
  where it matters (``_banded_attention``).

:func:`compact_forward` is the plain network written with the export-friendly attention (the
``compact`` ONNX/TorchScript graph).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "additive_attention",
    "transformer_block",
    "fused_forward",
    "fused_weights",
    "cached_fused_weights",
    "compact_forward",
    "weights_key",
    "exporting",
    "FUSED_BATCH",
]

_CHANNELS_LAST = torch.channels_last


def exporting() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


# --- additive attention ------------------------------------------------------------------------


def additive_attention(attention, x: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """SeisBench's/Keras' additive ``SeqSelfAttention`` applied to x (batch, channels, time).

    Same result as ``attention(x)[0]``: ``e_ij = Wa . tanh(q_i + k_j + bh) + ba``, ``exp(e - max_j e)``
    over the whole row, band mask if ``attention_width`` is set, ``a = e / (sum + eps)``.
    """
    xt = x.transpose(1, 2)  # (B, T, C)
    batch, steps = xt.shape[0], int(xt.shape[1])  # time is static in a traced graph, batch is not
    if exporting():
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
        if attention.attention_width is not None and attention.attention_width < steps:
            return _banded_attention(attention, xt, q2, k2, wa2).transpose(1, 2)
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


#: A row's band is evaluated alone when the bound on its full-row maximum says that Keras'
#: ``eps`` term changes its weights by less than ``exp(BAND_MARGIN) * eps`` (1e-6 relative).
BAND_MARGIN = math.log(10.0)


def _banded_attention(attention, xt, q2, k2, wa2) -> torch.Tensor:
    """Local attention evaluated on its band only (``width`` of ``T`` columns per row).

    Keras subtracts the maximum of the *whole* row before the band mask, so a row's weights are
    ``exp(e_ij - b_i) / (S_i + eps * exp(m_i - b_i))`` with ``b_i`` the band maximum, ``S_i >= 1``
    the band sum and ``m_i`` the row maximum. ``m_i`` only matters through that ``eps`` term:
    rows whose cheap upper bound of ``m_i`` (sigmoid is monotonic, so each unit's maximum over
    ``j`` is at the extreme ``k``) lies within ``BAND_MARGIN`` of ``b_i`` use ``eps`` alone; the
    others (about 15 % of the rows on real data) get their exact row maximum.
    """
    width, steps = attention.attention_width, xt.shape[1]
    first = width // 2 - width + 1  # band of row i: columns i + first ... i + width // 2
    pad = (0, 0, -first, width // 2)
    k_band = F.pad(k2, pad).unfold(1, width, 1)  # (B, T, U, width)
    x_band = F.pad(xt, pad).unfold(1, width, 1)  # (B, T, C, width)
    e = torch.einsum("btuw,u->btw", (q2.unsqueeze(-1) + k_band).sigmoid_(), wa2)
    column = torch.arange(steps, device=xt.device)[:, None] + torch.arange(first, first + width, device=xt.device)
    e = e.masked_fill(((column < 0) | (column >= steps)), -math.inf)
    band_max = e.amax(dim=-1)  # (B, T); the constant ba - sum(Wa) cancels in every difference
    k_max, k_min = k2.amax(dim=1, keepdim=True), k2.amin(dim=1, keepdim=True)  # (B, 1, U)
    row_bound = (q2 + k_max).sigmoid() @ wa2.clamp(min=0) + (q2 + k_min).sigmoid() @ wa2.clamp(max=0)
    excess = torch.zeros_like(band_max)
    far = row_bound - band_max > BAND_MARGIN
    if far.any():
        batch_index, row_index = far.nonzero(as_tuple=True)
        row_max = ((q2[batch_index, row_index].unsqueeze(1) + k2[batch_index]).sigmoid_() @ wa2).amax(dim=-1)
        excess[far] = row_max - band_max[far]
    e = torch.exp(e - band_max.unsqueeze(-1))
    a = e / (e.sum(dim=-1, keepdim=True) + attention.eps * torch.exp(excess).unsqueeze(-1))
    return torch.einsum("btw,btcw->btc", a, x_band)


def transformer_block(transformer, x: torch.Tensor) -> torch.Tensor:
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
    if not exporting():
        x4 = x4.contiguous(memory_format=_CHANNELS_LAST)
    y = F.conv2d(x4, weight.unsqueeze(2), bias, padding=(0, p)).squeeze(2).transpose(1, 2)
    if pad[0] != pad[1]:
        y = y[:, p - pad[0] : int(y.shape[1]) - (p - pad[1])]
    return y


def _time_blocked_weight(weight: torch.Tensor, bias, pad: tuple[int, int], factor: int):
    """The same stride-1 conv on blocks of ``factor`` time samples (space-to-depth in time).

    A contiguous (B, T, C) tensor viewed as (B, T/f, f*C) costs nothing; its conv with the
    returned (f*O, f*C, S) weight is the (B, T/f, f*O) memory of the (B, T, O) result. oneDNN's
    time per output pixel hardly depends on the channel count in these narrow layers, so fewer,
    wider pixels are faster (64 windows: encoder input conv 4.4 -> 2.8 ms at f=2, decoder head
    5.4 -> 4.6 ms at f=4). Exact for "same" convolutions (output length = input length).
    """
    channels_out, channels_in, kernel = weight.shape
    pad_left = pad[0]
    s_min = -pad_left // factor
    s_max = (factor - 1 + kernel - 1 - pad_left) // factor
    blocked = weight.new_zeros(factor * channels_out, factor * channels_in, s_max - s_min + 1)
    for r in range(factor):  # output sample r of a block, tap j reads block offset s, sample rho
        for j in range(kernel):
            s, rho = divmod(r + j - pad_left, factor)
            blocked[r * channels_out : (r + 1) * channels_out, rho * channels_in : (rho + 1) * channels_in,
                    s - s_min] += weight[:, :, j]
    return blocked, None if bias is None else bias.repeat(factor), (-s_min, s_max), factor


def _conv_tc_blocked(x_tc: torch.Tensor, blocked) -> torch.Tensor:
    """:func:`_conv_tc` with the weight of :func:`_time_blocked_weight` (same result)."""
    weight, bias, pad, factor = blocked
    length, channels = int(x_tc.shape[1]), int(x_tc.shape[2])
    y = _conv_tc(x_tc.reshape(-1, length // factor, factor * channels), weight, bias, pad)
    return y.reshape(-1, length, int(weight.shape[0]) // factor)


#: Time blocks of the encoder's input conv and of the decoder heads (measured, see above).
ENCODER_BLOCK, HEAD_BLOCK = 2, 4


def _same_pads(kernel: int) -> tuple[int, int]:
    return (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2  # TensorFlow "same", stride 1


def _separable_tc(x_tc: torch.Tensor, conv, dense=None) -> torch.Tensor:
    """``SeparableConv1d`` (depthwise, pointwise, relu) on a (B, T, C) tensor.

    ``dense``: (weight, bias, time-blocked weight) of the same conv as one dense conv (fewer
    passes over a long, thin input: the encoder's 3-channel input)."""
    pads = _same_pads(conv.depthwise.kernel_size[0])
    if dense is not None:
        weight, bias, blocked = dense
        if int(x_tc.shape[1]) % blocked[3] == 0:
            return torch.relu_(_conv_tc_blocked(x_tc, blocked))
        return torch.relu_(_conv_tc(x_tc, weight, bias, pads))
    y = _conv_tc_depthwise(x_tc, conv.depthwise.weight, pads)
    return torch.relu_(_conv_tc(y, conv.pointwise.weight, conv.pointwise.bias, (0, 0)))


def _conv_tc_depthwise(x_tc: torch.Tensor, weight: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    p = max(pad)
    x4 = x_tc.transpose(1, 2).unsqueeze(2)
    if not exporting():
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
    if left == 0 and pool >= 2 and not exporting():
        # Elementwise maxima of the pool's strided slices: 2x faster than ATen's channels-last
        # max_pool2d (which also computes indices); the partial window at the end is TF's -inf pad.
        full = length // pool
        groups = x_tc[:, : full * pool].unflatten(1, (full, pool))
        y = x_tc.new_empty(x_tc.shape[0], out, x_tc.shape[2])
        torch.maximum(groups[:, :, 0], groups[:, :, 1], out=y[:, :full])
        for k in range(2, pool):
            torch.maximum(y[:, :full], groups[:, :, k], out=y[:, :full])
        if out > full:
            torch.amax(x_tc[:, full * pool :], dim=1, out=y[:, full])
        return y
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
    if exporting():  # no in-place writes in an exported graph
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
        weight, bias, s_min, s_max = _head_polyphase_weight(decoder.head, factor,
                                                            decoder.convs[index].pointwise.out_channels)
        weights["head"] = weight, bias, s_min, s_max, _time_blocked_weight(weight, bias, (-s_min, s_max), HEAD_BLOCK)
    return weights


def fused_weights(model) -> dict:
    """The precomputed weights of the fused path (dense encoder input conv, polyphase decoders)."""
    first = model.encoder.convs[model.encoder.conv_order[0]]
    with torch.no_grad():
        weight = first.pointwise.weight * first.depthwise.weight[:, 0, :].unsqueeze(0)
        blocked = _time_blocked_weight(weight, first.pointwise.bias, _same_pads(weight.shape[-1]), ENCODER_BLOCK)
        return {
            "encoder": (weight, first.pointwise.bias, blocked),
            "decoders": [_decoder_weights(d) for d in model.decoders],
        }


def cached_fused_weights(model) -> dict:
    """:func:`fused_weights`, recomputed only when a parameter changed (load, training step, .to())."""
    key = weights_key(model)
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
    weight, bias, s_min, s_max, blocked = weights["head"]
    if int(z.shape[1]) % HEAD_BLOCK == 0:
        y = _conv_tc_blocked(z, blocked)  # (B, L_in, r): already interleaved
    else:
        y = _conv_tc(z, weight, bias, (-s_min, s_max))
    return y.reshape(-1, length)


# --- full forward passes ------------------------------------------------------------------------


#: Windows per pass of the fused path: larger batches are split, which bounds the memory of the
#: intermediates (about 1 MB per window) and keeps them closer to the caches; no faster above 64.
FUSED_BATCH = 64


def fused_forward(model, x: torch.Tensor, logits: bool = False) -> tuple[torch.Tensor, ...]:
    """The fused inference path of :class:`~seisbench_feq.models.LEQNet` (same outputs)."""
    if x.shape[0] > FUSED_BATCH and not exporting():
        parts = [fused_forward(model, x[i : i + FUSED_BATCH], logits) for i in range(0, x.shape[0], FUSED_BATCH)]
        return tuple(torch.cat(outputs) for outputs in zip(*parts))
    weights = cached_fused_weights(model)
    h = _encoder_tc(model.encoder, x, weights["encoder"]).transpose(1, 2)
    h = model.res_stack(h)
    h = model.rnn_stack(h)
    h = transformer_block(model.transformer_d0, h)
    h = transformer_block(model.transformer_d, h)
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


def weights_key(model, buffers: bool = False) -> tuple:
    """Changes whenever a parameter (or buffer) is replaced or modified in place."""
    tensors = model.state_dict(keep_vars=True).values() if buffers else model.parameters()
    return tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)


def compact_forward(model, x):
    """The plain network, written with export-friendly attention (same outputs, logits)."""
    h = model.encoder(x)
    h = model.res_stack(h)
    h = model.rnn_stack(h)
    h = transformer_block(model.transformer_d0, h)
    h = transformer_block(model.transformer_d, h)
    outputs = [model.decoders[0](h)]
    for rnn, attention, decoder in zip(model.pick_rnns, model.pick_attentions, model.decoders[1:]):
        px = rnn(h.permute(2, 0, 1))[0].permute(1, 2, 0)
        outputs.append(decoder(additive_attention(attention, px)))
    return tuple(outputs)
