"""Real-time picking benchmark: pick latency and stations sustained, FEQ3 against EQTransformer.

Both models run in one process, on the same real data (../shared/data/cx_continuous: the two CX
stations copied under new codes V000, V001, ... to make N stations), through
``seisbench_feq.realtime.RealtimePicker``, record by record in arrival order: after each 512-byte
record the picker runs every window that record completed (``process_pending``), as a picker that
keeps up does in real time. The two models are fed alternately, record by record, so that both
see the same load on the (shared) machine.

* **Model time** of every call is measured. A single worker then serves the calls in real time:
  a call arrives when its record's last sample is reached (data time = wall time at speed 1),
  waits while the worker is busy (queue), and runs for its measured time (model).
* **Stations sustained** on these cores = N x data seconds / total model seconds (the worker's
  utilisation at N stations is its inverse).
* **Pick latency** at the picks of the original EqT (converted) on the same samples (its
  ``classify`` picks: the shipped FEQ3 weights and a random-weight EQTransformer do not pick on
  this data): a pick there is emitted by the first call whose final annotations pass its
  trigger-off time; latency = emission - data time of the pick = waiting for data + queue + model,
  as in ``RealtimePick``. Picks in the last window of the replay are left out (only the
  end-of-stream flush emits them).

    python benchmarks/bench_realtime.py --threads 2 --stations 8 --minutes 5

``--cpu-per-window`` measures instead the CPU time (``time.process_time``, all threads of this
process) per model window of the real-time picker against ``classify`` on the same stream, FEQ3
only, interleaved round by round in this one process (so both see the same load):
real time = feed + ``process_pending`` + flush of every record; classify = ``model.classify`` of
the whole stream; per window = divided by the windows of classify's grid on that stream. The
picker calls ``process_pending`` after every record (``--tick 0``: each station's window as soon
as it completes, so about one station per model call) or once per ``--tick`` seconds of data
(stations that complete a window within a tick share one batch, as ``batch_wait`` does in
``RealtimePicker.run``). The ``annotate`` path of earlier versions (``direct=False``) is measured
alongside as the "before":

    python benchmarks/bench_realtime.py --cpu-per-window --threads 1 --stations 8 --minutes 5 --tick 5

``--latency`` replays the N-station archive through ``RealtimePicker.run`` at ``--speed`` (1 = real
time: the replay waits for the data's own clock, so a run lasts ``--minutes``), FEQ3 with its
shipped weights, and prints the median and p95 of the picks' latency after the arrival
(``RealtimePick.latency_s``: emission - data time of the pick's peak on the replay clock, split
into waiting for data, queue and model), for the low-latency mode (``--stride``, ``--early-picks``)
and, with ``--compare-default``, for the default mode after it. Picks in the first and last window
of the replay are left out (the first window must fill; the last ones only the end-of-stream
flush emits):

    python benchmarks/bench_realtime.py --latency --threads 1 --stations 50 --minutes 5 --speed 1 \
        --stride 5 --early-picks --compare-default

With copies, 50 stations hold only the picks of the two real stations, 25 times over, so a few weak
picks decide the p95. ``--distinct`` gives each station pair its own stretch of the 12 h SDS day
(shifted onto the replay clock), so that the picks are different events:

    python benchmarks/bench_realtime.py --latency --threads 1 --stations 50 --minutes 10 --speed 1 \
        --stride 5 --early-picks --early-blinding 2 --distinct

The machine is shared with other users: model times include their load (the load average is printed).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import obspy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seisbench_feq.realtime import RealtimePicker, ReplaySource  # noqa: E402

SHARED = Path(os.environ.get("SEISBENCH_FEQ_SHARED", ROOT.parent / "shared"))
SDS = SHARED / "data" / "cx_continuous" / "sds"
EQT_H5 = SHARED / "weights" / "eqtransformer_original" / "EqT_original_model.h5"
T0 = obspy.UTCDateTime(2014, 5, 1, 1, 30)  # many aftershocks
DAY_START = obspy.UTCDateTime(2014, 5, 1)  # the SDS day holds 12 h from here


def original_station(i: int) -> str:
    return "PB01" if i % 2 == 0 else "PB02"


def replicated_archive(folder: Path, stations: int, minutes: float, distinct: bool = False) -> Path:
    """MiniSEED files with ``stations`` copies of PB01/PB02 (codes V000, V001, ...), all from ``T0``.

    ``distinct``: station pair k (V{2k}, V{2k+1}) replays instead the k-th ``minutes`` stretch of the
    SDS day from its start, shifted onto the ``T0`` clock, so that the stations see different
    events: with copies, 50 stations hold only the few picks of the two real ones, and one weak
    pick decides a p95.
    """
    from obspy.clients.filesystem.sds import Client

    client = Client(str(SDS))
    span = minutes * 60
    if distinct and (stations + 1) // 2 * span > 12 * 3600:
        raise ValueError(f"--distinct: {stations} stations x {minutes:g} min do not fit in the 12 h SDS day")
    folder.mkdir(parents=True, exist_ok=True)
    sources = {}  # each (station, start) read once: with copies, two reads for all stations
    for i in range(stations):
        start = DAY_START + (i // 2) * span if distinct else T0
        key = (original_station(i), start.ns)
        if key not in sources:
            sources[key] = client.get_waveforms("CX", key[0], "", "HH?", start, start + span)
        stream = sources[key].copy()
        for trace in stream:
            trace.stats.station = f"V{i:03d}"
            trace.stats.starttime = T0 + (trace.stats.starttime - start)
        stream.write(str(folder / f"V{i:03d}.mseed"), format="MSEED", reclen=512)
    return folder


class RecordingPicker(RealtimePicker):
    """Remembers, per update, the station and the time of its last final annotation sample."""

    def __init__(self, model, **kwargs):
        super().__init__(model, **kwargs)
        self.updates: list[tuple[str, float]] = []

    def _emit_final(self, station, job, model_start):
        last_final = float("inf") if job.flush else station.time(station.final_end - 1).timestamp
        super()._emit_final(station, job, model_start)
        self.updates.append((station.key, last_final))


def reference_picks(stations: int, minutes: float) -> list[tuple[str, float, float]]:
    """(station key, peak time, trigger-off time) of the converted original EqT's classify picks."""
    from obspy.clients.filesystem.sds import Client

    from seisbench_feq.convert import eqtransformer_from_keras

    model = eqtransformer_from_keras(EQT_H5)
    stream = Client(str(SDS)).get_waveforms("CX", "PB0?", "", "HH?", T0, T0 + minutes * 60)
    picks = model.classify(stream).picks
    return [(f"CX.V{i:03d}.", p.peak_time.timestamp, p.end_time.timestamp)
            for i in range(stations) for p in picks.select(trace_id=f"CX.{original_station(i)}.")]


def run_models(models: dict, archive: Path) -> dict:
    """Feed every record to every picker, alternately; returns per model a list of calls
    (arrival data time, model seconds, [(station, last final time), ...])."""
    pickers = {label: RecordingPicker(model) for label, model in models.items()}
    calls = {label: [] for label in models}
    for trace in ReplaySource(archive, speed=0).records():
        arrival = trace.stats.endtime.timestamp + trace.stats.delta
        for label, picker in pickers.items():
            picker.feed(trace.copy())
            before = len(picker.updates)
            started = time.perf_counter()
            picker.process_pending()
            seconds = time.perf_counter() - started
            if len(picker.updates) > before:
                calls[label].append((arrival, seconds, picker.updates[before:]))
    for label, picker in pickers.items():  # the end-of-stream flush is not timed
        picker.flush()
    return calls


def serve(calls: list, picks: list, data_start: float, data_end: float, window: float, stations: int) -> dict:
    """Single worker at real time: queue and emission of each call; latency at the given picks."""
    free = -np.inf
    served = []  # (arrival, queue, model, emission, updates)
    for arrival, seconds, updates in calls:
        start = max(arrival, free)
        free = start + seconds
        served.append((arrival, start - arrival, seconds, free, updates))
    rows = []
    for key, peak, off in picks:
        if off > data_end - window:
            continue
        for arrival, queue, model, emission, updates in served:
            if any(k == key and last > off + 0.005 for k, last in updates):
                rows.append((emission - peak, arrival - peak, queue, model))
                break
    total_model = sum(c[1] for c in calls)
    duration = data_end - data_start
    out = {"stations_sustained": stations * duration / total_model, "utilisation": total_model / duration,
           "calls": len(calls), "picks": len(rows),
           "queue_max": max((s[1] for s in served), default=0.0)}
    arr = np.array(rows) if rows else np.zeros((0, 4))
    for j, name in enumerate(("latency", "wait_data", "queue", "model")):
        out[f"{name}_median"] = float(np.median(arr[:, j])) if len(arr) else float("nan")
        out[f"{name}_p95"] = float(np.percentile(arr[:, j], 95)) if len(arr) else float("nan")
    return out


def classify_windows(stream: obspy.Stream, model) -> int:
    """Windows ``classify`` runs on ``stream`` (each station's continuous segment, its grid)."""
    from seisbench_feq.models.annotate import window_starts, window_step

    step = window_step(model)
    total = 0
    for trace in stream.copy().merge(-1).select(component="Z"):
        for part in trace.split() if np.ma.isMaskedArray(trace.data) else [trace]:
            total += len(window_starts(part.stats.npts, model.in_samples, step))
    return total


def cpu_per_window(args) -> int:
    """Real-time CPU per window against classify's, interleaved in this process (see the docstring)."""
    import torch

    from seisbench_feq import FEQ3

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = (FEQ3.from_pretrained("default") if "default" in FEQ3.list_pretrained() else FEQ3()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        archive = replicated_archive(Path(tmp), args.stations, args.minutes)
        records = list(ReplaySource(archive, speed=0).records())
    stream = obspy.Stream([record.copy() for record in records])
    windows = classify_windows(stream, model)

    def realtime(direct: bool) -> tuple[float, RealtimePicker]:
        picker = RealtimePicker(model, direct=direct)
        copies = [record.copy() for record in records]  # feed takes its record over
        started = time.process_time()
        last = None
        for trace in copies:
            picker.feed(trace)
            data_time = trace.stats.endtime.timestamp
            if last is None or data_time - last >= args.tick:
                picker.process_pending()
                last = data_time
        picker.flush()
        return time.process_time() - started, picker

    def classify() -> float:
        data = stream.copy()
        started = time.process_time()
        model.classify(data)
        return time.process_time() - started

    classify()  # warm-up: first calls build caches
    realtime(True)
    totals = {"realtime": 0.0, "classify": 0.0, "before": 0.0}
    stats = {}
    for round_ in range(args.rounds):
        load = os.getloadavg()
        cpu, picker = realtime(True)
        totals["realtime"] += cpu
        stats = picker.stats
        totals["classify"] += classify()
        if not args.skip_before:
            totals["before"] += realtime(False)[0]
        print(f"round {round_ + 1}: load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    per = {k: v / args.rounds / windows * 1e3 for k, v in totals.items()}
    load = os.getloadavg()
    print(f"FEQ3, torch threads {args.threads}, {args.stations} stations x {args.minutes:g} min, {windows} windows"
          f" on classify's grid, process_pending every {'record' if not args.tick else f'{args.tick:g} s of data'};"
          f" {args.rounds} round(s); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"real time: {stats['windows_run']} windows run, {stats['model_calls']} model calls"
          f" ({stats['windows_run'] / max(stats['model_calls'], 1):.1f} windows per call)")
    print(f"CPU per window: realtime {per['realtime']:.2f} ms, classify {per['classify']:.2f} ms,"
          f" ratio {per['realtime'] / per['classify']:.2f}")
    if not args.skip_before:
        print(f"CPU per window before (annotate per call, direct=False): {per['before']:.2f} ms,"
              f" ratio {per['before'] / per['classify']:.2f}")
    return 0


def latency_run(args, model, archive: Path, stride: float | None, early: bool) -> tuple[list, RealtimePicker]:
    picker = RealtimePicker(model, stride=stride, early_picks=early, batch_wait=args.batch_wait,
                            early_blinding=args.early_blinding if early else None)
    picks = picker.run(ReplaySource(archive, speed=args.speed))
    window = model.in_samples / model.sampling_rate
    lo, hi = T0 + window, T0 + args.minutes * 60 - window
    return [p for p in picks if lo <= p.time and p.end_time <= hi], picker


def latency(args) -> int:
    """Pick latency after the arrival, at ``--speed``, low-latency mode and default (see the docstring)."""
    import torch

    from seisbench_feq import FEQ3

    torch.set_num_threads(args.threads)
    model = FEQ3.from_pretrained("default").eval()
    modes = [(f"stride {args.stride:g} s{', early picks' if args.early_picks else ''}", args.stride,
              args.early_picks)]
    if args.compare_default:
        modes.append(("default (final picks only)", None, False))
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        archive = replicated_archive(Path(tmp), args.stations, args.minutes, distinct=args.distinct)
        for label, stride, early in modes:
            started = time.perf_counter()
            picks, picker = latency_run(args, model, archive, stride, early)
            rows.append((label, picks, picker, time.perf_counter() - started))
    print(f"FEQ3 (shipped weights), torch threads {args.threads}, {os.cpu_count()} CPUs, {args.stations} stations x"
          f" {args.minutes:g} min of CX data ({'distinct stretches' if args.distinct else 'copies of PB01/PB02'})"
          f" at speed {args.speed:g}, batch_wait {args.batch_wait:g} s;"
          f" load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}\n")
    print("| mode | picks (early) | latency median | latency p95 | waiting for data median | queue p95 |"
          " model p95 | model calls | wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, picks, picker, wall in rows:
        def stat(name, q):
            values = [getattr(p, name) for p in picks]
            return float(np.percentile(values, q)) if values else float("nan")

        print(f"| {label} | {len(picks)} ({sum(p.early for p in picks)}) | {stat('latency_s', 50):.1f} s |"
              f" {stat('latency_s', 95):.1f} s | {stat('wait_data_s', 50):.1f} s | {stat('queue_s', 95):.2f} s |"
              f" {stat('model_s', 95):.2f} s | {picker.stats['model_calls']} | {wall:.0f} s |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stations", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--cpu-per-window", action="store_true",
                        help="CPU per window of real time against classify (FEQ3), interleaved")
    parser.add_argument("--tick", type=float, default=0.0,
                        help="--cpu-per-window: process_pending every TICK s of data (0: every record)")
    parser.add_argument("--rounds", type=int, default=2, help="--cpu-per-window: interleaved rounds")
    parser.add_argument("--skip-before", action="store_true",
                        help="--cpu-per-window: do not measure the annotate path (direct=False)")
    parser.add_argument("--latency", action="store_true",
                        help="pick latency after the arrival through RealtimePicker.run at --speed (FEQ3)")
    parser.add_argument("--speed", type=float, default=1.0, help="--latency: replay speed (1 = real time)")
    parser.add_argument("--stride", type=float, default=5.0, help="--latency: window stride in seconds")
    parser.add_argument("--early-picks", action="store_true", help="--latency: the low-latency early picks")
    parser.add_argument("--compare-default", action="store_true",
                        help="--latency: then the default mode (final picks only) on the same replay")
    parser.add_argument("--early-blinding", type=float, default=None,
                        help="--latency: seconds of window end blinding for early picks (default: the model's)")
    parser.add_argument("--distinct", action="store_true",
                        help="--latency: each station pair replays another stretch of the SDS day (not copies)")
    parser.add_argument("--batch-wait", type=float, default=1.0, help="--latency: RealtimePicker batch_wait")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("seisbench").setLevel(logging.ERROR)
    if args.cpu_per_window:
        return cpu_per_window(args)
    if args.latency:
        return latency(args)
    import seisbench.models as sbm
    import torch

    from seisbench_feq import FEQ3

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    shipped = "default" in FEQ3.list_pretrained()
    torch.manual_seed(0)
    models = {f"FEQ3 ({'shipped' if shipped else 'random'} weights)":
              (FEQ3.from_pretrained("default") if shipped else FEQ3()).eval(),
              "SeisBench EQTransformer (random weights)": sbm.EQTransformer().eval()}
    picks = reference_picks(args.stations, args.minutes)
    with tempfile.TemporaryDirectory() as tmp:
        archive = replicated_archive(Path(tmp), args.stations, args.minutes)
        started = time.perf_counter()
        calls = run_models(models, archive)
        wall = time.perf_counter() - started
    first = next(iter(models.values()))
    window = first.in_samples / first.sampling_rate
    data_start = T0.timestamp
    data_end = data_start + args.minutes * 60
    rows = {label: serve(c, picks, data_start, data_end, window, args.stations) for label, c in calls.items()}
    print(f"torch threads {args.threads}, {os.cpu_count()} CPUs (shared), load average before {load_before}, "
          f"after {os.getloadavg()}; {wall:.0f} s wall for both models")
    print(f"{args.stations} stations x {args.minutes:g} min of data, fed record by record; latency at"
          f" {len(picks)} picks of the original EqT (those in the last window left out)\n")
    reference = rows["SeisBench EQTransformer (random weights)"]
    print("| model | model s per data s | stations sustained | x EQT | calls | picks | latency median | latency p95 |"
          " waiting for data median | queue p95 | model p95 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['utilisation']:.3f} | {r['stations_sustained']:.0f} |"
              f" {r['stations_sustained'] / reference['stations_sustained']:.2f} | {r['calls']} | {r['picks']} |"
              f" {r['latency_median']:.1f} s | {r['latency_p95']:.1f} s | {r['wait_data_median']:.1f} s |"
              f" {r['queue_p95']:.2f} s | {r['model_p95']:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
