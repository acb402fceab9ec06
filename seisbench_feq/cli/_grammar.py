"""The one CLI grammar shared by the subcommands.

- ``--out`` is always an output folder; each subcommand writes fixed file names inside it.
- ``--stations`` selects stations (``NET.STA`` / ``NET.STA.LOC`` patterns); a coordinate table is
  ``--station-file``.
- Old spellings stay one release as hidden options that log one ``deprecated:`` warning.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger("seisbench_feq")

REMOVED_IN = "0.4.0"

# Old spellings met while parsing: logged by flush_deprecations() once logging is set up (the
# parser runs before the log handler exists).
PENDING: list[str] = []


def deprecated(message: str) -> None:
    """One WARNING line for an old spelling or meaning that still works for one release."""
    logger.warning("deprecated: %s (the old form is removed in %s)", message, REMOVED_IN)


def flush_deprecations() -> None:
    """Log the old spellings the parser met (``cli.main`` calls it after configuring logging)."""
    while PENDING:
        deprecated(PENDING.pop(0))


class _DeprecatedAlias(argparse.Action):
    """Stores like ``store`` (or ``store_true`` with ``nargs=0``) and warns about the spelling."""

    def __init__(self, option_strings, dest, replacement: str, constant=None, **kwargs):
        self.replacement = replacement
        self.constant = constant
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        PENDING.append(f"{option_string} is now {self.replacement}")
        setattr(namespace, self.dest, self.constant if self.nargs == 0 else values)


def add_deprecated_alias(parser, *old: str, dest: str, replacement: str, type=None,
                         flag: bool = False) -> None:
    """A hidden ``old`` spelling that sets ``dest`` like ``replacement`` does, with a warning.

    ``flag=True`` for a switch (``store_true``). The default of ``dest`` stays the one set by the
    replacement option."""
    kwargs = {"nargs": 0, "constant": True} if flag else {"type": type}
    parser.add_argument(*old, dest=dest, action=_DeprecatedAlias, replacement=replacement,
                        help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def output_file(out: str | Path, name: str, *, old_suffixes: tuple[str, ...] = (),
                command: str = "", option: str = "--out") -> Path:
    """The file to write for ``--out OUT``: ``OUT/name``, the folder created if missing.

    When ``OUT`` ends with one of ``old_suffixes`` it is the old meaning (``OUT`` is the file
    itself): that still works for one release, with a deprecation warning. Raises ``ValueError``
    (one line naming the option) when ``OUT`` is an existing file or lies below a file."""
    out = Path(out)
    if old_suffixes and out.suffix.lower() in old_suffixes and not out.is_dir():
        deprecated(f"{command} {option} {out}: {option} is an output folder now, "
                   f"give {out.parent if str(out.parent) != '.' else 'a folder'} and {name} is written inside")
        _check_parents(out, option)
        out.parent.mkdir(parents=True, exist_ok=True)
        return out
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is a file; {option} is an output folder ({name} is written inside)")
    _check_parents(out / name, option)
    out.mkdir(parents=True, exist_ok=True)
    return out / name


def _check_parents(path: Path, option: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a folder")
            return
