"""``seisbench-feq associate``: picks -> events (PyOcto) -> QuakeML."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._grammar import add_deprecated_alias, output_file
from .pick import non_negative_float, positive_int, probability, utc_time


def fail(command: str, message: str) -> int:
    """A user mistake: one line on stderr, exit status 2 (as argparse does for bad arguments)."""
    print(f"seisbench-feq {command}: error: {message}", file=sys.stderr)
    return 2


#: Fixed names of what ``associate --out DIR`` writes inside DIR.
# (not "picks.csv": the input picks are often there)
CATALOG_NAME, EVENTS_NAME, PICKS_NAME = "catalog.xml", "events.csv", "associated_picks.csv"
QUAKEML_SUFFIXES = (".xml", ".qml", ".quakeml")


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
    p.add_argument("--station-file", dest="stations", help="station coordinates: CSV (id/station, "
                   "latitude, longitude, elevation) or StationXML (required)")
    add_deprecated_alias(p, "--stations", "--inventory", dest="stations", replacement="--station-file")
    p.add_argument("--out", default="catalog_output",
                   help=f"output folder: {CATALOG_NAME} (QuakeML), {EVENTS_NAME}, {PICKS_NAME} (the "
                        "associated picks with event_id and residual) (default %(default)s)")
    # The old single-file outputs, one release: --out FILE.xml, --events-csv F, --picks-csv F.
    p.add_argument("--events-csv", help=argparse.SUPPRESS)
    p.add_argument("--picks-csv", help=argparse.SUPPRESS)
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
    p.add_argument("--pyocto-threads", dest="threads", type=positive_int, help="PyOcto threads (default: all cores)")
    add_deprecated_alias(p, "--threads", dest="threads", replacement="--pyocto-threads", type=positive_int)
    p.add_argument("--resume-dir", "--checkpoint-dir", dest="checkpoint_dir",
                   help="save finished hour blocks here; a rerun resumes from them")
    p.add_argument("--start", type=utc_time, help="only picks from this time (UTC), e.g. 2020-10-01T00:30")
    p.add_argument("--end", type=utc_time, help="only picks before this time (UTC)")
    p.set_defaults(func=run)


def run(args) -> int:
    import pandas as pd

    from ..catalog import associate, read_picks, read_stations, write_quakeml
    from ..io.picks import PickTableError

    if not args.stations:
        return fail("associate", "the station coordinates are required: --station-file FILE (CSV or StationXML)")
    try:
        quakeml_path = output_file(args.out, CATALOG_NAME, old_suffixes=QUAKEML_SUFFIXES, command="associate")
        # The old form (--out FILE.xml) wrote the tables only where --events-csv/--picks-csv said.
        folder = None if quakeml_path == Path(args.out) else quakeml_path.parent
        events_path = _old_file(args.events_csv, "--events-csv", folder and folder / EVENTS_NAME)
        picks_path = _old_file(args.picks_csv, "--picks-csv", folder and folder / PICKS_NAME)
        for path in (quakeml_path, events_path, picks_path):
            if path is not None and path.resolve() == Path(args.picks).resolve():
                raise ValueError(f"--out {args.out} would overwrite the input {args.picks}")
    except ValueError as exc:
        return fail("associate", str(exc))
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

    write_quakeml(result, quakeml_path, agency=args.agency)
    written = [quakeml_path]
    for path, table in ((events_path, result.events), (picks_path, result.picks)):
        if path is not None:
            atomic_write(path, lambda p, table=table: table.to_csv(p, index=False))
            written.append(path)
    print(result.summary())
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _old_file(path: str | None, option: str, default: Path | None) -> Path | None:
    """``--events-csv`` / ``--picks-csv`` (one release): that file instead of the fixed name."""
    if not path:
        return default
    from ._grammar import _check_parents, deprecated

    name = EVENTS_NAME if option == "--events-csv" else PICKS_NAME
    deprecated(f"associate {option} {path}: the table is written as {name} in the --out folder")
    p = Path(path)
    if p.is_dir() or str(path).endswith(("/", "\\")):
        raise ValueError(f"{option} {path} is a folder; {option} is one file")
    _check_parents(p, option)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p
