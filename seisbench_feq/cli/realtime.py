"""``seisbench-feq realtime``: pick live SeedLink data or a replayed archive; each pick once."""

from __future__ import annotations

import logging
from pathlib import Path

from .pick import add_threshold_arguments, non_negative_float, positive_int, utc_time

logger = logging.getLogger("seisbench_feq.realtime")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "realtime", help="pick live SeedLink data or a replayed archive; each pick emitted once",
        description="Real-time picking with per-station ring buffers. Picks are appended to --out "
                    "(CSV, flushed per pick) with their latency. Ctrl-C finishes the buffered data and "
                    "flushes the outputs.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--seedlink", metavar="HOST:PORT", help="SeedLink server")
    where.add_argument("--replay", nargs="+", metavar="FILES_OR_SDS",
                       help="MiniSEED files/folders or an SDS root, replayed in time order")
    parser.add_argument("--streams", help='NET.STA.LOC.CHA list, e.g. "CX.PB01..HH?,CX.PB02..HH?"')
    parser.add_argument("--model", default="feq3",
                        help="model spec: feq3, feq2, feq1, leqnet, eqtransformer, a weights "
                             "prefix, a Keras .h5, or module:Class (default feq3)")
    parser.add_argument("--weights", default="default",
                        help="weights of --model: a shipped name, a weights prefix/.pt/.json, a "
                             "Keras .h5 or 'random' (default: default)")
    parser.add_argument("--out", default="picks.csv", help="CSV of picks (appended)")
    parser.add_argument("--quakeml-dir", help="write one QuakeML file per detection with picks here")
    parser.add_argument("--plot-dir", help="write a per-station figure here, every --plot-interval s")
    parser.add_argument("--plot-interval", type=non_negative_float, default=60.0)
    parser.add_argument("--speed", type=non_negative_float, default=1.0,
                        help="replay speed (1 = real time, 0 = no waiting)")
    parser.add_argument("--start", type=utc_time, help="replay start time (default: data start)")
    parser.add_argument("--end", type=utc_time, help="replay end time (default: data end)")
    parser.add_argument("--step", type=non_negative_float,
                        help="seconds of data between model calls (default: one stride)")
    parser.add_argument("--duration", type=non_negative_float, help="stop after this many wall seconds")
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
    parser.add_argument("--torch-threads", "--threads", dest="torch_threads", type=positive_int,
                        help="torch threads (default: OMP_NUM_THREADS, else 1)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import os

    import torch

    from ..loading import load_model, weights_label
    from ..realtime import RealtimeError, RealtimePicker, ReplaySource, SeedLinkSource

    threads = args.torch_threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or 1
    torch.set_num_threads(threads)
    out = Path(args.out)
    try:
        if out.is_dir():
            raise RealtimeError(f"--out {out} is a folder; give the picks CSV file to append to")
        for flag, folder in (("--quakeml-dir", args.quakeml_dir), ("--plot-dir", args.plot_dir)):
            if folder and Path(folder).exists() and not Path(folder).is_dir():
                raise RealtimeError(f"{flag} {folder} is a file; give a folder")
        try:
            model = load_model(args.model, args.weights)
        except (ValueError, OSError, ImportError) as exc:
            raise RealtimeError(f"cannot load model {args.model}:{args.weights}: {exc}") from None
        if args.seedlink:
            source = SeedLinkSource(args.seedlink, args.streams, netto=args.netto, keepalive=args.keepalive,
                                    backoff_max=args.backoff_max, statefile=args.statefile)
        else:
            source = ReplaySource(args.replay, streams=args.streams, start=args.start, end=args.end,
                                  speed=args.speed)
        kwargs = {k: getattr(args, k) for k in ("P_threshold", "S_threshold", "detection_threshold")
                  if getattr(args, k) is not None}
        picker = RealtimePicker(model, csv_path=out, quakeml_dir=args.quakeml_dir, plot_dir=args.plot_dir,
                                plot_interval=args.plot_interval, step=args.step or None,
                                silence_timeout=args.silence_timeout, reorder_window=args.reorder_window,
                                weights=weights_label(model), **kwargs)
        picks = picker.run(source, duration=args.duration)
    except RealtimeError as exc:
        logger.error("%s", exc)
        return 2
    print(f"{len(picks)} picks written to {args.out}"
          + (f", {len(picker.events_written)} QuakeML events in {args.quakeml_dir}" if args.quakeml_dir else ""))
    return 0
