"""The evaluation report: markdown tables, plots and the long per-window table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .scoring import PHASES, QUALITY_BAR_F1, TASKS, TOLERANCE_S, detection_outcomes, phase_outcomes

RULES_MARKDOWN = """\
- **Windows**: each labelled window (3 x 6000 samples, ZNE, counts, 100 Hz) is passed through the
  model's own `annotate_batch_pre` (its normalisation) and `forward`: one window, one prediction,
  no blinding and no overlap stacking.
- **Windows' P position**: {windows}
- **Picks**, two rules (pick modes) on the same probabilities. `peak`: SeisBench's
  `WaveformModel.picks_from_annotations` / `detections_from_annotations` on the window's
  probability trace (ObsPy `trigger_onset`, on = threshold, off = threshold / 2). `eqt`:
  EQTransformer's event-gated rule: per detection (trigger on = off = detection threshold, at least
  10 samples) the first S peak inside it and the highest P peak between the detection start - 1 s
  and that S - 0.1 s. Thresholds: {thresholds}.
- **Maximum output**: the highest detection / P / S probability over all windows, the median over
  the labelled windows of each window's maximum, and how many windows reach the overall maximum
  (within 1e-4): an output that cannot pass a threshold, or sits at one value, shows here.
- **Matching** (per window and phase): the highest-probability pick is compared with the analyst
  pick. |pick - analyst| <= {tol} s: true positive (TP). A pick further away: one false positive
  *and* one false negative (column "wrong"). No pick: false negative ("missed"). A pick in a
  window without an analyst pick of that phase (noise window): false positive.
- **Detection**: TP when a detection interval overlaps the analyst [P, S] interval; detections that
  all miss it: FP + FN; no detection: FN; any detection in a noise window: FP.
- **Residuals** r = pick - analyst in seconds (positive = late), over the TPs only: mean, std
  (population), MAE = mean |r|, MAPE = 100 x mean(|r| / t), t = analyst arrival time measured from
  the window's first sample.
- **STA/LTA** (ObsPy): Z channel demeaned, band-passed {stalta_band} Hz (2 corners, causal),
  `classic_sta_lta` (STA {sta} s, LTA {lta} s), `trigger_onset` (on {on}, off {off}). Each trigger
  interval is a detection; the P pick is the onset of the trigger with the highest STA/LTA ratio.
  It gives **no S picks** (its S columns are empty).
- **Parameters**: Keras-convention count (`seisbench_feq.keras_param_count`: BatchNorm statistics
  counted, one bias per RNN gate set) and PyTorch trainable count. **Weights** = size of the
  SeisBench `.pt` file (`torch.save` of the state dict).
- **FLOPs per window**: `seisbench_feq.flops`: multiply-accumulates of every convolution, matrix
  product (including attention) and LSTM/GRU weight product, counted at the ATen-operator level
  during one forward pass; 2 FLOPs per MAC; element-wise work not counted.
- **ms per window**: fastest of {repeats} timed forward passes (normalisation + `forward`, after one
  warm-up pass) of a batch of {batch} real windows, divided by {batch}; {threads} torch thread(s),
  {machine}. The fastest run is the one least disturbed by other processes on a shared machine.
  STA/LTA: the filter + `classic_sta_lta` on the Z channel, same batch. "x ref" columns: ratio to
  the reference model measured in the same run.
"""



def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return "—"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def _count(value) -> str:
    return "—" if value is None or pd.isna(value) else f"{int(value):,}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def table_markdown(table: pd.DataFrame, reference: str | None = None) -> str:
    """The scores, residual, maximum-output and cost tables of one split as markdown.

    With a ``reference`` row, the cost table also gives size, FLOPs and time as ratios to it.
    """
    parts = []
    header = ["model"] + [f"{t} P / R / F1" for t in TASKS] + ["FN det / P / S", "of which missed P / S"]
    rows = []
    for name, r in table.iterrows():
        prf = [
            "—" if pd.isna(r[f"{t}_f1"]) else " / ".join(_fmt(r[f"{t}_{m}"]) for m in ("precision", "recall", "f1"))
            for t in TASKS
        ]
        rows.append(
            [
                name,
                *prf,
                " / ".join(_count(r[f"{t}_fn"]) for t in TASKS),
                f"{_count(r['P_missed'])} / {_count(r['S_missed'])}",
            ]
        )
    parts.append(markdown_table(header, rows))
    header = ["model"] + [f"{p} {m}" for p in PHASES for m in ("mean (s)", "std (s)", "MAE (s)", "MAPE (%)")]
    stats = ("res_mean_s", "res_std_s", "mae_s", "mape_pct")
    rows = [
        [name] + [_fmt(r[f"{p}_{m}"], 2 if m == "mape_pct" else 3) for p in PHASES for m in stats]
        for name, r in table.iterrows()
    ]
    parts.append(markdown_table(header, rows))
    if "P_max_prob" in table.columns:
        header = ["model"] + [f"{t} max (median window max, windows at max)" for t in TASKS]
        rows = [
            [name]
            + [
                "—"
                if pd.isna(r[f"{t}_max_prob"])
                else f"{_fmt(r[f'{t}_max_prob'])} ({_fmt(r[f'{t}_median_window_max'])}, {_count(r[f'{t}_windows_at_max'])})"
                for t in TASKS
            ]
            for name, r in table.iterrows()
        ]
        parts.append(markdown_table(header, rows))
    if "ms_per_window" in table.columns:
        ref = table.loc[reference] if reference is not None and reference in table.index else None
        header = ["model", "Keras params", "PyTorch params", "weights (kB)", "MFLOPs / window", "ms / window"]
        if ref is not None:
            header += ["weights x ref", "FLOPs x ref", "time x ref"]
        rows = []
        for name, r in table.iterrows():
            cells = [
                name,
                _count(r["keras_params"]),
                _count(r["torch_params"]),
                _fmt(r["weights_kb"], 1),
                _fmt(r["mflops_per_window"], 1),
                _fmt(r["ms_per_window"], 2),
            ]
            if ref is not None:
                cells += [
                    _fmt(r[key] / ref[key], 2) for key in ("weights_kb", "mflops_per_window", "ms_per_window")
                ]
            rows.append(cells)
        parts.append(markdown_table(header, rows))
    return "\n\n".join(parts)


def quality_bar_markdown(bar: pd.DataFrame, reference: str, margin: float = QUALITY_BAR_F1) -> str:
    if bar.empty:
        return "_no model to compare with the reference_"
    rows = [
        [
            r["model"],
            f"{_fmt(r['P_f1'])} vs {_fmt(r['P_ref_f1'])} ({r['P_margin']:+.3f})",
            f"{_fmt(r['S_f1'])} vs {_fmt(r['S_ref_f1'])} ({r['S_margin']:+.3f})",
            "**pass**" if r["passes"] else "**FAIL**",
        ]
        for _, r in bar.iterrows()
    ]
    intro = (
        f"Bar: P and S F1 at least reference F1 - {margin} (reference: {reference}). "
        "In brackets: the margin to the bar (negative = below it)."
    )
    header = ["model", "P F1 vs reference (margin)", "S F1 vs reference (margin)", "result"]
    return intro + "\n\n" + markdown_table(header, rows)


def _residuals_s(picks: pd.DataFrame, metadata: pd.DataFrame, phase: str, sampling_rate: float) -> np.ndarray:
    r = (picks[f"{phase}_sample"].to_numpy(float) - metadata[f"{phase.lower()}_sample"].to_numpy(float)) / sampling_rate
    return r[~np.isnan(r)]


def plot_residuals(
    picks_by_model: Mapping[str, pd.DataFrame],
    metadata: pd.DataFrame,
    path: str | Path,
    tolerance_s: float = TOLERANCE_S,
    sampling_rate: float = 100.0,
) -> Path:
    """Histograms of pick - analyst residuals: one row per model, columns P and S.

    The x-axis spans the residuals themselves (99th percentile of all models' ``|residual|``, at
    least twice the matching tolerance, at most 30 s), not only the matched ones; the tolerance is
    marked. Residuals beyond the axis are counted in the panel title and drawn in the edge bins."""
    from matplotlib.figure import Figure  # no pyplot: no global backend switch, no figure registry

    names = list(picks_by_model)
    residuals = {(name, phase): _residuals_s(picks_by_model[name], metadata, phase, sampling_rate)
                 for name in names for phase in PHASES}
    everything = np.abs(np.concatenate([r for r in residuals.values()] or [np.zeros(0)]))
    span = 2 * tolerance_s
    if len(everything):
        span = float(min(max(span, np.percentile(everything, 99)), 30.0))
    fig = Figure(figsize=(9, 2.0 + 1.8 * len(names)))
    axes = fig.subplots(len(names), 2, squeeze=False, sharex=True)
    bins = np.linspace(-span, span, 61)
    for i, name in enumerate(names):
        for j, phase in enumerate(PHASES):
            ax = axes[i, j]
            r = residuals[(name, phase)]
            if not len(r):
                ax.text(0.5, 0.5, "no picks", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.hist(np.clip(r, -span, span), bins=bins, color="C0" if phase == "P" else "C3")
            for k, x in enumerate((-tolerance_s, tolerance_s)):
                ax.axvline(x, color="k", ls="--", lw=0.8, label=f"matching tolerance ±{tolerance_s:g} s" if k == 0 else None)
            outside = int((np.abs(r) > span).sum())
            inside = int((np.abs(r) <= tolerance_s).sum())
            ax.set_title(f"{name}, {phase}: {len(r)} picks, {inside} within ±{tolerance_s:g} s"
                         + (f", {outside} beyond ±{span:.2g} s (edge bins)" if outside else ""), fontsize=8)
            ax.set_ylabel("windows", fontsize=8)
    axes[0, 1].legend(fontsize=7, loc="upper right", frameon=False)
    for ax in axes[-1]:
        ax.set_xlabel("pick - analyst (s)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_scores(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Grouped bars of precision, recall and F1 per task and model, each bar labelled with its
    value; the y-axis starts a little below the lowest value (not at 0) so that differences of a
    few hundredths are visible, and says so. The legend sits below the panels."""
    from matplotlib.figure import Figure  # no pyplot: no global backend switch, no figure registry

    names = list(table.index)
    metrics = ("precision", "recall", "f1")
    values = {(name, task): [table.loc[name, f"{task}_{m}"] for m in metrics] for name in names for task in TASKS}
    finite = [v for vs in values.values() for v in vs if not pd.isna(v)]
    low = max(0.0, np.floor((min(finite) - 0.05) * 20) / 20) if finite else 0.0
    fig = Figure(figsize=(13, 4.8))
    axes = fig.subplots(1, 3, sharey=True)
    width = 0.8 / max(1, len(names))
    for ax, task in zip(axes, TASKS):
        for k, name in enumerate(names):
            x = np.arange(3) + (k - (len(names) - 1) / 2) * width
            heights = [low if pd.isna(v) else v for v in values[(name, task)]]
            bars = ax.bar(x, np.array(heights) - low, width, bottom=low, label=name, color=f"C{k % 10}")
            for bar, v in zip(bars, values[(name, task)]):
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_y() + bar.get_height() + 0.003,
                        "n/a" if pd.isna(v) else f"{v:.3f}", ha="center", va="bottom", rotation=90,
                        fontsize=6.5)
        ax.set_xticks(range(3), ["precision", "recall", "F1"])
        ax.set_title(task)
        ax.set_ylim(low, 1.0 + (1.0 - low) * 0.12)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("score" + (f" (axis starts at {low:.2f})" if low > 0 else ""))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=min(len(names), 6),
               fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1 if len(names) <= 6 else 0.16, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def window_table(
    picks_by_model: Mapping[str, pd.DataFrame], metadata: pd.DataFrame, tolerance_s: float, sampling_rate: float
) -> pd.DataFrame:
    """Long per-window table (one row per model and window) with picks, residuals and outcomes."""
    frames = []
    base_cols = [c for c in ("trace_name", "station", "split", "p_sample", "s_sample") if c in metadata.columns]
    for name, picks in picks_by_model.items():
        frame = metadata[base_cols].copy().reset_index(drop=True)
        frame.insert(0, "model", name)
        frame["detection_outcome"] = detection_outcomes(
            list(picks["detections"]), metadata["p_sample"].to_numpy(float), metadata["s_sample"].to_numpy(float)
        )
        frame["detections"] = [";".join(f"{a}-{b}" for a, b in d) for d in picks["detections"]]
        for phase in PHASES:
            true = metadata[f"{phase.lower()}_sample"].to_numpy(float)
            pick = picks[f"{phase}_sample"].to_numpy(float)
            frame[f"{phase}_pick_sample"] = pick
            frame[f"{phase}_value"] = picks[f"{phase}_value"].to_numpy(float)
            frame[f"{phase}_residual_s"] = (pick - true) / sampling_rate
            frame[f"{phase}_outcome"] = phase_outcomes(pick, true, tolerance_s * sampling_rate)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)

