"""Imperial Valley, 2020-10-01/02: associate real PhaseNet picks, locate, ML, QuakeML, compare with SCSN.

The data are in ``../shared/data/imperial_valley`` (PhaseNet picks of 16 CI stations over 48 h, the
stations' coordinates, and the Southern California Seismic Network catalog, from the GaMMA test
data). Nothing of it is copied into the project; the report holds only aggregate numbers and figures.

Run (several minutes for the 48 h on a 2-core CPU; about a third of it is writing and re-reading QuakeML)::

    python examples/imperial_valley.py                       # 48 h; report into imperial_valley_output/
    python examples/imperial_valley.py --hours 1 --out /tmp/iv    # a quick look
    python examples/imperial_valley.py --out docs/imperial_valley # regenerate the report in the docs
    python examples/imperial_valley.py --wadati 6            # measure Vp/Vs on the first 6 h
    python examples/imperial_valley.py --sweep 2             # parameter choices on the first 2 h

Everything is written below ``--out`` (report, figures, ``catalog.xml``, ``events.csv``).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from seisbench_feq import catalog  # noqa: E402
from seisbench_feq.catalog.report import write_report  # noqa: E402

# ../shared beside the checkout, or wherever SEISBENCH_FEQ_SHARED points (as for the tests and benchmarks)
SHARED = Path(os.environ.get("SEISBENCH_FEQ_SHARED", ROOT.parent / "shared")) / "data" / "imperial_valley"
STATIONS = SHARED / "stations.csv"
DEFAULT_OUT = ROOT / "imperial_valley_output"  # outside docs/: a default run never rewrites tracked files
logger = logging.getLogger("imperial_valley")
# Effective Vp/Vs of the Imperial Valley picks: 1 + median of (ts - tp) / (tp - t0) over matched
# events (t0 from SCSN); `--wadati` measures it (1.80). The classic Wadati slope is lower (1.64)
# with a ~0.9 s S-P intercept: the basin's sediments delay S at every station. One Vp/Vs cannot
# model both; 1.80 centres both P and S residuals on zero and gives the best depths (docs/catalog.md).
VP_VS = 1.80


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def run(out_dir: Path, hours: float | None = None, stations_path: Path | None = None,
        quakeml: Path | None = None, threads: int | None = None, events_csv: Path | None = None,
        **assoc_params) -> dict:
    """Associate, export and compare; write ``report.md`` and figures into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    picks = catalog.read_picks(SHARED / "picks.csv")
    reference = catalog.read_catalog(SHARED / "events.csv", name="SCSN")
    start = picks["time"].min().floor("h")
    end = picks["time"].max().ceil("h") if hours is None else start + pd.Timedelta(hours=hours)
    picks = picks[(picks["time"] >= start) & (picks["time"] < end)].reset_index(drop=True)
    stations_path = Path(stations_path) if stations_path else STATIONS
    t_read = time.perf_counter() - t_start

    cpu0 = time.process_time()
    assoc_params.setdefault("vp_vs_ratio", VP_VS)
    result = catalog.associate(picks, stations_path, picker="PhaseNet", n_threads=threads, **assoc_params)
    cpu_association = time.process_time() - cpu0
    quakeml = Path(quakeml) if quakeml else out_dir / "catalog.xml"
    t0 = time.perf_counter()
    catalog.write_quakeml(result, quakeml)
    t_quakeml = time.perf_counter() - t0
    events_csv = Path(events_csv) if events_csv else out_dir / "events.csv"
    cols = ["event_id", "time", "latitude", "longitude", "depth_km", "magnitude", "magnitude_type", "n_picks",
            "n_p_picks", "n_s_picks", "n_stations", "rms_residual_s", "azimuthal_gap", "min_distance_km"]
    table = result.events.reindex(columns=cols).copy()
    numeric = table.select_dtypes("number").columns
    table[numeric] = table[numeric].round(5)
    table.to_csv(events_csv, index=False)
    # check the export: the QuakeML read back must give the same events
    t0 = time.perf_counter()
    comparison = catalog.compare(quakeml, reference, start=start, end=end)
    t_compare = time.perf_counter() - t0
    comparison.ours.picks = result.picks  # travel-time residuals for the histograms

    numbers = dict(
        threads=threads,
        span=f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC ({(end - start) / pd.Timedelta(hours=1):g} h)",
        picks=len(picks), associated_picks=len(result.picks), events=comparison.counts["ours"],
        reference=comparison.counts["reference"], matched=comparison.counts["matched"],
        precision=comparison.precision(), recall=comparison.recall(),
        recall_m15=comparison.recall(1.5), precision_m15=comparison.precision(1.5),
        reference_m15=int((comparison.reference.events["magnitude"] >= 1.5).sum()),
        matched_m15=int((comparison.matches["magnitude"] >= 1.5).sum()),
        runtime_association=result.runtime_s, cpu_association=cpu_association, runtime_read=t_read,
        runtime_quakeml=t_quakeml, runtime_compare=t_compare,
        events_with_ml=int(result.events["magnitude"].notna().sum()) if "magnitude" in result.events else 0,
        ml_minus_scsn_median=float(np.median(comparison.magnitude_differences())) if len(comparison.magnitude_differences()) else float("nan"),
        ml_minus_scsn_mad=(float(np.median(np.abs(comparison.magnitude_differences() - np.median(comparison.magnitude_differences()))))
                           if len(comparison.magnitude_differences()) else float("nan")),
        precision_our_ml15=comparison.precision_by_our_magnitude(1.5),
    )
    preamble = _preamble(numbers, result, stations_path, quakeml)
    write_report(comparison, out_dir, title="Imperial Valley, 2020-10-01/02: PhaseNet picks + PyOcto vs the SCSN catalog",
                 preamble=preamble, stations=result.stations)
    numbers["report"] = str(out_dir / "report.md")
    return numbers


SWEEP = [  # (label, parameters): each changes one thing from the defaults
    ("defaults (1-D socal, Vp/Vs 1.80, tolerance 1 s, >=4 P, >=2 S, >=2 P+S stations, >=8 picks)", {}),
    ("Vp/Vs 1.73", {"vp_vs_ratio": 1.73}),
    ("homogeneous Vp 6.0 km/s (Vp/Vs 1.80)", {"velocity_model": "homogeneous"}),
    ("tolerance 0.5 s", {"tolerance": 0.5}),
    ("tolerance 2.0 s", {"tolerance": 2.0}),
    (">=5 P, >=3 P+S stations, >=10 picks", {"min_p_picks": 5, "min_p_and_s_stations": 3, "min_picks": 10}),
    ("picks with probability >= 0.5 only", {"min_probability": 0.5}),
    ("pick_match_tolerance 0.5 s", {"pick_match_tolerance": 0.5}),
    ("min_interevent_time 3 s", {"min_interevent_time": 3.0}),
]


def sweep(hours: float = 2.0, threads: int | None = 1, stations_path: Path | None = None) -> str:
    """One-at-a-time parameter changes on the first ``hours``; a markdown table."""
    picks = catalog.read_picks(SHARED / "picks.csv")
    reference = catalog.read_catalog(SHARED / "events.csv", name="SCSN")
    start = picks["time"].min().floor("h")
    end = start + pd.Timedelta(hours=hours)
    picks = picks[picks["time"] < end]
    stations = catalog.read_stations(stations_path or STATIONS)
    lines = [
        "| parameters | events | precision | recall | recall M>=1.5 | origin time median (s) | epicentre median (km) | depth median (km) | CPU (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, params in SWEEP:
        params = dict(params)
        model = params.pop("velocity_model", "socal")
        params.setdefault("vp_vs_ratio", VP_VS)
        cpu = time.process_time()
        result = catalog.associate(picks, stations, model, n_threads=threads, **params)
        cpu = time.process_time() - cpu
        cmp = catalog.compare(result, reference, start=start, end=end)
        m = cmp.matches
        lines.append(
            f"| {label} | {len(result.events)} | {cmp.precision():.3f} | {cmp.recall():.3f} | {cmp.recall(1.5):.3f} | "
            f"{m['dt_s'].median():+.2f} | {m['distance_km'].median():.2f} | {m['ddepth_km'].median():+.2f} | {cpu:.0f} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def wadati(hours: float = 6.0, threads: int | None = 1) -> str:
    """Vp/Vs of the picks: effective ratio against SCSN origin times, and the classic Wadati slope."""
    picks = catalog.read_picks(SHARED / "picks.csv")
    reference = catalog.read_catalog(SHARED / "events.csv", name="SCSN")
    start = picks["time"].min().floor("h")
    picks = picks[picks["time"] < start + pd.Timedelta(hours=hours)]
    result = catalog.associate(picks, STATIONS, n_threads=threads)
    cmp = catalog.compare(result, reference, start=start, end=start + pd.Timedelta(hours=hours))
    t0 = dict(zip(cmp.matches["our_event_id"], catalog.seconds(pd.Series(cmp.matches["ref_time"]))))
    both = result.picks.pivot_table(index=["event_id", "station"], columns="phase", values="time", aggfunc="first").dropna()
    both = both.reset_index()
    both = both[both["event_id"].isin(t0)]
    tp = catalog.seconds(both["P"]) - both["event_id"].map(t0).to_numpy()
    sp = catalog.seconds(both["S"]) - catalog.seconds(both["P"])
    ok = tp > 0.3
    slope, intercept = np.polyfit(tp[ok], sp[ok], 1)
    classic, n = catalog.wadati_vp_vs(result.picks)
    return (f"effective Vp/Vs = 1 + median((ts-tp)/(tp-t0)) = {1 + np.median(sp[ok] / tp[ok]):.3f} "
            f"({ok.sum()} station-event pairs, t0 from SCSN)\n"
            f"fit ts-tp = a (tp-t0) + b: Vp/Vs = {1 + slope:.3f}, b = {intercept:+.2f} s\n"
            f"classic Wadati (per-event intercepts, no origin times): Vp/Vs = {classic:.3f} ({n} pairs)")


def _preamble(n: dict, result, stations_path: Path, quakeml: Path) -> str:
    p = result.parameters
    try:
        stations_label = stations_path.resolve().relative_to(ROOT.parent)
        stations_label = f"../{stations_label}"
    except ValueError:
        stations_label = stations_path.name
    ml = ""
    if n["events_with_ml"]:
        ml = (f"| events with ML ({p.get('magnitude', 'ML')}) | {n['events_with_ml']} |\n"
              f"| ML minus SCSN magnitude, matched events: median / MAD | {n['ml_minus_scsn_median']:+.2f} / {n['ml_minus_scsn_mad']:.2f} |\n"
              f"| precision among our events with ML >= 1.5 | {n['precision_our_ml15']:.3f} |\n")
    return f"""Picks: PhaseNet, 16 CI stations, {n['span']}; reference: the SCSN catalog of the same span
(`../shared/data/imperial_valley/`, GaMMA test data). Station coordinates and elevations: `{stations_label}`
(the 16 stations' own coordinates).
Association and location: PyOcto, velocity model {p['velocity_model_name']}, Vp/Vs {p['vp_vs_ratio']} (measured, see `docs/catalog.md`),
tolerance {p['tolerance']} s, at least {p['min_p_picks']} P, {p['min_s_picks']} S, {p['min_picks']} picks and
{p['min_p_and_s_stations']} stations with both P and S. Local magnitudes from PhaseNet's peak velocities
(`seisbench_feq.catalog.magnitude`). QuakeML written to `{quakeml.name}`.

| | value |
|---|---|
| picks used | {n['picks']} ({n['associated_picks']} associated) |
| events: ours / SCSN / matched | {n['events']} / {n['reference']} / {n['matched']} |
| precision, all | {n['precision']:.3f} |
| recall, all | {n['recall']:.3f} |
| recall, M >= 1.5 | {n['recall_m15']:.3f} ({n['matched_m15']} of {n['reference_m15']}) |
| precision, M >= 1.5 (lower bound) | {n['precision_m15']:.3f} |
{ml}| association + location + ML: wall time / CPU time | {n['runtime_association']:.1f} s / {n['cpu_association']:.1f} s |
| reading the picks | {n['runtime_read']:.1f} s |
| writing QuakeML / reading it back and comparing | {n['runtime_quakeml']:.1f} s / {n['runtime_compare']:.1f} s |

Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, PyOcto threads: {n.get('threads') or 'all cores'}.
"Precision" counts every event the SCSN does not list as false; in a swarm many of them are likely
real small events (see `docs/catalog.md`), so it is a lower bound.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="folder for the report, figures, catalog.xml and events.csv (default: imperial_valley_output/)")
    parser.add_argument("--hours", type=float, help="only the first HOURS of the 48 h (default: all)")
    parser.add_argument("--stations", help="station table (default: ../shared/data/imperial_valley/stations.csv)")
    parser.add_argument("--quakeml", help="QuakeML path (default: OUT/catalog.xml)")
    parser.add_argument("--events-csv", help="our events as CSV (default: OUT/events.csv)")
    parser.add_argument("--threads", type=int, help="PyOcto threads (default: all cores)")
    parser.add_argument("--resume-dir", help="keep finished hour blocks here and resume from them on a rerun")
    parser.add_argument("--sweep", type=float, metavar="HOURS",
                        help="compare parameter choices on the first HOURS (one at a time) and stop")
    parser.add_argument("--wadati", type=float, metavar="HOURS", help="measure Vp/Vs on the first HOURS and stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pyocto").setLevel(logging.WARNING)

    if args.wadati:
        print(wadati(args.wadati, args.threads or 1))
        return 0
    if args.sweep:
        print(sweep(args.sweep, args.threads or 1, args.stations))
        return 0

    numbers = run(Path(args.out), args.hours, args.stations, args.quakeml, args.threads, args.events_csv,
                  checkpoint_dir=args.resume_dir)
    for key, value in numbers.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
