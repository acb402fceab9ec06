"""The ``seisbench-feq`` command.

Each subcommand lives in its own module ``seisbench_feq.cli.<name>``, which defines
``add_parser(subparsers)``: it adds the subcommand's parser and sets ``func`` (called with the
parsed namespace, returns the exit status). argparse is used only in this package; the domain
modules take keyword arguments. Subcommand modules keep heavy imports (torch, dask, pyocto,
lightning) inside their ``func`` so that ``seisbench-feq --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ._grammar import flush_deprecations
from ._logs import configure_logging, tqdm_safe_logging

# (subcommand, the domain module it drives), in help order
SUBCOMMANDS = [
    ("demo", "seisbench_feq.demo"),
    ("convert", "seisbench_feq.convert"),
    ("train", "seisbench_feq.training"),
    ("evaluate", "seisbench_feq.evaluation"),
    ("pick", "seisbench_feq.archive"),
    ("associate", "seisbench_feq.catalog"),
    ("compare", "seisbench_feq.catalog"),
    ("realtime", "seisbench_feq.realtime"),
    ("export", "seisbench_feq.export"),
]

# Domain modules whose subcommands are registered (tests narrow this to one module, so that
# another module's breakage cannot fail them).
SUBCOMMAND_MODULES = list(dict.fromkeys(module for _, module in SUBCOMMANDS))

logger = logging.getLogger("seisbench_feq")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seisbench-feq",
        description="Light EQTransformer-family pickers (LEQNet, FEQ1-3) on SeisBench.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, domain_module in SUBCOMMANDS:
        if domain_module not in SUBCOMMAND_MODULES:
            continue
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    repeats = configure_logging(args.verbose)
    flush_deprecations()
    try:
        with tqdm_safe_logging():
            return int(args.func(args) or 0)
    finally:
        summary = repeats.summary()
        if summary:
            logger.warning(summary)


if __name__ == "__main__":
    sys.exit(main())
