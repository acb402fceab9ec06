"""Logging for the ``seisbench-feq`` command: one handler, repeated warnings shown once."""

from __future__ import annotations

import contextlib
import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RepeatFilter(logging.Filter):
    """Lets each distinct WARNING-or-worse message through once and counts the repeats.

    Per-chunk and per-record code paths would otherwise print the same line hundreds of times.
    """

    def __init__(self):
        super().__init__()
        self.repeats: dict[tuple[str, int, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.getMessage())
        if key in self.repeats:
            self.repeats[key] += 1
            return False
        self.repeats[key] = 0
        return True

    def summary(self) -> str | None:
        repeated = {k: n for k, n in self.repeats.items() if n}
        if not repeated:
            return None
        total = sum(repeated.values())
        return f"{total} repeat(s) of {len(repeated)} warning(s) above were not printed again"


def configure_logging(verbose: bool = False) -> RepeatFilter:
    """One stderr handler on the root logger; SeisBench's own handler removed so nothing prints twice."""
    import seisbench  # cheap; its import attaches a StreamHandler to the "seisbench" logger

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    repeat_filter = RepeatFilter()
    handler.addFilter(repeat_filter)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    sb_logger = logging.getLogger(seisbench.__name__)
    for h in list(sb_logger.handlers):
        sb_logger.removeHandler(h)
    sb_logger.propagate = True
    logging.captureWarnings(True)  # ObsPy's warnings (e.g. InternalMSEEDWarning) go through the same filter
    return repeat_filter


@contextlib.contextmanager
def tqdm_safe_logging():
    """Route log lines through tqdm.write while progress bars are drawn (no torn bars)."""
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        yield
        return
    with logging_redirect_tqdm():
        yield
