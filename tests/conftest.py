"""Test-wide set-up: an isolated SeisBench cache, and the one way to find ``../shared``."""

import os
import tempfile
from pathlib import Path

import pytest

# SeisBench reads its cache root once, at import time: point it away from ~ before any import.
os.environ.setdefault("SEISBENCH_CACHE_ROOT", tempfile.mkdtemp(prefix="sbfeq-cache-"))

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SEISBENCH_FEQ_SHARED", PROJECT_ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path below ``../shared``; skips the test (or fails it in CI) when it is absent."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        reason = (
            f"real-data test needs {path}; ../shared is not beside this checkout "
            "(set SEISBENCH_FEQ_SHARED to its location)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI always has ../shared: a skip there would hide a broken test
        pytest.skip(reason)
    return path


def small_distillation_data(folder: Path, ncedc_traces: int):
    """Real training inputs in ``folder``: 3 min of CX.PB01 (``cx/``) and the first
    ``ncedc_traces`` NCEDC traces (``ncedc/``, links and their ``waveform.csv`` rows).
    Returns ``(cx, ncedc, subset)``, ``subset`` the rows as a DataFrame."""
    import obspy
    import pandas as pd

    cx = folder / "cx"
    cx.mkdir()
    stream = obspy.read(str(shared_path("data", "cx_continuous", "CX_20140401", "CX.PB01..HH.mseed")))
    t0 = stream[0].stats.starttime + 600
    stream.trim(t0, t0 + 180).write(str(cx / "CX.PB01.mseed"), format="MSEED")
    ncedc_root = shared_path("data", "ncedc")
    subset = pd.read_csv(ncedc_root / "waveform.csv").iloc[:ncedc_traces]
    ncedc = folder / "ncedc"
    ncedc.mkdir()
    subset.to_csv(ncedc / "waveform.csv", index=False)
    for name in subset["fname"]:
        (ncedc / name).symlink_to(ncedc_root / name)
    return cx, ncedc, subset


@pytest.fixture(scope="session")
def shared():
    """The ``../shared`` folder (skip/fail as in :func:`shared_path`)."""
    return shared_path()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).

    Small batches on a shared 2-core machine: a second OpenMP thread mostly waits for a core (single
    forwards took ~20 s instead of 0.3 s under load).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
