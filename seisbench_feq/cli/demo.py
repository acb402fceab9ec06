"""``seisbench-feq demo``: pick real earthquakes with the shipped weights (offline)."""

from __future__ import annotations

MODEL_NAMES = ["feq1", "feq2", "feq3", "leqnet"]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="pick three bundled NCEDC earthquakes (held-out stations) and compare with the analyst",
        description="Pick the bundled NCEDC traces with shipped weights and print each analyst pick "
        "beside the model's; --seisan runs ObsPy's SEISAN example event instead.",
    )
    parser.add_argument("--out", default="demo_output", help="folder for picks.csv and one PNG per file")
    parser.add_argument("--model", default="feq3", choices=MODEL_NAMES)
    parser.add_argument("--weights", default="default", help="name of shipped weights")
    parser.add_argument("--seisan", action="store_true", help="ObsPy's SEISAN example event (harder: microseism)")
    parser.add_argument("--file", help="another waveform file readable by obspy.read")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from ..demo import run_demo

    run_demo(args.out, args.model, args.weights, path=args.file, seisan=args.seisan)
    return 0
