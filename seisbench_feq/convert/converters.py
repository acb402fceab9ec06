"""Keras weights into PyTorch modules: the converted EQTransformer and LEQNet."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import seisbench.util as sbu
import torch
import torch.nn as nn
from seisbench.models import EQTransformer

from .keras_file import (
    INPUT_PERMUTATION,
    TORCH_INPUT_ORDER,
    KerasConversionError,
    KerasFile,
    KerasGraph,
    model_type_of,
    parse_keras_graph,
    read_keras_h5,
    unique,
)

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Weight assignment helpers
# ----------------------------------------------------------------------------------------------


_ASSIGNED: set | None = None  # ids of the tensors filled during one conversion


@contextlib.contextmanager
def _tracking():
    global _ASSIGNED
    _ASSIGNED = set()
    try:
        yield _ASSIGNED
    finally:
        _ASSIGNED = None


def _set(param, value: np.ndarray, what: str) -> None:
    value = np.ascontiguousarray(value, dtype=np.float32)
    if tuple(param.shape) != value.shape:
        raise KerasConversionError(
            f"{what}: Keras array of shape {value.shape} does not fit the PyTorch tensor {tuple(param.shape)}"
        )
    with torch.no_grad():
        param.copy_(torch.from_numpy(value))
    if _ASSIGNED is not None:
        _ASSIGNED.add(id(param))


def _set_conv(conv, kf: KerasFile, layer: str, permute_input: bool = False) -> None:
    kernel = kf.w(layer, "kernel")  # (k, cin, cout)
    if permute_input:
        kernel = kernel[:, INPUT_PERMUTATION, :]
    _set(conv.weight, kernel.transpose(2, 1, 0), f"{layer}/kernel")
    _set(conv.bias, kf.w(layer, "bias"), f"{layer}/bias")


def _set_separable(module, kf: KerasFile, layer: str, permute_input: bool = False) -> None:
    dw = kf.w(layer, "depthwise_kernel")  # (k, cin, 1)
    pw = kf.w(layer, "pointwise_kernel")  # (1, cin, cout)
    if permute_input:
        dw, pw = dw[:, INPUT_PERMUTATION, :], pw[:, INPUT_PERMUTATION, :]
    _set(module.depthwise.weight, dw.transpose(1, 2, 0), f"{layer}/depthwise_kernel")
    _set(module.pointwise.weight, pw.transpose(2, 1, 0), f"{layer}/pointwise_kernel")
    _set(module.pointwise.bias, kf.w(layer, "bias"), f"{layer}/bias")


def _set_bn(bn, kf: KerasFile, layer: str) -> None:
    eps = float(kf.config(layer).get("epsilon", 1e-3))
    if abs(bn.eps - eps) > 1e-12:
        raise KerasConversionError(f"{layer}: Keras BatchNormalization eps {eps} != PyTorch eps {bn.eps}")
    _set(bn.weight, kf.w(layer, "gamma"), f"{layer}/gamma")
    _set(bn.bias, kf.w(layer, "beta"), f"{layer}/beta")
    _set(bn.running_mean, kf.w(layer, "moving_mean"), f"{layer}/moving_mean")
    _set(bn.running_var, kf.w(layer, "moving_variance"), f"{layer}/moving_variance")


def _set_lstm(module, kf: KerasFile, layer: str) -> None:
    """Keras LSTM/Bidirectional(LSTM) -> torch nn.LSTM or SeisBench CustomLSTM.

    Keras kernels are (in, 4u) with gate blocks i, f, c, o = PyTorch's i, f, g, o, so a transpose
    suffices; Keras has one bias, PyTorch two (bias_hh is set to zero).
    """
    directions = ["forward/", "backward/"] if kf.layer_class(layer) == "Bidirectional" else [""]
    for d, prefix in enumerate(directions):
        kernel, rec, bias = (kf.w(layer, prefix + k) for k in ("kernel", "recurrent_kernel", "bias"))
        if isinstance(module, nn.LSTM):
            sfx = "_l0" + ("_reverse" if d == 1 else "")
            if module.bidirectional != (len(directions) == 2):
                raise KerasConversionError(f"{layer}: bidirectionality differs from the PyTorch LSTM")
            tensors = [getattr(module, n + sfx) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        elif isinstance(module, nn.GRU):
            raise KerasConversionError(f"{layer}: Keras LSTM weights cannot fill a PyTorch GRU")
        else:  # seisbench CustomLSTM(ActivationLSTMCell)
            cell = module.cell_f if d == 0 else module.cell_b
            tensors = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
        _set(tensors[0], kernel.T, f"{layer}/{prefix}kernel")
        _set(tensors[1], rec.T, f"{layer}/{prefix}recurrent_kernel")
        _set(tensors[2], bias, f"{layer}/{prefix}bias")
        _set(tensors[3], np.zeros_like(bias), f"{layer}/{prefix}(no recurrent bias in Keras)")


def _set_attention(att, kf: KerasFile, layer: str) -> None:
    cfg = kf.config(layer)
    if cfg.get("attention_width") != att.attention_width:
        raise KerasConversionError(
            f"{layer}: attention_width {cfg.get('attention_width')} != PyTorch {att.attention_width}"
        )
    for key in ("Wx", "Wt", "bh", "Wa", "ba"):
        _set(getattr(att, key), kf.w(layer, key), f"{layer}/{key}")


def _set_transformer(tr, kf: KerasFile, names: dict) -> None:
    _set_attention(tr.attention, kf, names["attention"])
    for torch_name in ("norm1", "norm2"):
        layer = names[torch_name]
        norm = getattr(tr, torch_name)
        _set(norm.gamma, kf.w(layer, "gamma")[:, None], f"{layer}/gamma")
        _set(norm.beta, kf.w(layer, "beta")[:, None], f"{layer}/beta")
    ff = names["ff"]
    _set(tr.ff.lin1.weight, kf.w(ff, "W1").T, f"{ff}/W1")
    _set(tr.ff.lin1.bias, kf.w(ff, "b1"), f"{ff}/b1")
    _set(tr.ff.lin2.weight, kf.w(ff, "W2").T, f"{ff}/W2")
    _set(tr.ff.lin2.bias, kf.w(ff, "b2"), f"{ff}/b2")


def _recurrent_activations(kf: KerasFile) -> set[str]:
    acts = set()
    for l in kf.layers.values():
        cfg = l["config"]
        if l["class_name"] == "Bidirectional":
            cfg = cfg["layer"]["config"]
        elif l["class_name"] not in ("LSTM", "GRU"):
            continue
        # Keras < 2.3 defaulted to hard_sigmoid, 2.3 to sigmoid; the config always stores it.
        acts.add(cfg.get("recurrent_activation", "hard_sigmoid"))
    return acts


def _spatial_dropout_rate(kf: KerasFile, default: float) -> float:
    rates = {l["config"]["rate"] for l in kf.layers.values() if l["class_name"] == "SpatialDropout1D"}
    if len(rates) > 1:
        logger.warning("%s: several spatial dropout rates %s; using the largest", kf.path, rates)
    return max(rates) if rates else default


def _check_output_names(kf: KerasFile) -> None:
    if kf.outputs != ["detector", "picker_P", "picker_S"]:
        raise KerasConversionError(
            f"{kf.path}: expected outputs ['detector', 'picker_P', 'picker_S'], found {kf.outputs}"
        )


def _check_input(kf: KerasFile, samples: int = 6000, channels: int = 3) -> None:
    for l in kf.layers.values():
        if l["class_name"] == "InputLayer":
            shape = l["config"].get("batch_input_shape")
            if shape is not None and list(shape[1:]) != [samples, channels]:
                raise KerasConversionError(
                    f"{kf.path}: input shape {shape[1:]} is not ({samples}, {channels})"
                )


# ----------------------------------------------------------------------------------------------
# EQTransformer
# ----------------------------------------------------------------------------------------------


class OriginalEQTransformer(EQTransformer):
    """SeisBench's EQTransformer holding weights converted from the original Keras file.

    Identical to :class:`seisbench.models.EQTransformer` except for the input normalisation:
    with ``per_channel_std=True`` (default) each channel is demeaned and divided by its own
    standard deviation (channels with zero std stay zero), which is what the original
    EQTransformer was trained and run with (``EqT_utils._normalize(mode='std')``). SeisBench's
    ``norm="std"`` divides all channels by one joint std instead, which scales single-component
    data differently. SeisBench's 6-sample taper is kept (it lies inside the blinded edges).

    Load saved conversions with ``OriginalEQTransformer.load(prefix)``. Plain
    ``EQTransformer.load`` refuses them (unknown argument ``per_channel_std``) rather than
    silently normalising differently.
    """

    def __init__(self, *args, per_channel_std: bool = True, **kwargs):
        self.per_channel_std = per_channel_std
        super().__init__(*args, **kwargs)

    def annotate_batch_pre(self, batch: torch.Tensor, argdict: dict[str, Any]) -> torch.Tensor:
        if not self.per_channel_std:
            return super().annotate_batch_pre(batch, argdict)
        batch = batch - batch.mean(dim=-1, keepdim=True)
        if self.norm_detrend:
            batch = sbu.torch_detrend(batch)
        std = batch.std(dim=-1, keepdim=True, unbiased=False)
        batch = batch / torch.where(std == 0, torch.ones_like(std), std)
        tap = 0.5 * (1 + torch.cos(torch.linspace(np.pi, 2 * np.pi, 6, device=batch.device)))
        batch[:, :, :6] *= tap
        batch[:, :, -6:] *= tap.flip(dims=(0,))
        return batch

    def get_model_args(self):
        args = super().get_model_args()
        args["per_channel_std"] = self.per_channel_std
        return args


def _zip_exact(modules, names, what: str):
    modules, names = list(modules), list(names)
    if len(modules) != len(names):
        raise KerasConversionError(f"{what}: {len(names)} Keras layers for {len(modules)} PyTorch modules")
    return zip(modules, names)


def eqtransformer_from_keras(h5_path: str | Path, config_from: str | Path | None = None):
    """Build an :class:`OriginalEQTransformer` (a SeisBench ``EQTransformer``) from the Keras h5.

    The SeisBench mode follows the file: ``original_compatible="non-conservative"`` when the
    LSTMs' ``recurrent_activation`` is ``sigmoid`` (``EqT_original_model.h5``), ``"conservative"``
    when it is ``hard_sigmoid``; ``lstm_blocks`` is the number of BiLSTM blocks in the file and
    ``drop_rate`` its spatial dropout rate. Returned in ``eval()`` mode (deterministic).
    """
    kf = read_keras_h5(h5_path, config_from)
    kind = model_type_of(kf)
    if kind != "eqtransformer":
        raise KerasConversionError(f"{h5_path}: this is a {kind} file, not an EQTransformer")
    _check_output_names(kf)
    _check_input(kf)
    g = parse_keras_graph(kf)
    acts = _recurrent_activations(kf)
    if acts == {"sigmoid"}:
        mode = "non-conservative"
    elif acts == {"hard_sigmoid"}:
        mode = "conservative"
    else:
        raise KerasConversionError(f"{h5_path}: unsupported LSTM recurrent activations {sorted(acts)}")
    if len(g.encoder_convs) != 7 or len(g.res_blocks) != 7 or len(g.transformers) != 2:
        raise KerasConversionError(
            f"{h5_path}: not the EQTransformer layout (encoder convs {len(g.encoder_convs)}, "
            f"residual blocks {len(g.res_blocks)}, transformers {len(g.transformers)}; expected 7/7/2)"
        )

    model = OriginalEQTransformer(
        in_channels=3,
        in_samples=6000,
        classes=2,
        phases="PS",
        lstm_blocks=len(g.rnn_blocks),
        drop_rate=_spatial_dropout_rate(kf, 0.1),
        original_compatible=mode,
        sampling_rate=100,
        component_order=TORCH_INPUT_ORDER,
        default_args={"detection_threshold": 0.5, "P_threshold": 0.3, "S_threshold": 0.3},
    )

    with _tracking() as assigned:
        for i, (conv, layer) in enumerate(_zip_exact(model.encoder.convs, g.encoder_convs, 'EqT encoder')):
            _set_conv(conv, kf, layer, permute_input=(i == 0))
        for block, names in _zip_exact(model.res_cnn_stack.members, g.res_blocks, 'EqT residual blocks'):
            if len(names["norms"]) != 2 or len(names["convs"]) != 2:
                raise KerasConversionError(f"{h5_path}: unexpected residual block {names}")
            _set_bn(block.norm1, kf, names["norms"][0])
            _set_conv(block.conv1, kf, names["convs"][0])
            _set_bn(block.norm2, kf, names["norms"][1])
            _set_conv(block.conv2, kf, names["convs"][1])
        for block, names in _zip_exact(model.bi_lstm_stack.members, g.rnn_blocks, 'EqT BiLSTM blocks'):
            _set_lstm(block.lstm, kf, names["rnn"])
            _set_conv(block.conv, kf, names["conv"])
            _set_bn(block.norm, kf, names["norm"])
        _set_transformer(model.transformer_d0, kf, g.transformers[0])
        _set_transformer(model.transformer_d, kf, g.transformers[1])

        det, *picks = g.branches
        for conv, layer in _zip_exact(model.decoder_d.convs, det["convs"], 'EqT detection decoder'):
            _set_conv(conv, kf, layer)
        _set_conv(model.conv_d, kf, det["head"])
        for j, br in enumerate(picks):
            _set_lstm(model.pick_lstms[j], kf, br["rnn"])
            _set_attention(model.pick_attentions[j], kf, br["attention"])
            decoder = model.pick_decoders[j]
            for conv, layer in _zip_exact(decoder.convs, br["convs"], f"EqT {br['output']} decoder"):
                _set_conv(conv, kf, layer)
            _set_conv(model.pick_convs[j], kf, br["head"])
    _check_everything_used(kf, model, g, assigned)
    model.eval()
    return model


def _check_everything_used(kf: KerasFile, model, g: KerasGraph, assigned: set) -> None:
    """Every Keras layer with weights is mapped and every PyTorch tensor was filled from the file."""
    used = set(g.encoder_convs)
    for b in g.res_blocks:
        used |= set(b["norms"]) | set(b["convs"])
    for b in g.rnn_blocks + g.transformers:
        used |= set(b.values())
    for b in g.branches:
        used |= {b["head"]} | set(b["convs"]) | {x for x in (b["rnn"], b["attention"]) if x}
    unused = sorted(n for n, w in kf.weights.items() if w and n not in used)
    if unused:
        raise KerasConversionError(f"{kf.path}: Keras layers with weights not mapped: {unused}")
    unfilled = [
        n for n, t in model.state_dict(keep_vars=True).items()
        if not n.endswith("num_batches_tracked") and id(t) not in assigned
    ]
    if unfilled:
        raise KerasConversionError(f"{kf.path}: PyTorch tensors not filled from the file: {unfilled[:8]}")


# ----------------------------------------------------------------------------------------------
# LEQNet
# ----------------------------------------------------------------------------------------------


def _conv_call_pattern(calls: list[str]) -> tuple[list[str], tuple[int, ...]]:
    """Unique layers in first-call order, and the index of each call into them ([0,1,2,2,3])."""
    layers = unique(calls)
    return layers, tuple(layers.index(c) for c in calls)


def leqnet_from_keras(h5_path: str | Path, config_from: str | Path | None = None):
    """Build a :class:`seisbench_feq.LEQNet` from the original Keras LEQNet h5 file.

    ``final_model.h5`` holds graph and weights. For the weights-only ``model_weights.h5`` pass
    ``config_from=<final_model.h5>``. The architecture arguments (bottleneck kernels, number of
    BiLSTM blocks) are read from the graph. Returned in ``eval()`` mode (deterministic). The
    LEQNet file has no licence: keep the result local (see the module docstring).
    """
    from ..models import LEQNet

    kf = read_keras_h5(h5_path, config_from)
    kind = model_type_of(kf)
    if kind != "leqnet":
        raise KerasConversionError(f"{h5_path}: this is an {kind} file, not a LEQNet")
    _check_output_names(kf)
    _check_input(kf)
    g = parse_keras_graph(kf)
    path = kf.path

    acts = _recurrent_activations(kf)
    if acts != {"sigmoid"}:
        raise KerasConversionError(
            f"{path}: recurrent activations {sorted(acts)}; the PyTorch LEQNet uses sigmoid gates"
        )
    rnn_kinds = {kf.config(b["rnn"])["layer"]["class_name"] for b in g.rnn_blocks}
    rnn_kinds |= {kf.layer_class(b["rnn"]) for b in g.branches if b["rnn"]}
    if rnn_kinds != {"LSTM"}:
        # Keras GRUs (reset_after=False) apply the reset gate before the recurrent product, PyTorch
        # GRUs after it: such weights have no exact PyTorch equivalent.
        raise KerasConversionError(
            f"{path}: recurrent layers {sorted(rnn_kinds)}; only LSTM converts exactly"
        )

    enc_layers, enc_pattern = _conv_call_pattern(g.encoder_convs)
    model = LEQNet(
        in_channels=3,
        in_samples=6000,
        phases="PS",
        sampling_rate=100,
        norm="std",
        res_kernels=[int(kf.config(b["convs"][1])["kernel_size"][0]) for b in g.res_blocks],
        rnn="lstm",
        rnn_blocks=len(g.rnn_blocks),
        pick_rnn="lstm",
        drop_rate=_spatial_dropout_rate(kf, 0.1),
    )
    if enc_pattern != tuple(model.encoder.conv_order) or tuple(g.encoder_pools) != tuple(model.encoder.pools):
        raise KerasConversionError(
            f"{path}: encoder calls {enc_pattern} with pools {g.encoder_pools}; the PyTorch LEQNet "
            f"applies {tuple(model.encoder.conv_order)} with pools {tuple(model.encoder.pools)}"
        )
    if len(g.transformers) != 2:
        raise KerasConversionError(f"{path}: {len(g.transformers)} transformer blocks, expected 2")

    with _tracking() as assigned:
        for i, (conv, layer) in enumerate(_zip_exact(model.encoder.convs, enc_layers, "LEQNet encoder")):
            _set_separable(conv, kf, layer, permute_input=(i == 0))
        for block, names in _zip_exact(model.res_stack.blocks, g.res_blocks, "LEQNet bottleneck blocks"):
            if len(names["norms"]) != 3 or len(names["convs"]) != 3:
                raise KerasConversionError(f"{path}: unexpected bottleneck block {names}")
            for k in range(3):
                _set_bn(getattr(block, f"norm{k + 1}"), kf, names["norms"][k])
                _set_conv(getattr(block, f"conv{k + 1}"), kf, names["convs"][k])
        for block, names in _zip_exact(model.rnn_stack.blocks, g.rnn_blocks, "LEQNet BiLSTM blocks"):
            _set_lstm(block.rnn, kf, names["rnn"])
            _set_conv(block.conv, kf, names["conv"])
            _set_bn(block.norm, kf, names["norm"])
        _set_transformer(model.transformer_d0, kf, g.transformers[0])
        _set_transformer(model.transformer_d, kf, g.transformers[1])
        for j, (decoder, br) in enumerate(_zip_exact(model.decoders, g.branches, "LEQNet decoders")):
            layers, pattern = _conv_call_pattern(br["convs"])
            if pattern != tuple(decoder.conv_order):
                raise KerasConversionError(
                    f"{path}: decoder of {br['output']} calls {pattern}, "
                    f"PyTorch applies {tuple(decoder.conv_order)}"
                )
            for conv, layer in _zip_exact(decoder.convs, layers, f"LEQNet {br['output']} decoder"):
                _set_separable(conv, kf, layer)
            _set_conv(decoder.head, kf, br["head"])
            if j > 0:
                _set_lstm(model.pick_rnns[j - 1], kf, br["rnn"])
                _set_attention(model.pick_attentions[j - 1], kf, br["attention"])
            elif br["rnn"] or br["attention"]:
                raise KerasConversionError(f"{path}: the detection branch has its own RNN/attention")
    _check_everything_used(kf, model, g, assigned)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------
# MC dropout
