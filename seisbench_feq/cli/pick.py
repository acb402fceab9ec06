"""``seisbench-feq pick``: pick an SDS archive or MiniSEED files (resumable, Dask)."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger("seisbench_feq.archive")

DEFAULT_CHANNELS = "HH,BH,EH,SH,HN,EN"


# ---- argument types shared with `realtime` (a bad value exits 2 with a one-line message) ------

def _number_type(cast, accept, requirement):
    """An argparse type: ``cast(text)``, then ``accept(value)`` or the one-line ``requirement``."""
    kind = "a whole number" if cast is int else "a number"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(requirement(text, value))
        return value

    return parse


positive_int = _number_type(int, lambda v: v >= 1, lambda text, v: f"must be >= 1, got {v}")
non_negative_int = _number_type(int, lambda v: v >= 0, lambda text, v: f"must be >= 0, got {v}")
probability = _number_type(
    float, lambda v: 0 <= v <= 1, lambda text, v: f"must be a probability between 0 and 1, got {v:g}"
)
non_negative_float = _number_type(
    float, lambda v: 0 <= v < float("inf"), lambda text, v: f"must be a finite number >= 0, got {text}"
)


def utc_time(text: str):
    """What ObsPy users type for times: 2014-05-01, 2014-05-01T01:30, UTCDateTime strings."""
    from obspy import UTCDateTime

    try:
        return UTCDateTime(text)
    except Exception:
        raise argparse.ArgumentTypeError(
            f"cannot understand {text!r} as a time; give a UTC date or time such as "
            "2014-05-01 or 2014-05-01T01:30:00") from None


def add_threshold_arguments(parser) -> None:
    """``--p-threshold`` etc., one spelling for every subcommand (``--P-threshold`` hidden)."""
    for phase, name in (("p", "P_threshold"), ("s", "S_threshold")):
        parser.add_argument(f"--{phase}-threshold", f"--{phase.upper()}-threshold", dest=name,
                            type=probability, help=f"{phase.upper()} pick threshold (0-1)")
    parser.add_argument("--detection-threshold", dest="detection_threshold", type=probability)


def classify_kwargs(args) -> dict:
    kwargs = {}
    for key in ("batch_size", "P_threshold", "S_threshold", "detection_threshold"):
        if getattr(args, key, None) is not None:
            kwargs[key] = getattr(args, key)
    return kwargs


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "pick", help="pick an SDS archive or MiniSEED files (resumable, Dask)",
        description="Pick P and S arrivals in an SDS archive or a set of MiniSEED files. Rerun the "
                    "same command to resume an interrupted job.")
    parser.add_argument("archive", nargs="+",
                        help="SDS root directory, or MiniSEED directories / files / glob patterns")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--model", default="feq3",
                        help="model spec: feq3, feq2, feq1, leqnet, eqtransformer, a weights "
                             "prefix, a Keras .h5, or module:Class (default feq3)")
    parser.add_argument("--weights", default="default",
                        help="weights of --model: a shipped name, a weights prefix/.pt/.json, a "
                             "Keras .h5 or 'random' (timing only) (default: default)")
    parser.add_argument("--start", type=utc_time, help="start time, e.g. 2014-05-01 (default: data start)")
    parser.add_argument("--end", type=utc_time, help="end time, exclusive (default: data end)")
    parser.add_argument("--stations", help="comma-separated NET.STA or NET.STA.LOC (wildcards ok)")
    parser.add_argument("--channels", default=DEFAULT_CHANNELS,
                        help="band codes in order of priority (default %(default)s)")
    parser.add_argument("--chunk", default="1d", help="work-unit length: 1d, 6h, 3600 (default 1d)")
    parser.add_argument("--classify-span", default="1h",
                        help="longest span per classify call; bounds memory (default 1h)")
    parser.add_argument("--border-margin", type=non_negative_float, default=30.0,
                        help="seconds read beyond one window + blinding at each border; raise it "
                             "if detections longer than this must match a single run (default 30)")
    parser.add_argument("--format", dest="output_format", choices=("csv", "parquet", "quakeflow"),
                        default="csv", help="csv (default), parquet, or quakeflow (PhaseNet/"
                                            "QuakeFlow columns, the full table beside it)")
    parser.add_argument("--detections", action="store_true", help="also write detections")
    parser.add_argument("--polarity", action="store_true",
                        help="also estimate the first-motion polarity of P picks")
    parser.add_argument("--uncertainty-samples", type=non_negative_int, default=0,
                        help="MC-dropout passes per pick for the uncertainty_s column (std of the "
                             "pick time, s); costs N extra forward passes of one window per pick "
                             "(default 0: none)")
    parser.add_argument("--plot-detections", type=non_negative_int, default=0, metavar="N",
                        help="write the figure of up to N detections per work unit into "
                             "OUT/figures/ (waveforms 1-45 Hz, probabilities, picks) (default 0)")
    parser.add_argument("--workers", type=non_negative_int,
                        help="Dask LocalCluster worker processes; 0 runs in-process (default: one "
                             "worker per core when the job holds a station-day of data per worker, "
                             "else in-process)")
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. "
                                            "tcp://host:8786 (overrides --workers)")
    parser.add_argument("--torch-threads", "--threads", dest="torch_threads", type=positive_int,
                        help="torch threads per unit (default: OMP_NUM_THREADS, else 1)")
    parser.add_argument("--batch-size", type=positive_int, help="windows per forward pass")
    add_threshold_arguments(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="discard an earlier job in --out instead of resuming it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..archive import ArchiveError, pick_archive

    archive = args.archive[0] if len(args.archive) == 1 else args.archive
    try:
        report = pick_archive(
            archive, args.out, model=args.model, weights=args.weights, start=args.start,
            end=args.end, stations=args.stations, channel_priority=args.channels,
            chunk=args.chunk, classify_span=args.classify_span,
            border_margin=args.border_margin, output_format=args.output_format,
            detections=args.detections, polarity=args.polarity,
            uncertainty_samples=args.uncertainty_samples, plot_detections=args.plot_detections,
            workers=args.workers,
            scheduler=args.scheduler, torch_threads=args.torch_threads,
            classify_kwargs=classify_kwargs(args), overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except ArchiveError as exc:
        logger.error("%s", exc)
        return 2
    s = report.summary
    print(f"{s['units']['done']} units done ({s['units']['done_with_errors']} with errors), "
          f"{s['units']['skipped']} skipped, {s['units']['failed']} failed; {s['picks_total']} "
          f"picks in {report.picks_path}; report {report.out / 'report.md'}")
    return report.exit_code
