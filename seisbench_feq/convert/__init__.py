"""Convert the original Keras EQTransformer and LEQNet h5 files into SeisBench/PyTorch models.

The h5 files are read with h5py only (no TensorFlow). The mapping from Keras layers to PyTorch
modules is derived from the layer graph stored in the file (``model_config``), not from layer
numbering: the graph is split into the trunk shared by all outputs and one branch per output,
and each part is read in execution order (see :func:`parse_keras_graph`).

Conventions of the converted models:

* component order ZNE (Keras models read E, N, Z: the first convolution's input channels are
  permuted);
* deterministic in ``eval()``: the spatial dropouts that the originals run with
  ``training=True`` are off; :func:`mc_dropout_predict` samples them explicitly;
* the original EqT normalisation, per channel demean and divide by the std, via
  :class:`OriginalEQTransformer`.

The LEQNet h5 has no licence: converted LEQNet weights are for local verification and
evaluation only and must not be redistributed (the CLI records this in the .json).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from seisbench.models.eqtransformer import SpatialDropout1d

from .converters import OriginalEQTransformer, eqtransformer_from_keras, leqnet_from_keras
from .keras_file import (
    KERAS_INPUT_ORDER,
    LICENCES,
    TORCH_INPUT_ORDER,
    KerasConversionError,
    KerasFile,
    KerasGraph,
    detect_model_type,
    parse_keras_graph,
    read_keras_h5,
)

__all__ = [
    "KerasConversionError",
    "KerasFile",
    "KerasGraph",
    "OriginalEQTransformer",
    "read_keras_h5",
    "parse_keras_graph",
    "detect_model_type",
    "eqtransformer_from_keras",
    "leqnet_from_keras",
    "mc_dropout_predict",
    "eqt_picks",
    "ncedc_check",
    "convert_file",
    "CONVERTERS",
    "LOAD_WITH",
    "LICENCES",
    "KERAS_INPUT_ORDER",
    "TORCH_INPUT_ORDER",
]

# ----------------------------------------------------------------------------------------------


def _spatial_dropout_modules(model):
    return [m for m in model.modules() if isinstance(m, (SpatialDropout1d, nn.Dropout1d, nn.Dropout2d))]


def mc_dropout_predict(model, x, n_samples: int = 20, seed: int | None = None):
    """Monte-Carlo dropout: ``n_samples`` forward passes with only the spatial dropouts active.

    This is how the original Keras models ran (their SpatialDropout1D layers were called with
    ``training=True``); EQTransformer used the spread of such passes as pick uncertainty.
    ``x`` is a normalised batch ``(B, C, N)`` tensor. Returns ``(mean, std)``, each a tuple of
    ``(B, N)`` tensors in the model's output order (detection, P, S). The model is left in the
    train/eval state it had.
    """
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 for a standard deviation, got {n_samples}")
    dropouts = _spatial_dropout_modules(model)
    if not dropouts:
        raise ValueError(f"{type(model).__name__} has no spatial dropout modules to sample")
    was_training = {m: m.training for m in model.modules()}
    generator_state = torch.random.get_rng_state()
    try:
        if seed is not None:
            torch.manual_seed(seed)
        model.eval()
        for m in dropouts:
            m.train()
        with torch.no_grad():
            runs = [model(x) for _ in range(n_samples)]
    finally:
        for m, flag in was_training.items():
            m.train(flag)
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    stacked = [torch.stack([r[k] for r in runs]) for k in range(len(runs[0]))]
    return tuple(s.mean(0) for s in stacked), tuple(s.std(0) for s in stacked)


# ----------------------------------------------------------------------------------------------
# Does a conversion pick? (NCEDC protocol of model_spec.md, "Reference results of the originals")
# ----------------------------------------------------------------------------------------------


def eqt_picks(detection: np.ndarray, p: np.ndarray, s: np.ndarray, thresholds=(0.5, 0.3, 0.3)):
    """The original EQTransformer picker on one window: (P samples, S samples).

    An alias of :func:`seisbench_feq.models.picking.eqt_window_picks` (the rule is documented there).
    """
    from ..models.picking import eqt_window_picks

    return eqt_window_picks(detection, p, s, thresholds)


def ncedc_check(model, ncedc_dir: str | Path, every: int = 1, pick_mode: str = "eqt", thresholds=None) -> dict:
    """Scores of a converted model on the NCEDC windows (every ``every``-th trace), by the evaluation
    module (:func:`seisbench_feq.evaluation.score_picks`): one table row, keys ``P_recall``, ``S_f1``,
    ``P_mae_s``, ``n_windows``... ``pick_mode``: "eqt" (the original EqT picker) or "peak"."""
    from ..data import load_ncedc
    from ..evaluation import as_picker, score_picks

    waveforms, meta = load_ncedc(ncedc_dir)
    waveforms, meta = waveforms[::every], meta.iloc[::every].reset_index(drop=True)
    picker = as_picker(model, thresholds=thresholds or {"detection": 0.5, "P": 0.3, "S": 0.3}, progress=False)
    return score_picks(picker.pick_windows(waveforms, pick_mode=pick_mode), meta)



# ----------------------------------------------------------------------------------------------
# Writing a conversion (the command line is seisbench_feq.cli.convert)
# ----------------------------------------------------------------------------------------------

CONVERTERS = {"eqtransformer": eqtransformer_from_keras, "leqnet": leqnet_from_keras}
LOAD_WITH = {
    "eqtransformer": "seisbench_feq.convert.OriginalEQTransformer.load(prefix)",
    "leqnet": "seisbench_feq.LEQNet.load(prefix)",
}


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_file(
    h5_path: str | Path,
    out_prefix: str | Path,
    model_type: str | None = None,
    config_from: str | Path | None = None,
):
    """Convert ``h5_path`` and write SeisBench's ``<out_prefix>.pt`` + ``<out_prefix>.json``.

    ``model_type`` ('eqtransformer' or 'leqnet') is detected from the file when None, and checked
    against it otherwise. The json records the source file, its sha256 and its licence.
    Returns ``(model, json_path, pt_path)``.
    """
    h5_path = Path(h5_path)
    detected = detect_model_type(h5_path, config_from)
    if model_type is not None and model_type != detected:
        raise KerasConversionError(f"{h5_path} holds a {detected} model, not a {model_type}")
    t0 = time.perf_counter()
    model = CONVERTERS[detected](h5_path, config_from=config_from)
    seconds = time.perf_counter() - t0
    out_prefix = Path(out_prefix)
    if out_prefix.suffix in (".pt", ".json"):
        out_prefix = out_prefix.with_suffix("")
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    from .. import __version__

    sha256 = sha256_of(h5_path)
    docstring = (
        f"{type(model).__name__} converted by seisbench_feq {__version__} from the Keras file "
        f"{h5_path.name} (sha256 {sha256}). Licence of the source: {LICENCES[detected]}. "
        f"Deterministic in eval(); load with {LOAD_WITH[detected]}."
    )
    model.save(out_prefix, weights_docstring=docstring)
    json_path, pt_path = Path(f"{out_prefix}.json"), Path(f"{out_prefix}.pt")
    meta = json.loads(json_path.read_text())
    meta["source"] = {
        "file": h5_path.name,
        "sha256": sha256,
        "keras_version": read_keras_h5(h5_path, config_from).keras_version,
        "licence": LICENCES[detected],
    }
    meta["converted_by"] = f"seisbench_feq {__version__} (seisbench-feq convert)"
    meta["conversion_seconds"] = round(seconds, 3)
    meta["load_with"] = LOAD_WITH[detected]
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    return model, json_path, pt_path
