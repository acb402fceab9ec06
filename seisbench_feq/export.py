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
    The fused inference graph of :mod:`seisbench_feq.inference` (polyphase decoders). Its
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

import io
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .inference import _cached_fused_weights, _transformer, additive_attention, fused_forward, use_backend
from .models import MODELS, preprocess_windows

logger = logging.getLogger(__name__)

__all__ = [
    "ExportGraph",
    "export_onnx",
    "export_torchscript",
    "onnx_bytes",
    "quantize_weights_int8",
    "quantize_dynamic_int8",
    "onnx_session",
    "run_onnx",
    "initializer_bytes",
    "max_abs_difference",
    "DEFAULT_OPSET",
]

DEFAULT_OPSET = 17
FORMATS = ("onnx", "torchscript")
GRAPHS = ("compact", "fused")


class ExportError(RuntimeError):
    """An export or its verification failed."""


class ExportGraph(nn.Module):
    """The traced module: raw (or normalised) windows -> (Detection, P, S) probabilities (or logits)."""

    def __init__(self, model, graph: str = "compact", normalize: bool = True, logits: bool = False):
        super().__init__()
        if graph not in GRAPHS:
            raise ValueError(f"graph={graph!r}: expected one of {GRAPHS}")
        self.model, self.graph, self.normalize, self.logits = model, graph, normalize, logits
        if graph == "fused":
            _cached_fused_weights(model)  # computed now, so the trace stores them as constants

    def forward(self, waveforms: torch.Tensor):
        x = preprocess_windows(self.model, waveforms) if self.normalize else waveforms
        if self.graph == "fused":
            outputs = fused_forward(self.model, x, logits=True)
        else:
            outputs = compact_forward(self.model, x)
        return tuple(y if self.logits else torch.sigmoid(y) for y in outputs)


def compact_forward(model, x):
    """The plain network, written with export-friendly attention (same outputs, logits)."""
    h = model.encoder(x)
    h = model.res_stack(h)
    h = model.rnn_stack(h)
    h = _transformer(model.transformer_d0, h)
    h = _transformer(model.transformer_d, h)
    outputs = [model.decoders[0](h)]
    for rnn, attention, decoder in zip(model.pick_rnns, model.pick_attentions, model.decoders[1:]):
        px = rnn(h.permute(2, 0, 1))[0].permute(1, 2, 0)
        outputs.append(decoder(additive_attention(attention, px)))
    return tuple(outputs)


def _output_names(model) -> list[str]:
    return [str(label) for label in model.labels]


def onnx_bytes(
    model,
    graph: str = "fused",
    normalize: bool = False,
    logits: bool = True,
    opset: int = DEFAULT_OPSET,
    batch: int = 2,
) -> bytes:
    """The model as an in-memory ONNX file (used by the ``onnxruntime`` inference backend)."""
    if opset < 17:
        raise ValueError(f"opset {opset}: the export needs opset >= 17")
    if normalize and getattr(model, "highpass", None):
        raise ExportError(
            f"{model.name} high-passes each window ({model.highpass} Hz) before normalising, and the "
            "ONNX exporter has no FFT: export with normalize=False (CLI: --no-normalize) and feed windows "
            "through seisbench_feq.models.preprocess_windows(model, windows)"
        )
    wrapper = ExportGraph(model, graph=graph, normalize=normalize, logits=logits).eval()
    was_training = model.training
    model.eval()
    names = _output_names(model)
    dummy = torch.randn(batch, model.in_channels, model.in_samples)
    buffer = io.BytesIO()
    try:
        with torch.no_grad():
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about Python scalars
                torch.onnx.export(
                    wrapper,
                    (dummy,),
                    buffer,
                    dynamo=False,
                    opset_version=opset,
                    input_names=["waveforms"],
                    output_names=names,
                    dynamic_axes={"waveforms": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                    do_constant_folding=True,
                )
    finally:
        model.train(was_training)
    return buffer.getvalue()


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


# --- command line -----------------------------------------------------------------------------------


def _load(spec: str, weights: str | None):
    key = spec.lower()
    if key not in MODELS:
        raise SystemExit(f"seisbench-feq export: unknown model {spec!r}; choose from {sorted(MODELS)}")
    cls = MODELS[key]
    if weights is None:
        if "default" in cls.list_pretrained():
            return cls.from_pretrained("default"), "default"
        logger.warning(f"{cls.__name__} has no shipped weights: exporting random weights (plumbing only)")
        return cls(), "random"
    if weights == "random":
        return cls(), "random"
    path = Path(weights)
    if path.suffix in (".json", ".pt") or path.with_suffix(".json").exists() or path.with_suffix(".pt").exists():
        stem = path.with_suffix("") if path.suffix in (".json", ".pt") else path
        return cls.load(str(stem)), str(stem)
    return cls.from_pretrained(weights), weights


def _cli_export(args) -> int:
    model, weights = _load(args.model, args.weights)
    model.eval()
    out = Path(args.out)
    if args.format == "onnx" and model.highpass and not args.no_normalize:
        print(
            f"note: {model.name} high-passes each window ({model.highpass} Hz) before normalising, which "
            "ONNX cannot express; the graph takes pre-processed windows "
            "(seisbench_feq.models.preprocess_windows), as with --no-normalize"
        )
        args.no_normalize = True
    if args.format == "torchscript":
        if args.int8:
            raise SystemExit("seisbench-feq export: --int8 applies to --format onnx only")
        export_torchscript(model, out, graph=args.graph, normalize=not args.no_normalize, logits=args.logits)
        print(f"{model.name} ({weights} weights) -> {out} (TorchScript, {out.stat().st_size / 1024:.1f} KiB)")
        return 0
    export_onnx(
        model,
        out,
        graph=args.graph,
        normalize=not args.no_normalize,
        logits=args.logits,
        opset=args.opset,
        int8=args.int8,
        int8_mode=args.int8_mode,
    )
    kind = f"int8 {args.int8_mode}" if args.int8 else "fp32"
    line = (
        f"{model.name} ({weights} weights) -> {out} (ONNX opset {args.opset}, {kind}, {args.graph} graph, "
        f"{out.stat().st_size / 1024:.1f} KiB file, {initializer_bytes(out) / 1024:.1f} KiB weights)"
    )
    if not args.no_check:
        rng = np.random.default_rng(0)
        windows = rng.standard_normal((4, model.in_channels, model.in_samples)).astype(np.float32) * 1000
        diff = max_abs_difference(model, out, windows, normalize=not args.no_normalize)
        tolerance = 1e-4 if not args.int8 else math.inf
        line += f"; max |ONNX Runtime - PyTorch| = {diff:.2e}"
        if diff > tolerance:
            print(line)
            raise SystemExit(f"seisbench-feq export: ONNX output differs from PyTorch by {diff:.2e} > {tolerance:g}")
    print(line)
    return 0


def add_subcommands(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX (fp32/int8) or TorchScript",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("model", help="leqnet, feq1, feq2 or feq3")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--out", required=True, help="output file (.onnx or .pt)")
    parser.add_argument("--int8", action="store_true", help="store the weights as int8 (ONNX)")
    parser.add_argument(
        "--int8-mode",
        choices=INT8_MODES,
        default="weights",
        help="weights: int8 weights, float arithmetic (default, accuracy of fp32); "
        "dynamic: ONNX Runtime dynamic quantisation, int8 arithmetic",
    )
    parser.add_argument(
        "--weights", help="shipped weights name, a saved model path (without .json/.pt), or 'random' (default: 'default' when shipped)"
    )
    parser.add_argument("--graph", choices=GRAPHS, default="compact", help="compact: smallest file; fused: fastest in ONNX Runtime")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--logits", action="store_true", help="output logits instead of probabilities")
    parser.add_argument("--no-normalize", action="store_true", help="leave the window normalisation to the caller")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    parser.set_defaults(func=_cli_export)
