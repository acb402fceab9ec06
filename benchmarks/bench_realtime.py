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


def original_station(i: int) -> str:
    return "PB01" if i % 2 == 0 else "PB02"


def replicated_archive(folder: Path, stations: int, minutes: float) -> Path:
    """MiniSEED files with ``stations`` copies of PB01/PB02 (codes V000, V001, ...)."""
    from obspy.clients.filesystem.sds import Client

    client = Client(str(SDS))
    source = {sta: client.get_waveforms("CX", sta, "", "HH?", T0, T0 + minutes * 60) for sta in ("PB01", "PB02")}
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(stations):
        stream = source[original_station(i)].copy()
        for trace in stream:
            trace.stats.station = f"V{i:03d}"
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stations", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("seisbench").setLevel(logging.ERROR)
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
