"""seisbench_feq.io: safe paths, atomic writes, the one pick table, waveform sources (real files)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import obspy
import pandas as pd
import pytest
import seisbench.util as sbu
from conftest import shared_path

from seisbench_feq.io import files, picks, sources


def test_safe_code_and_path_inside(tmp_path):
    assert files.safe_code("PB01") == "PB01" and files.safe_code("") == "_"
    assert files.safe_code("/") == "_" and files.safe_code("..") == "__" and files.safe_code("a/b") == "a_b"
    assert files.safe_station("CX.PB01.") == "CX.PB01."
    assert files.safe_station("/.ESC.") == "_.ESC."
    assert "/" not in files.safe_station("../..//.x") and files.safe_station("../../x") not in ("..", ".")
    assert files.path_inside(tmp_path, "units", "CX.PB01.") == (tmp_path / "units" / "CX.PB01.").resolve()
    for bad in ("/etc/passwd", "../x", "a/../../x"):
        with pytest.raises(ValueError, match="outside the output folder"):
            files.path_inside(tmp_path, bad)
    (tmp_path / "link").symlink_to("/")
    with pytest.raises(ValueError):
        files.path_inside(tmp_path, "link", "x")


def test_atomic_writes_leave_no_partial_file(tmp_path):
    path = files.atomic_write_text(tmp_path / "a" / "x.txt", "hello")
    assert path.read_text() == "hello"
    files.atomic_write_bytes(path, b"bye")
    assert path.read_bytes() == b"bye"
    with pytest.raises(RuntimeError):
        files.atomic_write(path, lambda p: (p.write_text("half"), (_ for _ in ()).throw(RuntimeError())))
    assert path.read_bytes() == b"bye" and [p.name for p in path.parent.iterdir()] == ["x.txt"]
    (tmp_path / "a" / ".x.txt.tmp-1-abc").write_text("left by a kill")
    assert files.remove_temporaries(tmp_path) == 1


@pytest.fixture(scope="module")
def stream():
    return obspy.read(str(shared_path("data", "cx_continuous", "CX_20140301", "CX.PB02..HH.mseed")))


def _picklist(stream):
    t = stream[0].stats.starttime + 600
    return sbu.PickList([sbu.Pick("CX.PB02.", t - 0.3, t + 0.3, t, 0.91, "P"),
                         sbu.Pick("CX.PB02.", t + 4.7, t + 5.4, t + 5.0, 0.62, "S")])


def test_pick_table_round_trips_and_measures_on_the_waveforms(tmp_path, stream):
    df = picks.picks_frame(_picklist(stream), stream=stream, model="FEQ3", weights="default@1",
                           polarity=True)
    assert list(df.columns) == picks.PICK_COLUMNS
    assert list(df.trace_id) == ["CX.PB02..HHZ", df.trace_id[1]] and df.channel[1] in ("HHN", "HHE")
    assert (df.amplitude > 0).all() and (df.amplitude_unit == "counts").all() and df.snr.notna().all()
    assert str(df.time.dtype) == "datetime64[us, UTC]"
    for name in ("p.csv", "p.parquet"):
        picks.write_picks(df, tmp_path / name)
        pd.testing.assert_frame_equal(picks.read_picks(tmp_path / name), df)
    text = (tmp_path / "p.csv").read_text().splitlines()
    assert text[0] == ",".join(picks.PICK_COLUMNS)  # no index column
    assert text[1].split(",")[6].endswith("Z")
    picks.write_picks(df, tmp_path / "q.csv", format="quakeflow")
    qf = pd.read_csv(tmp_path / "q.csv")
    assert list(qf.columns) == picks.QUAKEFLOW_COLUMNS and list(qf.station_id) == list(df.trace_id)
    back = picks.read_picks(tmp_path / "q.csv")
    assert list(back.phase) == list(df.phase) and list(back.time) == list(df.time)
    assert len(picks.empty_picks()) == 0 and list(picks.empty_picks().columns) == picks.PICK_COLUMNS


def test_read_picks_accepts_the_old_csv_and_names_bad_files(tmp_path):
    old = tmp_path / "old.csv"
    old.write_text("station,phase,time,probability,uncertainty,start_time,end_time,model,weights\n"
                   "CX.PB01.,P,2014-05-01 00:00:01.5+00:00,0.9,,2014-05-01 00:00:01+00:00,"
                   "2014-05-01 00:00:02+00:00,FEQ3,default@1\n")
    df = picks.read_picks(old)
    assert (df.network[0], df.station[0], df.location[0], df.trace_id[0]) == ("CX", "PB01", "", "CX.PB01..")
    assert df.time[0] == pd.Timestamp("2014-05-01T00:00:01.5Z")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(picks.PickTableError, match="bad.csv is not a pick table"):
        picks.read_picks(bad)
    with pytest.raises(picks.PickTableError, match="does not exist"):
        picks.read_picks(tmp_path / "none.csv")


@pytest.mark.timeout(60)
def test_sources_skip_fifos_and_name_files_that_decode_garbage(tmp_path, stream):
    stream.copy().trim(stream[0].stats.starttime, stream[0].stats.starttime + 120).write(
        str(tmp_path / "good.mseed"), format="MSEED", reclen=512)
    os.mkfifo(tmp_path / "pipe.mseed")
    raw = bytearray((tmp_path / "good.mseed").read_bytes())
    raw[512 * 4: 512 * 9] = b"\xff" * (512 * 5)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "damaged.mseed").write_bytes(bytes(raw))
    source = sources.MiniSEEDSource(tmp_path)
    assert [Path(p["file"]).name for p in source.problems()] == ["pipe.mseed"]
    result = source.read("CX.PB02.", "HH", stream[0].stats.starttime, stream[0].stats.starttime + 120)
    assert len(result.stream) and len(result.errors) == 1
    assert "damaged.mseed" in result.errors[0] and "decoding warning" in result.errors[0]
    with pytest.raises(sources.SourceReadError, match="not a regular file"):
        sources.read_miniseed(str(tmp_path / "pipe.mseed"))


def test_sds_source_upper_cases_and_replays_in_time_order():
    sds = shared_path("data", "cx_continuous", "sds")
    source = sources.open_source(str(sds))
    t0 = obspy.UTCDateTime(2014, 5, 1, 1, 0)
    records = list(sources.replay_records(source, start=t0, end=t0 + 60, stations=["CX.PB01."],
                                          record_seconds=5))
    ends = [tr.stats.endtime for tr in records]
    assert ends == sorted(ends) and {tr.stats.channel for tr in records} == {"HHE", "HHN", "HHZ"}
    merged = obspy.Stream(records).merge()
    assert len(merged) == 3 and all(tr.stats.npts == 6000 for tr in merged)  # every sample once
    assert not any(np.ma.isMaskedArray(tr.data) for tr in merged)
