"""Scoring rules: outcomes per window, precision / recall / F1, residuals, the maximum outputs.

Matching, per window and phase: the highest-probability pick is compared with the analyst pick.
``|pick - analyst| <= tolerance``: true positive. A pick further away: one false positive *and*
one false negative ("wrong"). No pick: one false negative ("missed"). A pick in a window without an
analyst pick of that phase: false positive. Detection: true positive when a detection interval
overlaps the analyst [P, S] interval; detections that all miss it: FP + FN; no detection: FN; any
detection in a noise window: FP. Residuals (pick - analyst, s, positive = late) over the true
positives only: mean, std (ddof=0), MAE and MAPE.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

TOLERANCE_S = 0.5
DEFAULT_THRESHOLDS = {"detection": 0.5, "P": 0.3, "S": 0.3}
TASKS = ("detection", "P", "S")
PHASES = ("P", "S")
QUALITY_BAR_F1 = 0.05  # shipped models' P and S F1 may fall at most this far below the reference
COST_COLUMNS = ("keras_params", "torch_params", "weights_kb", "mflops_per_window", "ms_per_window")
# Per-output statistics of the window maxima (columns <task>_<stat>): a capped output shows as a
# low max_prob and many windows whose maximum is that same value.
OUTPUT_STATS = ("max_prob", "median_window_max", "windows_at_max")


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 = 2 TP / (2 TP + FP + FN); NaN where a ratio is 0 / 0."""

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)


def residual_stats(residuals_s: Sequence[float], arrival_times_s: Sequence[float]) -> dict[str, float]:
    """Mean, std (ddof=0), MAE (s) and MAPE (%) of pick residuals; NaN when there are none.

    ``arrival_times_s`` are the analyst arrival times from the window's first sample (MAPE's
    denominators); they must be positive.
    """
    r = np.asarray(residuals_s, dtype=float)
    t = np.asarray(arrival_times_s, dtype=float)
    if r.shape != t.shape:
        raise ValueError(f"{r.size} residuals but {t.size} arrival times")
    if r.size == 0:
        return {"res_mean_s": math.nan, "res_std_s": math.nan, "mae_s": math.nan, "mape_pct": math.nan}
    if (t <= 0).any():
        raise ValueError("arrival times must be > 0 s from the window start for MAPE")
    return {
        "res_mean_s": float(r.mean()),
        "res_std_s": float(r.std()),
        "mae_s": float(np.abs(r).mean()),
        "mape_pct": float(100.0 * np.mean(np.abs(r) / t)),
    }


def phase_outcomes(pick_samples, true_samples, tolerance_samples: float) -> np.ndarray:
    """Outcome per window: "tp", "wrong" (FP + FN), "missed" (FN), "false" (FP) or "tn".

    ``pick_samples``/``true_samples`` hold one value per window, NaN where there is no pick /
    no analyst pick. A pick exactly ``tolerance_samples`` away is a true positive.
    """
    pick = np.asarray(pick_samples, dtype=float)
    true = np.asarray(true_samples, dtype=float)
    has_pick, has_true = ~np.isnan(pick), ~np.isnan(true)
    within = np.zeros(pick.shape, bool)
    both = has_pick & has_true
    within[both] = np.abs(pick[both] - true[both]) <= tolerance_samples + 1e-9
    out = np.full(pick.shape, "tn", dtype=object)
    out[has_true & within] = "tp"
    out[has_true & has_pick & ~within] = "wrong"
    out[has_true & ~has_pick] = "missed"
    out[~has_true & has_pick] = "false"
    return out


def detection_outcomes(detections: Sequence[Sequence[tuple[float, float]]], p_samples, s_samples) -> np.ndarray:
    """Outcome per window for detection, with the analyst [P, S] interval as the event.

    ``detections[i]`` lists (on, off) sample intervals of window i. A window without P is noise;
    a window with P but no S uses [P, P].
    """
    p = np.asarray(p_samples, dtype=float)
    s = np.asarray(s_samples, dtype=float)
    out = np.full(len(p), "tn", dtype=object)
    for i, intervals in enumerate(detections):
        if np.isnan(p[i]):
            out[i] = "false" if len(intervals) else "tn"
            continue
        start, end = p[i], (s[i] if not np.isnan(s[i]) else p[i])
        if any(on <= end and off >= start for on, off in intervals):
            out[i] = "tp"
        else:
            out[i] = "wrong" if len(intervals) else "missed"
    return out


def count_outcomes(outcomes: np.ndarray) -> dict[str, int]:
    """TP / FP / FN counts (and the two kinds of FN) from :func:`phase_outcomes` outcomes."""
    n = {k: int(np.sum(outcomes == k)) for k in ("tp", "wrong", "missed", "false")}
    return {
        "tp": n["tp"],
        "fp": n["wrong"] + n["false"],
        "fn": n["wrong"] + n["missed"],
        "missed": n["missed"],
        "wrong": n["wrong"],
    }


def _check_inputs(waveforms: np.ndarray, metadata: pd.DataFrame) -> float:
    if waveforms.ndim != 3:
        raise ValueError(f"waveforms must be (windows, channels, samples), got shape {waveforms.shape}")
    if len(waveforms) != len(metadata):
        raise ValueError(f"{len(waveforms)} waveforms but {len(metadata)} metadata rows")
    missing = {"p_sample", "s_sample"} - set(metadata.columns)
    if missing:
        raise KeyError(f"metadata lacks the column(s) {sorted(missing)} (analyst pick sample in the window)")
    bad = ~np.isfinite(waveforms).all(axis=(1, 2))
    if bad.any():
        names = metadata.get("trace_name", pd.Series(range(len(metadata)))).to_numpy()[bad]
        raise ValueError(f"{bad.sum()} window(s) hold NaN or inf samples: {list(names[:5])}")
    rates = set(metadata["sampling_rate"].unique()) if "sampling_rate" in metadata.columns else {100.0}
    if len(rates) != 1:
        raise ValueError(f"windows at several sampling rates {sorted(rates)}: evaluate each rate separately")
    return float(rates.pop())


def score_picks(
    picks: pd.DataFrame,
    metadata: pd.DataFrame,
    tolerance_s: float = TOLERANCE_S,
    sampling_rate: float = 100.0,
    phases: Sequence[str] = PHASES,
) -> dict[str, float]:
    """One table row from per-window ``picks`` (rows aligned with ``metadata``).

    Phases not in ``phases`` (a picker without that output, e.g. S for STA/LTA) get NaN scores,
    not zeros.
    """
    if len(picks) != len(metadata):
        raise ValueError(f"{len(picks)} pick rows for {len(metadata)} windows")
    tol = tolerance_s * sampling_rate
    p_true = metadata["p_sample"].to_numpy(float)
    s_true = metadata["s_sample"].to_numpy(float)
    row: dict[str, float] = {"n_windows": len(metadata), "n_P": int((~np.isnan(p_true)).sum())}
    row["n_S"] = int((~np.isnan(s_true)).sum())
    det = count_outcomes(detection_outcomes(list(picks["detections"]), p_true, s_true))
    for key, value in det.items():
        row[f"detection_{key}"] = value
    row["detection_precision"], row["detection_recall"], row["detection_f1"] = precision_recall_f1(
        det["tp"], det["fp"], det["fn"]
    )
    for phase, true in (("P", p_true), ("S", s_true)):
        if phase not in phases:
            for key in ("tp", "fp", "fn", "missed", "wrong", "precision", "recall", "f1"):
                row[f"{phase}_{key}"] = math.nan
            row.update({f"{phase}_{key}": math.nan for key in residual_stats([], [])})
            continue
        pick = picks[f"{phase}_sample"].to_numpy(float)
        outcomes = phase_outcomes(pick, true, tol)
        counts = count_outcomes(outcomes)
        for key, value in counts.items():
            row[f"{phase}_{key}"] = value
        row[f"{phase}_precision"], row[f"{phase}_recall"], row[f"{phase}_f1"] = precision_recall_f1(
            counts["tp"], counts["fp"], counts["fn"]
        )
        tp = outcomes == "tp"
        stats = residual_stats((pick[tp] - true[tp]) / sampling_rate, true[tp] / sampling_rate)
        for key, value in stats.items():
            row[f"{phase}_{key}"] = value
    for task, true in (("detection", p_true), ("P", p_true), ("S", s_true)):
        row.update(output_stats(picks, task, true))
    return row


def output_stats(picks: pd.DataFrame, task: str, true_samples=None) -> dict[str, float]:
    """``<task>_max_prob`` (the highest output over all windows), ``<task>_median_window_max``
    (median over the windows with an analyst pick of the phase of each window's maximum) and
    ``<task>_windows_at_max`` (windows whose maximum is within 1e-4 of the overall maximum).

    Needs the ``<task>_max`` column that :func:`~seisbench_feq.evaluation.pickers.picks_from_probabilities`
    writes; NaN for pickers without it (STA/LTA).
    """
    column = f"{task}_max"
    empty = {f"{task}_{key}": math.nan for key in OUTPUT_STATS}
    if column not in picks.columns:
        return empty
    maxima = picks[column].to_numpy(float)
    if not np.isfinite(maxima).any():
        return empty
    top = float(np.nanmax(maxima))
    labelled = maxima if true_samples is None else maxima[~np.isnan(np.asarray(true_samples, float))]
    labelled = labelled[np.isfinite(labelled)]
    return {
        f"{task}_max_prob": top,
        f"{task}_median_window_max": float(np.median(labelled)) if len(labelled) else math.nan,
        f"{task}_windows_at_max": int(np.sum(np.abs(maxima - top) <= 1e-4)),
    }


def score_table(
    picks_by_model: Mapping[str, pd.DataFrame],
    metadata: pd.DataFrame,
    tolerance_s: float = TOLERANCE_S,
    sampling_rate: float = 100.0,
    phases_by_model: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """:func:`score_picks` for several models on the same windows, as a table indexed by model."""
    phases_by_model = phases_by_model or {}
    rows = {
        name: score_picks(picks, metadata, tolerance_s, sampling_rate, phases_by_model.get(name, PHASES))
        for name, picks in picks_by_model.items()
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table


def _plain(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value


def scores_for_json(row: pd.Series | Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready nested dict of one :func:`evaluate_models` row (NaN -> None).

    ``{"n_windows", "tolerance_s", "thresholds": {...}, "detection": {precision, recall, f1, tp,
    fp, fn, missed, wrong}, "P": {... , res_mean_s, res_std_s, mae_s, mape_pct}, "S": {...},
    "cost": {keras_params, torch_params, weights_kb, mflops_per_window, ms_per_window}}``
    (``cost`` only when the row has it).
    """
    row = dict(row)
    out: dict[str, Any] = {
        "n_windows": _plain(row.get("n_windows")),
        "tolerance_s": _plain(row.get("tolerance_s", TOLERANCE_S)),
        "thresholds": {task: _plain(row.get(f"threshold_{task}")) for task in TASKS},
    }
    for task in TASKS:
        prefix = f"{task}_"
        out[task] = {key[len(prefix) :]: _plain(value) for key, value in row.items() if key.startswith(prefix)}
        for key in ("tp", "fp", "fn", "missed", "wrong", "windows_at_max"):  # counts stay integers (CSV round trips give floats)
            if out[task].get(key) is not None:
                out[task][key] = int(out[task][key])
    if out["n_windows"] is not None:
        out["n_windows"] = int(out["n_windows"])
    if any(key in row for key in COST_COLUMNS):
        out["cost"] = {key: _plain(row.get(key)) for key in COST_COLUMNS}
        for key in ("keras_params", "torch_params"):
            if out["cost"][key] is not None:
                out["cost"][key] = int(out["cost"][key])
    return out


def quality_bar(table: pd.DataFrame, reference: str, margin: float = QUALITY_BAR_F1) -> pd.DataFrame:
    """P and S F1 of every other scored model against ``reference``'s: pass when >= ref - margin.

    ``margin_*`` = F1 - (reference F1 - margin): how far above (+) or below (-) the bar.
    Models without S scores (STA/LTA) are left out.
    """
    if reference not in table.index:
        raise KeyError(f"reference model {reference!r} is not in the table ({list(table.index)})")
    ref = table.loc[reference]
    rows = []
    for name, row in table.iterrows():
        if name == reference or pd.isna(row.get("S_f1")):
            continue
        out = {"model": name}
        for phase in PHASES:
            out[f"{phase}_f1"] = row[f"{phase}_f1"]
            out[f"{phase}_ref_f1"] = ref[f"{phase}_f1"]
            out[f"{phase}_margin"] = row[f"{phase}_f1"] - (ref[f"{phase}_f1"] - margin)
        out["passes"] = bool(out["P_margin"] >= -1e-12 and out["S_margin"] >= -1e-12)
        rows.append(out)
    return pd.DataFrame(rows)
