"""FLOPs per window: a small counter of multiply-accumulates (MACs) at the ATen operator level.

Method. The forward pass runs once under a :class:`~torch.utils._python_dispatch.TorchDispatchMode`
that sees every ATen operator after autograd and module code have been lowered, so custom layers
(SeisBench's additive ``SeqSelfAttention``, its Python-loop ``CustomLSTM``, weight-reused modules)
are counted without per-module rules. MACs are counted for

- convolutions (``aten.convolution``): ``output elements x (C_in / groups) x kernel size``
  (depthwise convolutions therefore cost ``output elements x kernel``); transposed convolutions use
  the input elements instead;
- matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``mv``, ``dot``): ``n x k x m``;
- fused recurrent layers (``aten.lstm/gru/rnn_*``, and the oneDNN/cuDNN kernels ``nn.LSTM`` and
  ``nn.GRU`` reach): ``time steps x batch x sum of the weight-matrix sizes`` over layers and
  directions, i.e. ``gates x hidden x (input + hidden)`` per step and direction (recurrences
  that decompose into ``addmm``, as ``nn.GRU`` on CPU does, are counted through the products);
- fused attention (``scaled_dot_product_attention``): the two products ``QK^T`` and ``AV``.

Element-wise work (activations, BatchNorm, biases, softmax, pooling, upsampling) is not counted,
the usual convention of the papers. The count is that of the architecture as its modules define it
(LEQNet-family models are switched to their ``"plain"`` inference backend while counting). FLOPs = 2 x MACs. ``torch.utils.flop_counter`` counts the
same convolutions and products but not the fused LSTM/GRU kernels, which is why this module exists.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

__all__ = ["FlopCount", "MacCounter", "count_flops", "flops_per_window"]


def _conv_macs(args, out) -> int:
    x, weight = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    per_element = weight.shape[1] * math.prod(weight.shape[2:])  # (C_in/groups or C_out/groups) x kernel
    return (x.numel() if transposed else out.numel()) * per_element


def _mm_macs(a, b) -> int:
    return a.shape[0] * a.shape[1] * b.shape[1]


def _bmm_macs(a, b) -> int:
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def _rnn_macs(steps_times_batch: int, params) -> int:
    # Each step multiplies the input and the hidden state by W_ih and W_hh (and W_hr with a
    # projection) of every layer and direction: the weight matrices are the 2-D entries of params.
    return steps_times_batch * sum(p.numel() for p in params if p.dim() == 2)


def _rnn_input_macs(args, out) -> int:
    # (input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
    x, params = args[0], args[2]
    return _rnn_macs(x.shape[0] * x.shape[1], params)


def _rnn_data_macs(args, out) -> int:
    # Packed sequences: (data, batch_sizes, hx, params, ...); data holds every valid step once.
    return _rnn_macs(args[0].shape[0], args[3])


def _mkldnn_rnn_layer_macs(args, out) -> int:
    # One layer and direction: (input, w_ih, w_hh, b_ih, b_hh, hx, cx, reverse, ...)
    x = args[0]
    return x.shape[0] * x.shape[1] * (args[1].numel() + args[2].numel())


def _cudnn_rnn_macs(args, out) -> int:
    # (input, weights, weight_stride0, weight_buf, hx, cx, mode, hidden_size, ...)
    x = args[0]
    steps = x.shape[0] if x.dim() == 2 else x.shape[0] * x.shape[1]  # packed: (steps, features)
    return _rnn_macs(steps, args[1])


def _sdpa_macs(args, out) -> int:
    q, k, v = args[0], args[1], args[2]
    batch = math.prod(q.shape[:-2])
    return batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])


_RULES = {
    aten.convolution: _conv_macs,
    aten._convolution: _conv_macs,
    aten.mm: lambda args, out: _mm_macs(args[0], args[1]),
    aten.addmm: lambda args, out: _mm_macs(args[1], args[2]),
    aten._addmm_activation: lambda args, out: _mm_macs(args[1], args[2]),
    aten.bmm: lambda args, out: _bmm_macs(args[0], args[1]),
    aten.baddbmm: lambda args, out: _bmm_macs(args[1], args[2]),
    aten.mv: lambda args, out: args[0].shape[0] * args[0].shape[1],
    aten.dot: lambda args, out: args[0].shape[0],
    # Fused recurrent kernels that nn.LSTM/nn.GRU reach on CPU (oneDNN) and CUDA (cuDNN).
    aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_macs,
    aten._cudnn_rnn: _cudnn_rnn_macs,
}
_RNN_OPS = {aten.lstm, aten.gru, aten.rnn_tanh, aten.rnn_relu}
_SDPA_OPS = {
    getattr(aten, name)
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_attention_math",
    )
    if hasattr(aten, name)
}


class MacCounter(TorchDispatchMode):
    """Context manager that adds up the MACs of every counted ATen operator run inside it.

    >>> with MacCounter() as counter:
    ...     model(x)
    >>> counter.macs, counter.by_op
    """

    def __init__(self):
        super().__init__()
        self.macs = 0
        self.by_op: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        macs = 0
        if packet in _RULES:
            macs = _RULES[packet](args, out)
        elif packet in _RNN_OPS:
            macs = _rnn_data_macs(args, out) if func._overloadname == "data" else _rnn_input_macs(args, out)
        elif packet in _SDPA_OPS:
            macs = _sdpa_macs(args, out)
        if macs:
            self.macs += int(macs)
            self.by_op[str(packet).removeprefix("aten.")] += int(macs)
        return out


@dataclass
class FlopCount:
    """Result of :func:`count_flops` for one forward pass."""

    macs: int
    batch_size: int
    by_op: dict[str, int] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        """2 FLOPs (one multiply, one add) per MAC."""
        return 2 * self.macs

    @property
    def flops_per_window(self) -> float:
        return self.flops / self.batch_size


def count_flops(model: torch.nn.Module, x: torch.Tensor, architecture: bool = True) -> FlopCount:
    """Count the MACs of ``model(x)`` in eval mode; ``x`` is a (batch, ...) input.

    ``architecture=True`` counts the network as its modules define it: a model with an
    ``inference_backend`` attribute (the LEQNet family, see :mod:`seisbench_feq.inference`) is
    switched to ``"plain"`` for the count, because its fused inference path reorganises the same
    computation for speed and would be counted differently. ``False`` counts what the model's
    default inference path executes.
    """
    was_training = model.training
    model.eval()
    switch = architecture and hasattr(model, "inference_backend")
    had_own = "inference_backend" in vars(model)
    previous = getattr(model, "inference_backend", None)
    if switch:
        model.inference_backend = "plain"
    try:
        with torch.no_grad(), MacCounter() as counter:
            model(x)
    finally:
        model.train(was_training)
        if switch:
            if had_own:
                model.inference_backend = previous
            else:
                del model.inference_backend  # back to the class default
    return FlopCount(macs=counter.macs, batch_size=x.shape[0], by_op=dict(counter.by_op))


def flops_per_window(
    model: torch.nn.Module, in_channels: int | None = None, in_samples: int | None = None, architecture: bool = True
) -> float:
    """FLOPs of one forward pass on one window, read from ``model.in_channels``/``model.in_samples``.

    The count does not depend on the data (no data-dependent control flow in these models), so a
    random window is used. ``architecture``: see :func:`count_flops`.
    """
    in_channels = in_channels or getattr(model, "in_channels", 3)
    in_samples = in_samples or getattr(model, "in_samples", None)
    if in_samples is None:
        raise ValueError(f"{type(model).__name__} has no in_samples; pass in_samples explicitly")
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else "cpu"
    x = torch.randn(1, in_channels, in_samples, device=device)
    return count_flops(model, x, architecture).flops_per_window
