"""The two pickers among the earlier designs, built from SeisBench's EQTransformer blocks.

* :class:`CBA` (CNN + BiLSTM + attention): EqT's encoder and three of EqT's decoders, without
  EqT's pick-branch LSTMs and local attentions.
* :class:`EQTransformerGRU`: EqT with every recurrent layer a GRU (BiGRU blocks, GRU pick branches).

Both subclass :class:`seisbench.models.EQTransformer` (its encoder, residual CNN, recurrent
stack, transformers and decoders are reused as they are) and take LEQNet/FEQ's annotate hooks
(:class:`~seisbench_feq.baselines.common.BaselineHooks`): same stream cleaning, window high-pass
and per-channel normalisation, labels ``Detection``, ``P``, ``S``, picks through
:mod:`seisbench_feq.models.picking`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from seisbench.models import EQTransformer

from .common import BaselineHooks, check_highpass, check_norm


class _EqTBaseline(BaselineHooks, EQTransformer):
    """EQTransformer with the package's hooks, a window high-pass and per-channel ``std`` norm."""

    def __init__(self, in_channels: int = 3, in_samples: int = 6000, phases: str = "PS", sampling_rate: float = 100,
                 norm: str = "std", lstm_blocks: int = 2, drop_rate: float = 0.1, highpass: float | None = None,
                 **kwargs):  # fmt: skip
        check_norm(norm)
        check_highpass(highpass, sampling_rate)
        if len(phases) != 2:
            raise ValueError(f"phases={phases!r}: the network has exactly two pick outputs")
        for key in ("classes", "original_compatible", "norm_amp_per_comp", "norm_detrend"):
            kwargs.pop(key, None)  # fixed by the design (older jsons may carry them)
        super().__init__(
            in_channels=in_channels, in_samples=in_samples, classes=2, phases=phases, lstm_blocks=lstm_blocks,
            drop_rate=drop_rate, original_compatible=False, sampling_rate=sampling_rate, norm=norm,
            component_order="ZNE", **kwargs,
        )  # fmt: skip
        self.highpass = highpass

    def get_model_args(self) -> dict[str, Any]:
        args = super().get_model_args()
        for key in ("classes", "original_compatible", "norm_amp_per_comp", "norm_detrend", "component_order"):
            args.pop(key, None)
        args["phases"] = "".join(self.phases)
        args["highpass"] = self.highpass
        return args


class CBA(_EqTBaseline):
    """CNN + BiLSTM + attention: EqT's encoder, three decoders, no pick-branch recurrent layer.

    The published description leaves the sizes open; here they are EqT's (the design is
    "EqT-like"), with EqT's pick-branch LSTM and local attention removed:

    ===========================  ==============================================================
    encoder                      7 x [Conv1D(f, k, same, ReLU) + MaxPool(2, same)],
                                 f = 8, 16, 16, 32, 32, 64, 64; k = 11, 9, 7, 7, 5, 5, 3:
                                 (3, 6000) -> (64, 47)
    residual CNN                 7 residual blocks of 64 filters, kernels 3, 3, 3, 3, 2, 3, 2
                                 (BatchNorm, ReLU, SpatialDropout 0.1, Conv, twice, + identity)
    BiLSTM                       2 blocks: BiLSTM(16 per direction) -> dropout -> Conv1D(16, 1) -> BatchNorm
    global attention             2 transformer blocks (additive self-attention, 32 units; residual +
                                 LayerNorm; feed-forward 16 -> 128 -> 16; residual + LayerNorm)
    decoders (detection, P, S)   each 7 x [UpSampling(2) + crop + Conv1D(f, k, same, ReLU)],
                                 f = 64, 64, 32, 32, 16, 16, 8; k = 3, 5, 5, 7, 7, 9, 11;
                                 then Conv1D(1, 11, same) + sigmoid: (16, 47) -> (6000,)
    ===========================  ==============================================================

    365,493 PyTorch parameters (367,093 in the Keras convention of
    :func:`seisbench_feq.keras_param_count`); SeisBench's EqT with the same two BiLSTM blocks has
    372,023: the decoders, not the pick LSTMs, hold most of EqT's weights. Input: 6000 samples at 100 Hz, Z, N, E. Output: detection, P and S probability per
    sample.
    """

    weights_name = "cba"
    published = (
        "F1 0.88, precision 0.92 (EqT 1.0 / 0.99); 30.6 s vs EqT 38.9 s for 1,200 test traces"
    )
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._citation = "CBA (CNN + BiLSTM + attention): an EqT-like picker without pick-branch LSTMs"
        # Without the pick-branch LSTM and local attention the P and S decoders read the shared
        # encoder output directly, like the detection decoder.
        del self.pick_lstms, self.pick_attentions

    def forward(self, x: torch.Tensor, logits: bool = False) -> tuple[torch.Tensor, ...]:
        """(batch, 3, in_samples) normalised windows -> (detection, P, S), each (batch, in_samples)."""
        if x.ndim != 3 or x.shape[1:] != (self.in_channels, self.in_samples):
            raise ValueError(f"{self.name} expects input of shape (batch, {self.in_channels}, {self.in_samples}),"
                             f" got {tuple(x.shape)}")  # fmt: skip
        x = self.encoder(x)
        x = self.res_cnn_stack(x)
        x = self.bi_lstm_stack(x)
        x, _ = self.transformer_d0(x)
        x, _ = self.transformer_d(x)
        decoders = [(self.decoder_d, self.conv_d), *zip(self.pick_decoders, self.pick_convs)]
        outputs = [conv(decoder(x)).squeeze(1) for decoder, conv in decoders]
        return tuple(outputs) if logits else tuple(torch.sigmoid(y) for y in outputs)


class EQTransformerGRU(_EqTBaseline):
    """EQTransformer with its BiLSTM blocks and pick-branch LSTMs replaced by (Bi)GRUs.

    SeisBench's EQTransformer (2 recurrent blocks, as the original Keras model) with each
    block's ``nn.LSTM(bidirectional=True)`` swapped for ``nn.GRU(bidirectional=True)`` of the same
    size (16 per direction) and each pick branch's ``nn.LSTM(16, 16)`` for ``nn.GRU(16, 16)``;
    everything else is EqT's. 367,223 PyTorch parameters (368,791 in the Keras convention);
    372,023 with LSTMs.
    """

    weights_name = "eqt-gru"
    published = (
        "330,199 parameters (331,255 LSTM); detection F1 0.94, P 0.50, S 0.40 after 2 epochs on 200k traces"
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for block in self.bi_lstm_stack.members:
            lstm = block.lstm
            block.lstm = nn.GRU(lstm.input_size, lstm.hidden_size, bidirectional=True)
        self.pick_lstms = nn.ModuleList(nn.GRU(16, 16) for _ in self.pick_lstms)

    def forward(self, x: torch.Tensor, logits: bool = False) -> tuple[torch.Tensor, ...]:
        if x.ndim != 3 or x.shape[1:] != (self.in_channels, self.in_samples):
            raise ValueError(f"{self.name} expects input of shape (batch, {self.in_channels}, {self.in_samples}),"
                             f" got {tuple(x.shape)}")  # fmt: skip
        return super().forward(x, logits=logits)
