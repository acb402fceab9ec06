"""The simple CNN window detector as published, and its corrected variant with a Flatten.

Both read the three components of a normalised window flattened to one channel of 18,000 values
(time-major, Z, N, E interleaved sample by sample, as Keras' ``Reshape((18000, 1))`` of a
(6000, 3) window does) and give a detection probability only (label ``Detection``): no picks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import WindowDetector


class SimpleCNN(WindowDetector):
    """The published simple CNN: one value per time step (no Flatten).

    ==========================  ===================  ===========
    layer (Keras names)         output shape         parameters
    ==========================  ===================  ===========
    input, flattened            (18000, 1)           0
    Conv1D(64, 2, ReLU, valid)  (17999, 64)          192
    Dense(16, ReLU)             (17999, 16)          1,040
    MaxPooling1D(2)             (8999, 16)           0
    Dense(128, ReLU)            (8999, 128)          2,176
    Dropout(0.5)                (8999, 128)          0
    Dense(1, sigmoid)           (8999, 1)            129
    ==========================  ===================  ===========

    3,537 parameters. The 8,999 outputs (step j sees flattened values 2j..2j+2, i.e. sample
    about 2j/3) are linearly interpolated onto the window's 6000 samples, so that the detection
    trace stacks over a stream like the other models' and trains on the same per-sample target.
    """

    weights_name = "simple-cnn"
    published = "accuracy 0.68, F1 0.69 (detection)"
    flatten = False

    def __init__(self, in_channels: int = 3, in_samples: int = 6000, sampling_rate: float = 100, norm: str = "std",
                 drop_rate: float = 0.5, highpass: float | None = None, **kwargs):  # fmt: skip
        super().__init__(
            "Simple CNN window detector (Conv1D 64/2, Dense 16, MaxPool, Dense 128, Dropout, Dense 1)",
            in_channels, in_samples, sampling_rate, norm, highpass, **kwargs,
        )  # fmt: skip
        self.drop_rate = drop_rate
        self.highpass = highpass
        flat = in_channels * in_samples
        self.conv = nn.Conv1d(1, 64, 2)
        self.dense16 = nn.Linear(64, 16)
        self.dense128 = nn.Linear(16, 128)
        self.dropout = nn.Dropout(drop_rate)
        self.steps = (flat - 1) // 2  # after MaxPooling1D(2), "valid"
        self.head = nn.Linear(128 * self.steps if self.flatten else 128, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, channels, samples) -> (batch, steps, 128), the layers before the last Dense."""
        x = x.transpose(1, 2).reshape(len(x), 1, -1)  # time-major flatten: z0, n0, e0, z1, ...
        x = F.relu(self.conv(x)).transpose(1, 2)  # (batch, 17999, 64)
        x = F.relu(self.dense16(x))
        x = F.max_pool1d(x.transpose(1, 2), 2).transpose(1, 2)  # (batch, 8999, 16)
        return self.dropout(F.relu(self.dense128(x)))

    def forward(self, x: torch.Tensor, logits: bool = False) -> tuple[torch.Tensor]:
        """(batch, 3, in_samples) normalised windows -> (detection,) of shape (batch, in_samples)."""
        if x.ndim != 3 or x.shape[1:] != (self.in_channels, self.in_samples):
            raise ValueError(f"{self.name} expects input of shape (batch, {self.in_channels}, {self.in_samples}),"
                             f" got {tuple(x.shape)}")  # fmt: skip
        y = self.features(x)
        if self.flatten:
            y = self.head(y.flatten(1)).expand(-1, self.in_samples)  # one value per window
        else:
            y = self.head(y).transpose(1, 2)  # (batch, 1, 8999)
            y = F.interpolate(y, size=self.in_samples, mode="linear", align_corners=True).squeeze(1)
        return (y if logits else torch.sigmoid(y),)

    def get_model_args(self) -> dict[str, Any]:
        args = super().get_model_args()
        for key in ("citation", "output_type", "default_args", "pred_sample", "labels", "component_order"):
            args.pop(key, None)
        args.update(in_channels=self.in_channels, in_samples=self.in_samples, sampling_rate=self.sampling_rate,
                    norm=self.norm, drop_rate=self.drop_rate, highpass=self.highpass)  # fmt: skip
        return args


class SimpleCNNFlat(SimpleCNN):
    """The simple CNN with a ``Flatten`` before the last ``Dense(1, sigmoid)``: one value per window.

    Same layers as :class:`SimpleCNN` up to ``Dropout(0.5)`` (3,408 parameters), then
    Flatten (8999 x 128 = 1,151,872 values) and Dense(1, sigmoid) (1,151,873 parameters):
    1,155,281 parameters in all. The window's value is given to every sample of the window.
    """

    weights_name = "simple-cnn-flat"
    published = ""  # the published design has no Flatten
    flatten = True
