"""Station-day ``classify``: FEQ3 and LEQNet against SeisBench's EQTransformer, in one process.

Data: the real SDS archive in ../shared/data/cx_continuous/sds holds 12 h of two stations. A
station-day is made by **concatenation**: CX.PB01's 12 h followed by CX.PB02's 12 h, relabelled
CX.PB01 and shifted to start one sample after PB01 ends (one contiguous 24 h, 3-component, 100 Hz
stream of real data; the junction is one discontinuity in 8.64 M samples). ``--hours`` trims it.

Every model runs ``classify`` on the same stream with its own defaults, which are the same for all
three: overlap 3000 samples (50 %), blinding (500, 500), ``max`` stacking, batch size
``--batch-size``. The runs are interleaved (EqT, FEQ3, LEQNet, EqT, ...) and the median of
``--repeats`` is reported, with wall time and CPU time (``process_time``: CPU seconds of this
process; on a shared machine it is the steadier of the two), and ratios EqT / model.

``--profile`` splits one run of each model into pre-processing (stream copy, merge, grouping,
array building, windowing, window normalisation), model (``forward``), stacking (output
stacking, blinding, ``stack_windows``, output traces) and pick extraction (``classify_aggregate``).

``--rss`` runs each model once more in a child process and reports its peak RSS (``VmHWM``) and
the increase over the child's RSS right before ``classify`` (imports, model, stream loaded).

``--stations 1 4 16`` measures throughput of one ``classify`` call over N stations (copies of
the real data with distinct station codes, ``--station-hours`` each).

Weights: random (seeded) for the timing (the time of a forward pass does not depend on them); the
RSS run gives the light models their shipped default weights (``--rss-weights``): how much
the pick extraction allocates depends on the outputs.

    python benchmarks/bench_classify.py --hours 24 --repeats 3 --profile --rss
    python benchmarks/bench_classify.py --hours 1 --repeats 1     # quick check
    python benchmarks/bench_classify.py --models feq3 phasenet --threads 1   # against SeisBench's PhaseNet

``phasenet`` / ``phasenetlight``: SeisBench's PhaseNet models at their own default settings (their
own window, overlap and stacking), random weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEISBENCH_FEQ_SHARED", ROOT.parent / "shared"))
SDS = SHARED / "data" / "cx_continuous" / "sds"
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def station_day(hours: float = 24.0, station: str = "PB01"):
    """The concatenated real station-day (see the module docstring), trimmed to ``hours``."""
    import obspy

    first = obspy.read(str(SDS / "2014" / "CX" / "PB01" / "HH?.D" / "*"))
    second = obspy.read(str(SDS / "2014" / "CX" / "PB02" / "HH?.D" / "*"))
    for trace in second:
        head = first.select(channel=trace.stats.channel)[0]
        trace.stats.station = head.stats.station
        trace.stats.starttime = head.stats.endtime + head.stats.delta
    stream = first + second
    stream.merge()
    t0 = min(trace.stats.starttime for trace in stream)
    stream.trim(t0, t0 + hours * 3600 - stream[0].stats.delta)
    for trace in stream:
        trace.stats.station = station
    return stream


def build_model(name: str, backend: str = "fused", weights: str = "random"):
    """Seeded random weights, or ``weights="shipped"``: seisbench_feq's shipped default weights
    where they exist (the outputs, hence the pick-extraction work, depend on the weights)."""
    import torch

    torch.manual_seed(0)
    if name in ("eqtransformer", "phasenet", "phasenetlight"):  # SeisBench's, at their own defaults
        import seisbench.models as sbm

        return {"eqtransformer": sbm.EQTransformer, "phasenet": sbm.PhaseNet,
                "phasenetlight": sbm.PhaseNetLight}[name]().eval()
    import seisbench_feq
    from seisbench_feq.models.backends import set_inference_backend

    cls = seisbench_feq.MODELS[name]
    shipped = weights == "shipped" and "default" in cls.list_pretrained()
    model = (cls.from_pretrained("default") if shipped else cls()).eval()
    return set_inference_backend(model, backend)


def weights_label(name: str, weights: str) -> str:
    if name in ("eqtransformer", "phasenet", "phasenetlight") or weights != "shipped":
        return "random"
    import seisbench_feq

    return "shipped default" if "default" in seisbench_feq.MODELS[name].list_pretrained() else "random"


def model_label(name: str, backend: str) -> str:
    return name if name in ("eqtransformer", "phasenet", "phasenetlight") else f"{name}[{backend}]"


class StageTimer:
    """Wraps a model's hooks to add up CPU time (of the calling thread) per stage."""

    HOOKS = {
        "annotate_batch_pre": "pre-processing",
        "forward": "model",
        "annotate_batch_post": "stacking",
        "_stack_predictions_array_ext": "stacking",
        "_predictions_to_stream": "stacking",
        "classify_aggregate": "pick extraction",
    }

    def __init__(self, model):
        self.model = model
        self.cpu = dict.fromkeys(self.HOOKS.values(), 0.0)
        for hook, stage in self.HOOKS.items():
            setattr(model, hook, self._wrap(getattr(model, hook), stage))

    def _wrap(self, fn, stage):
        def timed(*args, **kwargs):
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[stage] += time.thread_time() - start

        return timed

    def remove(self):
        for hook in self.HOOKS:
            self.model.__dict__.pop(hook, None)


CHUNK_SECONDS = None  # --chunk-seconds: passed to seisbench_feq models only


def run_classify(model, stream, batch_size: int):
    kwargs = {"batch_size": batch_size}
    if CHUNK_SECONDS is not None and "chunk_seconds" in model._annotate_args:
        kwargs["chunk_seconds"] = CHUNK_SECONDS
    wall, cpu = time.perf_counter(), time.process_time()
    out = model.classify(stream, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def rss_child(args) -> None:
    """Child process: load, classify once, print peak RSS as JSON."""
    import torch

    torch.set_num_threads(args.threads[0])
    model = build_model(args.child_model, args.backend, args.rss_weights)
    stream = station_day(args.hours)
    model.classify(stream.slice(stream[0].stats.starttime, stream[0].stats.starttime + 120))  # warm-up
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    before = _status_kb("VmRSS")
    global CHUNK_SECONDS
    CHUNK_SECONDS = args.chunk_seconds
    wall, cpu, out = run_classify(model, stream, args.batch_size)
    print(json.dumps(dict(peak_mb=_status_kb("VmHWM") / 1024, before_mb=before / 1024, wall_s=wall, cpu_s=cpu)))


def _status_kb(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def measure_rss(args, name: str) -> dict:
    cmd = [sys.executable, __file__, "--child-model", name, "--hours", str(args.hours), "--threads",
           str(args.threads[0]), "--batch-size", str(args.batch_size), "--backend", args.backend]
    if args.chunk_seconds is not None:
        cmd += ["--chunk-seconds", str(args.chunk_seconds)]
    cmd += ["--rss-weights", args.rss_weights]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def picks_table(out) -> list[tuple[str, float, float]]:
    return sorted((p.phase, p.peak_time.timestamp, p.peak_value) for p in out.picks)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["feq3", "leqnet"])
    parser.add_argument("--backend", default="fused", choices=["fused", "plain", "onnxruntime"])
    parser.add_argument("--reference", default="eqtransformer")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--rss", action="store_true")
    parser.add_argument("--stations", type=int, nargs="*", default=[])
    parser.add_argument("--station-hours", type=float, default=1.0)
    parser.add_argument("--rss-weights", choices=["random", "shipped"], default="shipped",
                        help="weights of the light models in the RSS run (pick extraction depends on them)")
    parser.add_argument("--chunk-seconds", type=float, help="annotate piece length of the light models (0: unchunked)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["timing"], help="skip the timing table")
    parser.add_argument("--child-model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global CHUNK_SECONDS
    CHUNK_SECONDS = args.chunk_seconds
    if args.child_model:
        rss_child(args)
        return 0

    import torch

    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    stream = station_day(args.hours)
    n = stream[0].stats.npts
    print(f"# stream: {stream[0].id[:-1]}?, {n / 360000:.2f} h, {n} samples x 3 components "
          f"(concatenated real data, see --help); batch size {args.batch_size}")
    names = [args.reference] + args.models
    models = {name: build_model(name, args.backend) for name in names}
    warm = stream.slice(stream[0].stats.starttime, stream[0].stats.starttime + 600)

    for threads in [] if "timing" in args.skip else args.threads:
        torch.set_num_threads(threads)
        for model in models.values():
            model.classify(warm, batch_size=args.batch_size)
        times = {name: [] for name in names}
        outputs = {}
        for _ in range(args.repeats):
            for name, model in models.items():
                wall, cpu, outputs[name] = run_classify(model, stream, args.batch_size)
                times[name].append((wall, cpu))
        print(f"\n## classify, {threads} thread(s), median of {args.repeats}")
        print("| model | wall s | CPU s | wall ratio EqT/model | CPU ratio EqT/model | picks |")
        print("|---|---|---|---|---|---|")
        ref_wall = statistics.median(w for w, _ in times[args.reference])
        ref_cpu = statistics.median(c for _, c in times[args.reference])
        for name in names:
            wall = statistics.median(w for w, _ in times[name])
            cpu = statistics.median(c for _, c in times[name])
            print(f"| {model_label(name, args.backend)} | {wall:.2f} | {cpu:.2f} | {ref_wall / wall:.1f}x "
                  f"| {ref_cpu / cpu:.1f}x | {len(outputs[name].picks)} |")
        print(f"(load average {os.getloadavg()[0]:.1f} at the end of the table)")

    if args.profile:
        torch.set_num_threads(args.threads[0])
        print(f"\n## where the time goes (CPU s of one run, {args.threads[0]} thread(s))")
        stages = ["pre-processing", "model", "stacking", "pick extraction"]
        print("| model | " + " | ".join(stages) + " | other | total |")
        print("|---|" + "---|" * (len(stages) + 2))
        for name, model in models.items():
            timer = StageTimer(model)
            _, cpu, _ = run_classify(model, stream, args.batch_size)
            timer.remove()
            other = cpu - sum(timer.cpu.values())
            cells = [f"{timer.cpu[s]:.2f} ({100 * timer.cpu[s] / cpu:.0f} %)" for s in stages]
            print(f"| {model_label(name, args.backend)} | " + " | ".join(cells) + f" | {other:.2f} | {cpu:.2f} |")
        print("(other: stream copy, merge, grouping, array building and windowing outside the hooks)")

    if args.rss:
        print(f"\n## peak RSS of classify in a child process ({args.threads[0]} thread(s))")
        print("| model | weights | peak RSS MB | RSS before classify MB | increase MB | wall s |")
        print("|---|---|---|---|---|---|")
        for name in names:
            r = measure_rss(args, name)
            print(f"| {model_label(name, args.backend)} | {weights_label(name, args.rss_weights)} | {r['peak_mb']:.0f} "
                  f"| {r['before_mb']:.0f} | {r['peak_mb'] - r['before_mb']:.0f} | {r['wall_s']:.1f} |")

    if args.stations:
        import obspy

        torch.set_num_threads(args.threads[-1])
        base = station_day(args.station_hours)
        print(f"\n## many stations in one classify call ({args.station_hours:g} h each, "
              f"{args.threads[-1]} thread(s))")
        print("| model | stations | wall s | station-hours / s |")
        print("|---|---|---|---|")
        for name in args.models:
            for count in args.stations:
                stream = obspy.Stream()
                for i in range(count):
                    copy = base.copy()
                    for trace in copy:
                        trace.stats.station = f"S{i:03d}"
                    stream += copy
                wall, _, _ = run_classify(models[name], stream, args.batch_size)
                print(f"| {model_label(name, args.backend)} | {count} | {wall:.2f} "
                      f"| {count * args.station_hours / wall:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
