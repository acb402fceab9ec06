"""Write the held-out scores of one ``seisbench-feq evaluate`` run into the shipped weights jsons.

    python scripts/record_evaluation.py docs/evaluation_results feq3 leqnet feq1 feq2 cba eqt-gru

Reads ``evaluation.md`` (its command and machine lines), ``scores_test.csv`` (peak rule),
``scores_test_eqt.csv`` (EQTransformer's rule) and ``continuous.csv`` from the evaluation folder and
stores, under the json's ``evaluation`` key, each model's row (matched by the evaluation's model
label, e.g. "FEQ3 (default)") with the git commit of this checkout. Validation scores stay where
training wrote them (``training.best_score``, ``pick_mode_choice``).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path

import pandas as pd

from seisbench_feq.loading import model_label

WEIGHTS = Path(__file__).resolve().parents[1] / "seisbench_feq" / "weights"


def _row(frame: pd.DataFrame, label: str) -> dict | None:
    rows = frame[frame["model"] == label]
    if rows.empty:
        return None
    clean = {}
    for key, value in rows.iloc[0].items():
        value = value.item() if hasattr(value, "item") else value  # NumPy scalars -> Python
        if isinstance(value, float) and math.isnan(value):
            continue
        clean[key] = round(value, 4) if isinstance(value, float) else value
    return clean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="the --out folder of seisbench-feq evaluate")
    parser.add_argument("models", nargs="+", help="shipped model names (weights/NAME/default.json*)")
    args = parser.parse_args()
    results = Path(args.results)
    report = (results / "evaluation.md").read_text().splitlines()
    command = next(line for line in report if line.startswith("Command:")).split("`")[1]
    machine = next(line for line in report if line.startswith("Machine:"))[len("Machine: "):]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    tables = {name: pd.read_csv(results / f"{name}.csv") for name in ("scores_test", "scores_test_eqt", "continuous")
              if (results / f"{name}.csv").is_file()}
    for name in args.models:
        path = next(p for p in (WEIGHTS / name / "default.json.v1", WEIGHTS / name / "default.json") if p.is_file())
        record = json.loads(path.read_text())
        label = model_label(name)
        record["evaluation"] = {
            "command": command,
            "machine": machine,
            "git": commit,
            "data": "held-out NCEDC stations (split_by_station test side) and the four held-out CX hours",
            "model_label": label,
            **{key: _row(frame, label) for key, frame in tables.items()},
        }
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"{path}: evaluation recorded ({', '.join(k for k in tables if record['evaluation'][k])})")


if __name__ == "__main__":
    main()
