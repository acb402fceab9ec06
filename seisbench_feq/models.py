"""LEQNet and FEQ1/FEQ2/FEQ3: light EQTransformer descendants as SeisBench ``WaveformModel`` s.

All four share one network class, :class:`LEQNet`, configured by the bottleneck kernels and the
recurrent cell types (see ``../shared/briefs/model_spec.md``):

========  ==================  =======================  ================  ===========
model     bottleneck kernels  shared recurrent stack   pick branches     Keras count
========  ==================  =======================  ================  ===========
LEQNet    (3, 3, 3, 2)        2 BiLSTM blocks          LSTM              39,776
FEQ1      (3, 3, 3, 2)        2 BiGRU blocks           GRU               36,096
FEQ2      (3, 3)              1 BiGRU block            GRU               30,512
FEQ3      (3, 3)              1 BiLSTM block           GRU               32,080
========  ==================  =======================  ================  ===========

Input: 6000 samples at 100 Hz, rows in **Z, N, E** order (SeisBench's convention; Keras files use
E, N, Z and are permuted on conversion). Output: detection, P and S probabilities per sample.

Pre- and post-processing follow SeisBench's EQTransformer (per-window normalisation, NaN blinding of
the window edges, ``max`` stacking of overlapping windows), with EqT's functions reused directly so
that EqT's 377k-parameter constructor never runs.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import obspy
import seisbench
import seisbench.util as sbu
import torch
import torch.nn as nn
import torch.nn.functional as F
from seisbench.models import EQTransformer, WaveformModel
from seisbench.models.eqtransformer import SeqSelfAttention, SpatialDropout1d, Transformer

from . import inference as _inference
from .inference import DEFAULT_CHUNK_SECONDS, annotate_chunked_async, dispatch_forward

__all__ = [
    "LEQNet",
    "FEQ1",
    "FEQ2",
    "FEQ3",
    "MODELS",
    "keras_param_count",
    "torch_param_count",
]

# Keras' backend epsilon, used by the attention normalisation of the original models.
KERAS_EPSILON = 1e-7


def _log_hook_errors(hook):
    """SeisBench's annotate hangs silently when a batch hook raises; at least say why first."""

    @functools.wraps(hook)
    def wrapper(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except Exception:
            seisbench.logger.exception(f"{type(self).__name__}.{hook.__name__} failed")
            raise

    return wrapper


def tf_same_padding(length: int, kernel: int, stride: int) -> tuple[int, int]:
    """(left, right) padding of TensorFlow's "same" mode: the extra sample goes to the right."""
    out = math.ceil(length / stride)
    total = max((out - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2


def max_pool_same(x: torch.Tensor, pool: int) -> torch.Tensor:
    """MaxPooling1D(pool, strides=pool, padding="same") with TF's window alignment."""
    left, right = tf_same_padding(x.shape[-1], pool, pool)
    if left or right:
        x = F.pad(x, (left, right), value=float("-inf"))
    return F.max_pool1d(x, pool)


def crop_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """Crop the excess e of the time axis: ceil(e/2) on the left, floor(e/2) on the right (as Keras)."""
    excess = x.shape[-1] - length
    left = (excess + 1) // 2
    return x[..., left : left + length]


class SeparableConv1d(nn.Module):
    """Keras SeparableConv1D(cout, k, padding="same", activation="relu"), depth multiplier 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.padding = tf_same_padding(0, kernel_size, 1)
        symmetric = self.padding[0] == self.padding[1]
        self.depthwise = nn.Conv1d(
            in_channels,
            in_channels,
            kernel_size,
            groups=in_channels,
            bias=False,
            padding=self.padding[0] if symmetric else 0,
        )
        self.pointwise = nn.Conv1d(in_channels, out_channels, 1)
        self._manual_pad = not symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._manual_pad:
            x = F.pad(x, self.padding)
        return F.relu(self.pointwise(self.depthwise(x)))


def _pool_lengths(in_samples: int, pools: Sequence[int]) -> list[int]:
    lengths = [in_samples]
    for pool in pools:
        lengths.append(math.ceil(lengths[-1] / pool))
    return lengths


class Encoder(nn.Module):
    """Separable convolutions + TF-"same" max pools; the third conv is applied twice (layer reuse)."""

    filters = (8, 16, 16, 32)
    kernel_sizes = (11, 9, 7, 5)
    pools = (3, 3, 3, 2, 2)
    conv_order = (0, 1, 2, 2, 3)

    def __init__(self, in_channels: int = 3):
        super().__init__()
        channels = (in_channels,) + self.filters
        self.convs = nn.ModuleList(
            SeparableConv1d(cin, cout, k)
            for cin, cout, k in zip(channels[:-1], channels[1:], self.kernel_sizes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, pool in zip(self.conv_order, self.pools):
            x = max_pool_same(self.convs[index](x), pool)
        return x


class Decoder(nn.Module):
    """Nearest upsampling, crops back to the encoder lengths, separable convs (third one reused)."""

    filters = (32, 16, 16, 8)
    kernel_sizes = (3, 5, 5, 7)
    upsampling = (2, 2, 3, 3, 3)
    conv_order = (0, 1, 2, 2, 3)

    def __init__(self, in_samples: int, in_channels: int = 16):
        super().__init__()
        channels = (in_channels,) + self.filters
        self.convs = nn.ModuleList(
            SeparableConv1d(cin, cout, k)
            for cin, cout, k in zip(channels[:-1], channels[1:], self.kernel_sizes)
        )
        self.head = nn.Conv1d(self.filters[-1], 1, 11, padding=5)
        # Lengths to crop to after each upsampling: the encoder lengths, in reverse.
        self.lengths = _pool_lengths(in_samples, Encoder.pools)[-2::-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns logits of shape (batch, samples)."""
        for index, factor, length in zip(self.conv_order, self.upsampling, self.lengths):
            x = crop_to(torch.repeat_interleave(x, factor, dim=-1), length)
            x = self.convs[index](x)
        return self.head(x).squeeze(1)


class BottleneckBlock(nn.Module):
    """Pre-activation bottleneck residual block: 1x1 reduce, k-conv, 1x1 expand, plus identity."""

    def __init__(self, channels: int = 32, bottleneck: int = 8, kernel_size: int = 3, drop_rate=0.1):
        super().__init__()
        self.norm1 = nn.BatchNorm1d(channels, eps=1e-3)
        self.conv1 = nn.Conv1d(channels, bottleneck, 1)
        self.norm2 = nn.BatchNorm1d(bottleneck, eps=1e-3)
        self.dropout = SpatialDropout1d(drop_rate)
        self.padding = tf_same_padding(0, kernel_size, 1)
        self.conv2 = nn.Conv1d(bottleneck, bottleneck, kernel_size)
        self.norm3 = nn.BatchNorm1d(bottleneck, eps=1e-3)
        self.conv3 = nn.Conv1d(bottleneck, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.dropout(F.relu(self.norm2(y)))
        y = self.conv2(F.pad(y, self.padding))
        y = self.conv3(F.relu(self.norm3(y)))
        return x + y


class BottleneckStack(nn.Module):
    def __init__(self, kernel_sizes: Sequence[int], channels: int = 32, drop_rate: float = 0.1):
        super().__init__()
        self.blocks = nn.ModuleList(
            BottleneckBlock(channels, kernel_size=k, drop_rate=drop_rate) for k in kernel_sizes
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


RNN_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class BiRNNBlock(nn.Module):
    """Bidirectional LSTM/GRU (16 per direction) -> dropout -> 1x1 conv to 16 -> BatchNorm."""

    def __init__(self, cell: str, input_size: int, hidden_size: int = 16, drop_rate: float = 0.1):
        super().__init__()
        self.rnn = RNN_CELLS[cell](input_size, hidden_size, bidirectional=True)
        self.dropout = nn.Dropout(drop_rate)
        self.conv = nn.Conv1d(2 * hidden_size, hidden_size, 1)
        self.norm = nn.BatchNorm1d(hidden_size, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rnn(x.permute(2, 0, 1))[0]  # (time, batch, channels)
        y = self.dropout(y).permute(1, 2, 0)
        return self.norm(self.conv(y))


class BiRNNStack(nn.Module):
    def __init__(self, cell: str, blocks: int, input_size: int = 32, drop_rate: float = 0.1):
        super().__init__()
        sizes = [input_size] + [16] * (blocks - 1)
        self.blocks = nn.ModuleList(BiRNNBlock(cell, size, drop_rate=drop_rate) for size in sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class LEQNet(WaveformModel):
    """LEQNet (Lim et al., 2022): EQTransformer with depthwise-separable convolutions, layer reuse
    and bottleneck residual blocks. FEQ1-3 are the same class with other defaults.

    .. document_args:: seisbench_feq LEQNet

    :param in_channels: Input components (3: Z, N, E).
    :param in_samples: Window length in samples (6000 = 60 s at 100 Hz).
    :param phases: Phase labels of the two pick outputs.
    :param sampling_rate: Model sampling rate in Hz; other rates are resampled with a warning.
    :param norm: Window normalisation: ``"std"`` (per-channel demean, divide by the channel's std,
        as the original LEQNet/EqT training) or ``"peak"`` (per-channel demean, divide by abs max).
    :param res_kernels: Middle kernel size of each bottleneck residual block.
    :param rnn: Cell of the shared bidirectional stack, ``"lstm"`` or ``"gru"``.
    :param rnn_blocks: Number of bidirectional blocks.
    :param pick_rnn: Cell of the P and S branches, ``"lstm"`` or ``"gru"``.
    :param drop_rate: Dropout rate (training, and MC-dropout sampling).
    :param highpass: Corner frequency (Hz) of the zero-phase high-pass applied to every window
        before normalisation (:func:`highpass_windows`), or None. The shipped weights were
        trained with 1 Hz: without it, ocean microseism (0.1-0.5 Hz) dominates the per-channel
        std of many broadband records and hides local earthquakes. The original EqT/LEQNet were
        trained on STEAD, which is band-passed 1-45 Hz.
    """

    _annotate_args = WaveformModel._annotate_args.copy()
    _annotate_args["*_threshold"] = ("Trigger threshold for the phase picks", 0.3)
    _annotate_args["detection_threshold"] = ("Trigger threshold for detections", 0.5)
    _annotate_args["blinding"] = (
        "Prediction samples discarded at each window edge (pre, post): edges see no context",
        (500, 500),
    )
    _annotate_args["stacking"] = (
        "Stacking of overlapping windows, 'max' or 'avg' (NaN-blinded edges are ignored)",
        "max",
    )
    # 50 % overlap: every sample is seen away from a blinded edge, and picks near an edge get a
    # second opinion from the neighbouring window (overlap >= sum(blinding) avoids NaN holes).
    _annotate_args["overlap"] = (_annotate_args["overlap"][0], 3000)
    _annotate_args["chunk_seconds"] = (
        "Continuous segments are annotated in pieces of this many seconds, overlapping by whole "
        "windows (bounded memory, same output); 0 annotates each segment at once",
        DEFAULT_CHUNK_SECONDS,
    )

    #: Inference path in eval() without autograd: "fused" (default), "plain" (the modules as
    #: written) or "onnxruntime"; all compute the same outputs (see seisbench_feq.inference).
    inference_backend = "fused"

    _default_architecture = dict(res_kernels=(3, 3, 3, 2), rnn="lstm", rnn_blocks=2, pick_rnn="lstm")

    _citation = (
        "Lim, J., Jung, S., JeGal, C., Jung, G., Yoo, J. H., Gahm, J. K., & Song, G. (2022). "
        "LEQNet: Light Earthquake Deep Neural Network for Earthquake Detection and Phase Picking. "
        "Frontiers in Earth Science, 10, 848237. https://doi.org/10.3389/feart.2022.848237"
    )

    def __init__(
        self,
        in_channels: int = 3,
        in_samples: int = 6000,
        phases: str = "PS",
        sampling_rate: float = 100,
        norm: str = "std",
        res_kernels: Sequence[int] | None = None,
        rnn: str | None = None,
        rnn_blocks: int | None = None,
        pick_rnn: str | None = None,
        drop_rate: float = 0.1,
        highpass: float | None = None,
        **kwargs,
    ):
        defaults = self._default_architecture
        res_kernels = tuple(defaults["res_kernels"] if res_kernels is None else res_kernels)
        rnn = defaults["rnn"] if rnn is None else rnn
        rnn_blocks = defaults["rnn_blocks"] if rnn_blocks is None else rnn_blocks
        pick_rnn = defaults["pick_rnn"] if pick_rnn is None else pick_rnn
        for name, cell in (("rnn", rnn), ("pick_rnn", pick_rnn)):
            if cell not in RNN_CELLS:
                raise ValueError(f"{name}={cell!r}: expected one of {sorted(RNN_CELLS)}")
        if norm not in ("std", "peak"):
            raise ValueError(f"norm={norm!r}: expected 'std' or 'peak'")
        if len(phases) != 2:
            raise ValueError(f"phases={phases!r}: the network has exactly two pick outputs")
        if highpass is not None and not 0 < highpass < sampling_rate / 2:
            raise ValueError(f"highpass={highpass!r}: expected None or a frequency in (0, {sampling_rate / 2}) Hz")

        super().__init__(
            citation=self._citation,
            output_type="array",
            in_samples=in_samples,
            pred_sample=(0, in_samples),
            labels=["Detection"] + list(phases),
            sampling_rate=sampling_rate,
            component_order="ZNE",
            **kwargs,
        )
        self.in_channels = in_channels
        self._phases = phases
        self.norm = norm
        self.res_kernels = res_kernels
        self.rnn = rnn
        self.rnn_blocks = rnn_blocks
        self.pick_rnn = pick_rnn
        self.drop_rate = drop_rate
        self.highpass = highpass

        self.encoder = Encoder(in_channels)
        self.res_stack = BottleneckStack(res_kernels, drop_rate=drop_rate)
        self.rnn_stack = BiRNNStack(rnn, rnn_blocks, drop_rate=drop_rate)
        self.transformer_d0 = Transformer(16, drop_rate, eps=KERAS_EPSILON)
        self.transformer_d = Transformer(16, drop_rate, eps=KERAS_EPSILON)
        self.pick_rnns = nn.ModuleList(RNN_CELLS[pick_rnn](16, 16) for _ in phases)
        self.pick_attentions = nn.ModuleList(
            SeqSelfAttention(16, attention_width=3, eps=KERAS_EPSILON) for _ in phases
        )
        self.dropout = nn.Dropout(drop_rate)
        # decoders[0]: detection (reads the transformer output); [1], [2]: P and S.
        self.decoders = nn.ModuleList(Decoder(in_samples) for _ in range(1 + len(phases)))

    @property
    def phases(self) -> str:
        return self._phases

    def forward(self, x: torch.Tensor, logits: bool = False) -> tuple[torch.Tensor, ...]:
        """(batch, 3, in_samples) normalised windows -> (detection, P, S), each (batch, in_samples)."""
        if x.ndim != 3 or x.shape[1:] != (self.in_channels, self.in_samples):
            raise ValueError(
                f"{self.name} expects input of shape (batch, {self.in_channels}, {self.in_samples}),"
                f" got {tuple(x.shape)}"
            )
        if not self.training and not torch.is_grad_enabled():
            outputs = dispatch_forward(self, x, logits)
            if outputs is not None:
                return outputs
        x = self.encoder(x)
        x = self.res_stack(x)
        x = self.rnn_stack(x)
        x, _ = self.transformer_d0(x)
        x, _ = self.transformer_d(x)

        outputs = [self.decoders[0](x)]
        for rnn, attention, decoder in zip(self.pick_rnns, self.pick_attentions, self.decoders[1:]):
            px = self.dropout(rnn(x.permute(2, 0, 1))[0]).permute(1, 2, 0)
            px, _ = attention(px)
            outputs.append(decoder(px))
        if logits:
            return tuple(outputs)
        return tuple(torch.sigmoid(y) for y in outputs)

    # --- annotate/classify hooks -------------------------------------------------------------

    @_log_hook_errors
    def annotate_batch_pre(self, batch: torch.Tensor, argdict: dict[str, Any]) -> torch.Tensor:
        return preprocess_windows(self, batch)

    annotate_batch_post = _log_hook_errors(EQTransformer.annotate_batch_post)

    async def annotate_async(self, stream: obspy.Stream, copy: bool = True, **kwargs) -> obspy.Stream:
        # SeisBench's annotate, with long segments processed in overlapping pieces (chunk_seconds).
        return await annotate_chunked_async(self, stream, copy=copy, **kwargs)

    classify_aggregate = EQTransformer.classify_aggregate
    # SeisBench's trigger extraction, piece by piece (same picks, bounded memory on long traces).
    picks_from_annotations = staticmethod(_inference.picks_from_annotations)
    detections_from_annotations = staticmethod(_inference.detections_from_annotations)

    def annotate_stream_pre(self, stream: obspy.Stream, argdict: dict[str, Any]) -> obspy.Stream:
        sanitize_stream(stream, self.sampling_rate, self.in_samples, self.name)
        return super().annotate_stream_pre(stream, argdict)

    def annotate_stream_validate(self, stream: obspy.Stream, argdict: dict[str, Any]):
        stream = super().annotate_stream_validate(stream, argdict)
        warn_incomplete_instruments(stream, self.component_order, self.name)
        return stream

    # --- weights ---------------------------------------------------------------------------

    def get_model_args(self) -> dict[str, Any]:
        model_args = super().get_model_args()
        for key in ("citation", "output_type", "default_args", "pred_sample", "labels", "component_order"):
            model_args.pop(key, None)
        model_args.update(
            in_channels=self.in_channels,
            in_samples=self.in_samples,
            phases=self.phases,
            sampling_rate=self.sampling_rate,
            norm=self.norm,
            res_kernels=list(self.res_kernels),
            rnn=self.rnn,
            rnn_blocks=self.rnn_blocks,
            pick_rnn=self.pick_rnn,
            drop_rate=self.drop_rate,
            highpass=self.highpass,
        )
        return model_args

    @classmethod
    def _model_path(cls) -> Path:
        # Weights ship inside the package: from_pretrained works offline and writes nothing.
        return Path(str(importlib.resources.files("seisbench_feq") / "weights" / cls.__name__.lower()))

    @classmethod
    def _remote_path(cls) -> str:
        raise ValueError(
            f"{cls.__name__} weights are shipped with seisbench_feq, there is no remote repository."
            f" Available: {cls.list_pretrained()}. Load other files with {cls.__name__}.load(path)."
        )

    @classmethod
    def list_pretrained(cls, details: bool = False, remote: bool = False):
        if not cls._model_path().is_dir():
            return {} if details else []
        return super().list_pretrained(details=details, remote=False)

    @classmethod
    def list_versions(cls, name: str, remote: bool = False) -> list[str]:
        return super().list_versions(name, remote=False)

    @classmethod
    def from_pretrained(cls, name: str = "default", version_str: str = "latest", **kwargs):
        if name not in cls.list_pretrained():
            raise ValueError(
                f"No shipped {cls.__name__} weights named {name!r}; available: {cls.list_pretrained()}"
            )
        return super().from_pretrained(name, version_str=version_str, **kwargs)


class FEQ1(LEQNet):
    """FEQ1: LEQNet with its BiLSTMs and pick LSTMs replaced by GRUs (36,096 parameters, Keras count)."""

    _default_architecture = dict(res_kernels=(3, 3, 3, 2), rnn="gru", rnn_blocks=2, pick_rnn="gru")


class FEQ2(LEQNet):
    """FEQ2: two bottleneck blocks (3, 3), one BiGRU block, GRU pick branches (30,512 parameters)."""

    _default_architecture = dict(res_kernels=(3, 3), rnn="gru", rnn_blocks=1, pick_rnn="gru")


class FEQ3(LEQNet):
    """FEQ3: two bottleneck blocks (3, 3), one BiLSTM block, GRU pick branches (32,080 parameters)."""

    _default_architecture = dict(res_kernels=(3, 3), rnn="lstm", rnn_blocks=1, pick_rnn="gru")


MODELS: dict[str, type[LEQNet]] = {"leqnet": LEQNet, "feq1": FEQ1, "feq2": FEQ2, "feq3": FEQ3}


# --- pre-processing shared by inference and training ----------------------------------------------


def normalize_windows(batch: torch.Tensor, norm: str = "std", eps: float = 1e-10) -> torch.Tensor:
    """Per-window, per-channel demean and scale of (..., channels, samples) data.

    Channels that are all zero (a missing component) stay zero. Used by ``annotate`` and by
    training so that both see identical inputs.
    """
    batch = batch - batch.mean(dim=-1, keepdim=True)
    if norm == "std":
        scale = batch.std(dim=-1, keepdim=True)
    else:
        scale = batch.abs().amax(dim=-1, keepdim=True)
    if torch.is_grad_enabled() and batch.requires_grad:
        return batch / (scale + eps)
    return batch.div_(scale + eps)  # inference: same values, one pass and one allocation fewer


def highpass_windows(batch: torch.Tensor, freq: float, sampling_rate: float, corners: int = 2) -> torch.Tensor:
    """Zero-phase Butterworth high-pass of each (..., samples) window, in the frequency domain.

    The gain is ``1 / (1 + (freq / f) ** (2 * corners))``, the magnitude response of ObsPy's
    ``filter("highpass", freq=freq, corners=corners, zerophase=True)``. The straight line from the
    first to the last sample is removed first, so the FFT's periodic wrap adds no step at the
    window edges (which the blinding hides anyway). Works window by window, so training,
    ``annotate``, the archive and the real-time picker all filter identically.
    """
    n = int(batch.shape[-1])  # a Python int also while tracing (export): windows have a fixed length
    ramp = torch.linspace(0.0, 1.0, n, dtype=batch.dtype, device=batch.device)
    batch = batch - (batch[..., :1] + (batch[..., -1:] - batch[..., :1]) * ramp)
    gain = torch.from_numpy(_highpass_gain(n, freq, sampling_rate, corners)).to(batch.device, batch.dtype)
    return torch.fft.irfft(torch.fft.rfft(batch, dim=-1) * gain, n=n, dim=-1)


@functools.lru_cache(maxsize=8)
def _highpass_gain(n: int, freq: float, sampling_rate: float, corners: int) -> np.ndarray:
    # NumPy, not torch.fft.rfftfreq: a constant for the ONNX exporter, and computed once.
    ratio = (np.fft.rfftfreq(n, d=1.0 / sampling_rate) / freq) ** (2 * corners)
    return ratio / (1 + ratio)


def preprocess_windows(model: "LEQNet", batch: torch.Tensor) -> torch.Tensor:
    """What the model does to raw windows before ``forward``: optional high-pass, then normalisation."""
    if getattr(model, "highpass", None):
        batch = highpass_windows(batch, model.highpass, model.sampling_rate)
    return normalize_windows(batch, model.norm)


def sanitize_stream(stream: obspy.Stream, sampling_rate: float, in_samples: int, model: str) -> None:
    """Make SeisBench's silent input handling explicit, in place (annotate works on a copy).

    - masked samples and NaN/inf become gaps (SeisBench would otherwise output NaN around them);
    - lower-case channel codes are upper-cased (SeisBench would drop them silently);
    - resampling to the model rate is announced;
    - traces shorter than one window are named (SeisBench only says "fragments shorter").
    """
    logger = seisbench.logger
    fixed = obspy.Stream()
    for trace in stream:
        data = trace.data
        invalid = np.ma.getmaskarray(data)
        if np.issubdtype(data.dtype, np.floating):
            invalid = invalid | ~np.isfinite(np.ma.getdata(data))
        if invalid.any():
            logger.warning(
                f"{model}: {trace.id} has {int(invalid.sum())} masked/NaN samples; "
                "they are treated as gaps and left unannotated"
            )
            trace.data = np.ma.masked_array(np.ma.getdata(data), mask=invalid)
            fixed += obspy.Stream([trace]).split()
        else:
            fixed += trace
        if trace.stats.channel != trace.stats.channel.upper():
            logger.warning(f"{model}: channel code of {trace.id} upper-cased to match Z/N/E components")
    for trace in fixed:
        trace.stats.channel = trace.stats.channel.upper()
        if trace.stats.sampling_rate != sampling_rate:
            logger.warning(
                f"{model}: resampling {trace.id} from {trace.stats.sampling_rate:g} Hz "
                f"to the model's {sampling_rate:g} Hz"
            )
        duration = trace.stats.npts / trace.stats.sampling_rate
        if duration < in_samples / sampling_rate:
            logger.warning(
                f"{model}: {trace.id} starting {trace.stats.starttime} is {duration:.1f} s long, "
                f"shorter than one {in_samples / sampling_rate:g} s window; it is not annotated"
            )
    stream.traces = fixed.traces


def warn_incomplete_instruments(stream: obspy.Stream, component_order: str, model: str) -> None:
    """Name instruments where components are missing: they are zero-filled, not dropped."""
    components: dict[str, set[str]] = {}
    for trace in stream:
        key = f"{trace.stats.network}.{trace.stats.station}.{trace.stats.location}"
        components.setdefault(key, set()).add(trace.stats.channel[-1:])
    for key, present in components.items():
        mapped = {{"1": "N", "2": "E"}.get(c, c) for c in present}
        missing = [c for c in component_order if c not in mapped]
        if missing:
            seisbench.logger.warning(
                f"{model}: {key} has no {'/'.join(missing)} component(s) "
                f"(channels ending in {sorted(present)}); they are zero-filled"
            )


# --- parameter counts -------------------------------------------------------------------------------


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
