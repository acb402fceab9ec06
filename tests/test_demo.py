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


def test_demo_seisan_event_picks_only_on_the_earthquake(tmp_path):
    result = run_demo(tmp_path, seisan=True)
    times = [p.peak_time for p in result["picks"]]
    assert result["figures"][0].stat().st_size > 10_000
    assert len(result["comparison"]) == 0  # no analyst picks for this file
    # every pick lies on the earthquake, between its P and the end of its S coda
    assert all(obspy.UTCDateTime("2005-07-23T14:52:30") <= t <= obspy.UTCDateTime("2005-07-23T14:52:50") for t in times)
