"""Training and teacher distillation of LEQNet / FEQ1-3: ``seisbench-feq train``.

Two ways to get data:

* **Supervised** on any SeisBench ``WaveformDataset`` (``--dataset PATH``), or on STEAD converted
  offline from a user's ``merged.csv`` + ``merged.hdf5`` (``--dataset stead --stead-basepath DIR``).
* **Distillation** (``--distill``): a teacher (the converted original EQTransformer) labels
  continuous data (``--cx-root``) and the NCEDC traces of the *training* stations (``--ncedc-root``;
  the stations :func:`seisbench_feq.data.split_by_station` puts on the "test" side are never read for
  training). The student learns from the teacher's probabilities, mixed with the analyst's Gaussian
  P/S labels and P-to-S detection box where those exist. Teacher outputs are computed once and
  cached (``--cache-dir``).

Both go through the same ``seisbench.generate`` pipeline (:func:`augmentation_pipeline`), the
EqT/LEQNet recipe: random window shift, second event, Gaussian noise, channel drop, gaps; Gaussian
pick labels (sigma 10 samples), detection label from P to S + 0.4 (S - P); loss weights
(0.05, 0.40, 0.55) for (detection, P, S); Adam 1e-3; early stopping on the validation loss,
checkpoints, CSV logs and a progress bar through PyTorch Lightning.

Waveforms stay in counts through the pipeline (only demeaned); the *model's own*
``annotate_batch_pre`` normalises each batch in the training step, so training and ``annotate``
see identical inputs by construction.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import shlex
import subprocess
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

LOSS_WEIGHTS = (0.05, 0.40, 0.55)  # detection, P, S (EqT / LEQNet)
PICK_SIGMA = 10  # samples, Gaussian pick labels
DETECTION_FACTOR = 1.4  # detection box from P to S + 0.4 (S - P)
TEACHER_CHUNK = 360_000  # teacher annotates continuous data in 1 h pieces (progress, resumable cache)
# Shares of each kind of training window in distillation batches.
DISTILL_SHARES = {"cx_event": 0.4, "cx_random": 0.3, "ncedc": 0.3}
SEISBENCH_REQUIREMENT = "0.10.0"


# ------------------------------------------------------------------------------------------------
# seisbench.generate steps: targets and augmentations
# ------------------------------------------------------------------------------------------------


def phase_columns(columns) -> dict[str, str]:
    """``trace_<phase>_arrival_sample`` columns mapped to "P" or "S" by the phase's first letter."""
    mapping = {}
    for col in columns:
        if col.startswith("trace_") and col.endswith("_arrival_sample"):
            phase = col[len("trace_") : -len("_arrival_sample")]
            if phase[:1].upper() in ("P", "S"):
                mapping[col] = phase[:1].upper()
    return mapping


class SplitTeacher:
    """Split stacked rows (waveform + teacher probabilities) after windowing.

    Teacher probabilities travel as extra rows of ``X`` through the window steps, so the same
    random crop applies to both; afterwards rows ``n_components:`` move to ``teacher_key``.
    """

    def __init__(self, n_components: int = 3, key: str = "X", teacher_key: str = "teacher"):
        self.n_components = n_components
        self.key = key
        self.teacher_key = teacher_key

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        state_dict[self.key] = (x[: self.n_components], metadata)
        state_dict[self.teacher_key] = (x[self.n_components :], None)

    def __str__(self):
        return f"SplitTeacher(n_components={self.n_components})"


class AnalystTargets:
    """Analyst labels as (3, W) detection, P, S: SeisBench's Gaussian and detection labellers.

    Rows whose metadata has ``analyst_labels`` False (e.g. unlabelled continuous data) get NaN:
    "unknown", which the loss ignores, rather than "no event".
    """

    def __init__(self, phase_dict: dict[str, str], sigma: int = PICK_SIGMA, factor: float = DETECTION_FACTOR):
        import seisbench.generate as sbg

        self.phase_dict = phase_dict
        p_cols = [c for c, p in phase_dict.items() if p == "P"]
        s_cols = [c for c, p in phase_dict.items() if p == "S"]
        self.picks = None
        if p_cols and s_cols:
            self.picks = sbg.ProbabilisticLabeller(
                label_columns=phase_dict, sigma=sigma, dim=0, noise_column=False, key=("X", "_picks")
            )
            self.detection = sbg.DetectionLabeller(p_cols, s_cols, factor=factor, key=("X", "_det"))
            self.p_index = self.picks.labels.index("P")
            self.s_index = self.picks.labels.index("S")

    def __call__(self, state_dict):
        x, metadata = state_dict["X"]
        width = x.shape[-1]
        if self.picks is None or not metadata.get("analyst_labels", True):
            state_dict["analyst"] = (np.full((3, width), np.nan, dtype=np.float32), None)
            return
        self.picks(state_dict)
        self.detection(state_dict)
        picks = state_dict.pop("_picks")[0]
        detection = state_dict.pop("_det")[0]
        target = np.stack([detection[0], picks[self.p_index], picks[self.s_index]]).astype(np.float32)
        state_dict["analyst"] = (target, None)

    def __str__(self):
        return f"AnalystTargets(sigma={PICK_SIGMA}, factor={DETECTION_FACTOR})"


class CombineTargets:
    """Target ``y`` (3, W) = weighted mean of the analyst and teacher labels that are known.

    Where only one source is known it is used alone; where neither is, ``y`` is NaN (masked).
    """

    def __init__(self, analyst_weight: float = 0.5):
        self.analyst_weight = analyst_weight

    def __call__(self, state_dict):
        analyst = state_dict.pop("analyst")[0]
        teacher = state_dict.pop("teacher", (None, None))[0]
        if teacher is None:
            y = analyst
        else:
            teacher = np.asarray(teacher, dtype=np.float32)
            a_known, t_known = ~np.isnan(analyst), ~np.isnan(teacher)
            w = self.analyst_weight
            y = np.where(a_known & t_known, w * np.nan_to_num(analyst) + (1 - w) * np.nan_to_num(teacher), np.nan)
            y = np.where(a_known & ~t_known, analyst, y)
            y = np.where(~a_known & t_known, teacher, y)
        state_dict["y"] = (y.astype(np.float32), None)

    def __str__(self):
        return f"CombineTargets(analyst_weight={self.analyst_weight})"


class SecondEvent:
    """EqT's "add event": add a scaled, time-shifted copy of the window and of its labels.

    The copy is scaled by 1/U(1, 10) and circularly shifted by 10-90 % of the window, so a second,
    weaker arrival appears; its labels are merged with ``fmax`` (NaN = unknown stays unknown
    only where both are unknown).
    """

    def __init__(self, key: str = "X", label_key: str = "y"):
        self.key = key
        self.label_key = label_key

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        y, y_meta = state_dict[self.label_key]
        width = x.shape[-1]
        shift = np.random.randint(width // 10, 9 * width // 10)
        scale = 1.0 / np.random.uniform(1, 10)
        state_dict[self.key] = (x + scale * np.roll(x, shift, axis=-1), metadata)
        state_dict[self.label_key] = (np.fmax(y, np.roll(y, shift, axis=-1)), y_meta)

    def __str__(self):
        return "SecondEvent(scale=1/U(1,10))"


class TimeStretch:
    """Resample the waveform (and any stacked teacher rows) in time by a factor U(low, high).

    Apparent frequencies and S - P times change together, as for a nearer or farther event of
    another size; analyst pick samples in the metadata are scaled with it. Applied before the
    window is cut, so the stretch never pads. Linear interpolation: the factors stay close to 1,
    where its low-pass effect is small.
    """

    def __init__(self, low: float = 0.8, high: float = 1.25, key: str = "X"):
        self.low, self.high, self.key = low, high, key

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        factor = np.exp(np.random.uniform(np.log(self.low), np.log(self.high)))
        n = x.shape[-1]
        m = max(int(round(n * factor)), 2)
        positions = np.arange(m) / factor
        stretched = np.stack([np.interp(positions, np.arange(n), row) for row in x]).astype(x.dtype)
        metadata = dict(metadata)
        for key, value in list(metadata.items()):
            if key.endswith("_arrival_sample") and value is not None and np.isfinite(value):
                metadata[key] = value * factor
        metadata["trace_npts"] = m
        state_dict[self.key] = (stretched, metadata)

    def __str__(self):
        return f"TimeStretch({self.low}, {self.high})"


class PolarityFlip:
    """Multiply all components by -1 (a valid wavefield: first motions flip, arrivals stay)."""

    def __call__(self, state_dict):
        x, metadata = state_dict["X"]
        state_dict["X"] = (-x, metadata)

    def __str__(self):
        return "PolarityFlip"


class RotateHorizontals:
    """Rotate the N and E rows of a Z, N, E window by a random angle (sensor orientation)."""

    def __call__(self, state_dict):
        x, metadata = state_dict["X"]
        angle = np.random.uniform(0, 2 * np.pi)
        c, s = np.cos(angle), np.sin(angle)
        rotated = x.copy()
        rotated[1] = c * x[1] - s * x[2]
        rotated[2] = s * x[1] + c * x[2]
        state_dict["X"] = (rotated, metadata)

    def __str__(self):
        return "RotateHorizontals"


def augmentation_pipeline(
    in_samples: int,
    phase_dict: dict[str, str],
    train: bool = True,
    teacher_rows: bool = False,
    window_around_picks: bool = True,
    analyst_weight: float = 0.5,
    physical_augmentations: bool = False,
) -> list:
    """The EqT/LEQNet recipe as ``seisbench.generate`` steps; output keys ``X`` (3, W) and ``y`` (3, W).

    ``X`` stays in counts (demeaned): the model's ``annotate_batch_pre`` normalises in the training
    step. ``y`` rows are detection, P, S in [0, 1], NaN where unknown.
    """
    import seisbench.generate as sbg

    steps: list = []
    if train and physical_augmentations:
        steps.append(sbg.OneOf([TimeStretch(), sbg.NullAugmentation()], probabilities=[0.5, 0.5]))
    if train and window_around_picks and phase_dict:
        # EqT "shift event": two thirds of windows are placed around a random pick, then cropped.
        steps.append(
            sbg.OneOf(
                [
                    sbg.WindowAroundSample(
                        list(phase_dict),
                        samples_before=in_samples,
                        windowlen=2 * in_samples,
                        selection="random",
                        strategy="variable",
                    ),
                    sbg.NullAugmentation(),
                ],
                probabilities=[2, 1],
            )
        )
    steps.append(sbg.RandomWindow(windowlen=in_samples, strategy="pad"))
    if teacher_rows:
        steps.append(SplitTeacher())
    steps += [AnalystTargets(phase_dict), CombineTargets(analyst_weight)]
    if train and physical_augmentations:
        steps += [
            sbg.OneOf([PolarityFlip(), sbg.NullAugmentation()], probabilities=[0.5, 0.5]),
            sbg.OneOf([RotateHorizontals(), sbg.NullAugmentation()], probabilities=[0.5, 0.5]),
        ]
    steps.append(sbg.Normalize(demean_axis=-1))
    if train and window_around_picks:
        # EqT's "shift event" (rate 0.99): a circular shift of waveform and labels together. It
        # moves picks even in traces exactly one window long (STEAD), where cropping cannot.
        steps.append(
            sbg.OneOf([sbg.RandomArrayRotation(keys=["X", "y"]), sbg.NullAugmentation()], probabilities=[0.99, 0.01])
        )
    if train:
        # Rates follow EqT's trainer (add_event 0.6 -> 0.3 here: continuous data already holds
        # many overlapping aftershocks; noise 0.3; drop_channel 0.5 -> 0.4; gap 0.2).
        steps += [
            sbg.OneOf([SecondEvent(), sbg.NullAugmentation()], probabilities=[0.3, 0.7]),
            sbg.OneOf([sbg.GaussianNoise(), sbg.NullAugmentation()], probabilities=[0.3, 0.7]),
            sbg.OneOf([sbg.ChannelDropout(), sbg.NullAugmentation()], probabilities=[0.4, 0.6]),
            sbg.OneOf([sbg.AddGap(), sbg.NullAugmentation()], probabilities=[0.2, 0.8]),
        ]
    steps += [sbg.ChangeDtype(np.float32, "X"), sbg.ChangeDtype(np.float32, "y")]
    return steps


# ------------------------------------------------------------------------------------------------
# Loss and Lightning module
# ------------------------------------------------------------------------------------------------


def masked_bce(prediction, target, logits: bool = True, pos_weight: float = 0.0):
    """Mean binary cross-entropy over the samples where ``target`` is not NaN.

    ``pos_weight`` weights each sample by ``1 + pos_weight * target``: picks cover ~0.5 % of a
    window, and without it the pick heads first learn to say "no pick" everywhere and take
    thousands of steps to leave that minimum (measured: no pick within 0.5 s after 250 steps at
    lr 1e-3; 77 % of P within 0.5 s with pos_weight 20 and lr 3e-3, on the same windows).
    """
    import torch
    import torch.nn.functional as F

    known = ~torch.isnan(target)
    target = torch.nan_to_num(target)
    if logits:
        loss = F.binary_cross_entropy_with_logits(prediction, target, reduction="none")
    else:
        loss = F.binary_cross_entropy(prediction.clamp(1e-7, 1 - 1e-7), target, reduction="none")
    if pos_weight:
        loss = loss * (1 + pos_weight * target)
    return (loss * known).sum() / known.sum().clamp(min=1)


def normalized_forward(model, x):
    """The model's own inference normalisation (``annotate_batch_pre``), then ``forward``.

    Returns ``(outputs, logits)``: logits where the model's ``forward`` accepts ``logits=True``
    (numerically safer BCE), probabilities otherwise.
    """
    x = model.annotate_batch_pre(x, {})
    if isinstance(x, tuple):  # (batch, piggyback)
        x = x[0]
    try:
        return model(x, logits=True), True
    except TypeError:
        return model(x), False


def picker_loss(model, x, y, loss_weights=LOSS_WEIGHTS, pos_weight: float = 0.0):
    """Weighted masked BCE over (detection, P, S); returns (total, [per-output])."""
    outputs, logits = normalized_forward(model, x)
    # The detection box covers a large share of the window: only the pick heads need pos_weight.
    parts = [masked_bce(out, y[:, i], logits, pos_weight if i else 0.0) for i, out in enumerate(outputs[:3])]
    total = sum(w * p for w, p in zip(loss_weights, parts))
    return total, parts


@functools.cache
def _lightning_module_class():
    import lightning as L
    import torch

    class PickerModule(L.LightningModule):
        """Wraps any WaveformModel with (detection, P, S) outputs for training."""

        def __init__(
            self, model, lr: float = 1e-3, loss_weights=LOSS_WEIGHTS, pos_weight: float = 0.0, plateau_patience: int = 0
        ):
            super().__init__()
            self.model = model
            self.lr = lr
            self.loss_weights = tuple(loss_weights)
            self.pos_weight = pos_weight
            self.plateau_patience = plateau_patience

        def _step(self, batch, stage):
            total, parts = picker_loss(self.model, batch["X"], batch["y"], self.loss_weights, self.pos_weight)
            on_step = stage == "train"
            self.log(f"{stage}_loss", total, prog_bar=True, on_step=on_step, on_epoch=True)
            for name, part in zip(("det", "p", "s"), parts):
                self.log(f"{stage}_loss_{name}", part, on_step=False, on_epoch=True)
            return total

        def training_step(self, batch, batch_idx):
            return self._step(batch, "train")

        def validation_step(self, batch, batch_idx):
            return self._step(batch, "val")

        def configure_optimizers(self):
            optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
            if not self.plateau_patience:
                return optimizer
            # halve the rate when the validation loss stalls: the budgets here are too short to
            # tune a schedule, and a plateau rule needs no step count
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=0.5, patience=self.plateau_patience
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}

    return PickerModule


def _pick_f1_callback_class():
    import lightning as L

    class ValidationPickF1(L.Callback):
        """P and S F1 of the student on analyst-labelled validation windows, after each validation.

        Logged as ``val_f1_P``, ``val_f1_S``, ``val_f1`` (their mean) and ``windows_seen``, with the
        picking rule of ``seisbench-feq evaluate`` (thresholds 0.3, 0.5 s tolerance), so that
        checkpoints can be chosen on validation stations by what the user will see.
        """

        def __init__(self, waveforms: np.ndarray, metadata, batch_size: int):
            self.waveforms = waveforms
            self.metadata = metadata
            self.batch_size = batch_size

        def on_validation_epoch_end(self, trainer, pl_module):
            from .evaluation import as_picker, score_picks

            picker = as_picker(pl_module.model, progress=False)
            row = score_picks(picker.pick_windows(self.waveforms), self.metadata)
            f1_p, f1_s = float(row["P_f1"]), float(row["S_f1"])
            pl_module.log("val_f1_P", f1_p)
            pl_module.log("val_f1_S", f1_s)
            pl_module.log("val_f1", (f1_p + f1_s) / 2, prog_bar=True)
            pl_module.log("windows_seen", float(trainer.global_step * self.batch_size))

    return ValidationPickF1


def validation_pick_windows(ncedc_root: str, files, seeds=(0, 1, 2)):
    """Windows of the NCEDC validation traces, one per random P position seed (stacked)."""
    import pandas as pd

    from .data import load_ncedc

    names = [f if f.endswith(".npz") else f + ".npz" for f in files]
    parts = [load_ncedc(ncedc_root, offset_seed=1000 + seed, names=names) for seed in seeds]
    return np.concatenate([w for w, _ in parts]), pd.concat([m for _, m in parts], ignore_index=True)


# ------------------------------------------------------------------------------------------------
# Datasets: STEAD, SeisBench folders
# ------------------------------------------------------------------------------------------------


def _deterministic_fraction(names, fraction: float, salt: str) -> np.ndarray:
    import zlib

    return np.array([zlib.crc32(f"{salt}:{n}".encode()) / 2**32 < fraction for n in names], dtype=bool)


def ensure_stead(basepath: str | Path, test_npy: str | Path | None = None, **dataset_kwargs):
    """``seisbench.data.STEAD`` converted offline from ``basepath/merged.csv`` + ``merged.hdf5``.

    SeisBench's converter downloads the EqT test-trace list (``test.npy``) from GitHub. Offline,
    ``test_npy`` supplies that file; without it a deterministic 10 % of trace names (crc32 hash)
    become the test split, written in the same format. All other remote look-ups are answered
    "not available" so SeisBench converts from source. Once converted (in SeisBench's cache,
    ``$SEISBENCH_CACHE_ROOT/datasets/stead``), later calls load the cached files directly.
    """
    from unittest import mock

    import pandas as pd
    import seisbench.data as sbd
    import seisbench.util

    basepath = Path(basepath)
    dataset_kwargs.setdefault("component_order", "ZNE")
    dataset_kwargs.setdefault("sampling_rate", 100)
    if (sbd.STEAD._path_internal() / "metadata.csv").is_file():
        return sbd.STEAD(**dataset_kwargs)
    for name in ("merged.csv", "merged.hdf5"):
        if not (basepath / name).is_file():
            raise FileNotFoundError(f"STEAD source file {basepath / name} is missing (need merged.csv + merged.hdf5)")
    if test_npy is not None and not Path(test_npy).is_file():
        raise FileNotFoundError(f"--stead-test-npy {test_npy} does not exist")

    def offline_download(url, target, *args, **kwargs):
        if str(url).endswith("test.npy"):
            if test_npy is not None:
                names = np.load(test_npy, allow_pickle=False)
            else:
                logger.warning(
                    "no EqT test.npy given: a deterministic %d%% of STEAD trace names (crc32) is the test split", 10
                )
                all_names = pd.read_csv(basepath / "merged.csv", usecols=["trace_name"])["trace_name"].astype(str)
                names = all_names[_deterministic_fraction(all_names, 0.1, "stead-test")]
            np.save(target, np.asarray(names, dtype="U"))
            return
        raise ValueError(f"offline: {url} is not fetched (converting STEAD from source)")

    with mock.patch.object(seisbench.util, "download_http", offline_download):
        return sbd.STEAD(
            compile_from_source=True, download_kwargs={"basepath": str(basepath)}, **dataset_kwargs
        )


def load_waveform_dataset(spec: str, stead_basepath=None, stead_test_npy=None):
    """``"stead"`` (converted offline) or the path of a SeisBench-format dataset folder."""
    import seisbench.data as sbd

    if spec.lower() == "stead":
        if stead_basepath is None and not (sbd.STEAD._path_internal() / "metadata.csv").is_file():
            raise ValueError("--dataset stead needs --stead-basepath DIR (with merged.csv and merged.hdf5)")
        return ensure_stead(stead_basepath, stead_test_npy)
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"--dataset {spec}: not 'stead' and not a SeisBench dataset folder")
    if not any(path.glob("metadata*.csv")):
        raise FileNotFoundError(f"--dataset {spec}: no metadata*.csv (SeisBench format: metadata.csv + waveforms.hdf5)")
    return sbd.WaveformDataset(path, component_order="ZNE", sampling_rate=100)


def supervised_splits(dataset, val_fraction: float = 0.1):
    """(train, dev) parts: the dataset's own ``split`` column, else a deterministic hash split.

    With station columns the hash split holds out whole stations; evaluation sets should be split
    the same way (:func:`seisbench_feq.data.split_by_station`).
    """
    meta = dataset.metadata
    if "split" in meta.columns and (meta["split"] == "train").any():
        train, dev = dataset.train(), dataset.dev()
        if len(dev):
            return train, dev
        logger.warning("dataset has no 'dev' rows; holding out a hash split of the train rows for validation")
        dataset, meta = train, train.metadata
    if {"station_network_code", "station_code"} <= set(meta.columns):
        from .data import split_by_station

        is_dev = (split_by_station(meta, test_fraction=val_fraction, seed=101) == "test").to_numpy()
    else:
        is_dev = _deterministic_fraction(meta["trace_name"].astype(str), val_fraction, "dev")
    if is_dev.all() or not is_dev.any():  # tiny sets: fall back to rows
        is_dev = _deterministic_fraction(meta["trace_name"].astype(str), val_fraction, "dev-rows")
        if not is_dev.any():
            is_dev[-1] = True
    return dataset.filter(~is_dev, inplace=False), dataset.filter(is_dev, inplace=False)


# ------------------------------------------------------------------------------------------------
# Teacher and distillation data
# ------------------------------------------------------------------------------------------------


def load_teacher(spec: str):
    """The distillation teacher.

    * ``*.h5``: an original Keras EQTransformer file, converted by
      :func:`seisbench_feq.convert.eqtransformer_from_keras`;
    * ``random-eqtransformer``: SeisBench's EQTransformer with random weights (plumbing tests);
    * otherwise a SeisBench weights path prefix (``PREFIX.json`` + ``PREFIX.pt``) of an EQTransformer.

    The teacher is made to normalise each window per channel (demean, divide by the channel's std),
    as the original EqT was trained, whatever its SeisBench ``norm`` setting says.
    """
    import seisbench.models as sbm
    import torch

    if spec == "random-eqtransformer":
        torch.manual_seed(0)
        teacher = sbm.EQTransformer()
    elif spec.endswith(".h5"):
        if not Path(spec).is_file():
            raise FileNotFoundError(f"teacher h5 {spec} does not exist")
        from .convert import eqtransformer_from_keras

        teacher = eqtransformer_from_keras(spec)
    else:
        if not Path(spec + ".json").is_file():
            raise FileNotFoundError(f"teacher {spec}: expected an .h5 file or a SeisBench PREFIX.json/.pt pair")
        teacher = sbm.EQTransformer.load(spec)
    teacher = teacher.cpu().eval()
    if type(teacher).annotate_batch_pre is sbm.EQTransformer.annotate_batch_pre:
        # SeisBench's norm="std" divides all channels by one joint std; EqT was trained per channel.
        from .models import normalize_windows

        def per_channel_std(batch, argdict):
            return normalize_windows(batch, "std")

        teacher.annotate_batch_pre = per_channel_std  # instance attribute: overrides the class hook
    return teacher


# Sub-second shifts (samples) of the teacher's window grid that are averaged. EqT learned STEAD's
# "P on a whole second" prior: on continuous data most of its P peaks sit at whole seconds of its
# window grid and move with the grid, while real arrivals stay put. Averaging over shifted grids
# keeps the real peaks and divides the grid artefacts by the number of shifts.
TEACHER_GRID_SHIFTS = (0, 25, 50, 75)


def teacher_probabilities(
    teacher, data: np.ndarray, station: str, starttime, sampling_rate: float = 100.0, grid_shifts=(0,)
):
    """The teacher's stacked (detection, P, S) over one continuous (3, T) array, via ``annotate``.

    With several ``grid_shifts`` the stream is annotated once per shift of its start (in samples)
    and the outputs are averaged where known. Returns float32 (3, T); NaN where the teacher gives
    nothing (its blinded segment edges).
    """
    import obspy

    from .data import ContinuousSegment

    total = np.zeros((3, data.shape[-1]), dtype=np.float64)
    count = np.zeros((3, data.shape[-1]), dtype=np.int32)
    for shift in grid_shifts:
        start = obspy.UTCDateTime(starttime) + shift / sampling_rate
        segment = ContinuousSegment("teacher", station, start, sampling_rate, data[:, shift:])
        annotations = teacher.annotate(segment.to_stream())
        for row, label in enumerate(teacher.labels[:3]):
            for trace in annotations.select(channel=f"*_{label}"):
                offset = shift + int(round((trace.stats.starttime - start) * sampling_rate))
                values = trace.data.astype(np.float64)
                lo, hi = max(offset, 0), min(offset + len(values), total.shape[-1])
                if hi > lo:
                    total[row, lo:hi] += values[lo - offset : hi - offset]
                    count[row, lo:hi] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def cached_teacher_probabilities(
    teacher, tag: str, name: str, data, station, starttime, cache_dir: Path, pbar=None, grid_shifts=(0,)
):
    """:func:`teacher_probabilities` in 1 h pieces, each cached as ``cache_dir/tag/name_piece.npy``.

    Pieces overlap their neighbours by one window on each side so piece edges are not blinded.
    An interrupted run resumes from the pieces already written.
    """
    import obspy

    starttime = obspy.UTCDateTime(starttime)
    folder = Path(cache_dir) / tag
    folder.mkdir(parents=True, exist_ok=True)
    total = data.shape[-1]
    pad = 6000
    out = np.full((3, total), np.nan, dtype=np.float32)
    for piece, c0 in enumerate(range(0, total, TEACHER_CHUNK)):
        c1 = min(c0 + TEACHER_CHUNK, total)
        path = folder / f"{name}_{piece:04d}_{c1 - c0}.npy"
        if path.is_file():
            out[:, c0:c1] = np.load(path)
        else:
            a0, a1 = max(c0 - pad, 0), min(c1 + pad, total)
            probs = teacher_probabilities(
                teacher, data[:, a0:a1], station, starttime + a0 / 100.0, grid_shifts=grid_shifts
            )
            out[:, c0:c1] = probs[:, c0 - a0 : c1 - a0]
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, out[:, c0:c1].astype(np.float16))
            tmp.replace(path)
        if pbar is not None:
            pbar.update(c1 - c0)
    return out


def teacher_pick_targets(probabilities: np.ndarray, threshold: float = 0.3, sigma: int = PICK_SIGMA) -> np.ndarray:
    """Teacher (detection, P, S) probabilities -> the same with P and S as Gaussian pick labels.

    The teacher's picks are extracted as SeisBench's ``picks_from_annotations`` does (trigger at
    ``threshold``, off at half of it, peak = argmax), and each becomes a Gaussian of height 1 and
    ``sigma`` samples, the form of the analyst labels. The teacher's own peaks are wide and often
    low (0.3-0.6): students copying them end up below the pick threshold and imprecise. The
    detection row stays soft; NaN (teacher blinded) stays NaN.
    """
    from obspy.signal.trigger import trigger_onset

    out = np.array(probabilities, dtype=np.float32, copy=True)
    n = out.shape[-1]
    for row in (1, 2):
        values = np.asarray(probabilities[row], dtype=np.float64)
        unknown = np.isnan(values)
        filled = np.nan_to_num(values)
        label = np.zeros(n, dtype=np.float32)
        for on, off in trigger_onset(filled, threshold, threshold / 2):
            peak = on + int(np.argmax(filled[on : off + 1]))
            lo, hi = max(peak - 5 * sigma, 0), min(peak + 5 * sigma + 1, n)
            gauss = np.exp(-0.5 * ((np.arange(lo, hi) - peak) / sigma) ** 2)
            label[lo:hi] = np.maximum(label[lo:hi], gauss)
        label[unknown] = np.nan
        out[row] = label
    return out


def _teacher_peaks(probabilities: np.ndarray, height: float = 0.5) -> np.ndarray:
    from scipy.signal import find_peaks

    peaks = []
    for row in (1, 2):  # P and S
        values = np.nan_to_num(probabilities[row])
        peaks.append(find_peaks(values, height=height, distance=200)[0])
    return np.sort(np.concatenate(peaks))


def build_distillation_sources(
    teacher_spec: str,
    cx_root: str | None,
    ncedc_root: str | None,
    cache_dir: str | Path,
    in_samples: int = 6000,
    ncedc_test_fraction: float = 0.5,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    max_val_windows: int = 256,
    teacher_targets: str = "soft",
    grid_shifts=(0,),
):
    """Training and validation sources for distillation, plus a record of the data used.

    * Continuous data (``cx_root``): the last ``val_fraction`` of each segment (in time) is
      validation; training items are 2-window stretches around teacher P/S peaks ("cx_event") and
      at regular offsets ("cx_random"), cropped at random by the pipeline.
    * NCEDC (``ncedc_root``): only stations that ``split_by_station(test_fraction, seed)`` puts on
      the train side; of those, a further station-hash 15 % is validation.
    * ``teacher_targets``: "soft" (the teacher's probabilities) or "picks" (its picks as Gaussian
      labels, :func:`teacher_pick_targets`).
    Returns ``(train_source, train_weights, val_source, info)``.
    """
    import pandas as pd
    from tqdm import tqdm

    from .data import (
        ArrayWaveformSource,
        ZNE_FROM_ENZ,
        _ncedc_files,
        _station_of,
        ncedc_p_offset,
        read_continuous_segments,
        read_ncedc_npz,
        split_by_station,
        station_hash_fraction,
    )

    if not cx_root and not ncedc_root:
        raise ValueError("distillation needs --cx-root and/or --ncedc-root")
    if teacher_targets not in ("soft", "picks"):
        raise ValueError(f"teacher_targets={teacher_targets!r}: expected 'soft' or 'picks'")
    teacher = load_teacher(teacher_spec)
    tag = Path(teacher_spec).stem.replace(".", "_")
    if tuple(grid_shifts) != (0,):
        tag += "_grid" + "-".join(str(int(g)) for g in grid_shifts)
    arrays, train_items, val_items = [], [], []
    info = {
        "teacher": teacher_spec,
        "teacher_targets": teacher_targets,
        "cx_segments": [],
        "cx_stations": [],
        "ncedc_train_stations": [],
    }

    if cx_root:
        segments = read_continuous_segments(cx_root, min_samples=in_samples)
        total = sum(s.data.shape[-1] for s in segments)
        with tqdm(total=total, desc="teacher on continuous data", unit="sample", unit_scale=True) as pbar:
            for seg in segments:
                probs = cached_teacher_probabilities(
                    teacher, tag, seg.name, seg.data, seg.station, seg.starttime, Path(cache_dir), pbar, grid_shifts
                )
                if teacher_targets == "picks":
                    probs = teacher_pick_targets(probs)
                index = len(arrays)
                arrays.append(np.concatenate([seg.data, probs]))
                n = seg.data.shape[-1]
                split_at = int(n * (1 - val_fraction))
                common = {"array": index, "station": seg.station, "analyst_labels": False, "trace_name": seg.name}
                for start in range(0, split_at - 2 * in_samples, in_samples // 2):
                    train_items.append({**common, "start": start, "stop": start + 2 * in_samples, "kind": "cx_random"})
                for peak in _teacher_peaks(probs[:, :split_at]):
                    start = max(int(peak) - in_samples, 0)
                    stop = min(start + 2 * in_samples, split_at)
                    if stop - start >= in_samples:
                        train_items.append({**common, "start": start, "stop": stop, "kind": "cx_event"})
                for start in range(split_at, n - in_samples, in_samples):
                    val_items.append({**common, "start": start, "stop": start + in_samples, "kind": "cx_val"})
                info["cx_segments"].append(f"{seg.name} ({n / 360000:.2f} h)")
                if seg.station not in info["cx_stations"]:
                    info["cx_stations"].append(seg.station)

    if ncedc_root:
        root = Path(ncedc_root)
        names = _ncedc_files(root)
        stations = pd.DataFrame({"station": [".".join(_station_of(n)) for n in names]})
        side = split_by_station(stations, test_fraction=ncedc_test_fraction, seed=split_seed)
        train_names = [n for n, s in zip(names, side) if s == "train"]
        info["ncedc_test_stations_held_out"] = sorted(set(stations["station"][side == "test"]))
        for name in tqdm(train_names, desc="teacher on NCEDC train stations"):
            record = read_ncedc_npz(root / name)  # only train-station files are ever opened
            data = record["data"][:, ZNE_FROM_ENZ].T.astype(np.float32)
            station = ".".join(_station_of(name))
            piece = f"ncedc_{name[:-4]}"
            probs = cached_teacher_probabilities(
                teacher, tag, piece, data, station, "2000-01-01", Path(cache_dir), grid_shifts=grid_shifts
            )
            if teacher_targets == "picks":
                probs = teacher_pick_targets(probs)
            index = len(arrays)
            arrays.append(np.concatenate([data, probs]))
            item = {
                "array": index,
                "station": station,
                "analyst_labels": True,
                "trace_name": name,
                "trace_p_arrival_sample": float(record["itp"]),
                "trace_s_arrival_sample": float(record["its"]),
            }
            if station_hash_fraction(station, seed=split_seed + 1) < 0.15:
                p0 = record["itp"] - ncedc_p_offset(name)
                val_items.append({**item, "start": p0, "stop": p0 + in_samples, "kind": "ncedc_val"})
            else:
                # the pipeline crops at random: bound the stretch so that short windows still
                # usually hold the picks (for 6000 samples this is the whole 90 s trace)
                start = max(0, record["itp"] - in_samples)
                stop = min(data.shape[-1], record["its"] + in_samples)
                train_items.append({**item, "start": start, "stop": stop, "kind": "ncedc"})
                if station not in info["ncedc_train_stations"]:
                    info["ncedc_train_stations"].append(station)
        info["ncedc_train_stations"].sort()
        info["ncedc_val_stations"] = sorted({i["station"] for i in val_items if i["kind"] == "ncedc_val"})
        info["ncedc_val_files"] = sorted(i["trace_name"] for i in val_items if i["kind"] == "ncedc_val")
        info["teacher_grid_shifts"] = [int(g) for g in grid_shifts]

    train = pd.DataFrame(train_items)
    val = pd.DataFrame(val_items)
    if len(val) > max_val_windows:  # a fixed, evenly spread subset keeps validation cheap
        val = val.iloc[np.linspace(0, len(val) - 1, max_val_windows).astype(int)]
    counts = train["kind"].value_counts()
    shares = {k: v for k, v in DISTILL_SHARES.items() if k in counts}
    norm = sum(shares.values())
    weights = train["kind"].map(lambda k: shares[k] / norm / counts[k]).to_numpy()
    info["train_items"] = {k: int(v) for k, v in counts.items()}
    info["val_items"] = {k: int(v) for k, v in val["kind"].value_counts().items()}
    return ArrayWaveformSource(arrays, train), weights, ArrayWaveformSource(arrays, val), info


# ------------------------------------------------------------------------------------------------
# Training run
# ------------------------------------------------------------------------------------------------


def _git_describe() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    if out.returncode != 0:
        return "uncommitted tree (" + (out.stderr.strip().splitlines() or ["git describe failed"])[-1] + ")"
    return out.stdout.strip()


_TRAIN_PARSER: argparse.ArgumentParser | None = None


def _command_line(args) -> str:
    """The ``seisbench-feq train`` command that reproduces ``args`` (non-default options only)."""
    parts = ["seisbench-feq", "train", "--model", str(args.model)]
    if _TRAIN_PARSER is None:
        return " ".join(parts)
    for action in _TRAIN_PARSER._actions:
        if not action.option_strings or action.dest in ("help", "model"):
            continue
        value = getattr(args, action.dest, None)
        if value == action.default:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            parts.append(action.option_strings[-1])
        else:
            text = ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)
            parts += [action.option_strings[-1], text]
    return shlex.join(parts)


def export_weights(model, weights_dir: str | Path, name: str, metadata: dict, docstring: str) -> tuple[Path, Path]:
    """Save a trained model as ``weights_dir/name.pt.v1`` + ``name.json.v1`` (SeisBench format).

    The model is rebuilt at 6000 input samples on the CPU (weights do not depend on the window
    length), the json gets ``"version": "1"``, a low ``seisbench_requirement`` and ``metadata``.
    """
    import torch

    args = model.get_model_args()
    args["in_samples"] = 6000
    export = type(model)(**args)
    export.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    export = export.cpu().eval()
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    export.save(weights_dir / name, weights_docstring=docstring, version_str="1")
    json_path = weights_dir / f"{name}.json.v1"
    content = json.loads(json_path.read_text())
    content["version"] = "1"
    content["seisbench_requirement"] = SEISBENCH_REQUIREMENT
    content.update(metadata)
    json_path.write_text(json.dumps(content, indent=2, default=str) + "\n")
    with torch.no_grad():  # sanity: the saved file reloads to the same outputs
        reloaded = type(export).load(weights_dir / name, version_str="1").eval()
        x = torch.randn(1, 3, 6000)
        same = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(export(x), reloaded(x)))
    if not same:
        raise RuntimeError(f"exported weights {json_path} do not reload to the trained model")
    return weights_dir / f"{name}.pt.v1", json_path


def warm_start(model, prefix: str) -> dict:
    """Copy every tensor of the weights file ``prefix`` whose name and shape match ``model``.

    ``prefix`` is a SeisBench weights path without suffix (``DIR/default`` for
    ``DIR/default.pt.v1``). Any of the four models works as a source: FEQ2 can start from FEQ3
    (all but the BiGRU/BiLSTM stack match), FEQ1 from LEQNet. Returns what was copied and skipped.
    """
    import torch

    candidates = [Path(prefix + ".pt.v1"), Path(prefix + ".pt"), Path(prefix)]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"--init {prefix}: none of {[str(c) for c in candidates]} exists")
    source = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in source and isinstance(source["state_dict"], dict):  # a Lightning checkpoint
        source = {k.removeprefix("model."): v for k, v in source["state_dict"].items()}
    target = model.state_dict()
    copied = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    skipped = sorted(k for k in target if k not in copied)
    if not copied:
        raise ValueError(f"--init {path}: no tensor matches {type(model).__name__} in name and shape")
    target.update(copied)
    model.load_state_dict(target)
    logger.info("warm start from %s: %d tensors copied, %d kept at random init", path, len(copied), len(skipped))
    return {"from": str(path), "tensors_copied": len(copied), "tensors_random": skipped}


def init_history(prefix: str) -> list[dict]:
    """The training records of the weights a run starts from (``--init``), oldest first.

    Each shipped json then carries the whole chain of commands that produced it, not only the
    last one: ``history`` of the init weights, then their own ``training`` record.
    """
    for candidate in (Path(prefix + ".json.v1"), Path(prefix + ".json")):
        if candidate.is_file():
            content = json.loads(candidate.read_text())
            record = content.get("training") or {"note": f"{candidate} has no training record"}
            record = {k: v for k, v in record.items() if k != "history"}
            return list(content.get("history", [])) + [{"weights": str(candidate), **record}]
    return [{"note": f"no json beside {prefix}; its training is not recorded"}]


def train(args) -> int:
    """Entry point of ``seisbench-feq train``."""
    import lightning as L
    import seisbench.generate as sbg
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, WeightedRandomSampler
    from torch.utils.data import RandomSampler

    from seisbench.util import worker_seeding

    from .models import MODELS

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model not in MODELS:
        raise ValueError(f"--model {args.model}: expected one of {sorted(MODELS)}")
    if not args.distill and not args.dataset:
        raise ValueError("give --dataset (stead or a SeisBench dataset folder) or --distill")
    L.seed_everything(args.seed, workers=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    model = MODELS[args.model](in_samples=args.in_samples, highpass=args.highpass or None)
    init_info = warm_start(model, args.init) if args.init else None

    data_info: dict = {}
    val_windows = None
    if args.distill:
        train_source, weights, val_source, data_info = build_distillation_sources(
            args.teacher,
            args.cx_root,
            args.ncedc_root,
            args.cache_dir,
            in_samples=args.in_samples,
            ncedc_test_fraction=args.ncedc_test_fraction,
            split_seed=args.split_seed,
            teacher_targets=args.teacher_targets,
            grid_shifts=args.teacher_grid_shifts,
        )
        phase_dict = {"trace_p_arrival_sample": "P", "trace_s_arrival_sample": "S"}
        train_gen = sbg.GenericGenerator(train_source)
        train_gen.add_augmentations(
            augmentation_pipeline(
                args.in_samples, phase_dict, train=True, teacher_rows=True, window_around_picks=False,
                analyst_weight=args.analyst_weight, physical_augmentations=args.physical_augmentations,
            )
        )
        if data_info.get("ncedc_val_files"):
            val_windows = validation_pick_windows(args.ncedc_root, data_info["ncedc_val_files"])
        val_gen = sbg.GenericGenerator(val_source)
        val_gen.add_augmentations(
            augmentation_pipeline(args.in_samples, phase_dict, train=False, teacher_rows=True)
        )
        sampler = WeightedRandomSampler(weights, num_samples=args.steps_per_epoch * args.batch_size)
    else:
        dataset = load_waveform_dataset(args.dataset, args.stead_basepath, args.stead_test_npy)
        train_ds, dev_ds = supervised_splits(dataset)
        phase_dict = phase_columns(dataset.metadata.columns)
        if not phase_dict:
            raise ValueError(f"dataset {args.dataset} has no trace_<phase>_arrival_sample columns to label")
        train_gen = sbg.GenericGenerator(train_ds)
        train_gen.add_augmentations(augmentation_pipeline(args.in_samples, phase_dict, train=True))
        val_gen = sbg.GenericGenerator(dev_ds)
        val_gen.add_augmentations(augmentation_pipeline(args.in_samples, phase_dict, train=False))
        sampler = RandomSampler(train_gen, replacement=True, num_samples=args.steps_per_epoch * args.batch_size)
        data_info = {
            "dataset": args.dataset,
            "train_traces": len(train_ds),
            "dev_traces": len(dev_ds),
            "phase_columns": phase_dict,
        }
    logger.info("training data: %s", json.dumps(data_info, default=str))

    loader_kwargs = dict(batch_size=args.batch_size, num_workers=args.num_workers, worker_init_fn=worker_seeding)
    train_loader = DataLoader(train_gen, sampler=sampler, **loader_kwargs)
    val_loader = DataLoader(val_gen, shuffle=False, **loader_kwargs)

    module = _lightning_module_class()(
        model, lr=args.lr, pos_weight=args.pos_weight, plateau_patience=args.plateau_patience
    )
    callbacks = []
    if val_windows is not None:
        callbacks.append(_pick_f1_callback_class()(*val_windows, batch_size=args.batch_size))
    monitor = "val_f1" if args.select_on == "f1" and val_windows is not None else "val_loss"
    mode = "max" if monitor == "val_f1" else "min"
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best-{epoch}-{" + monitor + ":.4f}",
        monitor=monitor,
        mode=mode,
        save_last=True,
    )
    callbacks += [checkpoint, EarlyStopping(monitor=monitor, mode=mode, patience=args.patience)]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.max_epochs,
        max_steps=args.max_steps if args.max_steps else -1,
        max_time=datetime.timedelta(minutes=args.max_minutes) if args.max_minutes else None,
        callbacks=callbacks,
        logger=CSVLogger(out, name="logs"),
        log_every_n_steps=max(1, min(10, args.steps_per_epoch)),
        num_sanity_val_steps=0,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=out,
    )
    last = out / "checkpoints" / "last.ckpt"
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if args.resume and last.exists() else None)

    best = checkpoint.best_model_path
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    elapsed = time.time() - started
    summary = {
        "best_checkpoint": best,
        "selected_on": monitor,
        "best_score": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "wall_minutes": round(elapsed / 60, 2),
        "final_train_loss": float(trainer.callback_metrics["train_loss_epoch"])
        if "train_loss_epoch" in trainer.callback_metrics
        else None,
    }
    commands = []
    previous = out / "summary.json"
    if args.resume and previous.is_file():  # a resumed run: keep the commands that led here
        commands = json.loads(previous.read_text()).get("commands", [])
    commands.append(_command_line(args))
    summary["commands"] = commands
    if init_info:
        summary["init"] = init_info
    (out / "summary.json").write_text(
        json.dumps({"summary": summary, "commands": commands, "data": data_info}, indent=2, default=str)
    )
    logger.info("finished: %s", summary)

    if args.save_weights:
        metadata = {
            "training": {
                "command": " && ".join(summary["commands"]),
                "git": _git_describe(),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": "2-core CPU, no GPU" if not torch.cuda.is_available() else "GPU",
                "threads": torch.get_num_threads(),
                "recipe": {
                    "loss_weights": list(LOSS_WEIGHTS),
                    "pick_sigma_samples": PICK_SIGMA,
                    "detection": "P to S + 0.4 (S - P)",
                    "optimizer": f"Adam lr={args.lr}"
                    + (f", halved after {args.plateau_patience} epochs without progress" if args.plateau_patience else ""),
                    "pos_weight": args.pos_weight,
                    "batch_size": args.batch_size,
                    "train_window_samples": args.in_samples,
                    "analyst_weight": args.analyst_weight if args.distill else 1.0,
                    "teacher_targets": args.teacher_targets if args.distill else None,
                    "teacher_grid_shifts": list(args.teacher_grid_shifts) if args.distill else None,
                    "physical_augmentations": bool(args.physical_augmentations),
                },
                **summary,
            },
            "data": data_info,
        }
        if args.init:
            metadata["history"] = init_history(args.init)
        docstring = (
            f"{type(model).__name__} trained by seisbench_feq ({'distillation from ' + args.teacher if args.distill else args.dataset}). "
            f"Data: {', '.join(data_info.get('cx_stations', []))} continuous; NCEDC train stations "
            f"{len(data_info.get('ncedc_train_stations', []))}; NCEDC test stations held out. See 'training' and 'data'."
        )
        pt, js = export_weights(model, args.save_weights, args.weights_name, metadata, docstring)
        logger.info("weights written: %s, %s", pt, js)
        print(f"weights: {pt} {js}")
    print(json.dumps(summary, indent=2))
    return 0


def add_subcommands(subparsers) -> None:
    global _TRAIN_PARSER
    p = subparsers.add_parser(
        "train",
        help="train LEQNet/FEQ1-3 on a SeisBench dataset or by distillation from a teacher",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="feq3", help="leqnet, feq1, feq2 or feq3")
    data = p.add_argument_group("supervised data")
    data.add_argument("--dataset", help="'stead' or a SeisBench-format dataset folder")
    data.add_argument("--stead-basepath", help="folder with STEAD's merged.csv and merged.hdf5 (first use)")
    data.add_argument("--stead-test-npy", help="EqT's test.npy (STEAD test trace names); default: hash split")
    dist = p.add_argument_group("distillation")
    dist.add_argument("--distill", action="store_true", help="learn from a teacher's probabilities")
    dist.add_argument(
        "--teacher",
        default="../shared/weights/eqtransformer_original/EqT_original_model.h5",
        help="Keras EqT .h5, a SeisBench EQTransformer weights prefix, or 'random-eqtransformer'",
    )
    dist.add_argument("--cx-root", help="folder of continuous MiniSEED (any layout) for teacher labels")
    dist.add_argument("--ncedc-root", help="NCEDC npz folder; only its train stations are used")
    dist.add_argument("--ncedc-test-fraction", type=float, default=0.5, help="share of NCEDC stations held out")
    dist.add_argument("--split-seed", type=int, default=0, help="seed of the station split")
    dist.add_argument("--analyst-weight", type=float, default=0.5, help="weight of analyst labels vs teacher")
    dist.add_argument(
        "--teacher-targets",
        choices=["soft", "picks"],
        default="soft",
        help="learn the teacher's probabilities, or its picks as Gaussian labels (sigma 10)",
    )
    dist.add_argument("--cache-dir", default="local/teacher_cache", help="teacher-probability cache")
    dist.add_argument(
        "--teacher-grid-shifts",
        type=lambda text: tuple(int(v) for v in text.split(",")),
        default=(0,),
        help="comma-separated sub-second shifts (samples) of the teacher's window grid to average, "
        "e.g. 0,25,50,75 (removes EqT's whole-second artefacts)",
    )
    dist.add_argument(
        "--physical-augmentations",
        action="store_true",
        help="also time stretch, polarity flip and rotation of the horizontals",
    )
    run = p.add_argument_group("run")
    run.add_argument("--out", default="local/runs/train", help="checkpoints, CSV logs, summary")
    run.add_argument("--batch-size", type=int, default=16)
    run.add_argument("--lr", type=float, default=1e-3)
    run.add_argument("--pos-weight", type=float, default=0.0, help="loss weight 1 + W * target (see masked_bce)")
    run.add_argument("--in-samples", type=int, default=6000, help="training window length")
    run.add_argument(
        "--highpass", type=float, default=1.0,
        help="corner (Hz) of the model's window high-pass, stored with the weights; 0: none",
    )
    run.add_argument("--steps-per-epoch", type=int, default=200)
    run.add_argument("--max-epochs", type=int, default=1000)
    run.add_argument("--max-steps", type=int, default=0, help="0: no limit")
    run.add_argument("--max-minutes", type=float, default=0, help="wall-clock budget; 0: no limit")
    run.add_argument("--patience", type=int, default=5, help="early stopping, in epochs")
    run.add_argument(
        "--select-on",
        choices=["loss", "f1"],
        default="loss",
        help="checkpoint choice: validation loss, or P/S F1 on the NCEDC validation stations",
    )
    run.add_argument(
        "--plateau-patience", type=int, default=0, help="halve the lr after N epochs without val progress; 0: off"
    )
    run.add_argument("--threads", type=int, default=1, help="torch threads")
    run.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    run.add_argument("--init", help="initial weights (SeisBench PREFIX of .json/.pt)")
    run.add_argument("--save-weights", help="folder to write NAME.pt.v1 + NAME.json.v1 into")
    run.add_argument("--weights-name", default="default")
    p.set_defaults(func=train)
    _TRAIN_PARSER = p
