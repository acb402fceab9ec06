"""`make demo`: shipped FEQ3 on the bundled NCEDC traces (held-out stations) and ObsPy's SEISAN event."""

import obspy
import pandas as pd
import pytest

from seisbench_feq.data import split_by_station
from seisbench_feq.demo import DEMO_DATA, analyst_picks, demo_traces, run_demo

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.timeout(300)]


def test_demo_data_is_held_out_and_attributed():
    picks = analyst_picks()
    assert len(demo_traces()) == 3 == picks["file"].nunique()
    assert set(split_by_station(picks[["station"]].drop_duplicates())) == {"test"}
    attribution = (DEMO_DATA / "ATTRIBUTION.md").read_text()
    assert "PhaseNet" in attribution and "MIT" in attribution
    for path in demo_traces():
        stream = obspy.read(str(path))
        assert len(stream) == 3 and {tr.stats.sampling_rate for tr in stream} == {100.0}
        start = min(tr.stats.starttime for tr in stream)
        p_time = picks[(picks["file"] == path.name) & (picks["phase"] == "P")]["time"].iloc[0]
        # P must not sit on a whole second of the trace start (EqT's STEAD prior)
        assert abs(((p_time - start) % 1.0) - 0.5) < 0.49


def test_demo_picks_p_and_s_of_each_bundled_earthquake(tmp_path):
    result = run_demo(tmp_path)
    comparison = result["comparison"]
    assert len(comparison) == 6  # P and S of three stations
    assert (comparison["model"] != "missed").all(), comparison
    assert (comparison["model-analyst (s)"].abs() <= 0.5).all(), comparison
    table = pd.read_csv(result["csv"])
    assert list(table.columns) == ["trace_id", "phase", "time", "probability"]
    assert len(table) == len(result["picks"])
    assert all(f.stat().st_size > 10_000 for f in result["figures"])


def test_demo_seisan_event_runs_and_writes_what_it_picked(tmp_path):
    """The harder second example. FEQ3 does not pick this event's P or S and makes one false P near
    14:52:16, where the converted EqT makes one too (README); this test holds the plumbing only."""
    result = run_demo(tmp_path, seisan=True)
    assert result["figures"][0].stat().st_size > 10_000
    assert len(result["comparison"]) == 0  # no analyst picks for this file
    table = pd.read_csv(result["csv"])
    assert len(table) == len(result["picks"])
    assert all(obspy.UTCDateTime("2005-07-23T14:52:04") <= p.peak_time <= obspy.UTCDateTime("2005-07-23T14:53:15")
               for p in result["picks"])
