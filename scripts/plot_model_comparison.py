"""F1 against model size and against CPU time per station-day, one point per model of an evaluation.

    python scripts/plot_model_comparison.py docs/evaluation_results/scores_test.csv docs/baselines_f1.png

Reads the scores CSV that ``seisbench-feq evaluate`` writes (one row per model). CPU time per
station-day is estimated from the evaluation's ``ms_per_window`` (one batch of real windows, see the
evaluation report's rules) times the windows of a station-day at the models' default 50 % overlap
(86,400 s / 30 s = 2,880); STA/LTA's figure is its filter and ratio over the same windows. The
detection-only baselines have no P/S F1 and show their detection F1 only.
"""

from __future__ import annotations

import argparse
import math

import pandas as pd

WINDOWS_PER_STATION_DAY = 86_400 // 30


def plot(scores: pd.DataFrame, path: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    cpu = scores["ms_per_window"] * WINDOWS_PER_STATION_DAY / 1000.0
    params = scores["torch_params"]
    styles = {"detection_f1": ("s", "detection"), "P_f1": ("o", "P"), "S_f1": ("^", "S")}
    for ax, x, label in ((axes[0], params, "parameters (PyTorch count, log scale)"),
                         (axes[1], cpu, "CPU s per station-day (estimate, log scale)")):
        for column, (marker, name) in styles.items():
            ok = scores[column].notna() & x.notna() & (x > 0)
            ax.scatter(x[ok], scores.loc[ok, column], marker=marker, s=40, label=f"{name} F1", alpha=0.8)
        for k, (model, xv, row) in enumerate(zip(scores["model"], x, scores.itertuples())):
            values = [v for v in (row.detection_f1, row.P_f1, row.S_f1) if isinstance(v, float) and not math.isnan(v)]
            if values and isinstance(xv, float) and not math.isnan(xv) and xv > 0:
                ax.annotate(str(model).replace(" (default)", ""), (xv, min(values)), textcoords="offset points",
                            xytext=(4, -11 if k % 2 else 5), fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 3.0)))
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a short log axis
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: (f"{v / 1000:g}k" if v >= 1000 else f"{v:g}")))
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("F1 on the held-out NCEDC stations")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("Pick and detection F1 against size and cost (one evaluation run)")
    fig.savefig(path, dpi=130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scores", help="scores CSV of seisbench-feq evaluate (scores_test.csv)")
    parser.add_argument("out", help="figure to write (.png, .pdf, .svg)")
    args = parser.parse_args()
    plot(pd.read_csv(args.scores), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
