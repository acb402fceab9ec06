"""Resumable per-model picks of ``seisbench-feq evaluate`` (``OUT/cache/``), in a format that runs no code.

Each model's per-window picks (one file per pick mode) are stored as an ``.npz`` of plain numeric
arrays plus a provenance key: a SHA-256 over the model's weights (or a baseline's settings), the
windows, their names, the thresholds and the pick mode. A file is used only when its key equals the
key of the current run; it is read with ``allow_pickle=False``, so a planted or corrupted file can
at worst be ignored. Pickle files (``*.pkl``, the format of older versions) are never opened: they
are ignored with a warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from .pickers import MAX_COLUMNS, PICK_COLUMNS

logger = logging.getLogger(__name__)

CACHE_FORMAT = "seisbench_feq.evaluate.picks/2"
_VALUE_COLUMNS = ["P_sample", "P_value", "S_sample", "S_value"]


def weights_digest(model, digest=None):
    """Feed a model's class, state dict and model args into ``digest`` (new SHA-256 if None).

    The one weights hash of evaluation and training records.
    """
    digest = digest or hashlib.sha256()
    digest.update(type(model).__name__.encode())
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    if hasattr(model, "get_model_args"):  # e.g. the normalisation mode and the high-pass
        digest.update(json.dumps(model.get_model_args(), sort_keys=True, default=str).encode())
    return digest


def picks_key(name: str, picker, waveforms: np.ndarray, metadata: pd.DataFrame, thresholds, pick_mode: str) -> str:
    """Provenance of per-window picks: weights (or baseline settings), windows, thresholds, mode."""
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    digest.update(name.encode())
    digest.update(pick_mode.encode())
    digest.update(json.dumps(dict(thresholds), sort_keys=True).encode())
    digest.update(str(waveforms.shape).encode())
    digest.update(np.ascontiguousarray(waveforms, dtype=np.float32).tobytes())
    digest.update(metadata.get("trace_name", pd.Series(dtype=str)).astype(str).str.cat(sep="|").encode())
    model = getattr(picker, "model", None)
    if model is not None and hasattr(model, "state_dict"):
        weights_digest(model, digest)
    else:
        digest.update(repr(picker).encode())
    return digest.hexdigest()


def cache_file(cache_dir: str | Path, name: str, pick_mode: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "_"
    return Path(cache_dir) / f"{stem}.{pick_mode}.npz"


def warn_about_pickles(cache_dir: str | Path | None) -> list[Path]:
    """Warn about (and never load) pickle files in the cache folder; returns them."""
    if cache_dir is None or not Path(cache_dir).is_dir():
        return []
    found = sorted(Path(cache_dir).glob("*.pkl"))
    for path in found:
        logger.warning("ignoring %s: pickle files can run code and are never loaded (the cache is .npz now)", path)
    return found


def _encode(picks: pd.DataFrame, key: str) -> dict[str, np.ndarray]:
    arrays = {"key": np.array(key), "format": np.array(CACHE_FORMAT)}
    for column in _VALUE_COLUMNS + MAX_COLUMNS:
        if column in picks.columns:
            arrays[column] = picks[column].to_numpy(dtype=np.float64)
    windows, on, off = [], [], []
    for i, detections in enumerate(picks["detections"]):
        for a, b in detections:
            windows.append(i)
            on.append(int(a))
            off.append(int(b))
    arrays["detection_window"] = np.asarray(windows, dtype=np.int64)
    arrays["detection_on"] = np.asarray(on, dtype=np.int64)
    arrays["detection_off"] = np.asarray(off, dtype=np.int64)
    arrays["n_windows"] = np.array(len(picks), dtype=np.int64)
    return arrays


def _decode(npz) -> pd.DataFrame:
    n = int(npz["n_windows"])
    detections: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for i, a, b in zip(npz["detection_window"], npz["detection_on"], npz["detection_off"]):
        detections[int(i)].append((int(a), int(b)))
    frame = pd.DataFrame({"detections": detections})
    for column in _VALUE_COLUMNS + MAX_COLUMNS:
        if column in npz.files:
            values = npz[column].astype(np.float64)
            if len(values) != n:
                raise ValueError(f"column {column} has {len(values)} rows for {n} windows")
            frame[column] = values
        elif column in _VALUE_COLUMNS:
            raise KeyError(column)
    columns = PICK_COLUMNS + [c for c in MAX_COLUMNS if c in frame.columns]
    return frame[columns]


def cached_picks(cache_dir, name, picker, waveforms, metadata, thresholds, pick_mode) -> pd.DataFrame | None:
    """Per-window picks of an earlier run with identical inputs, or None (missing, stale, unreadable)."""
    if cache_dir is None:
        return None
    path = cache_file(cache_dir, name, pick_mode)
    if not path.is_file():
        return None
    expected = picks_key(name, picker, waveforms, metadata, thresholds, pick_mode)
    try:
        with np.load(path, allow_pickle=False) as npz:  # never unpickles: object arrays raise
            if str(npz["key"]) != expected:
                logger.info("%s: stored picks in %s are for other weights, windows or thresholds", name, path)
                return None
            picks = _decode(npz)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        logger.warning("ignoring unreadable pick cache %s: %s", path, err)
        return None
    if len(picks) != len(metadata):
        logger.warning("ignoring pick cache %s: %d rows for %d windows", path, len(picks), len(metadata))
        return None
    logger.info("%s (%s): reusing the picks stored in %s (same weights, windows and thresholds)", name, pick_mode, path)
    return picks


def store_picks(cache_dir, name, picker, waveforms, metadata, thresholds, pick_mode, picks: pd.DataFrame) -> None:
    if cache_dir is None:
        return
    from ..io.files import atomic_write_bytes

    key = picks_key(name, picker, waveforms, metadata, thresholds, pick_mode)
    buffer = io.BytesIO()
    np.savez(buffer, **_encode(picks, key))
    atomic_write_bytes(cache_file(cache_dir, name, pick_mode), buffer.getvalue())
