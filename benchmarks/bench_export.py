"""Exports of LEQNet / FEQ1-3: file size, weight bytes, FLOPs and ms per window, and int8 F1.

For every model (random seeded weights: size and speed do not depend on the values) and every
form it runs in:

- ``torch plain`` / ``torch fused``: the PyTorch module (the ``.pt`` state dict is the file),
  straightforward path and the fused inference path;
- ``onnx fp32`` (compact graph), ``onnx fp32 fused``, ``onnx int8`` (weight-only int8, the
  default of ``--int8``), ``onnx int8 dynamic`` (ONNX Runtime dynamic quantisation);
- ``torchscript`` (traced compact graph);

the table gives the file size, the bytes of the stored weights (ONNX initializers / tensors in
the state dict), FLOPs per window (``seisbench_feq.models.costs``, 2 x multiply-accumulates of the
network itself, the same for every form) and ms per window: median of ``--repeats`` timed
batches of ``--batch`` real windows, CPU time of this process with one thread (ONNX Runtime and
PyTorch both pinned to one intra-op thread), SeisBench's EQTransformer in the same run for scale.

``--f1`` adds P/S F1 on the NCEDC set (``seisbench_feq.evaluation`` rules: thresholds 0.3,
0.5 s tolerance) for fp32 and int8 ONNX of FEQ3's shipped weights and of the converted original
LEQNet (trained, local only).

    python benchmarks/bench_export.py --f1
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEISBENCH_FEQ_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT))


def real_windows(n: int):
    import numpy as np
    import obspy

    root = SHARED / "data" / "cx_continuous" / "sds" / "2014" / "CX" / "PB01"
    stream = obspy.Stream()
    for channel in ("HHZ", "HHN", "HHE"):
        stream += obspy.read(str(root / f"{channel}.D" / "*"))
    data = np.stack([stream.select(channel=f"HH{c}")[0].data[: n * 6000] for c in "ZNE"])
    return np.ascontiguousarray(data.reshape(3, n, 6000).transpose(1, 0, 2).astype(np.float32))


def cpu_ms_per_window(fn, batch, repeats: int) -> float:
    fn(batch)  # warm-up: kernels are prepared per shape on the first call
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn(batch)
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times) / len(batch)


def torch_runner(model, backend: str):
    import torch

    from seisbench_feq.models.backends import set_inference_backend

    if hasattr(model, "inference_backend"):
        set_inference_backend(model, backend)

    def run(batch):
        with torch.no_grad():
            x = model.annotate_batch_pre(torch.from_numpy(batch), {})
            return model(x)

    return run


def onnx_runner(path):
    from seisbench_feq.export import onnx_session

    session = onnx_session(path, threads=1)
    return lambda batch: session.run(None, {"waveforms": batch})


def state_dict_bytes(model) -> tuple[int, int]:
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes, sum(t.numel() * t.element_size() for t in model.state_dict().values())


def f1_rows(tmp: Path):
    import torch

    from seisbench_feq import FEQ3
    from seisbench_feq.data import load_ncedc
    from seisbench_feq.evaluation import picks_from_probabilities, score_picks
    from seisbench_feq.export import export_onnx, initializer_bytes, onnx_session, run_onnx
    from seisbench_feq.models import preprocess_windows

    waveforms, metadata = load_ncedc(SHARED / "data" / "ncedc")
    models = []
    if "default" in FEQ3.list_pretrained():
        models.append(("FEQ3 (shipped default weights)", FEQ3.from_pretrained("default")))
    try:
        from seisbench_feq.convert import leqnet_from_keras

        torch.manual_seed(0)
        models.append(("LEQNet (original Keras weights)", leqnet_from_keras(SHARED / "weights" / "leqnet_original" / "final_model.h5")))
    except Exception as error:  # the converter is optional here
        print(f"(LEQNet original weights unavailable: {error})")
    print(f"\n## int8 vs fp32 on the NCEDC set ({len(metadata)} windows, thresholds 0.3, tolerance 0.5 s)")
    print("| weights | form | weight KB | detection F1 | P F1 | S F1 |")
    print("|---|---|---|---|---|---|")
    for label, model in models:
        model.eval()
        for form, kwargs in (
            ("onnx fp32", {}),
            ("onnx int8 (default: encoder, decoders float32)", {"int8": True}),
            ("onnx int8, every layer", {"int8": True, "int8_float_layers": ()}),
            ("onnx int8 dynamic", {"int8": True, "int8_mode": "dynamic"}),
        ):
            # pre-processing outside the graph: ONNX cannot express the shipped weights' high-pass
            path = export_onnx(model, tmp / "f1.onnx", normalize=False, **kwargs)
            windows = preprocess_windows(model, torch.from_numpy(waveforms)).numpy()
            scores = score_picks(picks_from_probabilities(run_onnx(onnx_session(path), windows)), metadata)
            print(f"| {label} | {form} | {initializer_bytes(path) / 1024:.1f} | {scores['detection_f1']:.3f} "
                  f"| {scores['P_f1']:.3f} | {scores['S_f1']:.3f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["leqnet", "feq1", "feq2", "feq3"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--f1", action="store_true")
    parser.add_argument("--no-table", action="store_true", help="only the F1 comparison")
    args = parser.parse_args(argv)

    import seisbench.models as sbm
    import torch

    import seisbench_feq
    from seisbench_feq.export import export_onnx, export_torchscript, initializer_bytes
    from seisbench_feq.models.costs import flops_per_window

    torch.set_num_threads(1)
    batch = real_windows(args.batch)
    print(f"# {os.cpu_count()}-core CPU, no GPU; 1 thread; batch {args.batch} real windows; CPU ms per window, "
          f"median of {args.repeats}; load average {os.getloadavg()[0]:.1f} at start")
    torch.manual_seed(0)
    eqt = sbm.EQTransformer().eval()
    eqt_ms = cpu_ms_per_window(torch_runner(eqt, "plain"), batch, 1 if args.no_table else args.repeats)
    eqt_file, eqt_bytes = state_dict_bytes(eqt)
    print("| model | form | file KB | weight KB | MFLOPs / window | ms / window | EqT / form |")
    print("|---|---|---|---|---|---|---|")
    print(f"| EQTransformer (SeisBench) | torch | {eqt_file / 1024:.1f} | {eqt_bytes / 1024:.1f} "
          f"| {flops_per_window(eqt, 3, 6000) / 1e6:.1f} | {eqt_ms:.2f} | 1.0x |")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in [] if args.no_table else args.models:
            torch.manual_seed(0)
            model = seisbench_feq.MODELS[name]().eval()
            mflops = flops_per_window(model, 3, 6000) / 1e6
            file_bytes, weight_bytes = state_dict_bytes(model)
            rows = []
            for backend in ("plain", "fused"):
                ms = cpu_ms_per_window(torch_runner(model, backend), batch, args.repeats)
                rows.append((f"torch {backend}", file_bytes, weight_bytes, ms))
            for form, kwargs in (
                ("onnx fp32", {}),
                ("onnx fp32 fused", {"graph": "fused"}),
                ("onnx int8", {"int8": True}),
                ("onnx int8 dynamic", {"int8": True, "int8_mode": "dynamic"}),
            ):
                path = export_onnx(model, tmp / f"{name}.onnx", **kwargs)
                ms = cpu_ms_per_window(onnx_runner(path), batch, args.repeats)
                rows.append((form, path.stat().st_size, initializer_bytes(path), ms))
            path = export_torchscript(model, tmp / f"{name}.pt")
            loaded = torch.jit.load(str(path))

            def run_script(b, loaded=loaded):
                with torch.no_grad():
                    return loaded(torch.from_numpy(b))

            ms = cpu_ms_per_window(run_script, batch, args.repeats)
            rows.append(("torchscript", path.stat().st_size, weight_bytes, ms))
            for form, size, weights, ms in rows:
                print(f"| {model.name} | {form} | {size / 1024:.1f} | {weights / 1024:.1f} | {mflops:.1f} "
                      f"| {ms:.2f} | {eqt_ms / ms:.1f}x |")
        if args.f1:
            f1_rows(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
