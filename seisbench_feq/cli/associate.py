"""``seisbench-feq associate``: picks -> events (PyOcto) -> QuakeML."""

from __future__ import annotations

import sys
from pathlib import Path

from .pick import non_negative_float, positive_int, probability, utc_time


def fail(command: str, message: str) -> int:
    """A user mistake: one line on stderr, exit status 2 (as argparse does for bad arguments)."""
    print(f"seisbench-feq {command}: error: {message}", file=sys.stderr)
    return 2


def output_file_problem(path: str | None, option: str, what: str) -> str | None:
    """Why ``path`` cannot be written as one file (an existing folder, a trailing slash, a parent
    that is a file), else None."""
    if not path:
        return None
    p = Path(path)
    if p.is_dir() or str(path).endswith(("/", "\\")):
        return f"{option} {path} is a folder; {what} is one file, e.g. {p / 'catalog.xml' if option == '--out' else p / 'events.csv'}"
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{option} {path}: {parent} is a file, not a folder"
            break
    return None


def add_parser(subparsers) -> None:
    from ..catalog import default_parameters
    from ..catalog.magnitude import FORMULAS

    d = default_parameters()
    p = subparsers.add_parser(
        "associate",
        help="associate picks into events with PyOcto and write QuakeML",
        description="Associate picks across stations (PyOcto), locate the events in a 1-D model, compute "
        "local magnitudes where the picks carry amplitudes, and write QuakeML. Naive pick times are taken as UTC.",
    )
    p.add_argument("picks", help="pick file (CSV/Parquet of `seisbench-feq pick`, or the PhaseNet hour-file layout)")
    p.add_argument("--stations", "--inventory", dest="stations", required=True,
                   help="station coordinates: CSV (id/station, latitude, longitude, elevation in m) or StationXML")
    p.add_argument("--out", required=True, help="QuakeML file to write")
    p.add_argument("--events-csv", help="also write the events as CSV")
    p.add_argument("--picks-csv", help="also write the associated picks (with event_id, residual) as CSV")
    p.add_argument("--velocity-model", default=d["velocity_model"],
                   help="'socal' (Hadley-Kanamori 1-D, default), 'homogeneous', or a CSV of layers: depth,vp[,vs]")
    p.add_argument("--vp", type=non_negative_float, default=d["vp"], help="P velocity of the homogeneous model, km/s (default %(default)s)")
    p.add_argument("--vp-vs", type=non_negative_float, default=d["vp_vs_ratio"], help="Vp/Vs (default %(default)s)")
    p.add_argument("--tolerance", type=non_negative_float, default=d["tolerance"],
                   help="travel-time tolerance while associating, s (default %(default)s)")
    p.add_argument("--pick-match-tolerance", type=non_negative_float, default=d["pick_match_tolerance"], help="s (default %(default)s)")
    p.add_argument("--min-p", type=positive_int, default=d["min_p_picks"], help="minimum P picks per event (default %(default)s)")
    p.add_argument("--min-s", type=int, default=d["min_s_picks"], help="minimum S picks per event (default %(default)s)")
    p.add_argument("--min-ps-stations", type=int, default=d["min_p_and_s_stations"],
                   help="minimum stations with both P and S (default %(default)s)")
    p.add_argument("--min-picks", type=positive_int, default=d["min_picks"], help="minimum picks per event (default %(default)s)")
    p.add_argument("--max-depth", type=non_negative_float, default=d["depth_range_km"][1],
                   help="deepest hypocentre searched, km (default %(default)s)")
    p.add_argument("--margin", type=non_negative_float, default=d["margin_km"],
                   help="search area margin around the stations, km (default %(default)s)")
    p.add_argument("--min-probability", type=probability, default=d["min_probability"],
                   help="ignore picks below this probability (default %(default)s)")
    p.add_argument("--magnitude", default=d["magnitude"], choices=[*FORMULAS, "none"],
                   help="local-magnitude formula for picks with amplitudes in m or m/s (default %(default)s)")
    p.add_argument("--dominant-frequency", type=non_negative_float, default=d["dominant_frequency_hz"],
                   help="frequency (Hz) that turns peak velocities into Wood-Anderson amplitudes (default %(default)s)")
    p.add_argument("--picker", help="picking model name written to the QuakeML (default: the picks' model column)")
    p.add_argument("--agency", help="agency id written to the QuakeML")
    p.add_argument("--threads", type=positive_int, help="PyOcto threads (default: all cores)")
    p.add_argument("--resume-dir", "--checkpoint-dir", dest="checkpoint_dir",
                   help="save finished hour blocks here; a rerun resumes from them")
    p.add_argument("--start", type=utc_time, help="only picks from this time (UTC), e.g. 2020-10-01T00:30")
    p.add_argument("--end", type=utc_time, help="only picks before this time (UTC)")
    p.set_defaults(func=run)


def run(args) -> int:
    import pandas as pd

    from ..catalog import associate, read_picks, read_stations, write_quakeml
    from ..io.picks import PickTableError

    for path, option, what in ((args.out, "--out", "the QuakeML output"), (args.events_csv, "--events-csv", "the events table"),
                               (args.picks_csv, "--picks-csv", "the picks table")):
        problem = output_file_problem(path, option, what)
        if problem:
            return fail("associate", problem)
    try:
        picks = read_picks(args.picks)
        stations = read_stations(args.stations)
    except (OSError, PickTableError, ValueError) as exc:  # missing, empty or malformed input files
        return fail("associate", str(exc))
    for bound, keep in ((args.start, lambda t, b: t >= b), (args.end, lambda t, b: t < b)):
        if bound is not None:
            picks = picks[keep(picks["time"], pd.Timestamp(bound.datetime, tz="UTC"))]
    result = associate(
        picks, stations, args.velocity_model, vp=args.vp, vp_vs_ratio=args.vp_vs,
        tolerance=args.tolerance, pick_match_tolerance=args.pick_match_tolerance,
        min_p_picks=args.min_p, min_s_picks=args.min_s, min_p_and_s_stations=args.min_ps_stations,
        min_picks=args.min_picks, depth_range_km=(0.0, args.max_depth), margin_km=args.margin,
        min_probability=args.min_probability, n_threads=args.threads, picker=args.picker,
        checkpoint_dir=args.checkpoint_dir, magnitude=None if args.magnitude == "none" else args.magnitude,
        dominant_frequency_hz=args.dominant_frequency,
    )
    from ..io.files import atomic_write

    write_quakeml(result, args.out, agency=args.agency)
    if args.events_csv:
        atomic_write(args.events_csv, lambda p: result.events.to_csv(p, index=False))
    if args.picks_csv:
        atomic_write(args.picks_csv, lambda p: result.picks.to_csv(p, index=False))
    print(result.summary())
    print(f"wrote {args.out}")
    return 0
