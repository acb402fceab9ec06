"""Inference backends of LEQNet and FEQ1-3, and the traceable export graph they share with export.

``model.inference_backend`` (per model, see :func:`set_inference_backend` / :func:`use_backend`):

``"fused"`` (default)
    :func:`seisbench_feq.models.fast.fused_forward`, PyTorch restructured for the CPU.
``"plain"``
    The straightforward module path (the reference every test compares against).
``"onnxruntime"``
    The fused graph exported to ONNX in memory (:func:`onnx_bytes`) and run by ONNX Runtime; if
    ``onnxruntime`` is missing or the export fails, a warning is logged once and ``"fused"`` is used.

:class:`ExportGraph` (raw windows -> probabilities) is the module that both the ONNX Runtime backend
and :mod:`seisbench_feq.export` trace.
"""

from __future__ import annotations

import contextlib
import io
import logging

import torch
import torch.nn as nn

from .fast import cached_fused_weights, compact_forward, exporting, fused_forward, weights_key
from .preprocessing import preprocess_windows

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "GRAPHS",
    "DEFAULT_OPSET",
    "ExportError",
    "ExportGraph",
    "onnx_bytes",
    "use_backend",
    "set_inference_backend",
    "dispatch_forward",
]

BACKENDS = ("fused", "plain", "onnxruntime")
DEFAULT_OPSET = 17
GRAPHS = ("compact", "fused")


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
    if backend == "onnxruntime" and not exporting():
        session = _ort_session(model)
        if session is not None:
            return session(x, logits)
    return fused_forward(model, x, logits)


# --- ONNX Runtime backend -----------------------------------------------------------------------


class _OrtRunner:
    def __init__(self, model, threads: int | None = None):
        import onnxruntime as ort

        self.key = weights_key(model, buffers=True)
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


def _ort_session(model):
    runner = getattr(model, "_ort_runner", None)
    if runner is not None and runner.key == weights_key(model, buffers=True):
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


# --- the traced graph -----------------------------------------------------------------------------


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
            cached_fused_weights(model)  # computed now, so the trace stores them as constants

    def forward(self, waveforms: torch.Tensor):
        x = preprocess_windows(self.model, waveforms) if self.normalize else waveforms
        if self.graph == "fused":
            outputs = fused_forward(self.model, x, logits=True)
        else:
            outputs = compact_forward(self.model, x)
        return tuple(y if self.logits else torch.sigmoid(y) for y in outputs)


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
