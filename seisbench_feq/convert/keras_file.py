"""Reading the original Keras h5 files with h5py only: layers, weights and the layer graph."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KERAS_INPUT_ORDER = "ENZ"  # channel order of the original Keras models' input
TORCH_INPUT_ORDER = "ZNE"  # channel order of the converted models (SeisBench's default)
# torch input channel j reads Keras input channel INPUT_PERMUTATION[j]
INPUT_PERMUTATION = [KERAS_INPUT_ORDER.index(c) for c in TORCH_INPUT_ORDER]

LICENCES = {
    "eqtransformer": "MIT (EQTransformer, Mousavi et al. 2020, smousavi05/EQTransformer)",
    "leqnet": (
        "none stated by the LEQNet authors: use for verification and local evaluation only; "
        "do not redistribute the source h5 or weights converted from it"
    ),
}

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


def unique(seq: list[str]) -> list[str]:
    return list(dict.fromkeys(seq))


def model_type_of(kf: KerasFile) -> str:
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
        return model_type_of(read_keras_h5(h5_path, config_from))
    except KerasConversionError as e:
        if "weights-only" not in str(e):
            raise
    import h5py

    with h5py.File(h5_path, "r") as f:
        names = {_str(n) for n in f.attrs["layer_names"]}
    separable = any(n.startswith("separable_conv1d") for n in names)
    return _model_type_from(h5_path, names, {"SeparableConv1D"} if separable else set())
