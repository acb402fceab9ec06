"""Resume: the manifest of finished units, its check against the unit files, the job lock."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from dataclasses import asdict
from pathlib import Path

from ..io.files import atomic_write_text, remove_temporaries
from .plan import ArchiveError, UnitResult

logger = logging.getLogger("seisbench_feq.archive")

_RUN_KEYS_THAT_MUST_MATCH = ("archive", "model", "weights", "weights_fingerprint", "chunk_s",
                             "classify_span_s", "pad_s", "grid_step_s", "channel_priority",
                             "classify_kwargs", "output_format", "detections")


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class Manifest:
    """Append-only JSON lines, one per finished or failed unit; the last entry of a unit wins.

    A line is appended (and fsynced) only after the unit's outputs were renamed into place, so a
    unit listed as done has its files unless someone removed them since: :meth:`verify` checks.
    A job killed mid-append leaves a partial last line, and a damaged file may hold a corrupt line
    anywhere: such lines are dropped with a warning (their units are simply redone)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        self.repairs: list[str] = []
        if not self.path.exists():
            return
        raw = self.path.read_text(errors="replace")
        lines = raw.split("\n")
        complete, partial = lines[:-1], lines[-1]
        kept, dropped = [], 0
        for number, line in enumerate(complete, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                entry["key"], entry["status"]  # noqa: B018 - a line without them is corrupt
            except (ValueError, KeyError, TypeError):
                dropped += 1
                self._repair(f"{self.path}: line {number} is corrupt; dropped (its unit is redone)")
                continue
            self.entries[entry["key"]] = entry
            kept.append(line)
        if partial.strip():
            dropped += 1
            self._repair("dropping an incomplete last manifest line (interrupted job)")
        if dropped:
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def _repair(self, message: str) -> None:
        logger.warning("%s", message)
        self.repairs.append(message)

    def finished(self, key: str) -> bool:
        return self.entries.get(key, {}).get("status") in ("done", "skipped")

    def forget(self, key: str, reason: str) -> None:
        """Treat a unit as not run (its outputs are gone or damaged); the next record wins."""
        self.entries.pop(key, None)
        self._repair(reason)

    def record(self, result: UnitResult) -> None:
        entry = {"key": result.key, **asdict(result)}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.entries[entry["key"]] = entry

    def verify(self, out: Path, read_table) -> int:
        """Check every done unit's files against its entry (present, readable, same pick count);
        forget the units whose files are missing or corrupt, so that they are redone. Returns how
        many were forgotten."""
        bad = 0
        for key, entry in list(self.entries.items()):
            if entry.get("status") != "done":
                continue
            expected = sum(entry.get("picks", {}).values())
            for rel in entry.get("outputs", []):
                path = Path(out) / rel
                problem = None
                if not path.is_file():
                    problem = "is missing"
                else:
                    try:
                        rows = len(read_table(path))
                    except Exception as exc:  # any reader error means a damaged file
                        problem = f"is unreadable ({type(exc).__name__}: {exc})"
                    else:
                        if ".picks." in path.name and rows != expected:
                            problem = f"holds {rows} picks, the manifest says {expected}"
                if problem:
                    bad += 1
                    self.forget(key, f"unit {key}: output {path} {problem}; the unit is redone")
                    break
        return bad


class JobLock:
    """An exclusive lock on an output folder (``OUT/.lock``), held for the whole job.

    A second job on the same folder stops at once with a clear error, instead of redoing units or
    deleting the first job's files (``--overwrite``). The kernel releases the lock when the
    holding process dies, even by SIGKILL, so a killed job never blocks its rerun.
    """

    def __init__(self, out: Path):
        self.path = Path(out) / ".lock"
        self._fh = None

    def acquire(self) -> "JobLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise ArchiveError(f"another pick job ({holder}) is running on {self.path.parent}; wait "
                               "for it to finish or use another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the flock
            self._fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def check_run_file(out: Path, run: dict, overwrite: bool) -> None:
    """Refuse a job with other settings in a folder holding one; ``overwrite`` starts over."""
    path = out / "run.json"
    if overwrite:
        for name in ("manifest.jsonl", "run.json"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "units", ignore_errors=True)
    elif path.exists():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            raise ArchiveError(f"{path} is corrupt; use --overwrite to start over") from None
        differing = [k for k in _RUN_KEYS_THAT_MUST_MATCH if previous.get(k) != run.get(k)]
        if differing:
            detail = "; ".join(f"{k}: {previous.get(k)!r} -> {run.get(k)!r}" for k in differing)
            raise ArchiveError(f"{out} holds a job with other settings ({detail}); use another "
                               "--out, or --overwrite to start over")
    write_json(path, run)


def remove_stale_temporaries(out: Path) -> None:
    remove_temporaries(out / "units", "*/.*.tmp-*")
    remove_temporaries(out, ".*.tmp-*")
