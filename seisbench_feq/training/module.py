"""The loss (masked BCE over detection, P, S), the Lightning module and the validation-pick-F1 callback."""

from __future__ import annotations

import functools

import numpy as np

LOSS_WEIGHTS = (0.05, 0.40, 0.55)  # detection, P, S (EqT / LEQNet)


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
    if len(outputs) == 1:  # a detector (detection output only): the detection target alone, weight 1
        loss_weights = (1.0,)
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

        Logged as ``val_f1_P``, ``val_f1_S``, ``val_f1`` (their mean), ``val_mae_P`` and
        ``val_mae_S`` (seconds, matched picks; 0.5 without any) and ``windows_seen``, with the
        picking rule of ``seisbench-feq evaluate`` (thresholds 0.3, 0.5 s tolerance), so that
        checkpoints can be chosen on validation stations by what the user will see. With
        ``continuous``, also the agreement on the continuous validation tail (``val_cont_f1``,
        :class:`seisbench_feq.training.validation.ContinuousValidation`) and ``val_score``, the
        mean of ``val_f1`` and ``val_cont_f1``.
        """

        def __init__(self, waveforms: np.ndarray, metadata, batch_size: int, continuous=None):
            self.waveforms = waveforms
            self.metadata = metadata
            self.batch_size = batch_size
            self.continuous = continuous  # a training.validation.ContinuousValidation, or None

        def on_validation_epoch_end(self, trainer, pl_module):
            from ..evaluation import as_picker, score_picks

            picker = as_picker(pl_module.model, progress=False)
            row = score_picks(picker.pick_windows(self.waveforms), self.metadata)
            f1_p, f1_s = float(row["P_f1"]), float(row["S_f1"])
            pl_module.log("val_f1_P", f1_p)
            pl_module.log("val_f1_S", f1_s)
            pl_module.log("val_f1", (f1_p + f1_s) / 2, prog_bar=True)
            for phase in ("P", "S"):  # timing of the matched picks: reported, not used for the choice
                pl_module.log(f"val_mae_{phase}", float(np.nan_to_num(row[f"{phase}_mae_s"], nan=0.5)))
            if self.continuous is not None:
                agreement = self.continuous.score(pl_module.model, "student")
                for key in ("cont_P_f1", "cont_S_f1"):
                    pl_module.log(f"val_{key}", agreement[key])
                pl_module.log("val_cont_f1", agreement["continuous_mean_f1"])
                pl_module.log("val_score", ((f1_p + f1_s) / 2 + agreement["continuous_mean_f1"]) / 2, prog_bar=True)
            pl_module.log("windows_seen", float(trainer.global_step * self.batch_size))

    return ValidationPickF1
