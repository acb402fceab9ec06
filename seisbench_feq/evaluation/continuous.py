"""The continuous-data check: picks of each model on continuous hours, through its own ``classify``.

For every model (default ``classify`` settings: what users run) and every three-component file:

(a) **grid artefacts**: the share of P and of S picks that lie on whole seconds counted from the
    stream's start (within one sample: 3 of 100 positions, so chance is 3 %). EQTransformer learned
    STEAD's "P on a whole second" prior and puts most of its picks there on continuous data;
(b) **S on P**: the share of S picks within ``tolerance_s`` of a P pick of the same station;
(c) **agreement with a grid-free reference**: the reference model (e.g. the converted original EqT)
    annotates the stream ``shifts`` times, each time starting a fraction of a second later
    (0, 12, 25, ... samples for 8 shifts); the outputs are averaged on the common sample grid, which
    keeps real arrivals (they stay put) and divides the window-grid artefacts (they move with the
    start). Its picks come from the averaged annotation with SeisBench's trigger rule and the
    reference's own thresholds. Reported both ways: the share of the reference's P (S) picks that
    the model matches within ``tolerance_s``, and the share of the model's picks the reference has;
(d) **false picks on noise**: picks per hour in the blocks of ``noise_block_s`` (10 minutes) that
    hold no reference pick, the quietest parts of the data.

Each reference pick also gets the signal-to-noise ratio of its arrival (:func:`arrival_snr`), and
(c) is repeated for the *clear* reference picks (``snr >= CLEAR_SNR``). On the held-out CX hours
about 40 % of EqT's consensus P picks show no energy increase at all (SNR <= 1.5 on the vertical,
2-20 Hz, ``snr < WEAK_SNR``; checked on plots), and the original LEQNet, which scores close to EqT
on the NCEDC windows, matches almost none of them: much of the full reference is EqT's own output
on noise and coda.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .pickers import model_thresholds

logger = logging.getLogger(__name__)

TOLERANCE_S = 0.5
NOISE_BLOCK_S = 600.0
DEFAULT_SHIFTS = 8
REFERENCE_RULES = ("average", "consensus")
PICK_FRAME_COLUMNS = ["model", "file", "trace_id", "phase", "time", "probability"]
CLEAR_SNR = 3.0
WEAK_SNR = 1.5  # below this a "pick" shows no energy increase (plotted beside the clear ones)
SNR_BAND_HZ = (2.0, 20.0)
SNR_NOISE_S = (5.0, 0.3)  # noise: from 5 s to 0.3 s before the pick (room for a late pick)
SNR_SIGNAL_S = 2.0


@dataclass
class ContinuousResult:
    """``table``: one row per model (the reference's averaged picks first); ``picks``: every pick."""

    table: pd.DataFrame
    picks: pd.DataFrame
    files: list[str]
    hours: float
    noise_hours: float
    reference_label: str
    shifts: list[int] = field(default_factory=list)
    noise_block_s: float = NOISE_BLOCK_S


def grid_shifts(n: int, sampling_rate: float = 100.0) -> list[int]:
    """``n`` start offsets (samples) spread evenly over one second: 8 -> 0, 12, 25, 38, 50, 62, 75, 88."""
    if n < 1:
        raise ValueError(f"shifts={n}: need at least 1")
    return sorted({int(math.floor(k * sampling_rate / n + 0.5)) for k in range(n)})


def continuous_file_paths(folders: Sequence[str | Path]) -> dict[str, Path]:
    """``"folder/file" -> path`` of every waveform file in ``folders`` (sorted), the names the
    continuous check reports files by."""
    found = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"continuous data folder {folder} does not exist")
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"no waveform files in {folder}")
        found.update({f"{folder.name}/{path.name}": path for path in files})
    return found


def read_continuous_file(path: Path):
    """``obspy.read`` with an error that names the file."""
    import obspy

    try:
        return obspy.read(str(path))
    except Exception as err:  # ObsPy raises many types for unreadable files
        raise ValueError(f"cannot read waveform file {path}: {err}") from err


def read_continuous_files(folders: Sequence[str | Path], max_seconds: float | None = None) -> list[tuple[str, "object"]]:
    """``(name, Stream)`` per waveform file in ``folders`` (sorted), trimmed to ``max_seconds`` from its start."""
    found = []
    for name, path in continuous_file_paths(folders).items():
        stream = read_continuous_file(path)
        if max_seconds:
            start = min(tr.stats.starttime for tr in stream)
            stream.trim(start, start + max_seconds)
        found.append((name, stream))
    return found


def _picks_frame(picks, model: str, file: str) -> pd.DataFrame:
    rows = [
        {
            "model": model,
            "file": file,
            "trace_id": p.trace_id,
            "phase": p.phase,
            "time": p.peak_time,
            "probability": float(p.peak_value) if p.peak_value is not None else math.nan,
        }
        for p in picks
    ]
    return pd.DataFrame(rows, columns=PICK_FRAME_COLUMNS)


def classify_picks(model, stream, model_label: str, file: str, **classify_kwargs) -> pd.DataFrame:
    """The picks of ``model.classify(stream, **classify_kwargs)`` (default settings without them)."""
    output = model.classify(stream, **classify_kwargs)
    picks = getattr(output, "picks", output)
    return _picks_frame(picks, model_label, file)


def averaged_annotations(model, stream, shifts: Sequence[int]):
    """``model.annotate`` of ``stream`` started ``shift`` samples late, for each shift, averaged.

    Returns an ObsPy Stream like one ``annotate`` output, on the sample grid of the unshifted stream;
    each sample is the mean of the annotations that cover it.
    """
    import obspy

    start = min(tr.stats.starttime for tr in stream)
    sums: dict[str, tuple[obspy.Trace, np.ndarray, np.ndarray]] = {}
    for shift in shifts:
        rate = stream[0].stats.sampling_rate
        part = stream.slice(start + shift / rate) if shift else stream.copy()
        for trace in model.annotate(part):
            fs = trace.stats.sampling_rate
            key = trace.id
            if key not in sums:
                n = int(round((max(tr.stats.endtime for tr in stream) - start) * fs)) + 1
                header = trace.stats.copy()
                header.starttime = start
                sums[key] = (obspy.Trace(np.zeros(n, np.float32), header), np.zeros(n), np.zeros(n))
            _, total, count = sums[key]
            offset = int(round((trace.stats.starttime - start) * fs))
            values = np.asarray(trace.data, dtype=np.float64)
            lo, hi = max(offset, 0), min(offset + len(values), len(total))
            if hi > lo:
                total[lo:hi] += values[lo - offset : hi - offset]
                count[lo:hi] += 1
    out = obspy.Stream()
    for trace, total, count in sums.values():
        covered = np.flatnonzero(count)
        if not len(covered):
            continue
        lo, hi = covered[0], covered[-1] + 1
        trace.data = (total[lo:hi] / np.maximum(count[lo:hi], 1)).astype(np.float32)
        trace.stats.starttime = start + lo / trace.stats.sampling_rate
        out += trace
    return out


def reference_picks(model, stream, shifts: Sequence[int], label: str, file: str) -> pd.DataFrame:
    """Picks of the grid-averaged annotation (SeisBench's trigger rule, the model's thresholds)."""
    from seisbench.models import WaveformModel

    annotations = averaged_annotations(model, stream, shifts)
    frames = []
    for phase in ("P", "S"):
        selected = annotations.select(channel=f"*_{phase}")
        picks = WaveformModel.picks_from_annotations(selected, model_thresholds(model)[phase], phase)
        frames.append(_picks_frame(picks, label, file))
    return pd.concat(frames, ignore_index=True)


def consensus_positions(picks: Sequence[tuple[float, int]], n_shifts: int, span: float) -> list[float]:
    """Consensus of picks made on several shifted grids: ``picks`` are (position, shift) pairs of one
    phase and station. Positions within ``span`` of the first of a group form one group; a group
    with picks of at least half of the ``n_shifts`` shifts gives one position, the median of its
    members. Returns the positions, sorted."""
    needed = max(1, (n_shifts + 1) // 2)
    out: list[float] = []
    group: list[tuple[float, int]] = []
    for item in [*sorted(picks), None]:
        if item is not None and (not group or item[0] - group[0][0] <= span):
            group.append(item)
            continue
        if group and len({shift for _, shift in group}) >= needed:
            out.append(float(np.median([position for position, _ in group])))
        group = [item] if item is not None else []
    return out


def consensus_picks(
    model, stream, shifts: Sequence[int], label: str, file: str, tolerance_s: float = TOLERANCE_S
) -> pd.DataFrame:
    """Grid-free picks by consensus: ``model.annotate`` once per start shift, SeisBench's trigger
    rule on each, and a pick wherever at least half of the shifts pick the phase within
    ``tolerance_s`` of each other on the same station, at the median of their times.

    A pick that moves with the window grid lands at a different place for each shift; the median
    over evenly spread shifts cancels that. Picks only one shift makes (artefacts) are dropped.
    """
    from seisbench.models import WaveformModel

    start = min(tr.stats.starttime for tr in stream)
    rate = stream[0].stats.sampling_rate
    per_shift = []
    for shift in shifts:
        part = stream.slice(start + shift / rate) if shift else stream.copy()
        annotations = model.annotate(part)
        for phase in ("P", "S"):
            selected = annotations.select(channel=f"*_{phase}")
            for pick in WaveformModel.picks_from_annotations(selected, model_thresholds(model)[phase], phase):
                per_shift.append((pick.trace_id, phase, float(pick.peak_time - start), float(pick.peak_value), shift))
    rows = []
    frame = pd.DataFrame(per_shift, columns=["tid", "phase", "t", "p", "shift"])
    for (trace_id, phase), group in frame.groupby(["tid", "phase"]):
        for t in consensus_positions(list(zip(group["t"], group["shift"])), len(shifts), 2 * tolerance_s):
            near = group[(group["t"] - t).abs() <= 2 * tolerance_s]
            rows.append(
                {"model": label, "file": file, "trace_id": trace_id, "phase": phase, "time": start + t,
                 "probability": float(near["p"].mean())}  # fmt: skip
            )
    return pd.DataFrame(rows, columns=PICK_FRAME_COLUMNS)


def band_pass(data: np.ndarray, sampling_rate: float) -> np.ndarray:
    """Demeaned, zero-phase ``SNR_BAND_HZ`` band-pass (Butterworth, 4 corners) along the last axis.

    On arrays rather than ObsPy's ``Stream.filter`` because the training mask
    (``training.distillation.mask_weak_teacher_picks``) works on arrays and must measure the
    same SNR as the evaluation."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, SNR_BAND_HZ, btype="bandpass", fs=sampling_rate, output="sos")
    data = np.asarray(data, dtype=np.float64)
    return sosfiltfilt(sos, data - data.mean(axis=-1, keepdims=True), axis=-1)


def snr_at(filtered: np.ndarray, sample: int, sampling_rate: float) -> float:
    """RMS of ``SNR_SIGNAL_S`` after ``sample`` over the RMS of the noise window before it
    (``SNR_NOISE_S``) of one band-passed row; NaN where either window is not 90 % inside it."""
    noise_from, noise_to = (max(sample - int(s * sampling_rate), 0) for s in SNR_NOISE_S)
    noise = filtered[noise_from:noise_to]
    signal = filtered[max(sample, 0) : sample + int(SNR_SIGNAL_S * sampling_rate)]
    noise_needed = 0.9 * (SNR_NOISE_S[0] - SNR_NOISE_S[1]) * sampling_rate
    if len(noise) < noise_needed or len(signal) < 0.9 * SNR_SIGNAL_S * sampling_rate:
        return math.nan
    noise_rms = float(np.sqrt(np.mean(np.square(noise))))
    signal_rms = float(np.sqrt(np.mean(np.square(signal))))
    return signal_rms / noise_rms if noise_rms > 0 else math.inf


def band_passed(stream):
    """``stream`` split at gaps (masked data cannot be filtered), each piece :func:`band_pass`-ed."""
    out = stream.copy().split()
    for trace in out:
        trace.data = band_pass(trace.data, trace.stats.sampling_rate)
    return out


def arrival_snr(filtered, trace_id: str, time, phase: str) -> float:
    """:func:`snr_at` of a pick of a :func:`band_passed` stream: on the vertical for P, the larger
    of the other components for S. NaN where no piece of data holds both windows."""
    components = [tr for tr in filtered if tr.id.rsplit(".", 1)[0] == trace_id]
    vertical = [tr for tr in components if tr.stats.channel.endswith("Z")]
    if phase == "P":
        components = vertical or components
    else:
        components = [tr for tr in components if tr not in vertical] or components
    ratios = []
    for trace in components:
        rate = trace.stats.sampling_rate
        ratio = snr_at(trace.data, int(round((time - trace.stats.starttime) * rate)), rate)
        if not math.isnan(ratio):
            ratios.append(ratio)
    return max(ratios) if ratios else math.nan


def reference_snr(reference: pd.DataFrame, streams: Mapping[str, object]) -> list[float]:
    """:func:`arrival_snr` of every pick of ``reference`` (its ``file`` names a stream of ``streams``)."""
    filtered = {name: band_passed(stream) for name, stream in streams.items()}
    return [
        arrival_snr(filtered[file], tid, time, phase)
        for file, tid, time, phase in zip(reference["file"], reference["trace_id"], reference["time"], reference["phase"])
    ]


def _times(frame: pd.DataFrame, phase: str) -> dict[str, np.ndarray]:
    """trace_id -> sorted pick times (s, POSIX) of one phase."""
    sub = frame[frame["phase"] == phase]
    return {tid: np.sort(np.array([t.timestamp for t in g["time"]])) for tid, g in sub.groupby("trace_id")}


def _matched(times: dict[str, np.ndarray], others: dict[str, np.ndarray], tolerance_s: float) -> tuple[int, int]:
    """(how many of ``times`` have one of ``others`` of the same station within the tolerance, total)."""
    hit = total = 0
    for tid, values in times.items():
        other = others.get(tid, np.zeros(0))
        total += len(values)
        if len(other) and len(values):
            idx = np.clip(np.searchsorted(other, values), 1, len(other)) - 1
            near = np.minimum(np.abs(other[idx] - values), np.abs(other[np.minimum(idx + 1, len(other) - 1)] - values))
            hit += int((near <= tolerance_s + 1e-9).sum())
    return hit, total


def _pct(hit: int, total: int) -> float:
    return 100.0 * hit / total if total else math.nan


def _on_whole_seconds(frame: pd.DataFrame, starts: Mapping[tuple[str, str], object], rate: float) -> np.ndarray:
    """Per pick: True when it lies within one sample of a whole second from its stream's start."""
    flags = []
    for file, tid, time in zip(frame["file"], frame["trace_id"], frame["time"]):
        offset = ((time - starts[(file, tid)]) * rate) % rate
        flags.append(min(offset, rate - offset) <= 1.0 + 1e-6)
    return np.asarray(flags, dtype=bool)


def _noise_blocks(ref: pd.DataFrame, spans: Mapping[tuple[str, str], tuple[object, float]], block_s: float):
    """(file, trace_id, block start, block end) of the blocks without a reference pick."""
    quiet = []
    for (file, tid), (start, duration) in spans.items():
        times = np.array([t - start for f, i, t in zip(ref["file"], ref["trace_id"], ref["time"]) if f == file and i == tid])
        n_blocks = max(1, int(duration // block_s))
        length = min(block_s, duration)
        for k in range(n_blocks):
            lo, hi = k * length, (k + 1) * length
            if not ((times >= lo) & (times < hi)).any():
                quiet.append((file, tid, start + lo, start + hi))
    return quiet


def score_continuous(
    picks: pd.DataFrame,
    reference: pd.DataFrame,
    starts: Mapping[tuple[str, str], object],
    spans: Mapping[tuple[str, str], tuple[object, float]],
    tolerance_s: float = TOLERANCE_S,
    noise_block_s: float = NOISE_BLOCK_S,
    sampling_rate: float = 100.0,
) -> dict[str, float]:
    """One table row: counts, (a) whole-second shares, (b) S near own P, (c) agreement, (d) noise picks."""
    hours = sum(duration for _, duration in spans.values()) / 3600.0
    row: dict[str, float] = {}
    for phase in ("P", "S"):
        sub = picks[picks["phase"] == phase]
        row[f"{phase}_picks"] = len(sub)
        row[f"{phase}_per_hour"] = len(sub) / hours if hours else math.nan
        row[f"{phase}_on_whole_seconds_pct"] = (
            100.0 * _on_whole_seconds(sub, starts, sampling_rate).mean() if len(sub) else math.nan
        )
    s_near_p, n_s = _matched(_times(picks, "S"), _times(picks, "P"), tolerance_s)
    row["S_near_own_P_pct"] = _pct(s_near_p, n_s)
    for phase in ("P", "S"):
        mine, ref = _times(picks, phase), _times(reference, phase)
        row[f"reference_{phase}_matched_pct"] = _pct(*_matched(ref, mine, tolerance_s))
        row[f"{phase}_confirmed_by_reference_pct"] = _pct(*_matched(mine, ref, tolerance_s))
        if "snr" in reference.columns:
            clear = reference[reference["snr"] >= CLEAR_SNR]
            hit, total = _matched(_times(clear, phase), mine, tolerance_s)
            row[f"reference_{phase}_clear"] = total
            row[f"reference_{phase}_clear_matched_pct"] = _pct(hit, total)
    quiet = _noise_blocks(reference, spans, noise_block_s)
    noise_hours = sum(float(hi - lo) for _, _, lo, hi in quiet) / 3600.0
    in_noise = 0
    for file, tid, lo, hi in quiet:
        sel = picks[(picks["file"] == file) & (picks["trace_id"] == tid)]
        in_noise += sum(1 for t in sel["time"] if lo <= t < hi)
    row["noise_hours"] = noise_hours
    row["noise_picks"] = in_noise
    row["noise_picks_per_hour"] = in_noise / noise_hours if noise_hours else math.nan
    return row


def continuous_check(
    models: Mapping[str, object],
    reference_model,
    folders: Sequence[str | Path],
    *,
    reference_label: str = "EqT original (converted)",
    shifts: int = DEFAULT_SHIFTS,
    max_seconds: float | None = None,
    tolerance_s: float = TOLERANCE_S,
    noise_block_s: float = NOISE_BLOCK_S,
    progress: bool = True,
    reference_rule: str = "average",
) -> ContinuousResult:
    """Run the check of this module's docstring on every file in ``folders``.

    ``models``: label -> WaveformModel, each run through its own default ``classify``;
    ``reference_model``: annotated over ``shifts`` sub-second offsets of each stream's start;
    ``max_seconds``: use only the first seconds of each file (quick runs and tests);
    ``reference_rule``: "average" (picks of the averaged annotation) or "consensus"
    (:func:`consensus_picks`).
    """
    if reference_rule not in REFERENCE_RULES:
        raise ValueError(f"reference_rule={reference_rule!r}: expected one of {REFERENCE_RULES}")
    from tqdm.auto import tqdm

    files = read_continuous_files(folders, max_seconds)
    offsets = grid_shifts(shifts)
    how = "averaged" if reference_rule == "average" else "consensus"
    ref_name = f"reference: {reference_label}, {len(offsets)} grid shifts {how}"
    frames, ref_frames = [], []
    starts: dict[tuple[str, str], object] = {}
    spans: dict[tuple[str, str], tuple[object, float]] = {}
    rate = 100.0
    for file, stream in tqdm(files, desc="continuous files", disable=not progress):
        rate = float(stream[0].stats.sampling_rate)
        for trace in stream:
            tid = f"{trace.stats.network}.{trace.stats.station}.{trace.stats.location}"
            start = min(t.stats.starttime for t in stream.select(id=f"{tid}.*"))
            end = max(t.stats.endtime for t in stream.select(id=f"{tid}.*"))
            starts[(file, tid)] = start
            spans[(file, tid)] = (start, float(end - start))
        make_reference = reference_picks if reference_rule == "average" else consensus_picks
        reference_frame = make_reference(reference_model, stream, offsets, ref_name, file)
        reference_frame["snr"] = reference_snr(reference_frame, {file: stream})
        ref_frames.append(reference_frame)
        for label, model in models.items():
            frames.append(classify_picks(model, stream, label, file))
    reference = pd.concat(ref_frames, ignore_index=True)
    all_picks = pd.concat([reference, *frames], ignore_index=True)
    rows = {}
    for label in [ref_name, *models]:
        sub = all_picks[all_picks["model"] == label]
        rows[label] = score_continuous(sub, reference, starts, spans, tolerance_s, noise_block_s, rate)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    hours = sum(duration for _, duration in spans.values()) / 3600.0
    noise_hours = float(table["noise_hours"].iloc[0]) if len(table) else 0.0
    picks_out = all_picks.assign(time=[str(t) for t in all_picks["time"]])
    return ContinuousResult(table, picks_out, [f for f, _ in files], hours, noise_hours, ref_name, offsets, noise_block_s)


def continuous_markdown(result: ContinuousResult) -> str:
    """The continuous-data table (one row per model) and what it measured."""
    from .report import _fmt, markdown_table

    intro = (
        f"{len(result.files)} file(s) ({', '.join(result.files)}), {result.hours:.2f} station-hours;"
        f" noise: {result.noise_hours:.2f} h in blocks of {result.noise_block_s:g} s without a reference pick."
        f" First row: the {result.reference_label.removeprefix('reference: ')} (start offsets"
        f" {', '.join(map(str, result.shifts))} samples)."
        " Models run through their own `classify` with default settings. On whole seconds: within"
        " one sample of a whole second from the stream start (chance 3 %). Clear reference picks:"
        f" arrival SNR >= {CLEAR_SNR:g} (RMS {SNR_SIGNAL_S:g} s after the pick over RMS {SNR_NOISE_S[0]:g} s"
        f" to {SNR_NOISE_S[1]:g} s before it, {SNR_BAND_HZ[0]:g}-{SNR_BAND_HZ[1]:g} Hz, vertical for P,"
        " the larger horizontal for S)."
    )
    if "reference_P_clear" in result.table.columns and len(result.table):
        first = result.table.iloc[0]
        intro += f" Of the reference picks, {int(first['reference_P_clear'])} P and {int(first['reference_S_clear'])} S are clear."
    header = [
        "model", "P / S picks", "P / S on whole s (%)", "S within 0.5 s of own P (%)",
        "reference P / S matched (%)", "clear reference P / S matched (%)",
        "P / S confirmed by reference (%)", "noise picks / h",
    ]  # fmt: skip
    rows = []
    for name, r in result.table.iterrows():
        rows.append(
            [
                name,
                f"{int(r['P_picks'])} / {int(r['S_picks'])}",
                f"{_fmt(r['P_on_whole_seconds_pct'], 1)} / {_fmt(r['S_on_whole_seconds_pct'], 1)}",
                _fmt(r["S_near_own_P_pct"], 1),
                f"{_fmt(r['reference_P_matched_pct'], 1)} / {_fmt(r['reference_S_matched_pct'], 1)}",
                f"{_fmt(r.get('reference_P_clear_matched_pct'), 1)} / {_fmt(r.get('reference_S_clear_matched_pct'), 1)}",
                f"{_fmt(r['P_confirmed_by_reference_pct'], 1)} / {_fmt(r['S_confirmed_by_reference_pct'], 1)}",
                _fmt(r["noise_picks_per_hour"], 1),
            ]
        )
    return intro + "\n\n" + markdown_table(header, rows)
