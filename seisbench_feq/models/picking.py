"""The ONE trigger/pick function of the package, on ObsPy annotation streams and on NumPy windows.

Two rules (``pick_mode``):

``"peak"`` (SeisBench's ``picks_from_annotations``)
    Every run of a phase probability that rises to ``threshold`` (and lasts until it falls below
    ``threshold / 2``, ObsPy's ``trigger_onset``) gives one pick at its maximum. No detection needed.
``"eqt"`` (EQTransformer's event-gated rule, ``mseed_predictor._picker`` of the original code)
    Detections are the runs of the detection probability >= ``detection_threshold`` (on and off at
    the same threshold) that last at least 0.1 s. Phase candidates are the local maxima (rising
    edge, ``_detect_peaks(mpd=1)``) >= the phase threshold. For each detection:

    * S: the FIRST S candidate strictly inside the detection;
    * P: the HIGHEST P candidate (probability rounded to 3 decimals; the earliest on ties) after
      the detection start - 1 s and before that S - 0.1 s (before the detection end without S).

    P and S outside every detection are dropped.

P/S conflicts (``min_ps_separation``, seconds; ``classify``'s default 0.5 s for the package models)
    A P and an S pick of one station closer than this cannot both be right: an S-P time under
    0.5 s means a hypocentre within about 4 km of the station. Light models often fire both
    outputs on one arrival of continuous data; :func:`resolve_ps_conflicts` keeps the more
    probable pick of each such pair. 0 keeps every pick.

:func:`picks_from_windows` applies either rule to (N, 3, samples) arrays of (detection, P, S)
probabilities (evaluation); :func:`classify_picks` to the annotation stream of ``classify``.
The ObsPy triggers run piece by piece (:func:`trigger_onsets`): SeisBench's own call of
``trigger_onset`` on a station-day builds several 70 MB temporaries, up to 300 MB when a
probability stays above the off threshold all day; these give the same picks in bounded memory.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

__all__ = [
    "PICK_MODES",
    "trigger_onsets",
    "picks_from_annotations",
    "detections_from_annotations",
    "eqt_window_picks",
    "peak_window_picks",
    "picks_from_windows",
    "classify_picks",
    "resolve_ps_conflicts",
    "WindowPicks",
]

PICK_MODES = ("peak", "eqt")
DEFAULT_THRESHOLDS = {"detection": 0.5, "P": 0.3, "S": 0.3}

TRIGGER_PIECE = 1 << 20  # samples


def trigger_onsets(data: np.ndarray, threshold: float, piece: int = TRIGGER_PIECE) -> list[tuple[int, int]]:
    """``obspy.signal.trigger.trigger_onset(data, threshold, threshold / 2)``, in bounded memory.

    ObsPy's triggers: a trigger switches on at a sample >= ``threshold`` that is not already in a
    trigger and stays on to the last sample of the run of samples >= ``threshold / 2`` (NaN ends a
    run). ``trigger_onset`` runs on pieces of ``piece`` samples; a trigger still on at the end of
    a piece is extended to the end of its run, and the next piece starts after it.
    """
    from obspy.signal.trigger import trigger_onset

    low = threshold / 2
    n = len(data)
    triggers: list[tuple[int, int]] = []
    start = 0
    while start < n:
        stop = min(start + piece, n)
        part = [(start + int(on), start + int(off)) for on, off in trigger_onset(data[start:stop], threshold, low)]
        if part and stop < n and part[-1][1] == stop - 1 and data[stop] >= low:
            stop = _run_end(data, stop, low, piece)  # the last trigger continues past the cut
            part[-1] = (part[-1][0], stop - 1)
        triggers.extend(part)
        start = stop
    return triggers


def _run_end(data: np.ndarray, index: int, low: float, block: int) -> int:
    """First index >= ``index`` where ``data`` is below ``low`` (or NaN), else ``len(data)``."""
    while index < len(data):
        below = np.flatnonzero(~(data[index : index + block] >= low))
        if len(below):
            return index + int(below[0])
        index += block
    return len(data)


def _trace_id(trace) -> str:
    return f"{trace.stats.network}.{trace.stats.station}.{trace.stats.location}"


def picks_from_annotations(annotations, threshold, phase):
    """``WaveformModel.picks_from_annotations`` (same picks) in bounded memory."""
    import seisbench.util as sbu

    picks = []
    for trace in annotations:
        start, rate, data = trace.stats.starttime, trace.stats.sampling_rate, trace.data
        for s0, s1 in trigger_onsets(data, threshold):
            window = data[s0 : s1 + 1]
            peak = s0 + int(np.argmax(window))
            picks.append(
                sbu.Pick(
                    trace_id=_trace_id(trace),
                    start_time=start + s0 / rate,  # trace.times()[i] is i / sampling_rate
                    end_time=start + s1 / rate,
                    peak_time=start + peak / rate,
                    peak_value=np.max(window),
                    phase=phase,
                )
            )
    return sbu.PickList(sorted(picks))


def detections_from_annotations(annotations, threshold):
    """``WaveformModel.detections_from_annotations`` (same detections) in bounded memory."""
    import seisbench.util as sbu

    detections = []
    for trace in annotations:
        start, rate, data = trace.stats.starttime, trace.stats.sampling_rate, trace.data
        for s0, s1 in trigger_onsets(data, threshold):
            detections.append(
                sbu.Detection(
                    trace_id=_trace_id(trace),
                    start_time=start + s0 / rate,
                    end_time=start + s1 / rate,
                    peak_value=np.max(data[s0 : s1 + 1]),
                )
            )
    return sbu.DetectionList(sorted(detections))

def check_pick_mode(pick_mode: str) -> str:
    if pick_mode not in PICK_MODES:
        raise ValueError(f"pick_mode={pick_mode!r}: expected one of {PICK_MODES}")
    return pick_mode


# --- the rules on one window / one aligned segment --------------------------------------------------


def rising_peaks(x: np.ndarray, height: float) -> np.ndarray:
    """EqT's ``_detect_peaks(x, mph=height, mpd=1)``: rising-edge local maxima >= height, ends excluded."""
    dx = np.diff(x)
    ind = np.flatnonzero((np.hstack((dx, 0)) <= 0) & (np.hstack((0, dx)) > 0))
    ind = ind[(ind > 0) & (ind < len(x) - 1)]
    return ind[x[ind] >= height]


def eqt_window_picks(
    detection: np.ndarray,
    p: np.ndarray,
    s: np.ndarray,
    thresholds=(0.5, 0.3, 0.3),
    sampling_rate: float = 100.0,
) -> tuple[list[int], list[int]]:
    """P and S pick samples of aligned (detection, P, S) curves with EqT's event-gated rule.

    ``thresholds``: (detection, P, S). See the module docstring for the rule. Returns (P samples,
    S samples), one P and/or one S per detection at most.
    """
    from obspy.signal.trigger import trigger_onset

    min_length = int(round(0.1 * sampling_rate))  # EqT: 10 samples at 100 Hz
    lead, gap = int(round(1.0 * sampling_rate)), int(round(0.1 * sampling_rate))
    p_peaks = [int(i) for i in rising_peaks(p, thresholds[1]) if i]
    s_peaks = [int(i) for i in rising_peaks(s, thresholds[2]) if i]
    p_picks, s_picks = [], []
    detection = np.nan_to_num(np.asarray(detection, dtype=float), nan=0.0)
    for bg, ed in trigger_onset(detection, thresholds[0], thresholds[0]):
        if ed - bg < min_length:
            continue
        s_in = [i for i in s_peaks if bg < i < ed][:1]
        limit = s_in[0] - gap if s_in else ed
        p_in = [i for i in p_peaks if bg - lead < i < limit]
        if p_in:
            p_picks.append(max(p_in, key=lambda i: (np.round(p[i], 3), -i)))
        s_picks.extend(s_in)
    return p_picks, s_picks


def peak_window_picks(probability: np.ndarray, threshold: float) -> list[tuple[int, int, int]]:
    """SeisBench's rule on one curve: (on, off, peak) samples of every trigger."""
    if not np.isfinite(probability).any():
        return []
    return [(s0, s1, s0 + int(np.argmax(probability[s0 : s1 + 1]))) for s0, s1 in trigger_onsets(probability, threshold)]


class WindowPicks(NamedTuple):
    """Picks of one window: ``detections`` [(on, off)], ``P`` and ``S`` [(sample, probability)] in time order."""

    detections: list
    P: list
    S: list


def picks_from_windows(
    probabilities: np.ndarray,
    thresholds: Mapping[str, float] | None = None,
    pick_mode: str = "peak",
    sampling_rate: float = 100.0,
) -> list[WindowPicks]:
    """Per-window picks of (N, 3, samples) (detection, P, S) probabilities, with either rule.

    Detections are SeisBench's (on at ``detection`` threshold, off at half of it) in both modes;
    a curve that is all NaN (a model without that output) gives nothing.
    """
    check_pick_mode(pick_mode)
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 3 or probabilities.shape[1] != 3:
        raise ValueError(f"probabilities must be (windows, 3, samples), got shape {probabilities.shape}")
    out = []
    for det, p, s in probabilities:
        detections = [(a, b) for a, b, _ in peak_window_picks(det, th["detection"])]
        if pick_mode == "eqt" and np.isfinite(det).any():
            p_idx, s_idx = eqt_window_picks(det, np.nan_to_num(p), np.nan_to_num(s),
                                            (th["detection"], th["P"], th["S"]), sampling_rate)
            if not np.isfinite(p).any():
                p_idx = []
            if not np.isfinite(s).any():
                s_idx = []
        elif pick_mode == "eqt":
            p_idx, s_idx = [], []
        else:
            p_idx = [k for _, _, k in peak_window_picks(p, th["P"])]
            s_idx = [k for _, _, k in peak_window_picks(s, th["S"])]
        out.append(WindowPicks(detections, [(int(k), float(p[k])) for k in sorted(p_idx)],
                               [(int(k), float(s[k])) for k in sorted(s_idx)]))
    return out


# --- the rules on classify's annotation stream ------------------------------------------------------


def _run_around(data: np.ndarray, index: int, low: float) -> tuple[int, int]:
    """First and last sample of the run of ``data >= low`` that holds ``index``."""
    below = ~(data >= low)
    before = np.flatnonzero(below[:index])
    after = np.flatnonzero(below[index + 1 :])
    return (int(before[-1]) + 1 if len(before) else 0), (index + int(after[0]) if len(after) else len(data) - 1)


def _aligned(trace, start, rate: float, n: int) -> np.ndarray:
    """``trace`` on the sample grid of length ``n`` starting at ``start`` (0 outside it)."""
    out = np.zeros(n)
    offset = int(round((trace.stats.starttime - start) * rate))
    lo, hi = max(offset, 0), min(offset + trace.stats.npts, n)
    if lo < hi:
        out[lo:hi] = np.nan_to_num(np.asarray(trace.data[lo - offset : hi - offset], dtype=float))
    return out


def eqt_picks_from_annotations(annotations, model_name: str, thresholds: Mapping[str, float], phases="PS"):
    """EqT's event-gated picks from a ``classify`` annotation stream (channels ``<model>_Detection``,
    ``<model>_P``, ``<model>_S``): a :class:`seisbench.util.PickList`."""
    import seisbench.util as sbu

    picks = []
    p_phase, s_phase = phases[0], phases[1]
    for det_trace in annotations.select(channel=f"{model_name}_Detection"):
        station = dict(network=det_trace.stats.network, station=det_trace.stats.station,
                       location=det_trace.stats.location)
        start, rate, n = det_trace.stats.starttime, det_trace.stats.sampling_rate, det_trace.stats.npts
        curves = {}
        for phase in (p_phase, s_phase):
            curve = np.zeros(n)
            for trace in annotations.select(channel=f"{model_name}_{phase}", **station):
                if trace.stats.endtime >= start and trace.stats.starttime <= det_trace.stats.endtime:
                    curve = np.maximum(curve, _aligned(trace, start, rate, n))
            curves[phase] = curve
        th = (thresholds["detection"], thresholds[p_phase], thresholds[s_phase])
        p_idx, s_idx = eqt_window_picks(np.asarray(det_trace.data, dtype=float), curves[p_phase],
                                        curves[s_phase], th, rate)
        trace_id = _trace_id(det_trace)
        for phase, indices, threshold in ((p_phase, p_idx, th[1]), (s_phase, s_idx, th[2])):
            for k in indices:
                on, off = _run_around(curves[phase], k, threshold / 2)
                picks.append(sbu.Pick(trace_id=trace_id, start_time=start + on / rate, end_time=start + off / rate,
                                      peak_time=start + k / rate, peak_value=float(curves[phase][k]), phase=phase))
    return sbu.PickList(sorted(picks))


def check_ps_separation(seconds) -> float:
    """``min_ps_separation`` as seconds >= 0, or a ValueError naming it."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not np.isfinite(seconds) or seconds < 0:
        raise ValueError(f"min_ps_separation={seconds!r}: expected seconds >= 0 (0 keeps every pick)")
    return float(seconds)


def resolve_ps_conflicts(picks, min_separation_s: float, phases: str = "PS"):
    """Of every P and S pick of one station closer than ``min_separation_s``, drop the less probable.

    Each pair is judged on the picks' own ``peak_value`` (a tie keeps the P); a pick that loses
    any pair is dropped. Returns a sorted ``PickList``.
    """
    import seisbench.util as sbu

    if not check_ps_separation(min_separation_s):
        return sbu.PickList(sorted(picks))
    p_phase, s_phase = phases[0], phases[1]
    dropped = set()
    by_station: dict[str, list] = {}
    for index, pick in enumerate(picks):
        by_station.setdefault(pick.trace_id, []).append((index, pick))
    for members in by_station.values():
        p_picks = sorted(((float(p.peak_time.timestamp), i, p) for i, p in members if p.phase == p_phase),
                         key=lambda item: item[0])
        p_times = np.array([t for t, _, _ in p_picks])
        for j, s in ((j, s) for j, s in members if s.phase == s_phase):
            t = float(s.peak_time.timestamp)
            lo, hi = np.searchsorted(p_times, [t - min_separation_s, t + min_separation_s])
            for p_time, i, p in p_picks[lo:hi]:  # a station-day holds thousands of picks: no P x S loop
                if abs(t - p_time) < min_separation_s:
                    dropped.add(j if (p.peak_value or 0.0) >= (s.peak_value or 0.0) else i)
    return sbu.PickList(sorted(p for k, p in enumerate(picks) if k not in dropped))


def classify_picks(annotations, model_name: str, phases: str, thresholds: Mapping[str, float],
                   pick_mode: str = "peak", min_ps_separation: float = 0.0):
    """Picks of a ``classify`` annotation stream with the chosen rule (a sorted ``PickList``),
    P/S conflicts closer than ``min_ps_separation`` seconds resolved (:func:`resolve_ps_conflicts`)."""
    import seisbench.util as sbu

    check_pick_mode(pick_mode)
    check_ps_separation(min_ps_separation)
    th = {**DEFAULT_THRESHOLDS, **thresholds}
    if pick_mode == "eqt":
        picks = eqt_picks_from_annotations(annotations, model_name, th, phases)
    else:
        picks = sbu.PickList()
        for phase in phases:
            picks += picks_from_annotations(annotations.select(channel=f"{model_name}_{phase}"), th[phase], phase)
    if len(phases) >= 2 and min_ps_separation > 0:
        return resolve_ps_conflicts(picks, min_ps_separation, phases)
    return sbu.PickList(sorted(picks))
