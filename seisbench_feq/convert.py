"""Convert the original Keras EQTransformer and LEQNet h5 files into SeisBench/PyTorch models.

The h5 files are read with h5py only (no TensorFlow). The mapping from Keras layers to PyTorch
modules is derived from the layer graph stored in the file (``model_config``), not from layer
numbering: the graph is split into the trunk shared by all outputs and one branch per output,
and each part is read in execution order (see :func:`parse_keras_graph`).

Conventions of the converted models:

* component order ZNE (Keras models read E, N, Z: the first convolution's input channels are
  permuted);
* deterministic in ``eval()``: the spatial dropouts that the originals run with
  ``training=True`` are off; :func:`mc_dropout_predict` samples them explicitly;
* the original EqT normalisation, per channel demean and divide by the std, via
  :class:`OriginalEQTransformer`.

The LEQNet h5 has no licence: converted LEQNet weights are for local verification and
evaluation only and must not be redistributed (the CLI records this in the .json).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import seisbench.util as sbu
import torch
import torch.nn as nn
from seisbench.models import EQTransformer
from seisbench.models.eqtransformer import SpatialDropout1d

logger = logging.getLogger(__name__)

KERAS_INPUT_ORDER = "ENZ"  # channel order of the original Keras models' input
TORCH_INPUT_ORDER = "ZNE"  # channel order of the converted models (SeisBench's default)
# torch input channel j reads Keras input channel _INPUT_PERM[j]
_INPUT_PERM = [KERAS_INPUT_ORDER.index(c) for c in TORCH_INPUT_ORDER]

LICENCES = {
    "eqtransformer": "MIT (EQTransformer, Mousavi et al. 2020, smousavi05/EQTransformer)",
    "leqnet": (
        "none stated by the LEQNet authors: use for verification and local evaluation only; "
        "do not redistribute the source h5 or weights converted from it"
    ),
}

__all__ = [
    "KerasConversionError",
    "OriginalEQTransformer",
    "convert_file",
    "detect_model_type",
    "eqt_picks",
    "eqtransformer_from_keras",
    "leqnet_from_keras",
    "mc_dropout_predict",
    "ncedc_scores",
    "parse_keras_graph",
    "pick_scores",
    "read_keras_h5",
    "add_subcommands",
]


class KerasConversionError(ValueError):
    """The h5 file is not the Keras model that the converter expects."""


# ----------------------------------------------------------------------------------------------
# Reading the h5 file
# ----------------------------------------------------------------------------------------------


@dataclass
class KerasFile:
    """Layer configs, call graph and weights of one Keras h5 file."""

    path: Path
    layers: dict[str, dict]  # name -> {"class_name", "config", "inbound"}
    outputs: list[str]
    weights: dict[str, dict[str, np.ndarray]]  # layer -> {"kernel": ..., "forward/kernel": ...}
    keras_version: str = ""

    def layer_class(self, name: str) -> str:
        return self.layers[name]["class_name"]

    def config(self, name: str) -> dict:
        return self.layers[name]["config"]

    def w(self, layer: str, key: str) -> np.ndarray:
        try:
            return self.weights[layer][key]
        except KeyError:
            have = sorted(self.weights.get(layer, {}))
            raise KerasConversionError(
                f"{self.path}: layer {layer!r} has no weight {key!r} (it has {have})"
            ) from None


def _str(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _short_weight_name(layer: str, full: str) -> str:
    """'bidirectional_1_2/forward_lstm_1/kernel:0' -> 'forward/kernel'; '.../attentionP_Add_Wa:0' -> 'Wa'."""
    parts = full.split(":")[0].split("/")
    leaf = parts[-1]
    for prefix in (f"{layer}_Add_", f"{layer}_"):
        if leaf.startswith(prefix):
            leaf = leaf[len(prefix) :]
            break
    if len(parts) > 2:
        return f"{parts[-2].split('_')[0]}/{leaf}"
    return leaf


def read_keras_h5(h5_path: str | Path, config_from: str | Path | None = None) -> KerasFile:
    """Read layer graph and weights. ``config_from`` supplies the graph for a weights-only file."""
    import h5py

    path = Path(h5_path)
    if not path.is_file():
        raise FileNotFoundError(f"Keras h5 file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise KerasConversionError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        raw_cfg = f.attrs.get("model_config")
        keras_version = _str(f.attrs.get("keras_version", ""))
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in group.attrs:
            raise KerasConversionError(
                f"{path}: not a Keras model file (no 'layer_names' attribute in the weights group)"
            )
        weights = {}
        for name in map(_str, group.attrs["layer_names"]):
            g = group[name]
            names = [_str(n) for n in g.attrs.get("weight_names", [])]
            weights[name] = {
                _short_weight_name(name, n): np.asarray(g[n], dtype=np.float32) for n in names
            }
    if raw_cfg is None:
        if config_from is None:
            raise KerasConversionError(
                f"{path}: weights-only h5 (no 'model_config'); pass the full model file of the same "
                "architecture as config_from (CLI: --config-from) so that the layer graph is known"
            )
        graph_file = read_keras_h5(config_from)
        layers, outputs = graph_file.layers, graph_file.outputs
        missing = sorted(set(k for k, v in graph_file.weights.items() if v) - set(weights))
        if missing:
            raise KerasConversionError(
                f"{path}: weights for layers {missing[:5]} of {config_from} are missing"
            )
    else:
        cfg = json.loads(_str(raw_cfg))
        try:
            layers = {
                spec["name"]: {
                    "class_name": spec["class_name"],
                    "config": spec["config"],
                    "inbound": [[(n[0], n[1]) for n in node] for node in spec["inbound_nodes"]],
                }
                for spec in cfg["config"]["layers"]
            }
            outputs = [o[0] for o in cfg["config"]["output_layers"]]
        except (KeyError, TypeError) as e:
            raise KerasConversionError(f"{path}: model_config is not a Keras functional model ({e})") from e
    return KerasFile(path, layers, outputs, weights, keras_version)


# ----------------------------------------------------------------------------------------------
# Graph analysis: trunk and branches, in execution order
# ----------------------------------------------------------------------------------------------


@dataclass
class KerasGraph:
    """Layer calls of an EQTransformer-family model, grouped by role (names of Keras layers)."""

    encoder_convs: list[str]  # conv calls of the encoder, in call order (a name repeats when reused)
    encoder_pools: list[int]  # pool sizes
    res_blocks: list[dict]  # {"norms": [...], "convs": [...]} per residual block
    rnn_blocks: list[dict]  # {"rnn": name, "conv": name, "norm": name}
    transformers: list[dict]  # {"attention", "norm1", "ff", "norm2"}
    branches: list[dict] = field(default_factory=list)
    # per output: {"output", "rnn" (or None), "attention" (or None), "convs": [call order], "head"}


def _call_order(kf: KerasFile) -> list[tuple[str, int]]:
    """Topological order of (layer, node) calls; ties keep the config's layer order."""
    done = {(n, 0) for n, l in kf.layers.items() if l["class_name"] == "InputLayer"}
    pending = [
        (name, i)
        for name, layer in kf.layers.items()
        if layer["class_name"] != "InputLayer"
        for i in range(len(layer["inbound"]))
    ]
    order = []
    while pending:
        for k, (name, node) in enumerate(pending):
            if set(kf.layers[name]["inbound"][node]) <= done:
                order.append((name, node))
                done.add((name, node))
                del pending[k]
                break
        else:
            raise KerasConversionError(f"{kf.path}: the Keras layer graph cannot be ordered")
    return order


def _ancestors(kf: KerasFile, call: tuple[str, int]) -> set:
    seen, stack = set(), [call]
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen.add(c)
        if kf.layers[c[0]]["class_name"] != "InputLayer":
            stack.extend(kf.layers[c[0]]["inbound"][c[1]])
    return seen


_CONV = ("Conv1D", "SeparableConv1D")


def parse_keras_graph(kf: KerasFile) -> KerasGraph:
    """Split the graph into trunk and per-output branches and group the layer calls by role."""
    order = _call_order(kf)
    out_calls = [(o, 0) for o in kf.outputs]
    anc = [_ancestors(kf, c) for c in out_calls]
    trunk = set.intersection(*anc)
    trunk_calls = [c for c in order if c in trunk]
    cls = kf.layer_class

    # Trunk segments: encoder (until the first BatchNormalization), residual stack (until the
    # first recurrent layer), recurrent blocks (until the first attention), transformers.
    enc_convs, pools, res, rnn_blocks, transformers = [], [], [], [], []
    stage, cur = "encoder", {"norms": [], "convs": []}
    for name, _node in trunk_calls:
        kind = cls(name)
        if stage == "encoder" and kind == "BatchNormalization":
            stage = "res"
        if stage in ("encoder", "res") and kind == "Bidirectional":
            stage = "rnn"
        if kind == "SeqSelfAttention":
            stage = "transformer"
        if stage == "encoder":
            if kind in _CONV:
                enc_convs.append(name)
            elif kind == "MaxPooling1D":
                pools.append(int(kf.config(name)["pool_size"][0]))
        elif stage == "res":
            if kind == "BatchNormalization":
                cur["norms"].append(name)
            elif kind in _CONV:
                cur["convs"].append(name)
            elif kind == "Add":
                res.append(cur)
                cur = {"norms": [], "convs": []}
        elif stage == "rnn":
            if kind == "Bidirectional":
                rnn_blocks.append({"rnn": name})
            elif kind in _CONV:
                rnn_blocks[-1]["conv"] = name
            elif kind == "BatchNormalization":
                rnn_blocks[-1]["norm"] = name
        elif stage == "transformer":
            if kind == "SeqSelfAttention":
                transformers.append({"attention": name})
            elif kind == "LayerNormalization":
                transformers[-1]["norm2" if "norm1" in transformers[-1] else "norm1"] = name
            elif kind == "FeedForward":
                transformers[-1]["ff"] = name
    for block, keys in [(b, ("rnn", "conv", "norm")) for b in rnn_blocks] + [
        (t, ("attention", "norm1", "ff", "norm2")) for t in transformers
    ]:
        if set(block) != set(keys):
            raise KerasConversionError(f"{kf.path}: unexpected block {block} (expected {keys})")
    graph = KerasGraph(enc_convs, pools, res, rnn_blocks, transformers)

    for out, a in zip(kf.outputs, anc):
        branch = {"output": out, "rnn": None, "attention": None, "convs": [], "head": out}
        for name, _node in (c for c in order if c in a and c not in trunk):
            kind = cls(name)
            if kind in ("LSTM", "GRU"):
                branch["rnn"] = name
            elif kind == "SeqSelfAttention":
                branch["attention"] = name
            elif kind in _CONV and name != out:
                branch["convs"].append(name)
        graph.branches.append(branch)
    return graph


def _unique(seq: list[str]) -> list[str]:
    return list(dict.fromkeys(seq))


def _model_type(kf: KerasFile) -> str:
    return _model_type_from(kf.path, set(kf.layers), {l["class_name"] for l in kf.layers.values()})


def _model_type_from(path, names: set, classes: set) -> str:
    needed = {"detector", "picker_P", "picker_S"}
    if not needed <= names:
        raise KerasConversionError(
            f"{path}: not an EQTransformer-family model (output layers {sorted(needed)} not found)"
        )
    return "leqnet" if "SeparableConv1D" in classes else "eqtransformer"


def detect_model_type(h5_path: str | Path, config_from: str | Path | None = None) -> str:
    """'eqtransformer' or 'leqnet', from the layer classes (or layer names of a weights-only file)."""
    try:
        return _model_type(read_keras_h5(h5_path, config_from))
    except KerasConversionError as e:
        if "weights-only" not in str(e):
            raise
    import h5py

    with h5py.File(h5_path, "r") as f:
        names = {_str(n) for n in f.attrs["layer_names"]}
    separable = any(n.startswith("separable_conv1d") for n in names)
    return _model_type_from(h5_path, names, {"SeparableConv1D"} if separable else set())


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
        kernel = kernel[:, _INPUT_PERM, :]
    _set(conv.weight, kernel.transpose(2, 1, 0), f"{layer}/kernel")
    _set(conv.bias, kf.w(layer, "bias"), f"{layer}/bias")


def _set_separable(module, kf: KerasFile, layer: str, permute_input: bool = False) -> None:
    dw = kf.w(layer, "depthwise_kernel")  # (k, cin, 1)
    pw = kf.w(layer, "pointwise_kernel")  # (1, cin, cout)
    if permute_input:
        dw, pw = dw[:, _INPUT_PERM, :], pw[:, _INPUT_PERM, :]
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
    kind = _model_type(kf)
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
    unique = _unique(calls)
    return unique, tuple(unique.index(c) for c in calls)


def leqnet_from_keras(h5_path: str | Path, config_from: str | Path | None = None):
    """Build a :class:`seisbench_feq.LEQNet` from the original Keras LEQNet h5 file.

    ``final_model.h5`` holds graph and weights. For the weights-only ``model_weights.h5`` pass
    ``config_from=<final_model.h5>``. The architecture arguments (bottleneck kernels, number of
    BiLSTM blocks) are read from the graph. Returned in ``eval()`` mode (deterministic). The
    LEQNet file has no licence: keep the result local (see the module docstring).
    """
    from seisbench_feq.models import LEQNet

    kf = read_keras_h5(h5_path, config_from)
    kind = _model_type(kf)
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
# ----------------------------------------------------------------------------------------------


def _spatial_dropout_modules(model):
    return [m for m in model.modules() if isinstance(m, (SpatialDropout1d, nn.Dropout1d, nn.Dropout2d))]


def mc_dropout_predict(model, x, n_samples: int = 20, seed: int | None = None):
    """Monte-Carlo dropout: ``n_samples`` forward passes with only the spatial dropouts active.

    This is how the original Keras models ran (their SpatialDropout1D layers were called with
    ``training=True``); EQTransformer used the spread of such passes as pick uncertainty.
    ``x`` is a normalised batch ``(B, C, N)`` tensor. Returns ``(mean, std)``, each a tuple of
    ``(B, N)`` tensors in the model's output order (detection, P, S). The model is left in the
    train/eval state it had.
    """
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 for a standard deviation, got {n_samples}")
    dropouts = _spatial_dropout_modules(model)
    if not dropouts:
        raise ValueError(f"{type(model).__name__} has no spatial dropout modules to sample")
    was_training = {m: m.training for m in model.modules()}
    generator_state = torch.random.get_rng_state()
    try:
        if seed is not None:
            torch.manual_seed(seed)
        model.eval()
        for m in dropouts:
            m.train()
        with torch.no_grad():
            runs = [model(x) for _ in range(n_samples)]
    finally:
        for m, flag in was_training.items():
            m.train(flag)
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    stacked = [torch.stack([r[k] for r in runs]) for k in range(len(runs[0]))]
    return tuple(s.mean(0) for s in stacked), tuple(s.std(0) for s in stacked)


# ----------------------------------------------------------------------------------------------
# Does a conversion pick? (NCEDC protocol of model_spec.md, "Reference results of the originals")
# ----------------------------------------------------------------------------------------------


def trigger_peaks(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Peak sample of every run of ``prob >= threshold`` (one pick per triggered segment)."""
    above = np.concatenate([[False], prob >= threshold, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    return np.array([a + int(np.argmax(prob[a:b])) for a, b in zip(edges[::2], edges[1::2])], dtype=int)


def _rising_peaks(x: np.ndarray, height: float) -> np.ndarray:
    """EqT's ``_detect_peaks(x, mph=height, mpd=1)``: rising-edge local maxima >= height, ends excluded."""
    dx = np.diff(x)
    ind = np.flatnonzero((np.hstack((dx, 0)) <= 0) & (np.hstack((0, dx)) > 0))
    ind = ind[(ind > 0) & (ind < len(x) - 1)]
    return ind[x[ind] >= height]


def eqt_picks(
    detection: np.ndarray, p: np.ndarray, s: np.ndarray, thresholds=(0.5, 0.3, 0.3)
) -> tuple[list[int], list[int]]:
    """P and S picks of one window with the original EQTransformer picker (``predictor._picker``).

    Detections are ``trigger_onset`` segments of at least 10 samples; each keeps the first S peak
    inside it and the most probable P peak between 1 s before it and 0.1 s before that S (or its
    end). Returns (P samples, S samples).
    """
    from obspy.signal.trigger import trigger_onset

    p_peaks = [int(i) for i in _rising_peaks(p, thresholds[1]) if i]
    s_peaks = [int(i) for i in _rising_peaks(s, thresholds[2]) if i]
    p_picks, s_picks = [], []
    for bg, ed in trigger_onset(detection, thresholds[0], thresholds[0]):
        if ed - bg < 10:
            continue
        s_in = [i for i in s_peaks if bg < i < ed][:1]
        limit = s_in[0] - 10 if s_in else ed
        p_in = [i for i in p_peaks if bg - 100 < i < limit]
        if p_in:
            p_picks.append(max(p_in, key=lambda i: (np.round(p[i], 3), -i)))
        s_picks.extend(s_in)
    return p_picks, s_picks


def pick_scores(
    picks: list, true_samples: np.ndarray, tolerance: int = 50, sampling_rate: float = 100.0
) -> dict[str, float]:
    """Precision/recall/F1 of one phase over windows that each hold one true arrival.

    ``picks[i]`` are the pick samples of window ``i``. A window is a true positive when its pick
    closest to the arrival lies within ``tolerance`` samples (0.5 s at 100 Hz). ``precision`` counts
    decisions per window (true positives / windows with a pick), as in the reference table of
    model_spec.md; ``precision_all_picks`` counts every pick (true positives / all picks).
    ``recall`` = true positives / windows. Residuals (pick - arrival, s) are over true positives.
    """
    tp, n_picks, n_decided, residuals = 0, 0, 0, []
    for window_picks, true in zip(picks, true_samples):
        window_picks = np.asarray(window_picks, dtype=int)
        n_picks += len(window_picks)
        if len(window_picks):
            n_decided += 1
            best = window_picks[np.argmin(np.abs(window_picks - true))]
            if abs(best - true) <= tolerance:
                tp += 1
                residuals.append((best - true) / sampling_rate)
    precision = tp / n_decided if n_decided else 0.0
    recall = tp / len(true_samples) if len(true_samples) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    r = np.asarray(residuals)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "precision_all_picks": tp / n_picks if n_picks else 0.0,
        "true_positives": tp,
        "windows_with_picks": n_decided,
        "picks": n_picks,
        "windows": len(true_samples),
        "residual_mean_s": float(r.mean()) if len(r) else float("nan"),
        "residual_std_s": float(r.std()) if len(r) else float("nan"),
        "residual_mae_s": float(np.abs(r).mean()) if len(r) else float("nan"),
    }


def ncedc_scores(
    model,
    ncedc_dir: str | Path,
    thresholds: tuple[float, float, float] = (0.5, 0.3, 0.3),
    rule: str = "eqt",
    every: int = 1,
    batch_size: int = 32,
) -> dict:
    """P and S scores of a converted model on the NCEDC windows (every ``every``-th trace).

    Windows, per-channel normalisation and thresholds follow model_spec.md's reference protocol.
    ``rule="eqt"``: the original EqT picker (:func:`eqt_picks`); ``rule="peaks"``: every segment
    above the phase threshold gives one pick at its peak (SeisBench's rule, no detection needed).
    The model must map (batch, 3, 6000) Z, N, E windows to (detection, P, S).
    """
    from seisbench_feq.data import load_ncedc

    if rule not in ("eqt", "peaks"):
        raise ValueError(f"rule={rule!r}: expected 'eqt' or 'peaks'")
    waveforms, meta = load_ncedc(ncedc_dir)
    waveforms, meta = waveforms[::every], meta.iloc[::every]
    from seisbench_feq.models import normalize_windows

    x = normalize_windows(torch.from_numpy(waveforms.astype(np.float32)))
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(np.stack([o.numpy() for o in model(x[i : i + batch_size])], axis=1))
    probs = np.concatenate(outs)  # (windows, 3, samples)
    if rule == "eqt":
        picks = [eqt_picks(d, p, s, thresholds) for d, p, s in probs]
        p_picks, s_picks = [pp for pp, _ in picks], [ss for _, ss in picks]
    else:
        p_picks = [trigger_peaks(p, thresholds[1]) for p in probs[:, 1]]
        s_picks = [trigger_peaks(s, thresholds[2]) for s in probs[:, 2]]
    return {
        "P": pick_scores(p_picks, meta["p_sample"].to_numpy()),
        "S": pick_scores(s_picks, meta["s_sample"].to_numpy()),
        "windows": len(x),
        "rule": rule,
    }


# ----------------------------------------------------------------------------------------------
# CLI: seisbench-feq convert H5 OUT_PREFIX
# ----------------------------------------------------------------------------------------------

CONVERTERS = {"eqtransformer": eqtransformer_from_keras, "leqnet": leqnet_from_keras}
LOAD_WITH = {
    "eqtransformer": "seisbench_feq.convert.OriginalEQTransformer.load(prefix)",
    "leqnet": "seisbench_feq.LEQNet.load(prefix)",
}


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_file(
    h5_path: str | Path,
    out_prefix: str | Path,
    model_type: str | None = None,
    config_from: str | Path | None = None,
):
    """Convert ``h5_path`` and write SeisBench's ``<out_prefix>.pt`` + ``<out_prefix>.json``.

    ``model_type`` ('eqtransformer' or 'leqnet') is detected from the file when None, and checked
    against it otherwise. The json records the source file, its sha256 and its licence.
    Returns ``(model, json_path, pt_path)``.
    """
    h5_path = Path(h5_path)
    detected = detect_model_type(h5_path, config_from)
    if model_type is not None and model_type != detected:
        raise KerasConversionError(f"{h5_path} holds a {detected} model, not a {model_type}")
    t0 = time.perf_counter()
    model = CONVERTERS[detected](h5_path, config_from=config_from)
    seconds = time.perf_counter() - t0
    out_prefix = Path(out_prefix)
    if out_prefix.suffix in (".pt", ".json"):
        out_prefix = out_prefix.with_suffix("")
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    from seisbench_feq import __version__

    sha256 = sha256_of(h5_path)
    docstring = (
        f"{type(model).__name__} converted by seisbench_feq {__version__} from the Keras file "
        f"{h5_path.name} (sha256 {sha256}). Licence of the source: {LICENCES[detected]}. "
        f"Deterministic in eval(); load with {LOAD_WITH[detected]}."
    )
    model.save(out_prefix, weights_docstring=docstring)
    json_path, pt_path = Path(f"{out_prefix}.json"), Path(f"{out_prefix}.pt")
    meta = json.loads(json_path.read_text())
    meta["source"] = {
        "file": h5_path.name,
        "sha256": sha256,
        "keras_version": read_keras_h5(h5_path, config_from).keras_version,
        "licence": LICENCES[detected],
    }
    meta["converted_by"] = f"seisbench_feq {__version__} (seisbench-feq convert)"
    meta["conversion_seconds"] = round(seconds, 3)
    meta["load_with"] = LOAD_WITH[detected]
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    return model, json_path, pt_path


def _cli_convert(args) -> int:
    import sys

    try:
        model, json_path, pt_path = convert_file(args.h5, args.out_prefix, args.model, args.config_from)
    except (KerasConversionError, FileNotFoundError) as e:
        print(f"seisbench-feq convert: error: {e}", file=sys.stderr)
        return 2
    kind = "leqnet" if "LEQNet" in type(model).__name__ else "eqtransformer"
    print(f"wrote {pt_path} and {json_path} ({type(model).__name__}); load with {LOAD_WITH[kind]}")
    if kind == "leqnet":
        print(f"licence: {LICENCES['leqnet']}", file=sys.stderr)
    if args.check_ncedc:
        scores = ncedc_scores(model, args.check_ncedc)
        print(
            f"NCEDC check on {scores['windows']} windows (original EqT picker, thresholds 0.5/0.3/0.3, "
            "true positive within 0.5 s):"
        )
        for phase in ("P", "S"):
            s = scores[phase]
            print(
                f"  {phase}: precision {s['precision']:.3f} recall {s['recall']:.3f} F1 {s['f1']:.3f}"
                f"  residual std {s['residual_std_s']:.3f} s MAE {s['residual_mae_s']:.3f} s"
            )
    return 0


def add_subcommands(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an original Keras EQTransformer/LEQNet h5 into SeisBench's .pt + .json",
        description=(
            "Convert the original Keras EQTransformer (EqT_original_model.h5) or LEQNet "
            "(final_model.h5) into SeisBench's <OUT_PREFIX>.pt + <OUT_PREFIX>.json, with h5py only."
        ),
    )
    parser.add_argument("h5", help="Keras h5 file (full model; weights-only files need --config-from)")
    parser.add_argument(
        "out_prefix", help="output path without suffix: writes OUT_PREFIX.pt and OUT_PREFIX.json"
    )
    parser.add_argument(
        "--model",
        choices=sorted(CONVERTERS),
        default=None,
        help="expected model (default: detect from the file)",
    )
    parser.add_argument(
        "--config-from",
        default=None,
        metavar="FULL_H5",
        help="full model h5 giving the layer graph of a weights-only h5",
    )
    parser.add_argument(
        "--check-ncedc",
        default=None,
        metavar="DIR",
        help="after converting, report P/S precision/recall/F1 on the NCEDC npz traces in DIR",
    )
    parser.set_defaults(func=_cli_convert)
