"""Atomic file writes and safe paths: the one place where the package turns data into file names.

Every output file of the package is written through :func:`atomic_write_text`,
:func:`atomic_write_bytes` or :func:`atomic_write` (temporary file in the same folder, fsync,
``os.replace``), so that readers and resumed jobs never see a half-written file.

SEED codes and other header fields come from files a user did not write; a network code ``/`` or
a station ``../x`` must never pick the folder an output lands in. :func:`safe_code` makes such a
field one harmless path component and :func:`path_inside` checks that a joined path stays inside
its output folder.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Callable

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def safe_code(code: object) -> str:
    """A SEED code (or any header field) as ONE safe path component.

    Every character outside ``[A-Za-z0-9_-]`` becomes ``_``; an empty or missing code becomes
    ``"_"``. Dots are replaced too, so ``".."`` cannot climb and callers may join several codes
    with ``.`` themselves (``"CX.PB01."`` is built from ``safe_code`` of each part).
    """
    text = "" if code is None else str(code)
    return _UNSAFE.sub("_", text) or "_"


def safe_id(*codes: object) -> str:
    """``NET.STA.LOC[.CHA]`` with every code through :func:`safe_code` (empty location -> ``_``)."""
    return ".".join(safe_code(c) for c in codes)


def path_inside(root: str | os.PathLike, *parts: str | os.PathLike) -> Path:
    """``root / parts...`` resolved; ``ValueError`` if the result is not inside ``root``.

    Absolute parts, ``..`` and symbolic links that point elsewhere are all caught, because the
    check compares resolved paths.
    """
    base = Path(root).resolve()
    target = base.joinpath(*[os.fspath(p) for p in parts]).resolve()
    if target != base and base not in target.parents:
        raise ValueError(f"refusing to write {target}: it is outside the output folder {base}")
    return target


def _temporary_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def is_temporary(path: str | os.PathLike) -> bool:
    """True for the temporaries :func:`atomic_write` leaves behind when a process is killed."""
    name = Path(path).name
    return name.startswith(".") and ".tmp-" in name


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp_path)``, fsync, then rename onto ``path``: readers never see a partial file.

    ``write`` receives a path in the same folder (so the rename is atomic) and may use any writer
    that takes a path (``DataFrame.to_parquet``, ``Catalog.write``, ``Figure.savefig``...).
    The folder is created if needed. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding=encoding))


def remove_temporaries(folder: str | os.PathLike, pattern: str = "**/.*.tmp-*") -> int:
    """Delete temporaries left by killed writers under ``folder``; returns how many."""
    count = 0
    for tmp in Path(folder).glob(pattern):
        if tmp.is_file() and is_temporary(tmp):
            tmp.unlink(missing_ok=True)
            count += 1
    return count


def safe_station(station_id: str) -> str:
    """``NET.STA.LOC`` (or ``NET.STA.LOC.CHA``) as one file-name stem: each code through
    :func:`safe_code`, an empty location kept empty (``CX.PB01.``), so that ordinary codes keep
    their familiar names and ``/``, ``..`` or ``.`` inside a code cannot make a path."""
    parts = str(station_id).split(".")
    if len(parts) > 4:  # dots inside a code: keep the first three separators only
        parts = parts[:3] + ["_".join(parts[3:])]
    return ".".join(safe_code(p) if p or i < 2 else "" for i, p in enumerate(parts))
