"""Labelled evaluation windows: the NCEDC npz traces or any SeisBench ``WaveformDataset`` folder.

The evaluation protocol places the analyst P at a random position with a sub-sample part in every
window (``offset_seed``, default 0): STEAD puts P on whole seconds, EQTransformer learned that prior,
and windows with P on a fixed grid reward it. ``offset_seed=None`` gives the deterministic
positions of the reference results in ``model_spec.md`` (P at ``in_samples/12 + crc32(name) %
(in_samples/3)`` whole samples).
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

NCEDC_WINDOW_NOTE = (
    "One 60 s window per NCEDC trace, P at sample 500 + crc32(file name) mod 2000 "
    "(`seisbench_feq.data.load_ncedc(offset_seed=None)`, the protocol of the reference results in model_spec.md)."
)
RANDOM_WINDOW_NOTE = (
    "One 60 s window per trace, the analyst P at a random position in [500, 2500) samples with a random"
    " sub-sample part (seed {seed}; the trace is delayed by the fraction, `seisbench_feq.data.load_ncedc`)."
)


def window_note(offset_seed: int | None) -> str:
    """One sentence on where P lies in the windows (for reports)."""
    return NCEDC_WINDOW_NOTE if offset_seed is None else RANDOM_WINDOW_NOTE.format(seed=offset_seed)


def _p_offset(trace_name: str, in_samples: int) -> int:
    # the NCEDC protocol's deterministic P position, scaled to the window length
    return in_samples // 12 + zlib.crc32(trace_name.encode()) % max(1, in_samples // 3)


def _random_p_position(trace_name: str, seed: int, in_samples: int) -> float:
    rng = np.random.default_rng(zlib.crc32(f"{seed}:{trace_name}".encode()))
    return float(rng.uniform(in_samples // 12, in_samples // 12 + max(1, in_samples // 3)))


def load_seisbench_windows(
    path: str | Path, in_samples: int = 6000, limit: int | None = None, offset_seed: int | None = 0
):
    """Labelled windows from a SeisBench ``WaveformDataset`` folder (metadata.csv + waveforms.hdf5).

    Every trace with a P arrival gives one window (ZNE, 100 Hz, counts); samples outside the trace
    are zero. With ``offset_seed=None`` P lies at the deterministic ``in_samples/12 +
    crc32(trace_name) % (in_samples/3)`` samples (500..2499 for 6000 samples, as for the NCEDC
    traces); with a seed at a random position in the same range with a sub-sample part (the trace
    is delayed by the fraction). Returns ``(waveforms, metadata)`` like
    :func:`seisbench_feq.data.load_ncedc`.
    """
    import seisbench.data as sbd

    from ..data import fractional_delay

    dataset = sbd.WaveformDataset(path, component_order="ZNE", dimension_order="NCW", sampling_rate=100)
    md = dataset.metadata
    p_col = next((c for c in ("trace_p_arrival_sample", "trace_P_arrival_sample") if c in md.columns), None)
    if p_col is None:
        raise KeyError(f"{path}: the metadata has no trace_p_arrival_sample / trace_P_arrival_sample column")
    s_col = next((c for c in ("trace_s_arrival_sample", "trace_S_arrival_sample") if c in md.columns), None)
    rate_col = "trace_sampling_rate_hz"
    idx = np.flatnonzero(md[p_col].notna().to_numpy())
    if limit:
        idx = idx[:limit]
    if not len(idx):
        raise ValueError(f"{path}: no trace has a P arrival ({p_col})")
    waveforms = np.zeros((len(idx), 3, in_samples), np.float32)
    rows = []
    for j, i in enumerate(idx):
        row = md.iloc[i]
        name = str(row.get("trace_name_original", row.get("trace_name", i)))  # the writer renames to buckets
        scale = 100.0 / float(row[rate_col]) if rate_col in md.columns else 1.0
        data = dataset.get_waveforms(int(i))
        p = float(row[p_col]) * scale
        if offset_seed is None:
            start, shift = int(round(p)) - _p_offset(name, in_samples), 0.0
        else:  # window sample k = trace sample start + shift + k: advance the data by the fraction
            exact = p - _random_p_position(name, offset_seed, in_samples)
            start = math.floor(exact)
            shift = exact - start
            if shift:
                data = fractional_delay(data, -shift, axis=-1)
        lo, hi = max(start, 0), min(start + in_samples, data.shape[-1])
        if hi > lo:
            waveforms[j, :, lo - start : hi - start] = data[:, lo:hi]
        s = float(row[s_col]) * scale - start - shift if s_col and pd.notna(row[s_col]) else math.nan
        rows.append(
            {
                "trace_name": name,
                "station": f"{row.get('station_network_code', '')}.{row.get('station_code', '')}",
                "p_sample": p - start - shift,
                "s_sample": s if (math.isnan(s) or 0 <= s < in_samples) else math.nan,
                "sampling_rate": 100.0,
            }
        )
    return waveforms, pd.DataFrame(rows)


def load_labelled_windows(
    path: str | Path, noise: bool = False, limit: int | None = None, offset_seed: int | None = 0
):
    """NCEDC npz folder (via :func:`seisbench_feq.data.load_ncedc`) or SeisBench dataset folder -> windows.

    ``offset_seed``: random P positions with a sub-sample part (the evaluation protocol), or None
    for the deterministic positions of the reference results. ``noise`` adds the NCEDC pre-P noise
    windows; ``limit`` keeps the first N traces (and N noise windows).
    """
    from .. import data

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} does not exist")
    if (path / "metadata.csv").exists() and (path / "waveforms.hdf5").exists():
        if noise:
            raise ValueError("--noise is only available for the NCEDC npz layout")
        return load_seisbench_windows(path, limit=limit, offset_seed=offset_seed)
    names = data.ncedc_files(path)
    waveforms, metadata = data.load_ncedc(path, offset_seed=offset_seed, names=names[:limit] if limit else names)
    if noise:
        nw, nmd = data.load_ncedc_noise(path, pad_to=waveforms.shape[-1])
        if limit:
            nw, nmd = nw[:limit], nmd.iloc[:limit]
        waveforms = np.concatenate([waveforms, nw])
        metadata = pd.concat([metadata, nmd], ignore_index=True)
    return waveforms, metadata
