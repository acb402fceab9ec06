"""Export LEQNet / FEQ1-3 to ONNX (fp32 or int8) and TorchScript for small devices.

``seisbench-feq export MODEL --format onnx|torchscript [--int8] --out PATH``

The exported graph maps a batch of raw windows to probabilities:

* input ``waveforms``: float32 (batch, 3, 6000), components Z, N, E, 100 Hz, any units (counts);
* the model's window normalisation (per-channel demean and divide by the std, or the peak) is
  part of the graph (``--no-normalize`` leaves it to the caller, as ``forward`` does);
* outputs ``Detection``, ``P``, ``S``: float32 (batch, 6000) probabilities (``--logits``: logits).

Blinding, overlap stacking and pick extraction stay outside: they belong to the application
(SeisBench's ``annotate``/``classify`` do them for the PyTorch model).

Graphs (``--graph``):

``compact`` (default)
    The network as trained: the file holds the model's parameters and BatchNorm statistics and
    nothing else, the smallest to ship.
``fused``
    The fused inference graph of :mod:`seisbench_feq.models.fast` (polyphase decoders). Its
    precomputed decoder weights are larger than the parameters; in ONNX Runtime it is faster
    than ``compact`` but slower than PyTorch's fused path (``docs/performance.md``).

Int8 (``--int8``, ONNX only):

``--int8-mode weights`` (default)
    Weight-only quantisation (:func:`quantize_weights_int8`): the weights of the convolutions,
    matrix products and recurrent layers between encoder and decoders (bottleneck blocks,
    LSTM/GRU, transformers, attention) are stored as int8 with one float32 scale per output
    channel and dequantised in the graph; the encoder and decoders (first and last layers,
    :data:`INT8_FLOAT_LAYERS`), biases, normalisation and all arithmetic stay float32.
``--int8-mode dynamic``
    ONNX Runtime's dynamic quantisation: int8 arithmetic in Conv, MatMul and LSTM with
    per-tensor scales (smaller arithmetic, larger accuracy loss).

:func:`initializer_bytes` counts the bytes of the stored weights.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from .models import preprocess_windows
from .models.backends import DEFAULT_OPSET, GRAPHS, ExportError, ExportGraph, onnx_bytes, use_backend
from .models.fast import compact_forward

logger = logging.getLogger(__name__)

__all__ = [
    "ExportGraph",
    "ExportError",
    "export_onnx",
    "export_torchscript",
    "onnx_bytes",
    "compact_forward",
    "quantize_weights_int8",
    "quantize_dynamic_int8",
    "onnx_session",
    "run_onnx",
    "initializer_bytes",
    "max_abs_difference",
    "DEFAULT_OPSET",
    "FORMATS",
    "GRAPHS",
    "INT8_MODES",
]

FORMATS = ("onnx", "torchscript")


INT8_MODES = ("weights", "dynamic")

#: Layers kept in float32 by the weight-only int8 export: the first and the last layers. The
#: encoder sees the normalised waveform itself (quantising it moved FEQ3's probabilities by up to
#: 0.107 on NCEDC, 0.018 without it); the decoders shape the output curves that the thresholds
#: cut. Together about 8,000 of FEQ3's 32,080 parameters: 61 KB of weights instead of 43 KB.
INT8_FLOAT_LAYERS = ("model.encoder.", "model.decoders.")


def export_onnx(
    model,
    path: str | Path,
    graph: str = "compact",
    normalize: bool = True,
    logits: bool = False,
    opset: int = DEFAULT_OPSET,
    int8: bool = False,
    int8_mode: str = "weights",
    int8_float_layers: tuple[str, ...] = INT8_FLOAT_LAYERS,
) -> Path:
    """Write ``model`` as ONNX to ``path``; returns the path.

    ``int8=True`` stores the weights as int8: ``int8_mode="weights"`` (default) keeps float
    arithmetic (:func:`quantize_weights_int8`; the layers named by ``int8_float_layers`` stay
    float32), ``"dynamic"`` is ONNX Runtime's dynamic quantisation with int8 arithmetic
    (:func:`quantize_dynamic_int8`, less accurate).
    """
    import onnx

    if int8_mode not in INT8_MODES:
        raise ValueError(f"int8_mode={int8_mode!r}: expected one of {INT8_MODES}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    proto = onnx.load_from_string(onnx_bytes(model, graph=graph, normalize=normalize, logits=logits, opset=opset))
    if int8 and int8_mode == "dynamic":
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            onnx.save(proto, str(fp32))
            proto = onnx.load(str(quantize_dynamic_int8(fp32, Path(tmp) / "int8.onnx")))
    elif int8:
        proto = quantize_weights_int8(proto, keep=int8_float_layers)
    onnx.save(shrink_graph(proto), str(path))
    return path


#: Inputs that hold weights, per op type: (input index, per-channel axis of that tensor).
_WEIGHT_INPUTS = {
    "Conv": {1: 0},  # (out, in/groups, k): one scale per output channel
    "MatMul": {1: 1},  # (in, out) right operand of x @ W: one scale per output column
    "Gemm": {1: 0},
    "LSTM": {1: 1, 2: 1},  # W, R: (directions, gates * hidden, in): one scale per gate row
    "GRU": {1: 1, 2: 1},
}


def quantize_weights_int8(model_proto, min_elements: int = 64, keep: tuple[str, ...] = ()):
    """Weight-only int8: every weight tensor of Conv/MatMul/Gemm/LSTM/GRU with at least
    ``min_elements`` values is stored as int8 with one float32 scale per output channel and a
    ``DequantizeLinear`` node in front (symmetric, zero point 0). Initializers whose names start
    with one of ``keep`` stay float32. Biases, normalisation
    parameters and the arithmetic stay float32, so the accuracy loss is the rounding of the
    weights alone (at most half a step of 1/127 of each channel's largest weight).
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    uses: dict[str, list] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            uses.setdefault(name, []).append(_WEIGHT_INPUTS.get(node.op_type, {}).get(index))
    new_nodes = []
    kept = []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        axes = set(uses.get(init.name, [None]))
        if (
            array.dtype != np.float32
            or array.size < min_elements
            or len(axes) != 1
            or None in axes
            or init.name.startswith(tuple(keep))
        ):
            kept.append(init)
            continue
        axis = axes.pop()
        reduce = tuple(i for i in range(array.ndim) if i != axis)
        scale = np.abs(array).max(axis=reduce) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        shape = [1] * array.ndim
        shape[axis] = -1
        q = np.clip(np.rint(array / scale.reshape(shape)), -127, 127).astype(np.int8)
        kept.append(numpy_helper.from_array(q, init.name + "_int8"))
        kept.append(numpy_helper.from_array(scale, init.name + "_scale"))
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear", [init.name + "_int8", init.name + "_scale"], [init.name], axis=axis,
                name=init.name + "_dequantize",
            )
        )
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model_proto)
    return model_proto


def quantize_dynamic_int8(src: str | Path, dst: str | Path) -> Path:
    """ONNX Runtime dynamic quantisation (int8 arithmetic in MatMul, Conv and LSTM)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as error:  # pragma: no cover - onnxruntime is an optional dependency
        raise ExportError("--int8-mode dynamic needs onnxruntime (pip install seisbench_feq[export])") from error
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QUInt8,  # ConvInteger on CPU takes uint8 weights
        op_types_to_quantize=["Conv", "MatMul", "Gemm", "LSTM"],
    )
    return Path(dst)


def shrink_graph(model_proto):
    """Drop what a device does not need: source locations, shape annotations (ONNX Runtime infers
    them), long node and intermediate tensor names (inputs, outputs and weights keep theirs)."""
    graph = model_proto.graph
    model_proto.doc_string = graph.doc_string = ""
    del graph.value_info[:]
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {t.name for t in graph.initializer}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for index, node in enumerate(graph.node):
        node.doc_string = ""
        node.name = f"n{index}"
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    return model_proto


def export_torchscript(model, path: str | Path, graph: str = "compact", normalize: bool = True, logits: bool = False) -> Path:
    """Write a traced TorchScript module (``torch.jit.load(path)(waveforms)``) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportGraph(model, graph=graph, normalize=normalize, logits=logits).eval()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(
                    wrapper, torch.randn(2, model.in_channels, model.in_samples), check_trace=False
                )
        traced.save(str(path))
    finally:
        model.train(was_training)
    return path


def onnx_session(path_or_bytes, threads: int | None = None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (default: torch's setting)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    source = str(path_or_bytes) if isinstance(path_or_bytes, (str, Path)) else path_or_bytes
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(session, waveforms: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, 3, samples) windows -> (N, n_outputs, samples) through an ONNX Runtime session."""
    out = []
    for start in range(0, len(waveforms), batch_size):
        batch = np.ascontiguousarray(waveforms[start : start + batch_size], dtype=np.float32)
        out.append(np.stack(session.run(None, {"waveforms": batch}), axis=1))
    return np.concatenate(out)


def initializer_bytes(path: str | Path) -> int:
    """Bytes of the weights (initializers) stored in an ONNX file."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return int(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer))


def max_abs_difference(model, path: str | Path, waveforms: np.ndarray, normalize: bool = True) -> float:
    """Largest |ONNX Runtime - PyTorch (plain path)| over the outputs for these windows."""
    session = onnx_session(path)
    onnx_out = run_onnx(session, waveforms)
    with torch.no_grad(), use_backend(model, "plain"):
        x = torch.as_tensor(waveforms, dtype=torch.float32)
        if normalize:
            x = preprocess_windows(model, x)
        ref = torch.stack(model.eval()(x), dim=1).numpy()
    return float(np.abs(onnx_out - ref).max())
