"""Data readers and splits: the NCEDC npz traces, continuous CX windows, STEAD and SeisBench datasets.

All waveforms returned here are float32 in **Z, N, E** row order (the models' ``component_order``),
in counts, at 100 Hz. Normalisation is *not* applied: the models normalise in
``annotate_batch_pre`` and training applies the same step (see :mod:`seisbench_feq.training`).

The NCEDC set (``../shared/data/ncedc``, PhaseNet's sample data) holds 154 traces of 90 s with the
analyst P always at sample 3000. One 60 s window per trace is cut so that P sits at a deterministic,
file-dependent position (the "Reference results" protocol of ``model_spec.md``)::

    p_sample = 500 + zlib.crc32(file_name.encode()) % 2000   # 500 .. 2499, file_name incl. ".npz"
    window   = data[itp - p_sample : itp - p_sample + 6000]
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import obspy

logger = logging.getLogger(__name__)

SAMPLING_RATE = 100.0
ZNE_FROM_ENZ = [2, 1, 0]  # npz column index for each output row Z, N, E


# --------------------------------------------------------------------------------------------
# NCEDC npz traces
# --------------------------------------------------------------------------------------------


def ncedc_p_offset(file_name: str) -> int:
    """Sample index of P inside the evaluation window of ``file_name`` (500 .. 2499).

    ``file_name`` is the npz name as listed in ``waveform.csv`` (with ``.npz``).
    """
    return 500 + zlib.crc32(file_name.encode()) % 2000


def ncedc_files(root: str | Path) -> list[str]:
    """npz names in ``root``: from ``waveform.csv`` when present (the published list), else a glob."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"NCEDC folder {root} does not exist")
    csv = root / "waveform.csv"
    if csv.exists():
        names = [str(n) for n in pd.read_csv(csv)["fname"]]
    else:
        names = sorted(p.name for p in root.glob("*.npz"))
    if not names:
        raise FileNotFoundError(f"no NCEDC .npz traces in {root}")
    return names


def read_ncedc_npz(path: str | Path) -> dict:
    """Read one NCEDC npz: ``data`` (9001, 3) float64 in E, N, Z columns, ``itp``, ``its``, ``channels``.

    Raises ``ValueError`` naming the file when it is corrupt, truncated, or not in this layout.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            record = {key: npz[key] for key in ("data", "itp", "its", "channels")}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as err:
        raise ValueError(f"corrupt or unreadable NCEDC npz {path}: {err}") from err
    data = np.asarray(record["data"])
    if data.ndim != 2 or data.shape[1] != 3:
        raise ValueError(f"NCEDC npz {path}: 'data' has shape {data.shape}, expected (samples, 3) E,N,Z")
    if not np.isfinite(data).all():
        raise ValueError(f"NCEDC npz {path}: 'data' holds NaN or inf samples")
    return {
        "data": data,
        "itp": int(record["itp"]),
        "its": int(record["its"]),
        "channels": str(record["channels"]),
    }


def _station_of(file_name: str) -> tuple[str, str]:
    parts = file_name.split("_")
    if len(parts) < 3:
        raise ValueError(f"NCEDC file name {file_name!r} is not NET_STA_TIME.npz")
    return parts[0], parts[1]


def ncedc_random_p_position(file_name: str, seed: int, window_samples: int = 6000) -> float:
    """P position (in samples, with a fractional part) inside a randomly placed evaluation window.

    Uniform in [500, window_samples - 3500) samples, drawn from a generator seeded by ``seed`` and the
    file name, so the same seed always gives the same windows. The fractional part matters: STEAD
    puts P on whole seconds and EQTransformer learned that prior; windows whose P sits at an
    arbitrary sub-sample position do not reward it.
    """
    rng = np.random.default_rng(zlib.crc32(f"{seed}:{file_name}".encode()))
    return float(rng.uniform(500, max(window_samples - 3500, 501)))


def fractional_delay(data: np.ndarray, delay: float, axis: int = 0) -> np.ndarray:
    """``data`` delayed by ``delay`` samples (band-limited, FFT phase shift); ``|delay| < 1``.

    The data are demeaned first so that the circular wrap of the FFT leaves no step at the ends.
    """
    if not delay:
        return data
    x = data - data.mean(axis=axis, keepdims=True)
    n = x.shape[axis]
    freqs = np.fft.rfftfreq(n)
    shape = [1] * x.ndim
    shape[axis] = len(freqs)
    phase = np.exp(-2j * np.pi * freqs * delay).reshape(shape)
    return np.fft.irfft(np.fft.rfft(x, axis=axis) * phase, n=n, axis=axis)


def load_ncedc(
    root: str | Path, window_samples: int = 6000, offset_seed: int | None = None, names=None
) -> tuple[np.ndarray, pd.DataFrame]:
    """Evaluation windows of the NCEDC traces, one per trace.

    Returns ``(waveforms, metadata)``: ``waveforms`` float32 (N, 3, window_samples) in Z, N, E order,
    counts, 100 Hz. With ``offset_seed=None`` the window starts ``ncedc_p_offset(file_name)``
    (whole) samples before the analyst P, the protocol of the reference results in model_spec.md.
    With an integer ``offset_seed`` P lies at :func:`ncedc_random_p_position` (a random position
    with a sub-sample part; the trace is delayed by that fraction), and ``p_sample``/``s_sample``
    are fractional: the evaluation protocol of ``seisbench-feq evaluate``.
    ``metadata`` has one row per window: ``trace_name`` (file name without ``.npz``), ``file_name``,
    ``network``, ``station`` ("NET.STA"), ``p_sample``, ``s_sample`` (indices inside the window),
    ``channels``, ``vertical_only`` (N and E rows are zero), ``sampling_rate``. ``names`` restricts
    the windows to those npz files (default: all of ``waveform.csv``).
    """
    root = Path(root)
    names = ncedc_files(root) if names is None else list(names)
    waveforms = np.zeros((len(names), 3, window_samples), dtype=np.float32)
    rows = []
    for i, name in enumerate(names):
        path = root / name
        record = read_ncedc_npz(path)
        data = record["data"]
        if offset_seed is None:
            p_offset, fraction = ncedc_p_offset(name), 0.0
        else:
            position = ncedc_random_p_position(name, offset_seed, window_samples)
            p_offset, fraction = int(position), position - int(position)
            data = fractional_delay(data, fraction)
        start = record["itp"] - p_offset
        stop = start + window_samples
        n = record["data"].shape[0]
        if start < 0 or stop > n:
            raise ValueError(
                f"NCEDC npz {path}: a {window_samples}-sample window with P at {p_offset} needs samples "
                f"{start}..{stop} but the trace has {n} (P at {record['itp']})"
            )
        window = data[start:stop]
        waveforms[i] = window[:, ZNE_FROM_ENZ].T
        net, sta = _station_of(name)
        s_sample = record["its"] + fraction - start
        if not 0 <= s_sample < window_samples:
            logger.warning("NCEDC %s: S at %d falls outside the %d-sample window", name, s_sample, window_samples)
        rows.append(
            {
                "trace_name": name[:-4] if name.endswith(".npz") else name,
                "file_name": name,
                "network": net,
                "station": f"{net}.{sta}",
                "p_sample": p_offset + fraction,
                "s_sample": s_sample,
                "channels": record["channels"],
                "vertical_only": bool(not window[:, 0].any() and not window[:, 1].any()),
                "sampling_rate": SAMPLING_RATE,
            }
        )
    return waveforms, pd.DataFrame(rows)


def load_ncedc_noise(
    root: str | Path,
    window_samples: int = 2900,
    guard_samples: int = 100,
    pad_to: int | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Real noise windows: the part of each NCEDC trace before its analyst P.

    The NCEDC set has no noise-only traces; each trace holds only 30 s (3000 samples) before P.
    A window therefore ends ``guard_samples`` before P (emergent onsets) and is at most
    ``itp - guard_samples`` = 2900 samples long with the defaults. The models take 6000 samples:
    ``pad_to=6000`` extends each window by mirroring the real noise (``np.pad(mode="symmetric")``),
    which keeps its amplitude and spectrum and adds no step; the metadata column ``real_samples``
    says how much is genuine. Asking for more real samples than exist raises ``ValueError``.

    Returns ``(waveforms (N, 3, pad_to or window_samples) float32 ZNE, metadata)`` with the columns of
    :func:`load_ncedc` (``p_sample``/``s_sample`` are NaN) plus ``real_samples``.
    """
    root = Path(root)
    names = ncedc_files(root)
    out_len = pad_to or window_samples
    if out_len < window_samples:
        raise ValueError(f"pad_to={pad_to} is shorter than window_samples={window_samples}")
    waveforms = np.zeros((len(names), 3, out_len), dtype=np.float32)
    rows = []
    for i, name in enumerate(names):
        path = root / name
        record = read_ncedc_npz(path)
        stop = record["itp"] - guard_samples
        start = stop - window_samples
        if start < 0:
            raise ValueError(
                f"NCEDC npz {path}: only {max(stop, 0)} noise samples exist before P - {guard_samples} "
                f"(P at {record['itp']}); window_samples={window_samples} is too long (use pad_to)"
            )
        window = record["data"][start:stop][:, ZNE_FROM_ENZ].T
        if out_len > window_samples:
            window = np.pad(window, ((0, 0), (0, out_len - window_samples)), mode="symmetric")
        waveforms[i] = window
        net, sta = _station_of(name)
        rows.append(
            {
                "trace_name": (name[:-4] if name.endswith(".npz") else name) + "_noise",
                "file_name": name,
                "network": net,
                "station": f"{net}.{sta}",
                "p_sample": np.nan,
                "s_sample": np.nan,
                "channels": record["channels"],
                "vertical_only": bool(not window[1].any() and not window[2].any()),
                "sampling_rate": SAMPLING_RATE,
                "real_samples": window_samples,
            }
        )
    return waveforms, pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Station split
# --------------------------------------------------------------------------------------------


def station_hash_fraction(station: str, seed: int = 0) -> float:
    """A deterministic number in [0, 1) per station code (crc32 of ``"seed:station"``)."""
    return zlib.crc32(f"{seed}:{station}".encode()) / 2**32


VALIDATION_FRACTION = 0.15  # of the train-side stations: validation for checkpoint choice


def is_validation_station(station: str, split_seed: int = 0) -> bool:
    """Whether a train-side station of ``split_by_station(seed=split_seed)`` is a validation station
    of ``seisbench-feq train`` (its own hash, seed ``split_seed + 1``; ``VALIDATION_FRACTION``)."""
    return station_hash_fraction(station, seed=split_seed + 1) < VALIDATION_FRACTION


def split_by_station(metadata: pd.DataFrame, test_fraction: float = 0.5, seed: int = 0) -> pd.Series:
    """Label each row "train" or "test"; all rows of one station fall on the same side.

    A station is "test" when ``station_hash_fraction(station, seed) < test_fraction``. The decision
    depends only on the station code and the seed, not on which other rows are present, so the
    same station is held out in every data set that uses it (evaluation, fine-tuning, distillation).
    The expected share of test *stations* is ``test_fraction``. Uses the column ``station`` (or
    ``station_network_code`` + ``station_code`` for SeisBench metadata).
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    if "station" in metadata.columns:
        stations = metadata["station"].astype(str)
    elif {"station_network_code", "station_code"} <= set(metadata.columns):
        stations = metadata["station_network_code"].astype(str) + "." + metadata["station_code"].astype(str)
    else:
        raise KeyError("split_by_station needs a 'station' column (or station_network_code + station_code)")
    side = {s: ("test" if station_hash_fraction(s, seed) < test_fraction else "train") for s in stations.unique()}
    return stations.map(side).rename("split")


# --------------------------------------------------------------------------------------------
# Continuous MiniSEED (e.g. ../shared/data/cx_continuous) as aligned Z, N, E arrays
# --------------------------------------------------------------------------------------------


@dataclass
class ContinuousSegment:
    """A stretch of continuous three-component data: ``data`` float32 (3, T) Z, N, E, counts."""

    name: str  # "NET.STA.LOC.CH_YYYYMMDDThhmmss", unique per segment
    station: str  # "NET.STA"
    starttime: "obspy.UTCDateTime"
    sampling_rate: float
    data: np.ndarray

    def to_stream(self) -> "obspy.Stream":
        """The segment as an ObsPy Stream (channels ``HHZ``/``HHN``/``HHE`` at ``sampling_rate``)."""
        import obspy

        net, sta = self.station.split(".")
        traces = []
        for row, comp in enumerate("ZNE"):
            header = {
                "network": net,
                "station": sta,
                "channel": f"HH{comp}",
                "sampling_rate": self.sampling_rate,
                "starttime": self.starttime,
            }
            traces.append(obspy.Trace(self.data[row].copy(), header=header))
        return obspy.Stream(traces)


def _read_miniseed_files(root: Path) -> "obspy.Stream":
    import obspy

    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no waveform files below {root}")
    stream = obspy.Stream()
    for path in files:
        try:
            stream += obspy.read(str(path))
        except Exception as err:  # obspy raises many types for corrupt/unknown files
            raise ValueError(f"cannot read waveform file {path}: {err}") from err
    return stream


def read_continuous_segments(
    root: str | Path,
    sampling_rate: float = SAMPLING_RATE,
    min_samples: int = 6000,
) -> list[ContinuousSegment]:
    """All stretches below ``root`` where Z, N and E (or Z, 1, 2) exist together, as arrays.

    Every file below ``root`` is read with ObsPy (MiniSEED, SDS trees, hourly files...). Traces are
    merged per channel; gaps and masked samples split segments (nothing is zero-filled). Traces at
    another rate are resampled to ``sampling_rate`` with a warning. Segments shorter than
    ``min_samples`` are dropped with a log message.
    """
    root = Path(root)
    stream = _read_miniseed_files(root)
    for trace in stream:
        if trace.stats.sampling_rate != sampling_rate:
            logger.warning("resampling %s from %g Hz to %g Hz", trace.id, trace.stats.sampling_rate, sampling_rate)
            trace.resample(sampling_rate)
        trace.data = trace.data.astype(np.float64)
    # split() turns masked samples into gaps; the "cleanup" merge joins only exactly adjacent
    # traces, so a gap (e.g. months between two files) never becomes a huge masked array.
    stream = stream.split()
    stream.merge(method=-1)
    instruments: dict[str, dict[str, list]] = {}
    for trace in stream:
        comp = {"1": "N", "2": "E"}.get(trace.stats.channel[-1].upper(), trace.stats.channel[-1].upper())
        if comp not in "ZNE":
            continue
        key = f"{trace.stats.network}.{trace.stats.station}.{trace.stats.location}.{trace.stats.channel[:-1]}"
        instruments.setdefault(key, {}).setdefault(comp, []).append(trace)

    segments = []
    for key, comps in sorted(instruments.items()):
        if set(comps) != set("ZNE"):
            logger.warning("%s: components %s only; skipped (training needs Z, N and E)", key, sorted(comps))
            continue
        for z in comps["Z"]:
            for n in comps["N"]:
                for e in comps["E"]:
                    t0 = max(z.stats.starttime, n.stats.starttime, e.stats.starttime)
                    t1 = min(z.stats.endtime, n.stats.endtime, e.stats.endtime)
                    npts = int(round((t1 - t0) * sampling_rate)) + 1
                    if npts < min_samples:
                        if npts > 0:
                            logger.info("%s: %d-sample segment at %s dropped (< %d)", key, npts, t0, min_samples)
                        continue
                    data = np.zeros((3, npts), dtype=np.float32)
                    for row, trace in enumerate((z, n, e)):
                        offset = int(round((t0 - trace.stats.starttime) * sampling_rate))
                        chunk = trace.data[offset : offset + npts]
                        data[row, : len(chunk)] = chunk
                        npts = min(npts, len(chunk))
                    data = data[:, :npts]
                    net, sta = key.split(".")[:2]
                    name = f"{key}_{t0.strftime('%Y%m%dT%H%M%S')}"
                    segments.append(ContinuousSegment(name, f"{net}.{sta}", t0, sampling_rate, data))
    if not segments:
        raise ValueError(f"no three-component segment of at least {min_samples} samples below {root}")
    return segments


# --------------------------------------------------------------------------------------------
# In-memory waveform source for seisbench.generate pipelines
# --------------------------------------------------------------------------------------------


class ArrayWaveformSource:
    """A stand-in for a SeisBench ``WaveformDataset`` over in-memory arrays.

    ``seisbench.generate.GenericGenerator`` needs only ``len(source)`` and ``get_sample(idx)``
    returning ``(waveform (C, W), metadata dict)``. Each row of ``items`` selects
    ``arrays[row.array][:, row.start:row.stop]``; metadata columns ending in ``_sample`` are given
    relative to the array start and are shifted to the slice here, as SeisBench does for windows.
    """

    def __init__(self, arrays: list[np.ndarray], items: pd.DataFrame):
        missing = {"array", "start", "stop"} - set(items.columns)
        if missing:
            raise KeyError(f"items lack the columns {sorted(missing)}")
        self.arrays = arrays
        self.metadata = items.reset_index(drop=True)
        self._records = self.metadata.to_dict("records")

    def __len__(self) -> int:
        return len(self._records)

    def get_sample(self, idx: int, sampling_rate: float | None = None) -> tuple[np.ndarray, dict]:
        meta = dict(self._records[idx])
        array = self.arrays[int(meta["array"])]
        start, stop = int(meta["start"]), int(meta["stop"])
        waveform = np.array(array[:, max(start, 0) : stop], dtype=np.float32)
        if start < 0:  # anchors near an array's start: pad, as SeisBench's windows do
            waveform = np.pad(waveform, ((0, 0), (-start, 0)))
        for key, value in meta.items():
            if key.endswith("_sample") and value is not None:
                meta[key] = value - start
        meta["trace_npts"] = waveform.shape[-1]
        return waveform, meta
