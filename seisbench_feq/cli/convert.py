"""``seisbench-feq convert H5 OUT_PREFIX``: an original Keras EQTransformer/LEQNet into SeisBench's pair."""

from __future__ import annotations

import sys


def _cli_convert(args) -> int:
    from ..convert import LICENCES, LOAD_WITH, KerasConversionError, convert_file, ncedc_check

    try:
        model, json_path, pt_path = convert_file(args.h5, args.out_prefix, args.model, args.config_from)
    except (KerasConversionError, FileNotFoundError) as e:
        print(f"seisbench-feq convert: error: {e}", file=sys.stderr)
        return 2
    kind = "leqnet" if "LEQNet" in type(model).__name__ else "eqtransformer"
    print(f"wrote {pt_path} and {json_path} ({type(model).__name__}); load with {LOAD_WITH[kind]}")
    if kind == "leqnet":
        print(f"licence: {LICENCES['leqnet']}", file=sys.stderr)
    if args.check_ncedc:
        row = ncedc_check(model, args.check_ncedc)
        print(
            f"NCEDC check on {row['n_windows']} windows (original EqT picker, thresholds 0.5/0.3/0.3, "
            "true positive within 0.5 s):"
        )
        for phase in ("P", "S"):
            print(
                f"  {phase}: precision {row[f'{phase}_precision']:.3f} recall {row[f'{phase}_recall']:.3f} "
                f"F1 {row[f'{phase}_f1']:.3f}  residual std {row[f'{phase}_res_std_s']:.3f} s "
                f"MAE {row[f'{phase}_mae_s']:.3f} s"
            )
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an original Keras EQTransformer/LEQNet h5 into SeisBench's .pt + .json",
        description=(
            "Convert the original Keras EQTransformer (EqT_original_model.h5) or LEQNet "
            "(final_model.h5) into SeisBench's <OUT_PREFIX>.pt + <OUT_PREFIX>.json, with h5py only."
        ),
    )
    parser.add_argument("h5", help="Keras h5 file (full model; weights-only files need --config-from)")
    parser.add_argument(
        "out_prefix", help="output path without suffix: writes OUT_PREFIX.pt and OUT_PREFIX.json"
    )
    parser.add_argument(
        "--model",
        choices=("eqtransformer", "leqnet"),
        default=None,
        help="expected model (default: detect from the file)",
    )
    parser.add_argument(
        "--config-from",
        default=None,
        metavar="FULL_H5",
        help="full model h5 giving the layer graph of a weights-only h5",
    )
    parser.add_argument(
        "--check-ncedc",
        default=None,
        metavar="DIR",
        help="after converting, report P/S precision/recall/F1 on the NCEDC npz traces in DIR",
    )
    parser.set_defaults(func=_cli_convert)
