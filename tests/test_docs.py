"""The Python snippets of README.md and docs/*.md run as written.

Every ```python block runs in a fresh interpreter, in a temporary folder per document (later
blocks of a document may read what earlier ones wrote, as a reader would), with ``../shared``
replaced by the real location of the shared data (tests/conftest.py ``SHARED_DIR``); a block that
needs ``../shared`` is skipped (failed in CI) where it is absent. A block preceded by
``<!-- no-test: REASON -->`` is not run (e.g. it needs a live server). Blocks that expect an input
of the reader's own (``day.mseed``, a ``stream``) get a real one from ``INPUTS`` below.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT, SHARED_DIR, shared_path

DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)
NO_TEST = re.compile(r"<!--\s*no-test(?::\s*(.*?))?\s*-->\s*$")
TIMEOUT_S = 1200  # the archive snippet picks 12 h of two stations with two workers

# The reader's own inputs that a snippet names without making them: code run before the block.
_CX_HOUR = """
import obspy
_st = obspy.Stream()
for _ch in ("HHZ", "HHN", "HHE"):
    _st += obspy.read(f"{SHARED}/data/cx_continuous/sds/2014/CX/PB01/{_ch}.D/CX.PB01..{_ch}.D.2014.121")
_st.trim(_st[0].stats.starttime, _st[0].stats.starttime + 600).write("day.mseed", format="MSEED")
"""
_EVENT = """
import obspy
from seisbench_feq.demo import example_event_path
stream = obspy.read(str(example_event_path()))
"""
INPUTS = {'obspy.read("day.mseed")': _CX_HOUR, "classify(stream)": _EVENT}


def _blocks():
    for doc in DOCS:
        text = doc.read_text()
        for number, match in enumerate(FENCE.finditer(text)):
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            skip = NO_TEST.search(before)
            line = text[: match.start()].count("\n") + 1
            marks = [pytest.mark.skip(reason=f"marked no-test: {skip.group(1) or 'not runnable'}")] if skip else []
            yield pytest.param(doc, match.group(1), id=f"{doc.relative_to(PROJECT_ROOT)}:{line}", marks=marks)


_NEEDS_SHARED: set = set()


@pytest.fixture(scope="module")
def doc_folders():
    return {}


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 30)
@pytest.mark.parametrize("doc, code", list(_blocks()))
def test_snippet_runs(doc, code, doc_folders, tmp_path_factory):
    if "../shared" in code or any(key in code for key in INPUTS) or doc in _NEEDS_SHARED:
        # skip (or fail in CI) without the shared data; later blocks of a document may read what
        # an earlier block made from it
        _NEEDS_SHARED.add(doc)
        shared_path()
    shared = SHARED_DIR.resolve().as_posix()
    setup = "".join(prelude for key, prelude in INPUTS.items() if key in code).replace("{SHARED}", shared)
    if doc not in doc_folders:
        doc_folders[doc] = tmp_path_factory.mktemp(doc.stem)
    tmp_path = doc_folders[doc]
    script = tmp_path / "snippet.py"
    script.write_text(setup + code.replace("../shared", shared))
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(PROJECT_ROOT)}
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S, env=env
    )
    assert run.returncode == 0, f"{doc.name} snippet failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"


def test_blocks_are_found():
    blocks = list(_blocks())
    assert len(blocks) >= 5 and any("README.md" in b.id for b in blocks)
