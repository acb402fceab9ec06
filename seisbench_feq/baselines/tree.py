"""The decision-tree window detector: scikit-learn's ``DecisionTreeClassifier(max_depth=10)`` on
per-channel summary features of a 6000-sample 3-component window, saved with skops (no pickle).

Features (21 = 7 per component, Z, N, E, computed on the window after the model's own high-pass
and per-channel normalisation, as every other model sees it):

1. log10 of the largest over the median 1 s RMS (an arrival's energy over the background),
2. log10 of the largest absolute value,
3. excess kurtosis (impulsive arrivals are heavy-tailed),
4-7. share of the spectral energy in 1-5, 5-10, 10-20 and 20-45 Hz.

The raw 18,000 samples would make a depth-10 tree split on single samples at fixed positions,
which cannot generalise over where in the window an event lies; these features do not depend on
that position. An empty component (vertical-only stations) gives zeros.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import WindowDetector

FEATURE_NAMES = tuple(
    f"{component}_{name}"
    for component in "ZNE"
    for name in ("log_rms_peak_ratio", "log_max_abs", "kurtosis", "band_1_5", "band_5_10", "band_10_20", "band_20_45")
)
BANDS_HZ = ((1, 5), (5, 10), (10, 20), (20, 45))
MAX_DEPTH = 10
# What a saved tree may hold besides NumPy types (skops refuses everything else unless trusted).
TRUSTED_TYPES = frozenset({"sklearn.tree._classes.DecisionTreeClassifier", "sklearn.tree._tree.Tree"})


def window_features(windows: np.ndarray, sampling_rate: float = 100.0) -> np.ndarray:
    """(N, 3, samples) normalised windows -> (N, 21) features (see the module docstring)."""
    x = np.asarray(windows, dtype=np.float64)
    n, channels, samples = x.shape
    block = int(sampling_rate)
    blocks = x[..., : samples // block * block].reshape(n, channels, -1, block)
    rms = np.sqrt((blocks**2).mean(axis=-1))
    eps = 1e-12
    peak_ratio = np.log10((rms.max(axis=-1) + eps) / (np.median(rms, axis=-1) + eps))
    max_abs = np.log10(np.abs(x).max(axis=-1) + eps)
    centred = x - x.mean(axis=-1, keepdims=True)
    var = (centred**2).mean(axis=-1)
    kurtosis = np.where(var > eps, (centred**4).mean(axis=-1) / np.maximum(var, eps) ** 2 - 3.0, 0.0)
    power = np.abs(np.fft.rfft(centred, axis=-1)) ** 2
    freqs = np.fft.rfftfreq(samples, 1.0 / sampling_rate)
    total = power.sum(axis=-1) + eps
    bands = [power[..., (freqs >= lo) & (freqs < hi)].sum(axis=-1) / total for lo, hi in BANDS_HZ]
    features = np.stack([peak_ratio, max_abs, kurtosis, *bands], axis=-1)  # (N, 3, 7)
    features[var <= eps] = 0.0
    return features.reshape(n, -1).astype(np.float32)


class DecisionTreeDetector(WindowDetector):
    """Earthquake-vs-noise tree on windows; its probability is given to every sample of the window.

    A ``WaveformModel`` without torch parameters: ``annotate``/``classify`` stack the window
    probabilities over a stream like the other models' detection output (label ``Detection``),
    and give no picks. Fit with :meth:`fit`; saved as ``PREFIX.skops`` + ``PREFIX.json``.
    """

    weights_name = "decision-tree"
    weights_suffixes = (".json", ".skops")
    published = "accuracy 0.96, F1 0.96, 5-fold CV 0.971 (detection only)"

    def __init__(self, in_channels: int = 3, in_samples: int = 6000, sampling_rate: float = 100, norm: str = "std",
                 highpass: float | None = None, max_depth: int = MAX_DEPTH, **kwargs):  # fmt: skip
        super().__init__(
            "Decision tree (scikit-learn, max_depth=10) on window summary features",
            in_channels, in_samples, sampling_rate, norm, highpass, **kwargs,
        )  # fmt: skip
        self.max_depth = max_depth
        self.tree = None
        self.metadata: dict[str, Any] = {}
        # SHA-256 of the saved tree: puts the tree into state_dict(), so weight hashes (evaluation's
        # pick cache, training records) tell trees apart
        self.register_buffer("tree_digest", torch.zeros(32, dtype=torch.uint8))

    def _set_tree(self, tree) -> None:
        import hashlib

        import skops.io as sio

        self.tree = tree
        digest = hashlib.sha256(sio.dumps(tree)).digest()
        self.tree_digest = torch.frombuffer(bytearray(digest), dtype=torch.uint8).clone()

    def _event_probability(self, features: np.ndarray) -> np.ndarray:
        if self.tree is None:
            raise RuntimeError(f"{self.name} has no fitted tree: fit() it or load saved weights")
        classes = list(self.tree.classes_)
        if 1 not in classes:
            return np.zeros(len(features), np.float32)
        return self.tree.predict_proba(features)[:, classes.index(1)].astype(np.float32)

    def forward(self, x: torch.Tensor, logits: bool = False) -> tuple[torch.Tensor]:
        """(batch, 3, in_samples) normalised windows -> (detection,) of shape (batch, in_samples).

        The tree gives probabilities; ``logits`` is accepted for the common interface and ignored.
        """
        if x.ndim != 3 or x.shape[1:] != (self.in_channels, self.in_samples):
            raise ValueError(f"{self.name} expects input of shape (batch, {self.in_channels}, {self.in_samples}),"
                             f" got {tuple(x.shape)}")  # fmt: skip
        features = window_features(x.detach().cpu().numpy(), self.sampling_rate)
        probability = torch.from_numpy(self._event_probability(features)).to(x.device)
        return (probability[:, None].expand(-1, self.in_samples).contiguous(),)

    def normalised_features(self, windows: np.ndarray) -> np.ndarray:
        """Raw (N, 3, in_samples) counts -> features, through the model's own normalisation."""
        with torch.no_grad():
            x = self.annotate_batch_pre(torch.as_tensor(np.asarray(windows), dtype=torch.float32), {})
        return window_features(x.numpy(), self.sampling_rate)

    def fit(self, windows: np.ndarray, labels: np.ndarray, random_state: int = 0) -> "DecisionTreeDetector":
        """Fit the tree on raw (N, 3, in_samples) windows and 0/1 labels (1: the window holds an event)."""
        from sklearn.tree import DecisionTreeClassifier

        labels = np.asarray(labels).astype(int)
        if len(labels) != len(windows):
            raise ValueError(f"{len(windows)} windows but {len(labels)} labels")
        tree = DecisionTreeClassifier(max_depth=self.max_depth, random_state=random_state)
        self._set_tree(tree.fit(self.normalised_features(windows), labels))
        return self

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        """Event probability of each raw (N, 3, in_samples) window."""
        return self._event_probability(self.normalised_features(windows))

    def evaluation_costs(self) -> dict[str, float]:
        """Sizes for ``seisbench-feq evaluate``: no torch parameters; the tree's nodes and skops size."""
        import math

        import skops.io as sio

        if self.tree is None:
            return {}
        return {"keras_params": math.nan, "torch_params": math.nan, "tree_nodes": int(self.tree.tree_.node_count),
                "weights_kb": len(sio.dumps(self.tree)) / 1000.0, "mflops_per_window": math.nan}  # fmt: skip

    # --- weights: skops, never pickle -----------------------------------------------------------

    def get_model_args(self) -> dict[str, Any]:
        return dict(in_channels=self.in_channels, in_samples=self.in_samples, sampling_rate=self.sampling_rate,
                    norm=self.norm, highpass=self.highpass, max_depth=self.max_depth)  # fmt: skip

    def save(self, prefix: str | Path, metadata: dict | None = None, **kwargs) -> tuple[Path, Path]:
        """Write ``PREFIX.skops`` (the tree) and ``PREFIX.json`` (model args, features, ``metadata``)."""
        import skops.io as sio

        from ..io.files import atomic_write_text

        if self.tree is None:
            raise RuntimeError(f"{self.name} has no fitted tree to save")
        prefix = Path(prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        skops_path, json_path = Path(f"{prefix}.skops"), Path(f"{prefix}.json")
        sio.dump(self.tree, skops_path)
        content = {"model_class": type(self).__name__, "model_args": self.get_model_args(),
                   "features": list(FEATURE_NAMES), **self.metadata, **(metadata or {})}  # fmt: skip
        atomic_write_text(json_path, json.dumps(content, indent=2, default=str) + "\n")
        return skops_path, json_path

    @classmethod
    def load(cls, prefix: str | Path, version_str: str | None = None, **kwargs) -> "DecisionTreeDetector":
        """Read ``PREFIX.json`` + ``PREFIX.skops``; the tree file may hold only a scikit-learn tree."""
        import skops.io as sio

        prefix = Path(str(prefix))
        for suffix in (".skops", ".json"):  # PREFIX.skops / PREFIX.json given for PREFIX
            if prefix.name.endswith(suffix):
                prefix = prefix.with_name(prefix.name[: -len(suffix)])
        skops_path, json_path = Path(f"{prefix}.skops"), Path(f"{prefix}.json")
        for path in (json_path, skops_path):
            if not path.is_file():
                raise FileNotFoundError(f"decision-tree weights: {path} does not exist")
        meta = json.loads(json_path.read_text())
        untrusted = sio.get_untrusted_types(file=skops_path)
        unexpected = sorted(t for t in untrusted if t not in TRUSTED_TYPES)
        if unexpected:
            raise ValueError(f"{skops_path} holds types a decision tree does not need: {unexpected}; not loaded")
        from sklearn.tree import DecisionTreeClassifier

        tree = sio.load(skops_path, trusted=list(untrusted))
        if not isinstance(tree, DecisionTreeClassifier):  # scikit-learn estimators are trusted by default
            raise ValueError(f"{skops_path} holds a {type(tree).__name__}, not a DecisionTreeClassifier; not used")
        model = cls(**meta.get("model_args", {}))
        model._set_tree(tree)
        model.metadata = {k: v for k, v in meta.items() if k not in ("model_args", "model_class", "features")}
        if list(meta.get("features", FEATURE_NAMES)) != list(FEATURE_NAMES):
            raise ValueError(f"{json_path}: the tree was fitted on other features ({meta['features']})")
        return model.eval()
