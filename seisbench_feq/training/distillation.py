"""Distillation data: the teacher, its (grid-averaged, cached) probabilities on continuous data and on
the NCEDC training stations, and the training / validation sources built from them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .augmentations import PICK_SIGMA
from .validation import VAL_FRACTION

logger = logging.getLogger(__name__)

TEACHER_CHUNK = 360_000  # teacher annotates continuous data in 1 h pieces (progress, resumable cache)
# Shares of each kind of training window in distillation batches.
DISTILL_SHARES = {"cx_event": 0.4, "cx_random": 0.3, "ncedc": 0.3}


def load_teacher(spec: str):
    """The distillation teacher, through :func:`seisbench_feq.loading.load_model`.

    * ``*.h5``: an original Keras EQTransformer file, converted;
    * ``random-eqtransformer``: SeisBench's EQTransformer with random weights, seed 0 (plumbing tests);
    * a SeisBench weights prefix (``PREFIX.json`` + ``PREFIX.pt``): loaded as an EQTransformer;
    * any other model spec of ``load_model`` (``eqt-original:PATH.h5``, ``eqtransformer:PREFIX``...).

    The teacher is made to normalise each window per channel (demean, divide by the channel's std),
    as the original EqT was trained, whatever its SeisBench ``norm`` setting says.
    """
    import seisbench.models as sbm

    from ..loading import load_model

    if spec.endswith(".h5") and not Path(spec).is_file():
        raise FileNotFoundError(f"teacher h5 {spec} does not exist")
    plain_prefix = ":" not in spec and not spec.endswith(".h5") and not spec.startswith("random-")
    if plain_prefix and not Path(spec + ".json").is_file():
        raise FileNotFoundError(f"teacher {spec}: expected an .h5 file or a SeisBench PREFIX.json/.pt pair")
    teacher = load_model(f"eqtransformer:{spec}" if plain_prefix else spec)
    teacher = teacher.cpu().eval()
    if type(teacher).annotate_batch_pre is sbm.EQTransformer.annotate_batch_pre:
        # SeisBench's norm="std" divides all channels by one joint std; EqT was trained per channel.
        from ..models import normalize_windows

        def per_channel_std(batch, argdict):
            return normalize_windows(batch, "std")

        teacher.annotate_batch_pre = per_channel_std  # instance attribute: overrides the class hook
    return teacher


# Sub-second shifts (samples) of the teacher's window grid that are averaged. EqT learned STEAD's
# "P on a whole second" prior: on continuous data most of its P peaks sit at whole seconds of its
# window grid and move with the grid, while real arrivals stay put. Averaging over shifted grids
# keeps the real peaks and divides the grid artefacts by the number of shifts.
TEACHER_GRID_SHIFTS = (0, 25, 50, 75)


GRID_RULES = ("average", "consensus")


def teacher_probabilities(
    teacher,
    data: np.ndarray,
    station: str,
    starttime,
    sampling_rate: float = 100.0,
    grid_shifts=(0,),
    grid_rule: str = "average",
):
    """The teacher's stacked (detection, P, S) over one continuous (3, T) array, via ``annotate``.

    With several ``grid_shifts`` the stream is annotated once per shift of its start (in samples)
    and the outputs are averaged where known (``grid_rule="average"``). Averaging divides the
    grid artefacts, but also lowers the real arrivals the teacher snaps to its grid (their peaks
    move with it). ``grid_rule="consensus"``: the detection row is averaged; the P and S rows
    become Gaussian pick labels (height 1, sigma 10 samples) wherever at least half of the shifts
    pick the phase (SeisBench's trigger rule at 0.3) within 1 s, at the median of their positions
    (:func:`seisbench_feq.evaluation.continuous.consensus_positions`). Returns float32 (3, T); NaN
    where the teacher gives nothing (its blinded segment edges).
    """
    import obspy

    from ..data import ContinuousSegment
    from ..models.picking import peak_window_picks

    if grid_rule not in GRID_RULES:
        raise ValueError(f"grid_rule={grid_rule!r}: expected one of {GRID_RULES}")
    n = data.shape[-1]
    total = np.zeros((3, n), dtype=np.float64)
    count = np.zeros((3, n), dtype=np.int32)
    shift_picks: dict[int, list[tuple[float, int]]] = {1: [], 2: []}
    for shift in grid_shifts:
        start = obspy.UTCDateTime(starttime) + shift / sampling_rate
        segment = ContinuousSegment("teacher", station, start, sampling_rate, data[:, shift:])
        annotations = teacher.annotate(segment.to_stream())
        for row, label in enumerate(teacher.labels[:3]):
            curve = np.zeros(n)
            for trace in annotations.select(channel=f"*_{label}"):
                offset = shift + int(round((trace.stats.starttime - start) * sampling_rate))
                values = trace.data.astype(np.float64)
                lo, hi = max(offset, 0), min(offset + len(values), n)
                if hi > lo:
                    total[row, lo:hi] += values[lo - offset : hi - offset]
                    count[row, lo:hi] += 1
                    curve[lo:hi] = np.maximum(curve[lo:hi], np.nan_to_num(values[lo - offset : hi - offset]))
            if grid_rule == "consensus" and row in shift_picks:
                shift_picks[row] += [(float(peak), shift) for _, _, peak in peak_window_picks(curve, 0.3)]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    if grid_rule == "consensus":
        from ..evaluation.continuous import consensus_positions

        samples = np.arange(n)
        for row, picks in shift_picks.items():
            label = np.zeros(n)
            for position in consensus_positions(picks, len(grid_shifts), span=1.0 * sampling_rate):
                peak = int(round(position))
                lo, hi = max(peak - 5 * PICK_SIGMA, 0), min(peak + 5 * PICK_SIGMA + 1, n)
                gauss = np.exp(-0.5 * ((samples[lo:hi] - peak) / PICK_SIGMA) ** 2)
                label[lo:hi] = np.maximum(label[lo:hi], gauss)
            out[row] = np.where(count[row] > 0, label, np.nan)
    return out.astype(np.float32)


def cached_teacher_probabilities(
    teacher,
    tag: str,
    name: str,
    data,
    station,
    starttime,
    cache_dir: Path,
    pbar=None,
    grid_shifts=(0,),
    grid_rule: str = "average",
):
    """:func:`teacher_probabilities` in 1 h pieces, each cached as ``cache_dir/tag/name_piece.npy``.

    Pieces overlap their neighbours by one window on each side so piece edges are not blinded.
    An interrupted run resumes from the pieces already written.
    """
    import obspy

    starttime = obspy.UTCDateTime(starttime)
    folder = Path(cache_dir) / tag
    folder.mkdir(parents=True, exist_ok=True)
    total = data.shape[-1]
    pad = 6000
    out = np.full((3, total), np.nan, dtype=np.float32)
    for piece, c0 in enumerate(range(0, total, TEACHER_CHUNK)):
        c1 = min(c0 + TEACHER_CHUNK, total)
        path = folder / f"{name}_{piece:04d}_{c1 - c0}.npy"
        if path.is_file():
            out[:, c0:c1] = np.load(path)
        else:
            a0, a1 = max(c0 - pad, 0), min(c1 + pad, total)
            probs = teacher_probabilities(
                teacher, data[:, a0:a1], station, starttime + a0 / 100.0, grid_shifts=grid_shifts, grid_rule=grid_rule
            )
            out[:, c0:c1] = probs[:, c0 - a0 : c1 - a0]
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, out[:, c0:c1].astype(np.float16))
            tmp.replace(path)
        if pbar is not None:
            pbar.update(c1 - c0)
    return out


def teacher_pick_targets(probabilities: np.ndarray, threshold: float = 0.3, sigma: int = PICK_SIGMA) -> np.ndarray:
    """Teacher (detection, P, S) probabilities -> the same with P and S as Gaussian pick labels.

    The teacher's picks are extracted as SeisBench's ``picks_from_annotations`` does (trigger at
    ``threshold``, off at half of it, peak = argmax;
    :func:`seisbench_feq.models.picking.peak_window_picks`), and each becomes a Gaussian of height
    1 and ``sigma`` samples, the form of the analyst labels. The teacher's own peaks are wide and often
    low (0.3-0.6): students copying them end up below the pick threshold and imprecise. The
    detection row stays soft; NaN (teacher blinded) stays NaN.
    """
    from ..models.picking import peak_window_picks

    out = np.array(probabilities, dtype=np.float32, copy=True)
    n = out.shape[-1]
    for row in (1, 2):
        values = np.asarray(probabilities[row], dtype=np.float64)
        unknown = np.isnan(values)
        filled = np.nan_to_num(values)
        label = np.zeros(n, dtype=np.float32)
        for _, _, peak in peak_window_picks(filled, threshold):  # the one trigger rule of the package
            lo, hi = max(peak - 5 * sigma, 0), min(peak + 5 * sigma + 1, n)
            gauss = np.exp(-0.5 * ((np.arange(lo, hi) - peak) / sigma) ** 2)
            label[lo:hi] = np.maximum(label[lo:hi], gauss)
        label[unknown] = np.nan
        out[row] = label
    return out


#: Teacher P and S labels closer than this (samples) contradict each other (see mask_ps_conflicts).
PS_CONFLICT_SAMPLES = 50


def mask_ps_conflicts(targets: np.ndarray, separation: int = PS_CONFLICT_SAMPLES, span: int = 100) -> tuple[np.ndarray, int]:
    """Teacher (detection, P, S) pick targets with contradicting P/S labels made unknown.

    On continuous data the teacher often labels one arrival as both P and S (22 % of its consensus
    S labels on the CX training day lie within 0.5 s of a P label); a student taught both fires
    both. Where a P and an S label peak lie within ``separation`` samples, both rows become NaN
    (unknown: no loss) for ``span`` samples around each peak. Returns (targets, conflicts masked).
    """
    from scipy.signal import find_peaks

    out = np.array(targets, dtype=np.float32, copy=True)
    p_peaks = find_peaks(np.nan_to_num(out[1]), height=0.5)[0]
    s_peaks = find_peaks(np.nan_to_num(out[2]), height=0.5)[0]
    conflicts = 0
    if len(p_peaks) and len(s_peaks):
        nearest = np.abs(p_peaks[np.clip(np.searchsorted(p_peaks, s_peaks), 0, len(p_peaks) - 1)] - s_peaks)
        before = np.abs(p_peaks[np.clip(np.searchsorted(p_peaks, s_peaks) - 1, 0, len(p_peaks) - 1)] - s_peaks)
        for s_peak in s_peaks[np.minimum(nearest, before) < separation]:
            lo, hi = max(int(s_peak) - span, 0), min(int(s_peak) + span + 1, out.shape[-1])
            out[1:3, lo:hi] = np.nan
            conflicts += 1
    return out, conflicts


def mask_weak_teacher_picks(
    targets: np.ndarray, data: np.ndarray, min_snr: float, sampling_rate: float = 100.0, span: int = 100
) -> tuple[np.ndarray, int]:
    """Teacher (detection, P, S) pick targets with the labels of arrivals that do not show in the
    data made unknown.

    On the held-out CX hours about 40 % of the teacher's consensus P picks have no energy increase
    (arrival SNR <= 1.5; :func:`seisbench_feq.evaluation.continuous.snr_at`, 2-20 Hz, on the
    vertical for P, the larger horizontal for S), and the original LEQNet picks almost none of
    them. Taught as certain picks, they teach the student to pick noise and coda. Each P or S label
    peak (>= 0.5) of ``data`` (3, T; Z, N, E) with SNR below ``min_snr`` becomes NaN (no loss) in
    its row for ``span`` samples on each side. Returns (targets, labels masked).
    """
    from scipy.signal import find_peaks

    from ..evaluation.continuous import band_pass, snr_at

    out = np.array(targets, dtype=np.float32, copy=True)
    filtered = band_pass(data, sampling_rate)
    masked = 0
    for row, components in ((1, (0,)), (2, (1, 2))):  # P on the vertical, S on the horizontals
        for peak in find_peaks(np.nan_to_num(out[row]), height=0.5)[0]:
            snr = max(snr_at(filtered[c], int(peak), sampling_rate) for c in components)
            if snr < min_snr:  # NaN (no full noise window: near an edge) keeps the label
                out[row, max(int(peak) - span, 0) : int(peak) + span + 1] = np.nan
                masked += 1
    return out, masked


def _teacher_peaks(probabilities: np.ndarray, height: float = 0.5) -> np.ndarray:
    from scipy.signal import find_peaks

    peaks = []
    for row in (1, 2):  # P and S
        values = np.nan_to_num(probabilities[row])
        peaks.append(find_peaks(values, height=height, distance=200)[0])
    return np.sort(np.concatenate(peaks))


def build_distillation_sources(
    teacher_spec: str,
    cx_root: str | None,
    ncedc_root: str | None,
    cache_dir: str | Path,
    in_samples: int = 6000,
    ncedc_test_fraction: float = 0.5,
    split_seed: int = 0,
    val_fraction: float = VAL_FRACTION,
    max_val_windows: int = 256,
    teacher_targets: str = "soft",
    grid_shifts=(0,),
    grid_rule: str = "average",
    mask_conflicts: bool = False,
    pick_sigma: int = PICK_SIGMA,
    shares: dict | None = None,
    teacher_min_snr: float | None = None,
):
    """Training and validation sources for distillation, plus a record of the data used.

    * Continuous data (``cx_root``): the last ``val_fraction`` of each segment (in time) is
      validation; training items are 2-window stretches around teacher P/S peaks ("cx_event") and
      at regular offsets ("cx_random"), cropped at random by the pipeline.
    * NCEDC (``ncedc_root``): only stations that ``split_by_station(test_fraction, seed)`` puts on
      the train side; of those, a further station-hash 15 % is validation.
    * ``teacher_targets``: "soft" (the teacher's probabilities) or "picks" (its picks as Gaussian
      labels, :func:`teacher_pick_targets`).
    * ``mask_conflicts``: teacher P/S labels of one arrival become unknown on the continuous data
      (:func:`mask_ps_conflicts`; training part only, validation keeps them).
    * ``teacher_min_snr``: teacher P/S labels of arrivals with a lower SNR become unknown on the
      continuous data (:func:`mask_weak_teacher_picks`; training part only).
    * ``pick_sigma``: width of the teacher's Gaussian pick labels (``teacher_targets='picks'``).
    Returns ``(train_source, train_weights, val_source, info)``.
    """
    import pandas as pd
    from tqdm import tqdm

    from ..data import (
        ArrayWaveformSource,
        ZNE_FROM_ENZ,
        ncedc_files,
        _station_of,
        is_validation_station,
        ncedc_p_offset,
        read_continuous_segments,
        read_ncedc_npz,
        split_by_station,
    )

    if not cx_root and not ncedc_root:
        raise ValueError("distillation needs --cx-root and/or --ncedc-root")
    if teacher_targets not in ("soft", "picks"):
        raise ValueError(f"teacher_targets={teacher_targets!r}: expected 'soft' or 'picks'")
    teacher = load_teacher(teacher_spec)
    tag = Path(teacher_spec).stem.replace(".", "_")
    if tuple(grid_shifts) != (0,):
        tag += "_grid" + "-".join(str(int(g)) for g in grid_shifts)
        if grid_rule != "average":
            tag += f"_{grid_rule}"
    arrays, train_items, val_items = [], [], []
    info = {
        "teacher": teacher_spec,
        "teacher_targets": teacher_targets,
        "cx_segments": [],
        "cx_stations": [],
        "ncedc_train_stations": [],
    }

    if cx_root:
        segments = read_continuous_segments(cx_root, min_samples=in_samples)
        total = sum(s.data.shape[-1] for s in segments)
        with tqdm(total=total, desc="teacher on continuous data", unit="sample", unit_scale=True) as pbar:
            for seg in segments:
                probs = cached_teacher_probabilities(
                    teacher, tag, seg.name, seg.data, seg.station, seg.starttime, Path(cache_dir), pbar, grid_shifts,
                    grid_rule,
                )  # fmt: skip
                if teacher_targets == "picks":
                    probs = teacher_pick_targets(probs, sigma=pick_sigma)
                n = seg.data.shape[-1]
                split_at = int(n * (1 - val_fraction))
                if mask_conflicts:
                    probs[:, :split_at], masked = mask_ps_conflicts(probs[:, :split_at])
                    info["teacher_ps_conflicts_masked"] = info.get("teacher_ps_conflicts_masked", 0) + masked
                if teacher_min_snr is not None:
                    probs[:, :split_at], masked = mask_weak_teacher_picks(
                        probs[:, :split_at], seg.data[:, :split_at], teacher_min_snr, seg.sampling_rate
                    )
                    info["teacher_weak_picks_masked"] = info.get("teacher_weak_picks_masked", 0) + masked
                index = len(arrays)
                arrays.append(np.concatenate([seg.data, probs]))
                common = {"array": index, "station": seg.station, "analyst_labels": False, "trace_name": seg.name}
                for start in range(0, split_at - 2 * in_samples, in_samples // 2):
                    train_items.append({**common, "start": start, "stop": start + 2 * in_samples, "kind": "cx_random"})
                for peak in _teacher_peaks(probs[:, :split_at]):
                    start = max(int(peak) - in_samples, 0)
                    stop = min(start + 2 * in_samples, split_at)
                    if stop - start >= in_samples:
                        train_items.append({**common, "start": start, "stop": stop, "kind": "cx_event"})
                for start in range(split_at, n - in_samples, in_samples):
                    val_items.append({**common, "start": start, "stop": start + in_samples, "kind": "cx_val"})
                info["cx_segments"].append(f"{seg.name} ({n / 360000:.2f} h)")
                if seg.station not in info["cx_stations"]:
                    info["cx_stations"].append(seg.station)

    if ncedc_root:
        root = Path(ncedc_root)
        names = ncedc_files(root)
        stations = pd.DataFrame({"station": [".".join(_station_of(n)) for n in names]})
        side = split_by_station(stations, test_fraction=ncedc_test_fraction, seed=split_seed)
        train_names = [n for n, s in zip(names, side) if s == "train"]
        info["ncedc_test_stations_held_out"] = sorted(set(stations["station"][side == "test"]))
        for name in tqdm(train_names, desc="teacher on NCEDC train stations"):
            record = read_ncedc_npz(root / name)  # only train-station files are ever opened
            data = record["data"][:, ZNE_FROM_ENZ].T.astype(np.float32)
            station = ".".join(_station_of(name))
            piece = f"ncedc_{name[:-4]}"
            probs = cached_teacher_probabilities(
                teacher, tag, piece, data, station, "2000-01-01", Path(cache_dir), grid_shifts=grid_shifts,
                grid_rule=grid_rule,
            )  # fmt: skip
            if teacher_targets == "picks":
                probs = teacher_pick_targets(probs, sigma=pick_sigma)
            index = len(arrays)
            arrays.append(np.concatenate([data, probs]))
            item = {
                "array": index,
                "station": station,
                "analyst_labels": True,
                "trace_name": name,
                "trace_p_arrival_sample": float(record["itp"]),
                "trace_s_arrival_sample": float(record["its"]),
            }
            if is_validation_station(station, split_seed):
                p0 = record["itp"] - ncedc_p_offset(name)
                val_items.append({**item, "start": p0, "stop": p0 + in_samples, "kind": "ncedc_val"})
            else:
                # the pipeline crops at random: bound the stretch so that short windows still
                # usually hold the picks (for 6000 samples this is the whole 90 s trace)
                start = max(0, record["itp"] - in_samples)
                stop = min(data.shape[-1], record["its"] + in_samples)
                train_items.append({**item, "start": start, "stop": stop, "kind": "ncedc"})
                if station not in info["ncedc_train_stations"]:
                    info["ncedc_train_stations"].append(station)
        info["ncedc_train_stations"].sort()
        info["ncedc_val_stations"] = sorted({i["station"] for i in val_items if i["kind"] == "ncedc_val"})
        info["ncedc_val_files"] = sorted(i["trace_name"] for i in val_items if i["kind"] == "ncedc_val")
        info["teacher_grid_shifts"] = [int(g) for g in grid_shifts]
        if grid_rule != "average":
            info["teacher_grid_rule"] = grid_rule

    if not train_items or not val_items:
        raise ValueError(
            f"distillation data too small: {len(train_items)} training and {len(val_items)} validation items"
            f" (cx_root={cx_root!r}, ncedc_root={ncedc_root!r}); validation needs NCEDC validation stations or"
            " continuous segments with a tail of at least one window"
        )
    train = pd.DataFrame(train_items)
    val = pd.DataFrame(val_items)
    if len(val) > max_val_windows:  # a fixed, evenly spread subset keeps validation cheap
        val = val.iloc[np.linspace(0, len(val) - 1, max_val_windows).astype(int)]
    counts = train["kind"].value_counts()
    shares = {k: v for k, v in (shares or DISTILL_SHARES).items() if k in counts}
    norm = sum(shares.values())
    weights = train["kind"].map(lambda k: shares[k] / norm / counts[k]).to_numpy()
    info["train_items"] = {k: int(v) for k, v in counts.items()}
    info["val_items"] = {k: int(v) for k, v in val["kind"].value_counts().items()}
    return ArrayWaveformSource(arrays, train), weights, ArrayWaveformSource(arrays, val), info
