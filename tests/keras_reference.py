"""An independent NumPy forward pass of a Keras 2.3 model stored in an h5 file.

It executes the layer graph of the ``model_config`` attribute node by node, with the weights
read by h5py, following the Keras/TensorFlow definitions of each layer (and of EQTransformer's
custom layers ``SeqSelfAttention``, ``LayerNormalization`` and ``FeedForward`` from
``EqT_utils.py``). It shares no code with the PyTorch models or with :mod:`seisbench_feq.convert`,
so comparing the two is a real test of a conversion. It is slow-ish and float64; it exists to
verify conversions, not to pick earthquakes.

Semantics implemented (Keras 2.3 with the TensorFlow backend, inference):

* ``Conv1D``/``SeparableConv1D`` with ``padding="same"``: TensorFlow pads ``total = k - 1``
  samples, ``total // 2`` on the left and the rest on the right (so a kernel of 2 pads one
  sample on the right only). Separable = depthwise (depth multiplier 1, no bias) then a 1x1
  pointwise convolution with bias, then the activation.
* ``MaxPooling1D(padding="same")``: output length ``ceil(n / stride)``; TensorFlow pads
  ``max((out - 1) * stride + pool - n, 0)`` samples, ``total // 2`` on the left; padded samples
  never win the maximum.
* ``BatchNormalization``: moving statistics, ``gamma * (x - mean) / sqrt(var + eps) + beta``.
* ``LSTM``: gates ``i, f, c, o`` in the kernel's column blocks, one bias vector, the stored
  ``recurrent_activation`` (``sigmoid`` or Keras' ``hard_sigmoid`` = clip(0.2x + 0.5, 0, 1)).
  ``Bidirectional`` runs a second LSTM on the time-reversed input, reverses its output back and
  concatenates ``[forward, backward]`` (``merge_mode="concat"``).
* ``GRU`` (``reset_after=False``): gates ``z, r, h``.
* ``SeqSelfAttention`` (additive, EqT_utils version): ``e = Wa . tanh(x_t Wt + x_t' Wx + bh) + ba``;
  ``e = exp(e - max_t' e)`` (maximum over the whole row); local attention multiplies by the
  band mask ``t - w//2 <= t' < t - w//2 + w``; ``a = e / (sum_t' e + K.epsilon())`` with
  ``K.epsilon() = 1e-7``; output ``a @ x``.
* ``LayerNormalization`` (EqT_utils): over the feature axis, ``(x - mean) / sqrt(var + eps)``.
* ``FeedForward``: ``relu(x W1 + b1) W2 + b2``.
* ``SpatialDropout1D``/``Dropout``: identity (deterministic inference, dropout rate 0), unless a
  random generator is passed for Monte-Carlo dropout of the spatial dropouts.
* ``UpSampling1D``: repeat each sample; ``Cropping1D``: drop (left, right) samples.

Arrays are ``(batch, time, channels)`` as in Keras, with the Keras channel order of the input
(E, N, Z for the EQTransformer family).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

KERAS_EPSILON = 1e-7  # keras.backend.epsilon()

__all__ = ["KerasModel", "load_keras_model"]


def normalize_per_channel(windows: np.ndarray) -> np.ndarray:
    """The originals' input normalisation: demean each channel, divide by its (population) std.

    All-zero channels stay zero; ``windows`` is (..., channels, samples).
    """
    x = windows - windows.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    return x / np.where(std == 0, 1.0, std)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def _hard_sigmoid(x):
    return np.clip(0.2 * x + 0.5, 0.0, 1.0)


_ACTIVATIONS = {
    "linear": lambda x: x,
    None: lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "sigmoid": _sigmoid,
    "hard_sigmoid": _hard_sigmoid,
    "tanh": np.tanh,
}


def _activation(name):
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise NotImplementedError(f"Keras activation {name!r} is not implemented") from None


def _same_pads(total: int) -> tuple[int, int]:
    total = max(total, 0)
    return total // 2, total - total // 2


def conv1d(x, kernel, bias=None, padding="same"):
    """Keras Conv1D, stride 1, dilation 1. x (B, T, Cin), kernel (k, Cin, Cout)."""
    k = kernel.shape[0]
    if padding == "same":
        left, right = _same_pads(k - 1)
        x = np.pad(x, ((0, 0), (left, right), (0, 0)))
    elif padding != "valid":
        raise NotImplementedError(f"Conv1D padding {padding!r}")
    n_out = x.shape[1] - k + 1
    y = np.zeros((x.shape[0], n_out, kernel.shape[2]))
    for j in range(k):
        y += x[:, j : j + n_out, :] @ kernel[j]
    if bias is not None:
        y += bias
    return y


def depthwise_conv1d(x, kernel, padding="same"):
    """Depthwise part of Keras SeparableConv1D (depth multiplier 1). kernel (k, C, 1)."""
    k = kernel.shape[0]
    if kernel.shape[2] != 1:
        raise NotImplementedError("depth_multiplier != 1")
    if padding == "same":
        left, right = _same_pads(k - 1)
        x = np.pad(x, ((0, 0), (left, right), (0, 0)))
    n_out = x.shape[1] - k + 1
    y = np.zeros((x.shape[0], n_out, x.shape[2]))
    for j in range(k):
        y += x[:, j : j + n_out, :] * kernel[j, :, 0]
    return y


def max_pool1d(x, pool, stride, padding="same"):
    n = x.shape[1]
    if padding == "same":
        n_out = -(-n // stride)
        left, right = _same_pads((n_out - 1) * stride + pool - n)
    else:
        n_out = (n - pool) // stride + 1
        left = right = 0
    x = np.pad(x, ((0, 0), (left, right), (0, 0)), constant_values=-np.inf)
    windows = [x[:, j : j + (n_out - 1) * stride + 1 : stride, :] for j in range(pool)]
    return np.max(np.stack(windows, 0), axis=0)


def lstm(x, kernel, recurrent_kernel, bias, recurrent_activation="sigmoid", activation="tanh"):
    """Keras LSTM, return_sequences=True. Column blocks of the kernels: i, f, c, o."""
    gate = _activation(recurrent_activation)
    act = _activation(activation)
    units = recurrent_kernel.shape[0]
    b, t_len, _ = x.shape
    h = np.zeros((b, units))
    c = np.zeros((b, units))
    xz = x @ kernel + bias
    out = np.empty((b, t_len, units))
    for t in range(t_len):
        z = xz[:, t] + h @ recurrent_kernel
        i = gate(z[:, :units])
        f = gate(z[:, units : 2 * units])
        c_new = act(z[:, 2 * units : 3 * units])
        o = gate(z[:, 3 * units :])
        c = f * c + i * c_new
        h = o * act(c)
        out[:, t] = h
    return out


def gru(x, kernel, recurrent_kernel, bias, recurrent_activation="sigmoid", activation="tanh"):
    """Keras GRU with reset_after=False. Column blocks: z (update), r (reset), h."""
    gate = _activation(recurrent_activation)
    act = _activation(activation)
    units = recurrent_kernel.shape[0]
    b, t_len, _ = x.shape
    h = np.zeros((b, units))
    xz = x @ kernel + bias
    out = np.empty((b, t_len, units))
    rk = recurrent_kernel
    for t in range(t_len):
        z = gate(xz[:, t, :units] + h @ rk[:, :units])
        r = gate(xz[:, t, units : 2 * units] + h @ rk[:, units : 2 * units])
        hh = act(xz[:, t, 2 * units :] + (r * h) @ rk[:, 2 * units :])
        h = z * h + (1 - z) * hh
        out[:, t] = h
    return out


def seq_self_attention(x, Wt, Wx, bh, Wa, ba, attention_width=None):
    """EqT_utils.SeqSelfAttention, additive, history_only=False; returns (v, a)."""
    q = (x @ Wt)[:, :, None, :]  # (B, T, 1, U)
    k = (x @ Wx)[:, None, :, :]  # (B, 1, T, U)
    h = np.tanh(q + k + bh)
    e = (h @ Wa)[..., 0] + ba[0]  # (B, T, T)
    e = np.exp(e - e.max(axis=-1, keepdims=True))
    if attention_width is not None:
        t_len = x.shape[1]
        lower = (np.arange(t_len) - attention_width // 2)[:, None]
        upper = lower + attention_width
        idx = np.arange(t_len)[None, :]
        e = e * ((lower <= idx) & (idx < upper))
    a = e / (e.sum(axis=-1, keepdims=True) + KERAS_EPSILON)
    return a @ x, a


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


@dataclass
class _Layer:
    name: str
    class_name: str
    config: dict
    inbound: list  # per node: list of (layer, node_index, tensor_index, kwargs)
    weights: dict = field(default_factory=dict)


def _weight_key(layer_name: str, weight_name: str) -> str:
    """'bidirectional_1_2/forward_lstm_1/kernel:0' -> 'forward/kernel'; 'x/attentionD_Add_Wt:0' -> 'Wt'."""
    parts = weight_name.split(":")[0].split("/")
    last = parts[-1]
    for prefix in (layer_name + "_Add_", layer_name + "_"):
        if last.startswith(prefix):
            last = last[len(prefix) :]
            break
    if len(parts) >= 3:  # wrapper: bidirectional/forward_lstm_1/kernel
        return parts[-2].split("_")[0] + "/" + last
    return last


class KerasModel:
    """The layer graph and weights of one Keras h5 file, runnable with NumPy."""

    def __init__(self, config: dict, weights: dict[str, dict[str, np.ndarray]]):
        cfg = config["config"]
        self.layers: dict[str, _Layer] = {}
        for spec in cfg["layers"]:
            name = spec["name"]
            self.layers[name] = _Layer(
                name=name,
                class_name=spec["class_name"],
                config=spec["config"],
                inbound=[[tuple(n) + ({},) * (4 - len(n)) for n in node] for node in spec["inbound_nodes"]],
                weights=weights.get(name, {}),
            )
        self.inputs = [tuple(x[:2]) for x in cfg["input_layers"]]
        self.outputs = [tuple(x[:2]) for x in cfg["output_layers"]]
        self.order = self._schedule()

    def _schedule(self) -> list[tuple[str, int]]:
        """Topological order of (layer, node) calls; ties follow the config's layer order."""
        pending = []
        for name, layer in self.layers.items():
            if layer.class_name == "InputLayer":
                continue
            pending.extend((name, i) for i in range(len(layer.inbound)))
        done = {(n, 0) for n, l in self.layers.items() if l.class_name == "InputLayer"}
        order = []
        while pending:
            for call in pending:
                name, node = call
                deps = {(d[0], d[1]) for d in self.layers[name].inbound[node]}
                if deps <= done:
                    order.append(call)
                    done.add(call)
                    pending.remove(call)
                    break
            else:
                raise ValueError(f"cyclic or incomplete Keras graph; cannot schedule {pending[:3]}")
        return order

    def forward(self, x: np.ndarray, mc_dropout_rng: np.random.Generator | None = None) -> dict:
        """Run the model on ``x`` (B, T, C) in Keras channel order.

        Returns every tensor, keyed by ``(layer_name, node_index)``; the model outputs are
        ``[result[o] for o in self.outputs]``. Spatial dropouts are off unless ``mc_dropout_rng``
        is given (then they drop whole channels at their configured rate and rescale by 1/(1-rate)).
        """
        values = {self.inputs[0]: np.asarray(x, dtype=np.float64)}
        for name, node in self.order:
            layer = self.layers[name]
            args = [values[(d[0], d[1])] for d in layer.inbound[node]]
            values[(name, node)] = self._call(layer, args, mc_dropout_rng)
        return values

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        values = self.forward(x)
        return [values[o] for o in self.outputs]

    def _call(self, layer: _Layer, args: list, rng):
        c, w, kind = layer.config, layer.weights, layer.class_name
        x = args[0]
        if kind == "Conv1D":
            if tuple(c.get("strides", [1])) != (1,) or tuple(c.get("dilation_rate", [1])) != (1,):
                raise NotImplementedError(f"{layer.name}: strided/dilated Conv1D")
            y = conv1d(x, w["kernel"], w.get("bias"), c["padding"])
            return _activation(c["activation"])(y)
        if kind == "SeparableConv1D":
            y = depthwise_conv1d(x, w["depthwise_kernel"], c["padding"])
            y = conv1d(y, w["pointwise_kernel"], w.get("bias"), "valid")
            return _activation(c["activation"])(y)
        if kind == "MaxPooling1D":
            return max_pool1d(x, c["pool_size"][0], c["strides"][0], c["padding"])
        if kind == "BatchNormalization":
            scale = w["gamma"] / np.sqrt(w["moving_variance"] + c["epsilon"])
            return (x - w["moving_mean"]) * scale + w["beta"]
        if kind == "Activation":
            return _activation(c["activation"])(x)
        if kind in ("SpatialDropout1D", "Dropout"):
            if rng is None or kind == "Dropout":
                return x
            keep = rng.random((x.shape[0], 1, x.shape[2])) >= c["rate"]
            return x * keep / (1.0 - c["rate"])
        if kind == "Add":
            return sum(args[1:], args[0])
        if kind == "UpSampling1D":
            return np.repeat(x, c["size"], axis=1)
        if kind == "Cropping1D":
            left, right = c["cropping"]
            return x[:, left : x.shape[1] - right, :]
        if kind in ("LSTM", "GRU"):
            return self._rnn(kind, c, w, x, "")
        if kind == "Bidirectional":
            inner = c["layer"]
            if c.get("merge_mode", "concat") != "concat":
                raise NotImplementedError(f"{layer.name}: merge_mode {c.get('merge_mode')}")
            fwd = self._rnn(inner["class_name"], inner["config"], w, x, "forward/")
            bwd = self._rnn(inner["class_name"], inner["config"], w, x[:, ::-1], "backward/")[:, ::-1]
            return np.concatenate([fwd, bwd], axis=-1)
        if kind == "SeqSelfAttention":
            if c.get("attention_type", "additive") != "additive" or c.get("history_only"):
                raise NotImplementedError(f"{layer.name}: only additive, non-causal attention")
            if c.get("attention_activation") not in (None, "linear"):
                raise NotImplementedError(f"{layer.name}: attention_activation")
            v, _ = seq_self_attention(
                x, w["Wt"], w["Wx"], w["bh"], w["Wa"], w["ba"], c.get("attention_width")
            )
            return v
        if kind == "LayerNormalization":
            return layer_norm(x, w["gamma"], w["beta"], c["epsilon"])
        if kind == "FeedForward":
            h = _activation(c.get("activation", "relu"))(x @ w["W1"] + w["b1"])
            return h @ w["W2"] + w["b2"]
        raise NotImplementedError(f"Keras layer class {kind} ({layer.name}) is not implemented")

    @staticmethod
    def _rnn(kind, c, w, x, prefix):
        if not c.get("return_sequences", False) or c.get("go_backwards", False):
            raise NotImplementedError("only return_sequences=True, go_backwards=False RNNs")
        fn = lstm if kind == "LSTM" else gru
        if kind == "GRU" and c.get("reset_after", False):
            raise NotImplementedError("GRU(reset_after=True)")
        return fn(
            x,
            w[prefix + "kernel"],
            w[prefix + "recurrent_kernel"],
            w[prefix + "bias"],
            c.get("recurrent_activation", "hard_sigmoid"),
            c.get("activation", "tanh"),
        )


def load_keras_model(h5_path: str | Path) -> KerasModel:
    """Read a full Keras model file (model_config + model_weights) with h5py."""
    with h5py.File(h5_path, "r") as f:
        if "model_config" not in f.attrs:
            raise ValueError(f"{h5_path}: no 'model_config' attribute (a weights-only file?)")
        raw = f.attrs["model_config"]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        group = f["model_weights"] if "model_weights" in f else f
        weights = {}
        for name in group.attrs["layer_names"]:
            name = name.decode() if isinstance(name, bytes) else name
            g = group[name]
            names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]]
            weights[name] = {_weight_key(name, n): np.asarray(g[n], dtype=np.float64) for n in names}
    return KerasModel(config, weights)
