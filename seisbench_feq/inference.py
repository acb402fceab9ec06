"""Old home of the fast inference code (before 0.2); kept as an alias for one release.

The code lives in :mod:`seisbench_feq.models`: ``fast`` (fused forward), ``backends`` (backend
choice, ONNX Runtime), ``annotate`` (chunked annotate) and ``picking`` (triggers and picks).
"""

from .models.annotate import DEFAULT_CHUNK_SECONDS, annotate_chunked_async
from .models.backends import BACKENDS, dispatch_forward, set_inference_backend, use_backend
from .models.fast import FUSED_BATCH, additive_attention, fused_forward, fused_weights
from .models.picking import detections_from_annotations, picks_from_annotations, trigger_onsets

__all__ = [
    "BACKENDS",
    "fused_forward",
    "fused_weights",
    "set_inference_backend",
    "use_backend",
    "dispatch_forward",
    "additive_attention",
    "annotate_chunked_async",
    "DEFAULT_CHUNK_SECONDS",
    "FUSED_BATCH",
    "picks_from_annotations",
    "detections_from_annotations",
    "trigger_onsets",
]
