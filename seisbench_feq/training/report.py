"""Training curves: validation pick F1 against windows seen, from the CSV logs of training runs.

The validation-pick-F1 callback (:mod:`.module`) logs ``val_f1_P``, ``val_f1_S`` and
``windows_seen`` after every validation into ``RUN/logs/version_*/metrics.csv``; a resumed run
writes a new ``version_*`` folder, so all of them are read and joined in order of windows seen.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

CURVE_COLUMNS = [
    "windows_seen", "epoch", "step", "val_f1_P", "val_f1_S", "val_mae_P", "val_mae_S", "val_score", "val_loss",
]


def validation_history(run_dir: str | Path) -> pd.DataFrame:
    """The validation rows of every ``metrics.csv`` below ``run_dir/logs`` (or ``run_dir`` itself).

    Columns :data:`CURVE_COLUMNS` (NaN where a run did not log one); sorted by windows seen. Raises
    ``FileNotFoundError`` naming the folder without logs, ``ValueError`` when no row has ``val_f1_P``.
    """
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("logs/version_*/metrics.csv")) or sorted(run_dir.glob("version_*/metrics.csv"))
    if not files and (run_dir / "metrics.csv").is_file():
        files = [run_dir / "metrics.csv"]
    if not files:
        raise FileNotFoundError(f"no logs/version_*/metrics.csv below {run_dir} (the OUT folder of seisbench-feq train)")
    frames = [pd.read_csv(path) for path in files]
    metrics = pd.concat(frames, ignore_index=True)
    if "val_f1_P" not in metrics.columns or metrics["val_f1_P"].isna().all():
        raise ValueError(
            f"{run_dir}: the logs have no val_f1_P (validation pick F1 is logged for distillation runs with"
            " NCEDC validation stations)"
        )
    rows = metrics[metrics["val_f1_P"].notna()].copy()
    for column in CURVE_COLUMNS:
        if column not in rows.columns:
            rows[column] = float("nan")
    return rows[CURVE_COLUMNS].sort_values(["windows_seen", "step"]).reset_index(drop=True)


def run_label(run_dir: str | Path) -> str:
    """The model of a run (from its summary.json command), else the folder name."""
    run_dir = Path(run_dir)
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            commands = json.loads(summary.read_text()).get("commands", [])
        except (OSError, json.JSONDecodeError):
            commands = []
        for command in commands[-1:]:
            words = str(command).split()
            if "--model" in words and words.index("--model") + 1 < len(words):
                return f"{words[words.index('--model') + 1]} ({run_dir.name})"
    return run_dir.name


def plot_validation_f1(
    run_dirs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None, title: str = ""
) -> Path:
    """One figure: validation P F1 (solid) and S F1 (dashed) against windows seen, one colour per run."""
    from matplotlib.figure import Figure  # no pyplot: no global backend switch

    from ..io.files import atomic_write

    labels = list(labels) if labels else [run_label(d) for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for i, (run_dir, label) in enumerate(zip(run_dirs, labels)):
        history = validation_history(run_dir)
        colour = f"C{i % 10}"
        ax.plot(history["windows_seen"], history["val_f1_P"], "-o", color=colour, ms=3, label=f"{label}: P")
        ax.plot(history["windows_seen"], history["val_f1_S"], "--s", color=colour, ms=3, label=f"{label}: S")
    ax.set_xlabel("training windows seen")
    ax.set_ylabel("validation F1 (0.5 s tolerance)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "Validation pick F1 on the NCEDC validation stations")
    fig.tight_layout()
    out = Path(out)
    suffix = out.suffix.lstrip(".") or "png"
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110, format=suffix))
    return out


def validation_summary(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Per run: validations, windows seen, best P / S / mean F1 and the windows seen at the best mean."""
    labels = list(labels) if labels else [run_label(d) for d in run_dirs]
    rows = []
    for run_dir, label in zip(run_dirs, labels):
        history = validation_history(run_dir)
        mean = (history["val_f1_P"] + history["val_f1_S"]) / 2
        best = int(mean.idxmax())
        rows.append(
            {
                "run": label,
                "validations": len(history),
                "windows_seen": float(history["windows_seen"].max()),
                "best_f1_P": float(history["val_f1_P"].max()),
                "best_f1_S": float(history["val_f1_S"].max()),
                "best_mean_f1": float(mean.max()),
                "windows_at_best": float(history.loc[best, "windows_seen"]),
            }
        )
    return pd.DataFrame(rows).set_index("run")
