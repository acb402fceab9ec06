"""Building blocks of LEQNet and FEQ1-3: TensorFlow-"same" convolution and pooling, the encoder and
decoders, bottleneck residual blocks and bidirectional recurrent blocks (Keras semantics)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from seisbench.models.eqtransformer import SpatialDropout1d

KERAS_EPSILON = 1e-7


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
