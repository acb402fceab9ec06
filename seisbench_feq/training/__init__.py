"""Training and teacher distillation of LEQNet / FEQ1-3: ``seisbench-feq train``.

Two ways to get data:

* **Supervised** on any SeisBench ``WaveformDataset`` (``dataset=PATH``), or on STEAD converted
  offline from a user's ``merged.csv`` + ``merged.hdf5`` (``dataset="stead", stead_basepath=DIR``).
* **Distillation** (``distill=True``): a teacher (the converted original EQTransformer) labels
  continuous data (``cx_root``) and the NCEDC traces of the *training* stations (``ncedc_root``;
  the stations :func:`seisbench_feq.data.split_by_station` puts on the "test" side are never read
  for training). The student learns from the teacher's probabilities (optionally averaged over
  sub-second shifts of its window grid, or turned into Gaussian pick labels), mixed with the
  analyst's Gaussian P/S labels and P-to-S detection box where those exist. Teacher outputs are
  computed once and cached (``cache_dir``).

Both go through the same ``seisbench.generate`` pipeline (:func:`augmentation_pipeline`), the
EqT/LEQNet recipe; loss weights (0.05, 0.40, 0.55) for (detection, P, S); Adam; early stopping and
checkpoint choice on the validation loss or the validation pick F1; CSV logs through Lightning.

Waveforms stay in counts through the pipeline (only demeaned); the *model's own*
``annotate_batch_pre`` normalises each batch in the training step, so training and ``annotate``
see identical inputs by construction.

Stages: :mod:`.augmentations` (targets and augmentations), :mod:`.module` (loss, Lightning
module, validation F1), :mod:`.validation` (validation windows, the continuous validation tail),
:mod:`.datasets` (STEAD and SeisBench folders), :mod:`.distillation`
(teacher and distillation sources), :mod:`.run` (:func:`train`), :mod:`.report` (training curves).
"""

from .augmentations import (
    DETECTION_FACTOR,
    PICK_SIGMA,
    AnalystTargets,
    CombineTargets,
    PolarityFlip,
    RealNoise,
    RotateHorizontals,
    SecondEvent,
    SplitTeacher,
    TimeStretch,
    augmentation_pipeline,
    phase_columns,
    real_noise_pool,
)
from .datasets import ensure_stead, load_waveform_dataset, supervised_splits
from .distillation import (
    DISTILL_SHARES,
    GRID_RULES,
    TEACHER_CHUNK,
    TEACHER_GRID_SHIFTS,
    build_distillation_sources,
    cached_teacher_probabilities,
    load_teacher,
    teacher_pick_targets,
    teacher_probabilities,
)
from .module import LOSS_WEIGHTS, masked_bce, normalized_forward, picker_loss
from .validation import VAL_FRACTION, ContinuousValidation, continuous_validation, validation_pick_windows
from .report import plot_validation_f1, validation_history, validation_summary
from .run import SEISBENCH_REQUIREMENT, TRAIN_DEFAULTS, export_weights, init_history, train, warm_start

__all__ = [name for name in dir() if not name.startswith("__")]
