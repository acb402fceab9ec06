"""``seisbench-feq train`` and ``seisbench-feq train-report``: train LEQNet/FEQ1-3 and the baselines, plot
validation F1."""

from __future__ import annotations

import argparse
import shlex


def reproducing_command(
    parser: argparse.ArgumentParser, args: argparse.Namespace, words: list[str], skip: tuple[str, ...] = ()
) -> str:
    """The command line that reproduces ``args``: ``words``, the positionals, then every option
    whose value differs from its default (in the parser's order). Lists of ``nargs`` options are
    written as separate words, tuples of one-word options joined by commas."""
    parts = list(words)
    options = []
    for action in parser._actions:
        if action.dest in ("help", "func", *skip) or action.dest is argparse.SUPPRESS:
            continue
        value = getattr(args, action.dest, None)
        if not action.option_strings:  # positional
            parts += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
            continue
        if value == action.default:
            continue
        if value is None:  # an option switched off from a default (--offset-seed none)
            options += [next((s for s in action.option_strings if s.startswith("--")), action.option_strings[-1]), "none"]
            continue
        flag = next((s for s in action.option_strings if s.startswith("--")), action.option_strings[-1])
        if isinstance(action, argparse._StoreTrueAction):
            options.append(flag)
        elif isinstance(value, (list, tuple)) and action.nargs in ("+", "*"):
            options += [flag, *map(str, value)]
        elif isinstance(value, (list, tuple)):
            options += [flag, ",".join(str(v) for v in value)]
        else:
            options += [flag, str(value)]
    return shlex.join(parts + options)


def _shifts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 0,25,50,75") from None


def _shares(text: str) -> dict[str, float]:
    try:
        pairs = [item.split("=") for item in text.split(",")]
        return {kind.strip(): float(share) for kind, share in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KIND=SHARE pairs, e.g. cx_event=0.6,ncedc=0.2") from None


def add_parser(subparsers) -> None:
    from ..training.run import TRAIN_DEFAULTS as D

    p = subparsers.add_parser(
        "train",
        help="train LEQNet/FEQ1-3 on a SeisBench dataset or by distillation from a teacher",
        description="Train LEQNet / FEQ1-3 on a SeisBench dataset (STEAD converted offline) or by"
        " distillation from a teacher on continuous data and NCEDC training stations.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model", default=D["model"],
        help="leqnet, feq1, feq2, feq3, or a baseline: cba, eqt-gru, simple-cnn, simple-cnn-flat (detection target"
        " only), decision-tree (scikit-learn on the same windows)",
    )  # fmt: skip
    data = p.add_argument_group("supervised data")
    data.add_argument("--dataset", help="'stead' or a SeisBench-format dataset folder")
    data.add_argument("--stead-basepath", help="folder with STEAD's merged.csv and merged.hdf5 (first use)")
    data.add_argument("--stead-test-npy", help="EqT's test.npy (STEAD test trace names); default: hash split")
    dist = p.add_argument_group("distillation")
    dist.add_argument("--distill", action="store_true", help="learn from a teacher's probabilities")
    dist.add_argument(
        "--teacher",
        default=D["teacher"],
        help="Keras EqT .h5, a SeisBench EQTransformer weights prefix, 'random-eqtransformer' or a model spec",
    )
    dist.add_argument(
        "--reference-teacher",
        default=D["reference_teacher"],
        help="teacher of the grid-free continuous reference that --select-on score compares with"
        " (default: --teacher); keep the evaluation's reference when trying another teacher",
    )
    dist.add_argument("--cx-root", help="folder of continuous MiniSEED (any layout) for teacher labels")
    dist.add_argument("--ncedc-root", help="NCEDC npz folder; only its train stations are used")
    dist.add_argument(
        "--ncedc-test-fraction", type=float, default=D["ncedc_test_fraction"], help="share of NCEDC stations held out"
    )
    dist.add_argument("--split-seed", type=int, default=D["split_seed"], help="seed of the station split")
    dist.add_argument(
        "--analyst-weight", type=float, default=D["analyst_weight"], help="weight of analyst labels vs teacher"
    )
    dist.add_argument(
        "--teacher-targets",
        choices=["soft", "picks"],
        default=D["teacher_targets"],
        help="learn the teacher's probabilities, or its picks as Gaussian labels (sigma 10)",
    )
    dist.add_argument("--cache-dir", default=D["cache_dir"], help="teacher-probability cache")
    dist.add_argument(
        "--teacher-grid-shifts",
        type=_shifts,
        default=D["teacher_grid_shifts"],
        help="comma-separated sub-second shifts (samples) of the teacher's window grid to average, "
        "e.g. 0,25,50,75 (removes EqT's whole-second artefacts)",
    )
    dist.add_argument(
        "--teacher-grid-rule",
        choices=["average", "consensus"],
        default=D["teacher_grid_rule"],
        help="with several grid shifts: average the teacher's outputs, or take its P/S picks where at least half"
        " of the shifted grids agree within 1 s (at the median position, as Gaussian labels)",
    )
    dist.add_argument(
        "--mask-ps-conflicts",
        action="store_true",
        help="make the teacher's P and S labels of one arrival (peaks within 0.5 s) unknown on the"
        " continuous training data, so the student is not taught to fire both",
    )
    dist.add_argument(
        "--teacher-min-snr",
        type=float,
        default=D["teacher_min_snr"],
        metavar="SNR",
        help="make the teacher's P/S labels of arrivals with a lower SNR (RMS 2 s after over 5 s before,"
        " 2-20 Hz) unknown on the continuous training data: many of EqT's picks there are on noise",
    )
    dist.add_argument(
        "--physical-augmentations",
        action="store_true",
        help="also time stretch, polarity flip and rotation of the horizontals",
    )
    dist.add_argument(
        "--noise-rate", type=float, default=D["noise_rate"],
        help="share of training windows with added Gaussian noise (it can bury small labelled events)",
    )  # fmt: skip
    dist.add_argument(
        "--real-noise-rate", type=float, default=D["real_noise_rate"],
        help="share of training windows with a real noise recording of another station added (pre-P noise"
        " of the NCEDC train traces, quiet stretches of the continuous training data; peak-to-noise 10-300)",
    )  # fmt: skip
    dist.add_argument(
        "--source-shares", type=_shares, default=D["source_shares"],
        help="share of training windows drawn from each kind of item: cx_event (around teacher picks),"
        " cx_random (anywhere in the continuous data), ncedc (analyst-picked traces)",
    )  # fmt: skip
    dist.add_argument("--pick-sigma", type=int, default=D["pick_sigma"],
                      help="width of the Gaussian P/S labels in samples (analyst and teacher picks)")
    run = p.add_argument_group("run")
    run.add_argument("--out", default=D["out"], help="checkpoints, CSV logs, summary")
    run.add_argument("--batch-size", type=int, default=D["batch_size"])
    run.add_argument("--lr", type=float, default=D["lr"])
    run.add_argument("--pos-weight", type=float, default=D["pos_weight"], help="loss weight 1 + W * target (see masked_bce)")
    run.add_argument("--in-samples", type=int, default=D["in_samples"], help="training window length")
    run.add_argument(
        "--highpass", type=float, default=D["highpass"],
        help="corner (Hz) of the model's window high-pass, stored with the weights; 0: none",
    )  # fmt: skip
    run.add_argument("--steps-per-epoch", type=int, default=D["steps_per_epoch"])
    run.add_argument("--max-epochs", type=int, default=D["max_epochs"])
    run.add_argument("--max-steps", type=int, default=D["max_steps"], help="0: no limit")
    run.add_argument("--max-minutes", type=float, default=D["max_minutes"], help="wall-clock budget; 0: no limit")
    run.add_argument("--patience", type=int, default=D["patience"], help="early stopping, in epochs")
    run.add_argument(
        "--select-on",
        choices=["loss", "f1", "score"],
        default=D["select_on"],
        help="checkpoint choice: validation loss; P/S F1 on the NCEDC validation stations; or 'score', "
        "the mean of that F1 and the agreement with the teacher's grid-free reference on the validation "
        "tail of the continuous data (--distill with --cx-root)",
    )
    run.add_argument(
        "--plateau-patience", type=int, default=D["plateau_patience"],
        help="halve the lr after N epochs without val progress; 0: off",
    )  # fmt: skip
    run.add_argument(
        "--ema-decay", type=float, default=D["ema_decay"],
        help="validate, checkpoint and export an exponential moving average of the weights with this decay"
        " per step (e.g. 0.999); 0: the raw weights",
    )  # fmt: skip
    run.add_argument("--threads", type=int, default=D["threads"], help="torch threads")
    run.add_argument("--num-workers", type=int, default=D["num_workers"], help="DataLoader worker processes")
    run.add_argument("--seed", type=int, default=D["seed"])
    run.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    run.add_argument("--init", help="initial weights (SeisBench PREFIX of .json/.pt)")
    run.add_argument("--save-weights", help="folder to write NAME.pt.v1 + NAME.json.v1 into")
    run.add_argument("--weights-name", default=D["weights_name"])
    run.add_argument(
        "--tree-windows", type=int, default=D["tree_windows"],
        help="decision-tree: training windows drawn (with --max-steps: max-steps x batch-size)",
    )  # fmt: skip
    p.set_defaults(func=lambda args: _train(p, args))

    r = subparsers.add_parser(
        "train-report",
        help="plot validation P/S F1 against training windows seen, one curve per training run",
        description="Read RUN/logs/version_*/metrics.csv of each training run (the --out folder of"
        " seisbench-feq train) and plot the validation pick F1 against windows seen.",
    )
    r.add_argument("runs", nargs="+", help="training run folders (seisbench-feq train --out)")
    r.add_argument("--out", default="validation_f1.png", help="figure to write (.png, .pdf, .svg)")
    r.add_argument("--labels", nargs="+", help="one label per run (default: model and folder name)")
    r.add_argument("--title", default="", help="figure title")
    r.set_defaults(func=_train_report)


def _train(parser, args) -> int:
    from ..training.run import TRAIN_DEFAULTS, train

    options = {key: getattr(args, key) for key in TRAIN_DEFAULTS}
    command = reproducing_command(parser, args, ["seisbench-feq", "train", "--model", str(args.model)], skip=("model",))
    train(command=command, **options)
    return 0


def _train_report(args) -> int:
    from ..evaluation.report import markdown_table
    from ..training.report import plot_validation_f1, validation_summary

    path = plot_validation_f1(args.runs, args.out, labels=args.labels, title=args.title)
    summary = validation_summary(args.runs, labels=args.labels)
    header = ["run", "validations", "windows seen", "best P F1", "best S F1", "best mean F1", "windows at best"]
    rows = [
        [name, int(r["validations"]), f"{r['windows_seen']:,.0f}", f"{r['best_f1_P']:.3f}", f"{r['best_f1_S']:.3f}",
         f"{r['best_mean_f1']:.3f}", f"{r['windows_at_best']:,.0f}"]
        for name, r in summary.iterrows()
    ]  # fmt: skip
    print(markdown_table(header, rows))
    print(f"\nfigure: {path}")
    return 0
