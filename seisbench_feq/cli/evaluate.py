"""``seisbench-feq evaluate``: score models on labelled windows and/or continuous data, write a report."""

from __future__ import annotations

import argparse

DEFAULT_REFERENCE = "eqt-original:../shared/weights/eqtransformer_original/EqT_original_model.h5"


def _offset_seed(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer seed or 'none'") from None


def add_parser(subparsers) -> None:
    from ..evaluation.pickers import PICK_MODES, TIMING_BATCH
    from ..evaluation.run import MODEL_SPEC_HELP
    from ..evaluation.scoring import DEFAULT_THRESHOLDS, TOLERANCE_S

    parser = subparsers.add_parser(
        "evaluate",
        help="score models on labelled windows (P/S/detection P-R-F1, residuals, max output, costs) and on "
        "continuous data; write a report",
        description="Score models on labelled windows and/or continuous hours and write markdown + plots.\n\n"
        + MODEL_SPEC_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("models", nargs="+", help="model specs (see above)")
    parser.add_argument("--data", help="NCEDC npz folder (e.g. ../shared/data/ncedc) or a SeisBench dataset folder")
    parser.add_argument(
        "--offset-seed",
        type=_offset_seed,
        default=0,
        help="seed of the random sub-sample P position in each window (default 0); 'none': the deterministic"
        " positions of the reference results (500 + crc32(file) mod 2000 samples)",
    )
    parser.add_argument(
        "--pick-mode",
        nargs="+",
        default=list(PICK_MODES),
        choices=list(PICK_MODES),
        help="pick rules to score: 'peak' (SeisBench's trigger peaks) and/or 'eqt' (EQTransformer's"
        " event-gated rule); default: both",
    )
    parser.add_argument(
        "--split",
        nargs="+",
        default=["all", "test"],
        choices=["all", "train", "test"],
        help="station split(s) to score; 'test' = held-out stations (default: all test)",
    )
    parser.add_argument("--test-fraction", type=float, default=0.5, help="share of stations held out (default 0.5)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the station split (default 0)")
    parser.add_argument("--noise", action="store_true", help="add the NCEDC pre-P noise windows (detection/pick FP)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N windows (quick runs)")
    parser.add_argument("--out", default="evaluation", help="output folder for evaluation.md, CSVs and PNGs")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE_S, help="pick tolerance in s (default 0.5)")
    for task in DEFAULT_THRESHOLDS:
        parser.add_argument(f"--{task.lower()}-threshold", type=float, default=None,
                            help=f"for every model (default: each model's own, else {DEFAULT_THRESHOLDS[task]})")
    parser.add_argument("--reference", default=None, help="model label for the quality bar (default: EqT original)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-costs", action="store_true", help="skip parameter/FLOP counts and timing")
    parser.add_argument(
        "--timing-repeats", type=int, default=5, help="timed batches of 64 per model; the fastest counts (default 5)"
    )
    parser.add_argument("--timing-batch", type=int, default=TIMING_BATCH, help="windows per timed batch (64)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="torch device for the models (default: cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="recompute every model's picks (default: reuse OUT/cache/ picks of identical weights, windows and"
        " thresholds, so an interrupted or repeated run only predicts what is missing)",
    )
    cont = parser.add_argument_group("continuous data")
    cont.add_argument(
        "--continuous",
        nargs="+",
        default=[],
        metavar="DIR",
        help="folders of continuous 3-component MiniSEED files: each model's own classify is checked for"
        " grid artefacts, S on P, agreement with a grid-free reference and picks on noise",
    )
    cont.add_argument(
        "--continuous-reference",
        default=DEFAULT_REFERENCE,
        help="reference model spec, annotated over sub-second start offsets and averaged (default: the"
        " converted original EqT in ../shared)",
    )
    cont.add_argument("--continuous-shifts", type=int, default=8, help="start offsets averaged (default 8)")
    cont.add_argument(
        "--continuous-reference-rule",
        choices=["average", "consensus"],
        default="average",
        help="reference picks from the averaged annotation (default), or where at least half of the shifted"
        " annotations pick within 0.5 s of each other (at the median time)",
    )
    cont.add_argument(
        "--continuous-noise-block", type=float, default=600.0,
        help="length (s) of the blocks without a reference pick whose picks count as noise picks (default 600)",
    )  # fmt: skip
    cont.add_argument(
        "--continuous-seconds", type=float, default=None, help="use only the first S seconds of each file (quick runs)"
    )
    parser.set_defaults(func=lambda args: _run(parser, args))


def _run(parser, args) -> int:
    from ..evaluation.run import run_evaluation
    from .train import reproducing_command

    if args.data is None and not args.continuous:
        parser.error("give --data (labelled windows) and/or --continuous DIR [DIR ...]")
    for name in ("batch_size", "timing_repeats", "timing_batch", "continuous_shifts", "continuous_noise_block"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    command = reproducing_command(parser, args, ["seisbench-feq", "evaluate"], skip=("verbose", "command"))
    run_evaluation(
        models=args.models,
        data=args.data,
        continuous=args.continuous,
        out=args.out,
        split=args.split,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
        offset_seed=args.offset_seed,
        noise=args.noise,
        limit=args.limit,
        tolerance_s=args.tolerance,
        thresholds={task: value for task in ("detection", "P", "S")
                    if (value := getattr(args, f"{task.lower()}_threshold")) is not None},
        pick_modes=args.pick_mode,
        reference=args.reference,
        batch_size=args.batch_size,
        costs=not args.no_costs,
        timing_repeats=args.timing_repeats,
        timing_batch=args.timing_batch,
        threads=args.threads,
        device=args.device,
        progress=not args.quiet,
        resume=not args.no_resume,
        continuous_reference=args.continuous_reference if args.continuous else None,
        continuous_seconds=args.continuous_seconds,
        continuous_shifts=args.continuous_shifts,
        continuous_reference_rule=args.continuous_reference_rule,
        continuous_noise_block_s=args.continuous_noise_block,
        command=command,
    )
    return 0
