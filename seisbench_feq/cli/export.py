"""``seisbench-feq export MODEL --format onnx|torchscript [--int8] --out DIR``."""

from __future__ import annotations

import math
from pathlib import Path

from ._grammar import output_file

# The choices, repeated here so that "seisbench-feq --help" does not import torch; a test checks
# them against seisbench_feq.export.
FORMATS = ("onnx", "torchscript")
GRAPHS = ("compact", "fused")
INT8_MODES = ("weights", "dynamic")
DEFAULT_OPSET = 17


def _cli_export(args) -> int:
    import numpy as np

    from .. import export
    from ..loading import load_model, weights_label
    from ..models import LEQNet

    unknown = (f"seisbench-feq export: unknown model {args.model!r}; choose from "
               "['feq1', 'feq2', 'feq3', 'leqnet'] (or a saved weights PREFIX of one of them)")
    if args.model.partition(":")[0].lower() in ("eqtransformer", "phasenet", "eqt-original", "random-eqtransformer"):
        raise SystemExit(unknown)
    try:
        model = load_model(args.model, args.weights)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"seisbench-feq export: {err}") from None
    if not isinstance(model, LEQNet):
        raise SystemExit(f"{unknown}; {args.model!r} is a {type(model).__name__}")
    weights = weights_label(model)
    name = f"{model.name.lower()}{'_int8' if args.int8 else ''}{'.pt' if args.format == 'torchscript' else '.onnx'}"
    try:
        out = output_file(args.out, name, old_suffixes=(".onnx", ".pt"), command="export")
    except ValueError as err:
        raise SystemExit(f"seisbench-feq export: {err}") from None
    if args.format == "onnx" and model.highpass and not args.no_normalize:
        print(
            f"note: {model.name} high-passes each window ({model.highpass} Hz) before normalising, which "
            "ONNX cannot express; the graph takes pre-processed windows "
            "(seisbench_feq.models.preprocess_windows), as with --no-normalize"
        )
        args.no_normalize = True
    if args.format == "torchscript":
        if args.int8:
            raise SystemExit("seisbench-feq export: --int8 applies to --format onnx only")
        export.export_torchscript(model, out, graph=args.graph, normalize=not args.no_normalize, logits=args.logits)
        print(f"{model.name} ({weights} weights) -> {out} (TorchScript, {out.stat().st_size / 1024:.1f} KiB)")
        return 0
    export.export_onnx(
        model,
        out,
        graph=args.graph,
        normalize=not args.no_normalize,
        logits=args.logits,
        opset=args.opset,
        int8=args.int8,
        int8_mode=args.int8_mode,
    )
    kind = f"int8 {args.int8_mode}" if args.int8 else "fp32"
    line = (
        f"{model.name} ({weights} weights) -> {out} (ONNX opset {args.opset}, {kind}, {args.graph} graph, "
        f"{out.stat().st_size / 1024:.1f} KiB file, {export.initializer_bytes(out) / 1024:.1f} KiB weights)"
    )
    if not args.no_check:
        rng = np.random.default_rng(0)
        windows = rng.standard_normal((4, model.in_channels, model.in_samples)).astype(np.float32) * 1000
        diff = export.max_abs_difference(model, out, windows, normalize=not args.no_normalize)
        tolerance = 1e-4 if not args.int8 else math.inf
        line += f"; max |ONNX Runtime - PyTorch| = {diff:.2e}"
        if diff > tolerance:
            print(line)
            raise SystemExit(f"seisbench-feq export: ONNX output differs from PyTorch by {diff:.2e} > {tolerance:g}")
    print(line)
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX (fp32/int8) or TorchScript",
        description="Export LEQNet / FEQ1-3 to ONNX (fp32 or int8) and TorchScript for small devices.",
    )
    parser.add_argument("model", help="leqnet, feq1, feq2 or feq3")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--out", default="export_output",
                        help="output folder: MODEL.onnx, MODEL_int8.onnx or MODEL.pt inside "
                             "(default %(default)s)")
    parser.add_argument("--int8", action="store_true", help="store the weights as int8 (ONNX)")
    parser.add_argument(
        "--int8-mode",
        choices=INT8_MODES,
        default="weights",
        help="weights: int8 weights, float arithmetic (default, accuracy of fp32); "
        "dynamic: ONNX Runtime dynamic quantisation, int8 arithmetic",
    )
    parser.add_argument(
        "--weights", help="shipped weights name, a saved model path (without .json/.pt), or 'random' (default: 'default' when shipped)"
    )
    parser.add_argument("--graph", choices=GRAPHS, default="compact", help="compact: smallest file; fused: fastest in ONNX Runtime")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--logits", action="store_true", help="output logits instead of probabilities")
    parser.add_argument("--no-normalize", action="store_true", help="leave the window normalisation to the caller")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    parser.set_defaults(func=_cli_export)
