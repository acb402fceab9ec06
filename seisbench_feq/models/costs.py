"""What a model costs: parameter counts (PyTorch and Keras conventions) and FLOPs per window.

FLOPs are counted with PyTorch's own ``torch.utils.flop_counter.FlopCounterMode`` (convolutions,
matrix products, fused attention: 2 FLOPs per multiply-accumulate). It has no formula for the fused
recurrent kernels that ``nn.LSTM``/``nn.GRU`` reach (oneDNN's ``mkldnn_rnn_layer`` on CPU, cuDNN's
``_cudnn_rnn``, ``aten.lstm/gru`` themselves), nor for ``mv``/``dot``/``_addmm_activation``: these
are added through its ``custom_mapping``, as ``time steps x batch x sum of the weight-matrix sizes``
(``gates x hidden x (input + hidden)`` per step and direction). Element-wise work (activations,
BatchNorm, biases, softmax, pooling, upsampling) is not counted, the usual convention of the papers.
The count is that of the architecture as its modules define it: LEQNet-family models are switched to
their ``"plain"`` inference backend while counting (the fused path reorganises the same arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

aten = torch.ops.aten

__all__ = ["torch_param_count", "keras_param_count", "FlopCount", "count_flops", "flops_per_window"]


def torch_param_count(model: nn.Module) -> int:
    """Number of trainable PyTorch parameters."""
    return sum(p.numel() for p in model.parameters())


def keras_param_count(model: nn.Module) -> int:
    """Parameter count in the Keras convention used by the EqT/LEQNet/FEQ papers.

    Differences from PyTorch: BatchNorm moving mean and variance are counted, and an LSTM/GRU
    direction has one bias vector (PyTorch has ``bias_ih`` and ``bias_hh``; Keras GRUs with
    ``reset_after=False`` have one).
    """
    count = torch_param_count(model)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            count += module.running_mean.numel() + module.running_var.numel()
    for name, parameter in model.named_parameters():
        if name.rsplit(".", 1)[-1].startswith("bias_hh"):
            count -= parameter.numel()
    return count


# --- FLOP formulas FlopCounterMode lacks (raw tensors in, FLOPs out) ------------------------------


def _raw(formula):
    formula._get_raw = True  # FlopCounterMode passes the tensors themselves, not their shapes
    return formula


def _rnn_flops(steps_times_batch: int, params) -> int:
    # Each step multiplies the input and hidden state by W_ih and W_hh (W_hr with a projection) of
    # every layer and direction: the weight matrices are the 2-D entries of params.
    return 2 * steps_times_batch * sum(p.numel() for p in params if p.dim() == 2)


@_raw
def _rnn_op(*args, out_val=None, **kwargs) -> int:
    if isinstance(args[1], torch.Tensor) and args[1].dim() == 1:  # packed: (data, batch_sizes, hx, params, ...)
        return _rnn_flops(args[0].shape[0], args[3])
    x, params = args[0], args[2]  # (input, hx, params, has_biases, num_layers, ...)
    return _rnn_flops(x.shape[0] * x.shape[1], params)


@_raw
def _mkldnn_rnn_layer(*args, out_val=None, **kwargs) -> int:
    x = args[0]  # one layer and direction: (input, w_ih, w_hh, b_ih, b_hh, hx, cx, reverse, ...)
    return 2 * x.shape[0] * x.shape[1] * (args[1].numel() + args[2].numel())


@_raw
def _cudnn_rnn(*args, out_val=None, **kwargs) -> int:
    x = args[0]  # (input, weights, weight_stride0, weight_buf, hx, cx, mode, hidden_size, ...)
    steps = x.shape[0] if x.dim() == 2 else x.shape[0] * x.shape[1]
    return _rnn_flops(steps, args[1])


@_raw
def _addmm_activation(bias, a, b, *args, out_val=None, **kwargs) -> int:
    return 2 * a.shape[0] * a.shape[1] * b.shape[1]


@_raw
def _mv(a, b, *args, out_val=None, **kwargs) -> int:
    return 2 * a.shape[0] * a.shape[1]


@_raw
def _dot(a, b, *args, out_val=None, **kwargs) -> int:
    return 2 * a.shape[0]


_EXTRA_FORMULAS = {
    aten.lstm: _rnn_op,
    aten.gru: _rnn_op,
    aten.rnn_tanh: _rnn_op,
    aten.rnn_relu: _rnn_op,
    aten.mkldnn_rnn_layer: _mkldnn_rnn_layer,
    aten._cudnn_rnn: _cudnn_rnn,
    aten._addmm_activation: _addmm_activation,
    aten.mv: _mv,
    aten.dot: _dot,
}


@dataclass
class FlopCount:
    """Result of :func:`count_flops` for one forward pass."""

    macs: int
    batch_size: int
    by_op: dict[str, int] = field(default_factory=dict)  # MACs per ATen operator

    @property
    def flops(self) -> int:
        """2 FLOPs (one multiply, one add) per MAC."""
        return 2 * self.macs

    @property
    def flops_per_window(self) -> float:
        return self.flops / self.batch_size


def count_flops(model: torch.nn.Module, x: torch.Tensor, architecture: bool = True) -> FlopCount:
    """Count the MACs of ``model(x)`` in eval mode; ``x`` is a (batch, ...) input.

    ``architecture=True`` counts the network as its modules define it (the LEQNet family runs its
    ``"plain"`` backend for the count); ``False`` counts what the default inference path executes.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    switch = architecture and hasattr(model, "inference_backend")
    had_own = "inference_backend" in vars(model)
    previous = getattr(model, "inference_backend", None)
    if switch:
        model.inference_backend = "plain"
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
        if switch:
            if had_own:
                model.inference_backend = previous
            else:
                del model.inference_backend  # back to the class default
    by_op = {str(op).removeprefix("aten."): int(n) // 2 for op, n in counter.get_flop_counts()["Global"].items() if n}
    return FlopCount(macs=counter.get_total_flops() // 2, batch_size=x.shape[0], by_op=by_op)


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
