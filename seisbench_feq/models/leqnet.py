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

from typing import Any, Sequence

import torch
import torch.nn as nn
from seisbench.models import WaveformModel
from seisbench.models.eqtransformer import SeqSelfAttention, Transformer

from .backends import dispatch_forward
from .hooks import PickerHooks
from .layers import KERAS_EPSILON, RNN_CELLS, BiRNNStack, BottleneckStack, Decoder, Encoder

__all__ = ["LEQNet", "FEQ1", "FEQ2", "FEQ3", "MODELS"]


class LEQNet(PickerHooks, WaveformModel):
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

    #: Inference path in eval() without autograd: "fused" (default), "plain" (the modules as
    #: written) or "onnxruntime"; all compute the same outputs (see seisbench_feq.models.backends).
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

    # annotate/classify hooks: PickerHooks (seisbench_feq.models.hooks)

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
