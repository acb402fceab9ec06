"""``seisbench-feq compare``: match a catalog with a reference (agency) catalog."""

from __future__ import annotations

from pathlib import Path

from ._grammar import add_deprecated_alias
from .associate import fail
from .pick import non_negative_float, utc_time


def add_parser(subparsers) -> None:
    c = subparsers.add_parser(
        "compare",
        help="compare a catalog with a reference (agency) catalog",
        description="Match events one-to-one (time, then distance tolerance) and picks (station, phase, "
        "time tolerance); print counts, precision and recall; optionally write a markdown report with figures.",
    )
    c.add_argument("ours", help="our catalog: QuakeML, CSV catalog or picks table")
    c.add_argument("reference", help="reference catalog: QuakeML, CSV catalog (e.g. an agency events.csv) or picks table")
    c.add_argument("--time-tolerance", type=non_negative_float, default=3.0, help="origin-time tolerance, s (default %(default)s)")
    c.add_argument("--distance-tolerance", type=non_negative_float, default=15.0, help="epicentre tolerance, km (default %(default)s)")
    c.add_argument("--pick-tolerance", type=non_negative_float, default=0.5, help="pick time tolerance, s (default %(default)s)")
    c.add_argument("--start", type=utc_time, help="only events from this time (UTC), e.g. 2020-10-01")
    c.add_argument("--end", type=utc_time, help="only events before this time (UTC)")
    c.add_argument("--out", dest="out", help="output folder: report.md and figures")
    add_deprecated_alias(c, "--report-dir", dest="out", replacement="--out")
    c.add_argument("--tables", action="store_true", help="also write matches.csv, missed.csv, new.csv into the report folder")
    c.add_argument("--station-file", dest="stations", help="station coordinates (CSV or StationXML) to draw on the report map")
    add_deprecated_alias(c, "--stations", dest="stations", replacement="--station-file")
    c.set_defaults(func=run)


def run(args) -> int:
    from ..catalog import compare, read_stations
    from ..io.picks import PickTableError

    for label, path in (("our catalog", args.ours), ("reference catalog", args.reference)):
        p = Path(path)
        if not p.exists():
            return fail("compare", f"{label} {path} does not exist")
        if not p.is_file():
            return fail("compare", f"{label} {path} is not a file")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        return fail("compare", f"--out {args.out} is a file; compare writes a report folder (report.md and figures)")
    start = args.start.datetime.isoformat() + "Z" if args.start is not None else None
    end = args.end.datetime.isoformat() + "Z" if args.end is not None else None
    try:
        comparison = compare(args.ours, args.reference, time_tolerance=args.time_tolerance,
                             distance_tolerance_km=args.distance_tolerance, pick_tolerance=args.pick_tolerance,
                             start=start, end=end)
        stations = read_stations(args.stations) if args.stations else None
    except (OSError, PickTableError, ValueError) as exc:  # unreadable or malformed catalogs
        return fail("compare", str(exc))
    print(comparison.summary())
    print(comparison.by_magnitude.to_string(index=False))
    if args.out:
        from ..catalog.report import write_report

        path = write_report(comparison, args.out, tables=args.tables, stations=stations)
        print(f"wrote {path}")
    return 0
