"""The earlier designs that led to FEQ, as baselines beside LEQNet/FEQ and EqT.

===================  =======================================  =====================================
spec name            class                                    outputs
===================  =======================================  =====================================
``cba``              :class:`CBA` (CNN + BiLSTM + attention)   detection, P, S per sample
``eqt-gru``          :class:`EQTransformerGRU`                 detection, P, S per sample
``simple-cnn``       :class:`SimpleCNN` (as published)         detection per time step
``simple-cnn-flat``  :class:`SimpleCNNFlat` (with Flatten)     detection per window
``decision-tree``    :class:`DecisionTreeDetector`             detection per window (scikit-learn)
===================  =======================================  =====================================

All are SeisBench ``WaveformModel`` s with LEQNet/FEQ's annotate hooks (stream cleaning, window
high-pass and normalisation, ``max`` stacking, :mod:`seisbench_feq.models.picking`); the
detectors have the label ``Detection`` only and ``classify`` gives detections and no picks.
``published`` on each class is the authors' figure, measured on their own STEAD subsets.
"""

from .common import BaselineHooks, MissingWeightsError
from .detectors import SimpleCNN, SimpleCNNFlat
from .networks import CBA, EQTransformerGRU
from .tree import FEATURE_NAMES, DecisionTreeDetector, window_features

BASELINES = {
    "cba": CBA,
    "eqt-gru": EQTransformerGRU,
    "simple-cnn": SimpleCNN,
    "simple-cnn-flat": SimpleCNNFlat,
    "decision-tree": DecisionTreeDetector,
}
"""Spec name -> class (the names of :func:`seisbench_feq.load_model` and ``seisbench-feq train --model``)."""

TORCH_BASELINES = {name: cls for name, cls in BASELINES.items() if cls is not DecisionTreeDetector}
"""The baselines trained by gradient descent (``seisbench-feq train``'s Lightning pipeline)."""


def is_detector(model) -> bool:
    """True for a model with a detection output only (no P/S picks)."""
    return [str(label).lower() for label in getattr(model, "labels", [])] in (["detection"], ["d"])


__all__ = [
    "BASELINES", "TORCH_BASELINES", "BaselineHooks", "MissingWeightsError", "CBA", "EQTransformerGRU",
    "SimpleCNN", "SimpleCNNFlat", "DecisionTreeDetector", "FEATURE_NAMES", "window_features", "is_detector",
]  # fmt: skip
