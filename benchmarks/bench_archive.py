"""Benchmark archive picking: FEQ3 vs SeisBench's EQTransformer, and 1 -> 2 Dask workers.

Picks the real SDS archive in ../shared/data/cx_continuous/sds (2 stations x 12 h, 100 Hz) with
``seisbench_feq.archive.pick_archive`` and prints station-hours per second and peak RSS for:

1. FEQ3, in-process (``workers=0``)
2. EQTransformer (SeisBench), in-process, same settings -> ratios FEQ3 / EQTransformer
3. FEQ3 on a Dask LocalCluster with 1 worker, then with 2 workers -> speed-up, on
   ``--dask-station-days`` station-days (default 8: the two stations copied under new codes
   R000, R001, ... into a temporary SDS archive, 12 h each), so that each worker has many units

Each configuration runs in its own child process, so that its peak RSS is its own: the child
reports ``getrusage(RUSAGE_SELF)`` (the driver) and ``getrusage(RUSAGE_CHILDREN)`` (the largest
Dask worker process; workers are reaped before it reads it).

Weights: FEQ3 uses its shipped ``default`` weights when present; EQTransformer is converted from
the original Keras file in ../shared/weights when ``seisbench_feq.convert`` can read it. Otherwise
both fall back to random weights (with a fixed seed); the timing of a forward pass does not
depend on the weights, only the number of picks does.

    python benchmarks/bench_archive.py            # full run (several minutes)
    python benchmarks/bench_archive.py --hours 1  # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEISBENCH_FEQ_SHARED", ROOT.parent / "shared"))
SDS = SHARED / "data" / "cx_continuous" / "sds"
EQT_H5 = SHARED / "weights" / "eqtransformer_original" / "EqT_original_model.h5"
START = "2014-05-01T00:00:00"
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def _weights_for(model: str) -> str:
    """The best weights available offline, or 'random' (timing does not depend on weights)."""
    if model == "eqtransformer":
        try:
            from seisbench_feq.convert import eqtransformer_from_keras  # noqa: F401

            return str(EQT_H5) if EQT_H5.exists() else "random"
        except ImportError:
            return "random"
    import seisbench_feq

    cls = seisbench_feq.MODELS[model]
    return "default" if "default" in cls.list_pretrained() else "random"


def replicated_sds(folder: Path, copies: int) -> Path:
    """An SDS archive with ``copies`` copies of each station of the shared one (codes R000, R001, ...)."""
    import obspy

    files = sorted(p for p in SDS.rglob("*") if p.is_file())
    stations = sorted({p.parts[-3] for p in files})
    for path in files:
        stream = obspy.read(str(path))
        for copy in range(copies):
            code = f"R{copy * len(stations) + stations.index(path.parts[-3]):03d}"
            for trace in stream:
                trace.stats.station = code
            rel = path.relative_to(SDS)
            target = folder / rel.parts[0] / rel.parts[1] / code / rel.parts[3] / path.name.replace(rel.parts[2], code)
            target.parent.mkdir(parents=True, exist_ok=True)
            stream.write(str(target), format="MSEED")
    return folder


def child(config: dict) -> None:
    """Run one configuration and print one JSON line with its measurements."""
    import torch

    from seisbench_feq import archive

    if config["torch_threads"]:
        torch.set_num_threads(config["torch_threads"])
    model = archive.load_model(config["model"], config["weights"])
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as out:
        t = time.perf_counter()
        report = archive.pick_archive(
            config["sds"], out, model, start=config["start"], end=config["end"],
            chunk=config["chunk"], classify_span=config["classify_span"],
            workers=config["workers"], torch_threads=config["torch_threads"], progress=False)
        wall = time.perf_counter() - t
    s = report.summary
    print(json.dumps({
        "wall_s": wall,
        "cluster_start_s": s["throughput"]["cluster_start_s"],
        "cluster_stop_s": s["throughput"]["cluster_stop_s"],
        "station_hours": s["data_hours"],
        "station_hours_per_s": s["data_hours"] / wall,
        "units": s["units"]["done"],
        "workers_used": s["throughput"]["workers"],
        "torch_threads_used": s["throughput"]["torch_threads"],
        "failed": s["units"]["failed"],
        "picks": s["picks_total"],
        "weights": s["weights"],
        "rss_driver_baseline_mb": baseline_kb / 1024,
        "rss_driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))


def run_config(name: str, config: dict) -> dict:
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(config)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{name} failed (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["failed"]:
        raise SystemExit(f"{name}: {result['failed']} units failed")
    print(f"    {result['wall_s']:.1f} s", file=sys.stderr, flush=True)
    return {"name": name, **config, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=12, help="hours from %s (max 12)" % START)
    parser.add_argument("--chunk", default="1d", help="work-unit length (default 1d)")
    parser.add_argument("--classify-span", default="1h", help="span per classify call (1h)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the in-process runs (default 1: on a shared "
                             "machine more threads wait on each other)")
    parser.add_argument("--worker-threads", type=int, default=1,
                        help="torch threads per Dask worker (default 1, so that 1 -> 2 workers "
                             "measures scale-out; 0: pick_archive's default, cores // workers)")
    parser.add_argument("--skip-workers", action="store_true", help="no Dask runs")
    parser.add_argument("--dask-station-days", type=float, default=8,
                        help="station-days of the Dask runs (copies of the 12 h x 2 station archive)")
    parser.add_argument("--unbounded", action="store_true",
                        help="also run EQTransformer with one classify call per unit "
                             "(classify span = chunk), to show what --classify-span saves")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over all configurations; the fastest round is reported")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if not SDS.exists():
        raise SystemExit(f"needs the SDS archive at {SDS} (set SEISBENCH_FEQ_SHARED)")

    from obspy import UTCDateTime

    base = dict(sds=str(SDS), start=START, end=str(UTCDateTime(START) + args.hours * 3600),
                chunk=args.chunk, classify_span=args.classify_span)
    feq3 = dict(base, model="feq3", weights=_weights_for("feq3"))
    eqt = dict(base, model="eqtransformer", weights=_weights_for("eqtransformer"))
    configs = [("FEQ3, in-process", dict(feq3, workers=0, torch_threads=args.threads)),
               ("EQTransformer, in-process", dict(eqt, workers=0, torch_threads=args.threads))]
    if args.unbounded:
        configs.append(("EQTransformer, 1 classify/unit",
                        dict(eqt, classify_span=args.chunk, workers=0, torch_threads=args.threads)))
    scratch = tempfile.TemporaryDirectory(prefix="bench-archive-sds-")
    if not args.skip_workers:
        threads = args.worker_threads or None
        copies = max(1, round(args.dask_station_days * 24 / args.hours / 2))
        big = dict(feq3, sds=str(replicated_sds(Path(scratch.name), copies)))
        configs += [("FEQ3, pick's defaults", dict(big, workers=None, torch_threads=None)),
                    ("FEQ3, Dask 1 worker", dict(big, workers=1, torch_threads=threads)),
                    ("FEQ3, Dask 2 workers", dict(big, workers=2, torch_threads=threads))]
    # Rounds run every configuration once, interleaved, so that a burst of load from other users
    # hits all of them; each configuration is reported by its fastest round.
    runs = {name: [] for name, _ in configs}
    for _ in range(args.repeat):
        for name, config in configs:
            runs[name].append(run_config(name, config))
    results = []
    for name, _ in configs:
        best = dict(min(runs[name], key=lambda r: r["wall_s"]))
        best["all_wall_s"] = [round(r["wall_s"], 1) for r in runs[name]]
        best["rss_driver_peak_mb"] = max(r["rss_driver_peak_mb"] for r in runs[name])
        best["rss_worker_peak_mb"] = max(r["rss_worker_peak_mb"] for r in runs[name])
        results.append(best)

    scratch.cleanup()
    print(f"load average at the end: {os.getloadavg()}")
    print(f"\nArchive picking benchmark: {SDS}, {args.hours:g} h x 2 stations, chunk {args.chunk}, "
          f"classify span {args.classify_span}; {os.cpu_count()} CPU cores, torch "
          f"{__import__('torch').__version__}, {args.threads} torch thread(s) in-process, "
          f"{args.worker_threads or 'cores // workers'} per Dask worker; best of {args.repeat} "
          "round(s), peak RSS the largest; shared machine, timings are noisy")
    print(f"{'configuration':30s} {'weights':22s} {'wall s':>7s} {'st-h/s':>7s} {'picks':>6s} "
          f"{'driver MB':>9s} {'worker MB':>9s}  all rounds (s)")
    for r in results:
        worker = f"{r['rss_worker_peak_mb']:9.0f}" if r["workers_used"] else f"{'-':>9s}"
        print(f"{r['name']:30s} {r['weights'][:22]:22s} {r['wall_s']:7.1f} "
              f"{r['station_hours_per_s']:7.3f} {r['picks']:6d} {r['rss_driver_peak_mb']:9.0f} "
              f"{worker}  {r['all_wall_s']}")
    f, e = results[0], results[1]
    speed = f["station_hours_per_s"] / e["station_hours_per_s"]
    print(f"\nFEQ3 / EQTransformer: throughput x{speed:.2f}, "
          f"peak RSS x{f['rss_driver_peak_mb'] / e['rss_driver_peak_mb']:.2f} "
          f"(RSS above the model-loaded baseline: FEQ3 "
          f"{f['rss_driver_peak_mb'] - f['rss_driver_baseline_mb']:.0f} MB, EQTransformer "
          f"{e['rss_driver_peak_mb'] - e['rss_driver_baseline_mb']:.0f} MB)")
    if not args.skip_workers:
        one, two = results[-2], results[-1]

        def rate(r):  # without starting/stopping the cluster (paid once per job)
            return r["station_hours"] / (r["wall_s"] - r["cluster_start_s"] - r["cluster_stop_s"])

        with_start = two["station_hours_per_s"] / one["station_hours_per_s"]
        print(f"Dask runs: {one['station_hours'] / 24:.1f} station-days, {one['units']} units")
        default = results[-3]

        print(f"pick's defaults here ({os.cpu_count()} cores, {one['station_hours'] / 24:.1f} station-days): "
              f"{default['workers_used']} worker(s), {default['torch_threads_used']} torch thread(s): "
              f"{default['wall_s']:.1f} s; best of the three: {min(r['wall_s'] for r in results[-3:]):.1f} s")
        print(f"Dask 1 -> 2 workers (FEQ3): speed-up x{with_start:.2f} including the cluster "
              f"start and stop ({one['cluster_start_s']:.1f} + {one['cluster_stop_s']:.1f} s / "
              f"{two['cluster_start_s']:.1f} + {two['cluster_stop_s']:.1f} s), "
              f"x{rate(two) / rate(one):.2f} without (picking only: "
              f"{rate(one):.3f} -> {rate(two):.3f} station-h/s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
