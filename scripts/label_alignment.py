"""Do the training labels sit where the arrivals are? The teacher's picks on augmented training windows.

    python scripts/label_alignment.py --ncedc ../shared/data/ncedc --windows 200 [--physical-augmentations]

Draws windows of the NCEDC training stations through the distillation pipeline of ``seisbench-feq
train`` (analyst labels alone, as the shipped recipe: ``--analyst-weight 1``), runs the converted
original EqT on each augmented window and prints, per phase, the distribution of (EqT's pick -
the label's peak) in samples, for labels of height >= 0.9 that EqT picks within 0.5 s. EqT picks
the analysts' times on raw NCEDC traces (median residual within 0.01 s), so a median far from 0
would mean the augmentations or the windowing move the labels off the waveform.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ncedc", default="../shared/data/ncedc")
    parser.add_argument("--teacher", default="../shared/weights/eqtransformer_original/EqT_original_model.h5")
    parser.add_argument("--cache-dir", default="local/teacher_cache")
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--physical-augmentations", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import seisbench.generate as sbg

    from seisbench_feq.evaluation import as_picker
    from seisbench_feq.loading import load_model
    from seisbench_feq.training.augmentations import augmentation_pipeline
    from seisbench_feq.training.distillation import build_distillation_sources

    np.random.seed(args.seed)
    source, _, _, _ = build_distillation_sources(
        args.teacher, None, args.ncedc, args.cache_dir, teacher_targets="picks", grid_shifts=(0, 25, 50, 75),
        grid_rule="consensus",
    )  # fmt: skip
    generator = sbg.GenericGenerator(source)
    generator.add_augmentations(
        augmentation_pipeline(
            6000, {"trace_p_arrival_sample": "P", "trace_s_arrival_sample": "S"}, train=True, teacher_rows=True,
            window_around_picks=False, analyst_weight=1.0, physical_augmentations=args.physical_augmentations,
        )  # fmt: skip
    )
    samples = [generator[int(i)] for i in np.random.choice(len(generator), args.windows)]
    waveforms = np.stack([s["X"] for s in samples])
    labels = np.stack([s["y"] for s in samples])
    teacher = as_picker(load_model(f"eqt-original:{args.teacher}"), progress=False).predict(waveforms)
    for phase, row in (("P", 1), ("S", 2)):
        offsets = []
        for label, output in zip(labels[:, row], teacher[:, row]):
            if not np.isfinite(label).all() or label.max() < 0.9:
                continue
            peak = int(np.argmax(label))
            if not 50 <= peak < label.size - 50 or output[peak - 50 : peak + 51].max() < 0.3:
                continue
            offsets.append(int(np.argmax(output[peak - 50 : peak + 51])) - 50)
        q10, q25, q50, q75, q90 = np.quantile(offsets, [0.1, 0.25, 0.5, 0.75, 0.9])
        print(f"{phase}: {len(offsets)} labels; EqT pick - label peak (samples): median {q50:+.0f},"
              f" quartiles {q25:+.0f} / {q75:+.0f}, 10-90 % {q10:+.0f} / {q90:+.0f}")


if __name__ == "__main__":
    main()
