"""``seisbench-feq realtime``: pick live SeedLink data or a replayed archive; each pick once."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ._grammar import add_deprecated_alias, deprecated, output_file
from .pick import DEFAULT_CHANNELS, add_threshold_arguments, non_negative_float, positive_int, utc_time

logger = logging.getLogger("seisbench_feq.realtime")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "realtime", help="pick live SeedLink data or a replayed archive; each pick emitted once",
        description="Real-time picking with per-station ring buffers. Picks are appended to "
                    "OUT/picks.csv (flushed per pick) with their latency; `seisbench-feq associate` "
                    "builds located events (QuakeML) from it. Ctrl-C finishes the buffered data and "
                    "flushes the outputs.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--seedlink", metavar="HOST:PORT", help="SeedLink server")
    where.add_argument("--replay", nargs="+", metavar="FILES_OR_SDS",
                       help="MiniSEED files/folders or an SDS root, replayed in time order")
    parser.add_argument("--stations", help="comma-separated NET.STA or NET.STA.LOC (wildcards ok), "
                                           "e.g. CX.PB01,CX.PB02")
    parser.add_argument("--channels", default=DEFAULT_CHANNELS,
                        help=f"band codes in priority order, one used per station (default {DEFAULT_CHANNELS})")
    add_deprecated_alias(parser, "--streams", dest="streams", replacement="--stations and --channels")
    parser.add_argument("--model", default="feq3",
                        help="model spec: feq3, feq2, feq1, leqnet, eqtransformer, a weights "
                             "prefix, a Keras .h5, or module:Class (default feq3)")
    parser.add_argument("--weights", default="default",
                        help="weights of --model: a shipped name, a weights prefix/.pt/.json, a "
                             "Keras .h5 or 'random' (default: default)")
    parser.add_argument("--out", default="realtime_output",
                        help="output folder: OUT/picks.csv is appended to (default realtime_output)")
    # single-station detections have no origin: no QuakeML in real time (associate writes it)
    parser.add_argument("--quakeml-dir", help=argparse.SUPPRESS)
    parser.add_argument("--plot-dir", help="write a per-station figure here, every --plot-interval s")
    parser.add_argument("--plot-interval", type=non_negative_float, default=60.0)
    parser.add_argument("--speed", type=non_negative_float, default=1.0,
                        help="replay speed (1 = real time, 0 = no waiting)")
    parser.add_argument("--start", type=utc_time, help="replay start time (default: data start)")
    parser.add_argument("--end", type=utc_time, help="replay end time (default: data end)")
    parser.add_argument("--step", type=non_negative_float,
                        help="seconds of data between model calls (default: one stride)")
    parser.add_argument("--stride", type=non_negative_float,
                        help="seconds between the starts of consecutive model windows (default: the "
                             "model's, 30 s for FEQ3); shorter costs more model calls")
    parser.add_argument("--early-picks", action="store_true",
                        help="low latency: emit picks from the windows run so far, before their "
                             "samples are final (each pick still once; may differ slightly from classify's)")
    parser.add_argument("--early-blinding", type=non_negative_float,
                        help="seconds blinded at a window's end for early picks (default: the model's, 5 s"
                             " for FEQ3; --low-latency: 2); final picks keep the model's")
    parser.add_argument("--low-latency", action="store_true",
                        help="shorthand for --early-picks --stride 5 --early-blinding 2 (unless given)")
    parser.add_argument("--duration", type=non_negative_float, help="stop after this many wall seconds")
    parser.add_argument("--batch-wait", type=non_negative_float, default=1.0,
                        help="seconds a station with a window ready waits for others, so that they "
                             "share one model call (cheaper per window; picks up to this much later; "
                             "0: no waiting; default 1)")
    parser.add_argument("--silence-timeout", type=non_negative_float, default=120.0,
                        help="flush a station after this many seconds without data")
    parser.add_argument("--reorder-window", type=non_negative_float, default=30.0,
                        help="seconds of data a channel waits for a late record before leaving "
                             "a gap (default 30)")
    add_threshold_arguments(parser)
    parser.add_argument("--netto", type=non_negative_float, default=60.0, help="SeedLink network timeout (s)")
    parser.add_argument("--keepalive", type=non_negative_float, default=20.0,
                        help="SeedLink keep-alive interval (s, 0: off)")
    parser.add_argument("--backoff-max", type=non_negative_float, default=60.0,
                        help="longest wait between reconnects (s)")
    parser.add_argument("--statefile", help="SeedLink state file (resume across restarts)")
    parser.add_argument("--torch-threads", dest="torch_threads", type=positive_int,
                        help="torch threads (default: OMP_NUM_THREADS, else 1)")
    add_deprecated_alias(parser, "--threads", dest="torch_threads", replacement="--torch-threads",
                         type=positive_int)
    parser.set_defaults(func=run)


def run(args) -> int:
    import os

    import torch

    from ..loading import load_model, weights_label
    from ..realtime import RealtimeError, RealtimePicker, ReplaySource, SeedLinkSource

    from ..realtime.common import streams_from_stations

    threads = args.torch_threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or 1
    torch.set_num_threads(threads)
    try:
        if args.quakeml_dir:
            deprecated(f"realtime --quakeml-dir {args.quakeml_dir}: nothing is written there; single-station "
                       "detections have no origin. Build located events with `seisbench-feq associate` "
                       "on OUT/picks.csv")
        if args.plot_dir and Path(args.plot_dir).exists() and not Path(args.plot_dir).is_dir():
            raise RealtimeError(f"--plot-dir {args.plot_dir} is a file; give a folder")
        if args.stations and getattr(args, "streams", None):
            raise RealtimeError("give --stations (with --channels) or the old --streams, not both")
        streams = getattr(args, "streams", None)
        if args.stations:
            streams = streams_from_stations(args.stations, args.channels)
        try:
            out = output_file(args.out, "picks.csv", old_suffixes=(".csv",), command="realtime")
        except ValueError as exc:
            raise RealtimeError(str(exc)) from None
        try:
            model = load_model(args.model, args.weights)
        except (ValueError, OSError, ImportError) as exc:
            raise RealtimeError(f"cannot load model {args.model}:{args.weights}: {exc}") from None
        if args.seedlink:
            source = SeedLinkSource(args.seedlink, streams, netto=args.netto, keepalive=args.keepalive,
                                    backoff_max=args.backoff_max, statefile=args.statefile)
        else:
            source = ReplaySource(args.replay, streams=streams, start=args.start, end=args.end,
                                  speed=args.speed)
        kwargs = {k: getattr(args, k) for k in ("P_threshold", "S_threshold", "detection_threshold")
                  if getattr(args, k) is not None}
        early = bool(args.early_picks or args.low_latency)
        stride = args.stride if args.stride is not None else (5.0 if args.low_latency else None)
        blinding = args.early_blinding if args.early_blinding is not None else (2.0 if args.low_latency else None)
        picker = RealtimePicker(model, csv_path=out, plot_dir=args.plot_dir, band_priority=args.channels,
                                stride=stride, early_picks=early, early_blinding=blinding,
                                plot_interval=args.plot_interval, step=args.step or None,
                                silence_timeout=args.silence_timeout, reorder_window=args.reorder_window,
                                batch_wait=args.batch_wait,
                                weights=weights_label(model), **kwargs)
        picks = picker.run(source, duration=args.duration)
    except RealtimeError as exc:
        logger.error("%s", exc)
        return 2
    print(f"{len(picks)} picks written to {out}")
    return 0
