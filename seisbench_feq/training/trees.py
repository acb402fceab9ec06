"""``seisbench-feq train --model decision-tree``: the decision-tree detector fitted by scikit-learn
on windows drawn from the same sources and augmentations as the networks' training."""

from __future__ import annotations

import datetime
import json
import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

EVENT_LABEL_THRESHOLD = 0.5  # a window "holds an event" when its detection target reaches this
VALIDATION_WINDOWS = 2000


def _windows(generator, indices) -> tuple[np.ndarray, np.ndarray]:
    """Raw windows and 0/1 event labels (detection target >= 0.5 anywhere); unlabelled windows skipped."""
    xs, labels = [], []
    for index in indices:
        sample = generator[int(index)]
        detection = np.asarray(sample["y"][0], dtype=np.float64)
        if not np.isfinite(detection).any():
            continue
        xs.append(np.asarray(sample["X"], dtype=np.float32))
        labels.append(int(np.nanmax(detection) >= EVENT_LABEL_THRESHOLD))
    if not xs:
        raise ValueError("no training window with a known detection target")
    return np.stack(xs), np.asarray(labels, dtype=int)


def window_scores(labels: np.ndarray, probability: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall and F1 of window labels (NaN where a ratio is 0 / 0)."""
    from ..evaluation.scoring import precision_recall_f1

    labels = np.asarray(labels, dtype=int)
    predicted = (np.asarray(probability) >= threshold).astype(int)
    tp = int(((predicted == 1) & (labels == 1)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    return {"windows": int(len(labels)), "events": int(labels.sum()), "accuracy": float((predicted == labels).mean()),
            "precision": precision, "recall": recall, "f1": f1}  # fmt: skip


def fit_decision_tree(model, train_gen, sampler, val_gen, *, args, data_info: dict, out: Path, command: str,
                      started: float, git: str) -> dict:  # fmt: skip
    """Fit ``model`` (a DecisionTreeDetector) on ``sampler``'s windows of ``train_gen``; score it on
    ``val_gen``; write ``out/summary.json`` and, with ``args.save_weights``, the skops weights."""
    windows, labels = _windows(train_gen, list(sampler))
    logger.info("decision tree: %d training windows, %d with an event", len(labels), int(labels.sum()))
    model.fit(windows, labels, random_state=args.seed)
    train_scores = window_scores(labels, model.predict_windows(windows))
    n_val = min(len(val_gen), VALIDATION_WINDOWS)
    val_scores = None
    if n_val:
        val_windows, val_labels = _windows(val_gen, range(n_val))
        val_scores = window_scores(val_labels, model.predict_windows(val_windows))
    summary = {
        "model": "decision-tree",
        "train": train_scores,
        "validation": val_scores,
        "tree_nodes": int(model.tree.tree_.node_count),
        "tree_depth": int(model.tree.get_depth()),
        "wall_minutes": round((time.time() - started) / 60, 2),
        "commands": [command],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"summary": summary, "commands": [command], "data": data_info},
                                                 indent=2, default=str))  # fmt: skip
    if args.save_weights:
        metadata = {
            "training": {
                "command": command,
                "git": git,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "recipe": {
                    "estimator": f"sklearn DecisionTreeClassifier(max_depth={model.max_depth}, random_state={args.seed})",
                    "labels": f"window holds an event: detection target >= {EVENT_LABEL_THRESHOLD}",
                    "windows": "drawn from the training sources through the networks' augmentation pipeline",
                },
                **summary,
            },
            "data": data_info,
        }
        paths = model.save(Path(args.save_weights) / args.weights_name, metadata=metadata)
        print("weights: " + " ".join(str(p) for p in paths))
    print(json.dumps(summary, indent=2))
    return summary
