"""The ``seisbench-feq`` command. Each concern registers its own subcommands.

Every module listed in ``SUBCOMMAND_MODULES`` defines ``add_subcommands(subparsers)``, which adds
its parsers and sets ``func`` (called with the parsed namespace). Modules keep heavy imports
(dask, pyocto, lightning) inside those functions so ``seisbench-feq --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

SUBCOMMAND_MODULES = [
    "seisbench_feq.demo",
    "seisbench_feq.convert",
    "seisbench_feq.training",
    "seisbench_feq.evaluation",
    "seisbench_feq.archive",
    "seisbench_feq.catalog",
    "seisbench_feq.realtime",
    "seisbench_feq.export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seisbench-feq",
        description="Light EQTransformer-family pickers (LEQNet, FEQ1-3) on SeisBench.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_subcommands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
