"""Validation on what users run, for checkpoint choice and default pick rules (never test data).

* **NCEDC validation stations**: P and S F1 on analyst picks (:func:`validation_pick_windows`).
  On 45 windows this saturates (F1 1.000 after a few epochs), so it stops telling checkpoints apart.
* **The continuous validation tail** (:func:`continuous_validation`): the last ``VAL_FRACTION`` of
  each continuous training segment, which training never sees, against the grid-free reference of
  ``seisbench-feq evaluate --continuous`` (the teacher annotated at 8 sub-second start shifts,
  consensus picks). The score is an F1 against that reference, through ``classify``: it rewards
  the small continuous-data events that the NCEDC windows do not hold.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

VAL_FRACTION = 0.1  # the end of each continuous segment that training never sees
REFERENCE_SHIFTS = 8


def validation_pick_windows(ncedc_root: str, files, seeds=(0, 1, 2)):
    """Windows of the NCEDC validation traces, one per random P position seed (stacked)."""
    from ..data import load_ncedc

    names = [f if f.endswith(".npz") else f + ".npz" for f in files]
    parts = [load_ncedc(ncedc_root, offset_seed=1000 + seed, names=names) for seed in seeds]
    return np.concatenate([w for w, _ in parts]), pd.concat([m for _, m in parts], ignore_index=True)


@dataclass
class ContinuousValidation:
    """Validation tails of the continuous segments (streams by segment name) and the reference picks."""

    streams: dict
    reference: pd.DataFrame

    @property
    def hours(self) -> float:
        return sum(float(st[0].stats.npts / st[0].stats.sampling_rate) for st in self.streams.values()) / 3600

    def score(self, model, label: str = "model", **classify_kwargs) -> dict[str, float]:
        """Share of reference P/S picks matched within 0.5 s (of the clear ones where the reference
        has an ``snr`` column), of the model's picks confirmed, their F1 per phase and the mean of
        the two F1 (``continuous_mean_f1``), through ``classify``."""
        from ..evaluation import continuous

        frames, starts, spans = [], {}, {}
        for name, stream in self.streams.items():
            frames.append(continuous.classify_picks(model, stream, label, name, **classify_kwargs))
            stats = stream[0].stats
            trace_id = f"{stats.network}.{stats.station}.{stats.location}"
            starts[(name, trace_id)] = stats.starttime
            spans[(name, trace_id)] = (stats.starttime, float(stats.endtime - stats.starttime))
        row = continuous.score_continuous(pd.concat(frames, ignore_index=True), self.reference, starts, spans)
        out: dict[str, float] = {}
        for phase in ("P", "S"):
            # with arrival SNRs in the reference: the share of its *clear* picks matched (much of
            # the rest is the teacher's output on noise, evaluation.continuous); confirmed: by any
            matched = row.get(f"reference_{phase}_clear_matched_pct", row[f"reference_{phase}_matched_pct"]) / 100
            confirmed = row[f"{phase}_confirmed_by_reference_pct"] / 100
            matched, confirmed = np.nan_to_num(matched), np.nan_to_num(confirmed)
            out[f"cont_{phase}_matched"] = round(float(matched), 3)
            out[f"cont_{phase}_confirmed"] = round(float(confirmed), 3)
            f1 = 2 * matched * confirmed / (matched + confirmed) if matched + confirmed else 0.0
            out[f"cont_{phase}_f1"] = round(float(f1), 3)
        out["cont_S_near_own_P_pct"] = round(float(row["S_near_own_P_pct"]), 1)
        out["continuous_mean_f1"] = round((out["cont_P_f1"] + out["cont_S_f1"]) / 2, 3)
        return out


def continuous_validation(
    root: str | Path,
    teacher_spec: str,
    cache_dir: str | Path | None = None,
    val_fraction: float = VAL_FRACTION,
    shifts: int = REFERENCE_SHIFTS,
    min_samples: int = 6000,
) -> ContinuousValidation:
    """The validation tails of the continuous segments below ``root`` (split as
    :func:`seisbench_feq.training.distillation.build_distillation_sources` splits them) and the
    teacher's consensus reference on them. The reference takes about a minute per 2.4 h on one
    core; with ``cache_dir`` it is kept there as CSV, keyed by teacher, segments and shifts."""
    import obspy

    from ..data import read_continuous_segments
    from ..evaluation import continuous

    streams = {}
    for segment in read_continuous_segments(root, min_samples=min_samples):
        split_at = int(segment.data.shape[-1] * (1 - val_fraction))
        stream = segment.to_stream()
        stream.trim(stream[0].stats.starttime + split_at / segment.sampling_rate, stream[0].stats.endtime)
        streams[segment.name] = stream
    if not streams:
        raise ValueError(f"{root}: no three-component continuous segment of at least {min_samples} samples")
    key = "|".join([Path(teacher_spec).name, str(shifts)] + [f"{n}:{st[0].stats.npts}" for n, st in streams.items()])
    cache = None
    if cache_dir:
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        cache = Path(cache_dir) / f"continuous_validation_reference_{digest}.csv"
    if cache is not None and cache.is_file():
        reference = pd.read_csv(cache, dtype={"trace_id": str, "file": str})
        reference["time"] = [obspy.UTCDateTime(t) for t in reference["time"]]
    else:
        from ..loading import load_model

        teacher = load_model(f"eqt-original:{teacher_spec}" if str(teacher_spec).endswith(".h5") else teacher_spec)
        frames = [
            continuous.consensus_picks(teacher, stream, continuous.grid_shifts(shifts), "reference", name)
            for name, stream in streams.items()
        ]
        reference = pd.concat(frames, ignore_index=True)
        if cache is not None:
            from ..io.files import atomic_write_text

            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache, reference.assign(time=[str(t) for t in reference["time"]]).to_csv(index=False))
    reference["snr"] = continuous.reference_snr(reference, streams)
    clear = reference["snr"] >= continuous.CLEAR_SNR
    logger.info("continuous validation: %d reference P (%d clear), %d S (%d clear) on %d tails",
                int((reference["phase"] == "P").sum()), int((clear & (reference["phase"] == "P")).sum()),
                int((reference["phase"] == "S").sum()), int((clear & (reference["phase"] == "S")).sum()), len(streams))
    return ContinuousValidation(streams, reference)
