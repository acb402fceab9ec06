"""Evaluation of pickers: labelled windows (the tables of the EqT / LEQNet / FEQ papers) and continuous data.

``seisbench-feq evaluate`` (:func:`run_evaluation`) and :func:`evaluate_models` score any set of
models on windows with analyst P and S picks (the NCEDC traces through
:func:`seisbench_feq.data.load_ncedc`, or a SeisBench ``WaveformDataset`` folder) and report

- detection, P and S precision / recall / F1 and false-negative counts, under two pick modes
  (SeisBench's ``peak`` rule and EQTransformer's event-gated ``eqt`` rule),
- pick residuals: mean, std, MAE and MAPE; the maximum detection / P / S output,
- Keras and PyTorch parameter counts, weight-file size, FLOPs per window and ms per window,

with an STA/LTA baseline (ObsPy) and the converted original EQTransformer / LEQNet in the same
table. Every window puts the analyst P at a random position with a sub-sample part
(``offset_seed``). :func:`continuous_check` measures pick quality on continuous hours against a
grid-free reference.

Stages: :mod:`.scoring` (rules and metrics), :mod:`.pickers` (probabilities -> picks),
:mod:`.windows` (labelled windows), :mod:`.cache` (resumable picks), :mod:`.run` (the run),
:mod:`.report` (markdown and plots), :mod:`.continuous` (continuous data).
"""

from .cache import picks_key, weights_digest
from .continuous import ContinuousResult, continuous_check, continuous_markdown, grid_shifts
from .pickers import (
    PICK_MODES,
    TIMING_BATCH,
    ModelPicker,
    StaLtaPicker,
    as_picker,
    model_thresholds,
    picks_by_mode,
    picks_from_probabilities,
    window_detections,
    window_picks,
)
from .report import (
    RULES_MARKDOWN,
    markdown_table,
    plot_residuals,
    plot_scores,
    quality_bar_markdown,
    table_markdown,
    window_table,
)
from .run import (
    MODEL_SPEC_HELP,
    _evaluate,
    evaluate_models,
    evaluate_on_ncedc,
    load_model_spec,
    load_models,
    machine_description,
    run_evaluation,
)
from .scoring import (
    COST_COLUMNS,
    DEFAULT_THRESHOLDS,
    PHASES,
    QUALITY_BAR_F1,
    TASKS,
    TOLERANCE_S,
    count_outcomes,
    detection_outcomes,
    output_stats,
    phase_outcomes,
    precision_recall_f1,
    quality_bar,
    residual_stats,
    score_picks,
    score_table,
    scores_for_json,
)
from .windows import NCEDC_WINDOW_NOTE, _p_offset, load_labelled_windows, load_seisbench_windows, window_note

__all__ = [name for name in dir() if not name.startswith("__")]
