"""LEQNet and FEQ1-3 as SeisBench ``WaveformModel`` s, and what runs them.

========================  ===================================================================
:mod:`.layers`            TF-"same" convolution/pooling, encoder, decoders, bottleneck and recurrent blocks
:mod:`.leqnet`            the WaveformModel classes LEQNet, FEQ1, FEQ2, FEQ3 and their annotate hooks
:mod:`.preprocessing`     the one stream cleaner (:func:`clean_stream`), window filter and normalisation
:mod:`.fast`              the fused forward pass (same outputs, faster on CPUs)
:mod:`.backends`          backend choice (fused / plain / onnxruntime) and the traceable export graph
:mod:`.annotate`          chunked annotate, argument checks, window geometry (SeisBench internals)
:mod:`.picking`           the one trigger/pick function (``pick_mode="peak"|"eqt"``), streams and arrays
:mod:`.costs`             parameter counts and FLOPs
========================  ===================================================================
"""

from .costs import count_flops, flops_per_window, keras_param_count, torch_param_count
from .layers import (
    KERAS_EPSILON,
    RNN_CELLS,
    BiRNNBlock,
    BiRNNStack,
    BottleneckBlock,
    BottleneckStack,
    Decoder,
    Encoder,
    SeparableConv1d,
    crop_to,
    max_pool_same,
    tf_same_padding,
)
from .leqnet import FEQ1, FEQ2, FEQ3, MODELS, LEQNet
from .picking import PICK_MODES, picks_from_windows
from .preprocessing import (
    clean_stream,
    highpass_windows,
    normalize_windows,
    preprocess_windows,
    sanitize_stream,
    warn_incomplete_instruments,
)

__all__ = [
    "LEQNet",
    "FEQ1",
    "FEQ2",
    "FEQ3",
    "MODELS",
    "keras_param_count",
    "torch_param_count",
    "count_flops",
    "flops_per_window",
    "clean_stream",
    "sanitize_stream",
    "normalize_windows",
    "highpass_windows",
    "preprocess_windows",
    "warn_incomplete_instruments",
    "picks_from_windows",
    "PICK_MODES",
    "Encoder",
    "Decoder",
    "SeparableConv1d",
    "BottleneckBlock",
    "BottleneckStack",
    "BiRNNBlock",
    "BiRNNStack",
    "RNN_CELLS",
    "KERAS_EPSILON",
    "crop_to",
    "max_pool_same",
    "tf_same_padding",
]
