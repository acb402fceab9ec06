"""Archive picking (seisbench_feq.archive) on the real CX archive: borders, Dask, resume, bad input.

The picker here is a deterministic STA/LTA ``WaveformModel`` (20 s windows): the model is not what
these tests test, and it gives real, sharp picks on the aftershock data, fast. Everything else is
real: the SDS archive and MiniSEED files from ../shared, ObsPy's SDS client, SeisBench's classify,
a Dask LocalCluster with 2 worker processes, the CLI in a subprocess killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import obspy
import pandas as pd
import pytest
import seisbench.models as sbm
import seisbench.util as sbu
import torch
import torch.nn.functional as F
from conftest import shared_path

from seisbench_feq import archive
from seisbench_feq.cli import main as cli_main

TESTS_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = TESTS_DIR.parent
PICKER = f"{Path(__file__).stem}:EnvelopePicker"  # importable by Dask workers and subprocesses
T0 = obspy.UTCDateTime("2014-05-01T00:00:00")
# what the `seisbench-feq` console script runs (the venv need not have the entry point installed)
CONSOLE_SCRIPT = "import sys; from seisbench_feq.cli import main; sys.exit(main(sys.argv[1:]))"


class EnvelopePicker(sbm.WaveformModel):
    """STA/LTA test picker: P from vertical energy, S from horizontal energy, 20 s windows."""

    _annotate_args = sbm.WaveformModel._annotate_args.copy()
    _annotate_args.update({
        "overlap": ("", 500), "blinding": ("", (100, 100)), "stacking": ("", "max"),
        "P_threshold": ("", 0.5), "S_threshold": ("", 0.5), "detection_threshold": ("", 0.5),
    })

    def __init__(self, **kwargs):
        super().__init__(citation="test picker", output_type="array", in_samples=2000,
                         pred_sample=(0, 2000), labels=["Detection", "P", "S"], sampling_rate=100,
                         component_order="ZNE", **kwargs)
        self.gain = torch.nn.Parameter(torch.tensor(2.0))

    def get_model_args(self):
        return {}  # __init__ sets everything itself (SeisBench's load() calls cls(**model_args))

    @staticmethod
    def _moving_mean(e, half):
        c = F.pad(torch.cumsum(F.pad(e, (1, 0)), -1), (half, half), mode="replicate")
        return (c[:, 2 * half + 1:] - c[:, :-2 * half - 1]) / (2 * half + 1)

    def _probability(self, energy):
        ratio = self._moving_mean(energy, 25) / (self._moving_mean(energy, 300) + 1e-12)
        return torch.sigmoid(self.gain * (ratio - 5))

    def forward(self, x):
        x = x - x.mean(-1, keepdim=True)
        p = self._probability(x[:, 0] ** 2)
        s = self._probability(x[:, 1] ** 2 + x[:, 2] ** 2)
        return torch.maximum(p, s), p, s

    def annotate_batch_post(self, batch, piggyback, argdict):
        pred = torch.stack(batch, -1).float()
        pre, post = argdict.get("blinding", (100, 100))
        pred[:, :pre] = np.nan
        pred[:, pred.shape[1] - post:] = np.nan
        return pred

    def classify_aggregate(self, annotations, argdict):
        picks = sbu.PickList()
        for phase in "PS":
            picks += self.picks_from_annotations(
                annotations.select(channel=f"{self.name}_{phase}"),
                argdict.get(f"{phase}_threshold", 0.5), phase)
        detections = self.detections_from_annotations(
            annotations.select(channel=f"{self.name}_Detection"),
            argdict.get("detection_threshold", 0.5))
        return sbu.ClassifyOutput(self.name, picks=sbu.PickList(sorted(picks)),
                                  detections=detections)


@pytest.fixture(scope="module")
def sds():
    return shared_path("data", "cx_continuous", "sds")


@pytest.fixture(scope="module")
def picker():
    return EnvelopePicker().eval()


@pytest.fixture(scope="module")
def picker_weights(tmp_path_factory, picker):
    """The test picker saved as SeisBench weight files (``--weights PATH`` on the CLI)."""
    path = tmp_path_factory.mktemp("weights") / "envelope"
    picker.save(str(path))
    return path.with_suffix(".json")


def _env():
    env = dict(os.environ)
    inherited = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(PROJECT_ROOT), *inherited])
    return env


def _picks(path) -> pd.DataFrame:
    fmt = "parquet" if str(path).endswith(".parquet") else "csv"
    return archive._read_table(Path(path), fmt, ["time", "start_time", "end_time"])


def _reference_picks(model, sds, stations, start, end) -> pd.DataFrame:
    """One classify call per station over the whole span (read with the same border pad)."""
    from obspy.clients.filesystem.sds import Client

    _, step, pad, _ = archive.border_geometry(model, {})
    client = Client(str(sds))
    frames = []
    settings = archive.PickSettings(0, 0, 0, 0, 0, 0, (), {}, "csv", False, "EnvelopePicker", "x")
    for station in stations:
        net, sta = station.split(".")
        st = client.get_waveforms(net, sta, "", "HH?", archive._floor_to(start - pad, step), end + pad)
        out = model.classify(st)
        frames.append(archive._picks_frame(out.picks, settings, start, end))
    df = pd.concat(frames, ignore_index=True)
    return archive._normalise_frame(df, ["time", "start_time", "end_time"], ["station", "time", "phase"])


def _same_picks(got: pd.DataFrame, ref: pd.DataFrame):
    cols = ["station", "phase", "time", "start_time", "end_time"]
    pd.testing.assert_frame_equal(got[cols].reset_index(drop=True), ref[cols].reset_index(drop=True))
    np.testing.assert_allclose(got["probability"], ref["probability"], rtol=1e-5)


# ------------------------------------------------------------------------------------------------


def test_parse_duration_and_bad_settings(tmp_path, sds, picker):
    assert archive.parse_duration("1d") == 86400
    assert archive.parse_duration("30min") == 1800
    assert archive.parse_duration("90") == 90
    with pytest.raises(archive.ArchiveError, match="cannot parse duration"):
        archive.parse_duration("one day")
    with pytest.raises(archive.ArchiveError, match="no station .* matches XX.NOPE"):
        archive.pick_archive(sds, tmp_path / "a", picker, stations="XX.NOPE", workers=0)
    with pytest.raises(archive.ArchiveError, match="unknown model"):
        archive.pick_archive(sds, tmp_path / "b", "phasenet", workers=0)
    with pytest.raises(archive.ArchiveError, match="neither a directory"):
        archive.pick_archive(str(tmp_path / "missing" / "*.mseed"), tmp_path / "c", picker, workers=0)


def test_manifest_drops_a_partial_last_line_left_by_a_kill(tmp_path):
    path = tmp_path / "manifest.jsonl"
    done = archive.UnitResult("CX.PB01.", "2014-05-01T00:00:00.000000Z",
                              "2014-05-01T01:00:00.000000Z", status="done")
    archive.Manifest(path).record(done)
    with open(path, "a") as fh:
        fh.write('{"key": "CX.PB02.|2014')  # the process died in the middle of this line
    manifest = archive.Manifest(path)
    assert manifest.finished(done.key) and len(manifest.entries) == 1
    assert path.read_text().endswith("\n") and path.read_text().count("\n") == 1
    failed = archive.UnitResult("CX.PB02.", done.start, done.end, status="failed", reason="x")
    manifest.record(failed)
    assert not archive.Manifest(path).finished(failed.key)  # failed units are retried


def test_sds_layout_stations_and_default_span(sds, tmp_path):
    source = archive.open_source(sds)
    assert isinstance(source, archive.SDSSource)
    assert source.stations() == ["CX.PB01.", "CX.PB02."]
    first = obspy.read(str(next(sds.rglob("CX.PB01..HHZ.D.2014.121"))), headonly=True)[0].stats
    start, end = archive.default_span(source, ["CX.PB01."], 86400, blinding_s=5)
    # the day file starts 1.6 ms before midnight: no chunk is opened for 2014-04-30
    assert first.starttime < T0 and start == T0
    assert end == first.endtime + first.delta - 5
    units, without_data = archive.plan_units(["CX.PB01."], start, end, 4 * 3600)
    assert [u.start[:13] for u in units] == ["2014-05-01T00", "2014-05-01T04", "2014-05-01T08"]
    assert units[-1].end == archive._iso(end) and without_data == {}
    # chunks that no day file covers are not planned, but counted
    units, without_data = archive.plan_units(["CX.PB01."], T0 - 2 * 86400, T0 + 86400, 86400,
                                             {"CX.PB01.": source.coverage("CX.PB01.")})
    assert [u.start[:10] for u in units] == ["2014-04-30", "2014-05-01"]
    assert without_data == {"CX.PB01.": 1}
    # hourly MiniSEED files are not an SDS tree
    hourly = archive.open_source(str(shared_path("data", "cx_continuous")) + "/CX_2014*/*.mseed")
    assert isinstance(hourly, archive.MiniSEEDSource)
    assert hourly.stations() == ["CX.PB01.", "CX.PB02."]
    assert hourly.data_span(["CX.PB01."])[0].month == 3


@pytest.mark.timeout(120)
def test_event_across_chunk_border_gives_the_same_picks_as_one_run(tmp_path, sds, picker):
    # Find a P and its S on PB02 in one classify over an hour, then put a chunk border between them.
    hour = _reference_picks(picker, sds, ["CX.PB02"], T0 + 3600, T0 + 7200)
    pairs = [(p, s) for _, s in hour[hour.phase == "S"].iterrows()
             for _, p in hour[hour.phase == "P"].iterrows()
             if pd.Timedelta(seconds=2) < s.time - p.time < pd.Timedelta(seconds=30)]
    assert pairs, "the test picker found no P-S pair in an hour of aftershock data"
    p, s = pairs[0]
    border = obspy.UTCDateTime((p.time + (s.time - p.time) / 2).isoformat())
    start, end = border - 1200, border + 1200  # two 20-min chunks, sub-spans of 7 min inside

    report = archive.pick_archive(sds, tmp_path / "out", picker, start=start, end=end,
                                  stations="CX.PB02", chunk="20min", classify_span="7min",
                                  workers=0, progress=False)
    assert report.exit_code == 0
    assert (report.summary["units"]["total"], report.summary["units"]["done"]) == (2, 2)
    got = report.picks()
    _same_picks(got, _reference_picks(picker, sds, ["CX.PB02"], start, end))
    assert got.duplicated(["station", "phase", "time"]).sum() == 0
    # the event really straddles the border: its P is in the first unit's file, its S in the second
    first, second = sorted((tmp_path / "out" / "units" / "CX.PB02.").glob("*.picks.csv"))
    assert (_picks(first).time == p.time).any() and (_picks(second).time == s.time).any()


@pytest.mark.timeout(300)
def test_cli_on_a_local_dask_cluster_gives_the_same_output_as_in_process(tmp_path, sds, picker,
                                                                          picker_weights):
    span = dict(start=T0 + 600, end=T0 + 1800)
    rc = cli_main(["pick", str(sds), "--out", str(tmp_path / "dask"), "--model", PICKER,
                   "--weights", str(picker_weights), "--start", str(span["start"]),
                   "--end", str(span["end"]), "--chunk", "10min", "--workers", "2",
                   "--format", "parquet", "--detections", "--no-progress"])
    assert rc == 0
    local = archive.pick_archive(sds, tmp_path / "local", picker, chunk="10min", workers=0,
                                 output_format="parquet", detections=True, progress=False, **span)
    dask_report = json.loads((tmp_path / "dask" / "report.json").read_text())
    assert dask_report["units"]["done"] == local.summary["units"]["done"] == 4
    assert dask_report["picks_per_station"] == local.summary["picks_per_station"]
    remote = pd.read_parquet(tmp_path / "dask" / "picks.parquet")
    assert list(remote.columns) == archive.PICK_COLUMNS and len(remote) > 0
    _same_picks(remote, local.picks())
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "dask" / "detections.parquet").drop(columns="weights"),
        pd.read_parquet(tmp_path / "local" / "detections.parquet").drop(columns="weights"))
    workers = {json.loads(line)["worker"]
               for line in (tmp_path / "dask" / "manifest.jsonl").read_text().splitlines()}
    assert len(workers) == 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)


@pytest.mark.timeout(240)
def test_cli_feq3_on_an_existing_dask_scheduler(tmp_path, sds):
    from distributed import LocalCluster

    # a real scheduler reached over TCP; its one worker runs as threads of this process (cheap)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://")
        rc = cli_main(["pick", str(sds), "--out", str(tmp_path / "feq3"), "--model", "feq3",
                       "--weights", "random", "--stations", "CX.PB01,CX.PB02",
                       "--start", "2014-05-01T02:00", "--end", "2014-05-01T02:06",
                       "--chunk", "3min", "--scheduler", cluster.scheduler_address,
                       "--no-progress"])
    assert rc == 0
    report = json.loads((tmp_path / "feq3" / "report.json").read_text())
    assert report["units"]["done"] == 4 and report["model"] == "FEQ3"
    assert report["weights"] == "random(seed=0)"
    assert report["data_hours"] == pytest.approx(2 * 6 / 60, abs=1e-3)
    picks = _picks(tmp_path / "feq3" / "picks.csv")
    assert list(picks.columns) == archive.PICK_COLUMNS
    assert set(picks.model) <= {"FEQ3"}


@pytest.mark.timeout(300)
def test_cli_killed_and_rerun_equals_an_uninterrupted_run(tmp_path, sds, picker_weights):
    def job(out):
        return ["pick", str(sds), "--out", str(out), "--model", PICKER, "--weights",
                str(picker_weights), "--start", "2014-05-01T00:00", "--end", "2014-05-01T00:40",
                "--chunk", "5min", "--workers", "0", "--no-progress"]

    out = tmp_path / "job"
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", CONSOLE_SCRIPT, *job(out)],
                                cwd=PROJECT_ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        manifest = out / "manifest.jsonl"
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and manifest.read_text().count("\n") >= 3:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    stderr = (tmp_path / "stderr.txt").read_text(errors="replace")
    finished = manifest.read_text().count("\n") if manifest.exists() else 0
    assert proc.returncode == -signal.SIGKILL, stderr
    assert 3 <= finished < 16, f"kill came too late or too early ({finished} units)\n{stderr}"
    assert not (out / "picks.csv").exists()

    assert cli_main(job(out)) == 0  # the same command again finishes the job
    report = json.loads((out / "report.json").read_text())
    assert report["units"]["done"] == 16
    assert report["units"]["finished_in_earlier_runs"] == finished
    assert report["units"]["processed_this_run"] == 16 - finished

    clean = tmp_path / "clean"
    assert cli_main(job(clean)) == 0
    resumed = _picks(out / "picks.csv")
    assert len(resumed) > 0 and resumed.duplicated(["station", "phase", "time"]).sum() == 0
    assert (out / "picks.csv").read_bytes() == (clean / "picks.csv").read_bytes()
    unit_files = sorted((clean / "units").rglob("*.csv"))
    assert len(unit_files) == 16
    for unit_file in unit_files:
        assert (out / unit_file.relative_to(clean)).read_bytes() == unit_file.read_bytes()

    # the same folder with other settings is refused instead of mixing two jobs
    assert cli_main([*job(out), "--chunk", "10min"]) == 2


def _write(stream, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    stream.write(str(path), format="MSEED", **kwargs)


@pytest.mark.timeout(240)
def test_corrupt_truncated_and_odd_miniseed_are_reported_and_the_job_completes(tmp_path, picker):
    # Hour 02:00-03:00 of 2014-03-01 (real data), split into several odd files in one directory.
    real = obspy.read(str(shared_path("data", "cx_continuous", "CX_20140301", "CX.PB02..HH.mseed")))
    start = real[0].stats.starttime + 600
    data = tmp_path / "mseed"
    good = real.copy().trim(start, start + 900)
    _write(good, data / "PB02.mseed")

    one_comp = real.select(channel="HHZ").copy().trim(start, start + 900)  # N, E missing
    for tr in one_comp:
        tr.stats.station = "ZONLY"
    _write(one_comp, data / "ZONLY.mseed")

    # a 30 s gap on all channels, 5 s of NaN on Z, an overlapping N record with other data, and
    # the last 5 minutes of E at 50 Hz
    odd = real.copy().trim(start, start + 900)
    for tr in odd:
        tr.stats.station = "ODD"
        tr.data = tr.data.astype(np.float64)
    odd.select(channel="HHZ")[0].data[60000:60500] = np.nan
    before_gap = odd.copy().trim(start, start + 300)
    after_gap = odd.select(channel="HH[ZN]").copy().trim(start + 330, start + 900)
    after_gap += odd.select(channel="HHE").copy().trim(start + 330, start + 600)
    overlap = odd.select(channel="HHN").copy().trim(start + 200, start + 260)
    overlap[0].data = overlap[0].data * 2.0
    fifty = odd.select(channel="HHE").copy().trim(start + 600, start + 900).decimate(2)
    _write(before_gap + after_gap, data / "ODD.mseed", encoding="FLOAT64")
    _write(overlap, data / "ODD_overlap.mseed", encoding="FLOAT64")
    _write(fifty, data / "ODD_50hz.mseed", encoding="FLOAT64")

    # a file cut in the middle of a record
    from obspy.io.mseed.util import get_record_information

    trunc = real.copy().trim(start, start + 900)
    for tr in trunc:
        tr.stats.station = "TRUNC"
    _write(trunc, data / "TRUNC.mseed")
    reclen = get_record_information(str(data / "TRUNC.mseed"))["record_length"]
    whole = (data / "TRUNC.mseed").read_bytes()
    (data / "TRUNC.mseed").write_bytes(whole[: (len(whole) // reclen // 2) * reclen + reclen // 3])
    (data / "garbage.mseed").write_bytes(b"this is not MiniSEED at all\n" * 100)

    report = archive.pick_archive(str(data), tmp_path / "out", picker, chunk="15min",
                                  start=start, end=start + 900,
                                  stations=["CX.PB02", "CX.ZONLY", "CX.ODD", "CX.TRUNC", "CX.GONE"],
                                  workers=0, progress=False)
    s = report.summary
    assert report.exit_code == 1  # finished, but the garbage file is reported
    assert [p["file"] for p in s["input_problems"]] == [str((data / "garbage.mseed").resolve())]
    assert "unreadable MiniSEED" in s["input_problems"][0]["reason"]
    assert s["requested_stations_without_data"] == ["CX.GONE"]
    assert s["units"]["done"] == 4 and s["units"]["failed"] == 0
    notes = {w["station"]: " | ".join(w["notes"]) for w in s["warnings"]}
    assert "CX.PB02." not in notes
    assert "missing component(s) E, N" in notes["CX.ZONLY."]
    assert "truncated MiniSEED" in notes["CX.TRUNC."] and "TRUNC.mseed" in notes["CX.TRUNC."]
    assert "NaN/inf samples treated as gaps" in notes["CX.ODD."]
    assert "overlapping records" in notes["CX.ODD."]
    assert "mixed sampling rates" in notes["CX.ODD."]
    assert "HHZ has gaps" in notes["CX.ODD."]
    picks = report.picks()
    assert set(picks.station) >= {"CX.PB02.", "CX.ODD."}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "garbage.mseed" in md and "truncated MiniSEED" in md


@pytest.mark.timeout(240)
def test_corrupt_sds_file_fails_its_unit_only_and_a_rerun_retries_it(tmp_path, sds, picker):
    root = tmp_path / "sds"
    for src in sds.rglob("*.D.2014.121"):
        dst = root / src.relative_to(sds)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src)
    bad = root / "2014/CX/PB02/HHZ.D/CX.PB02..HHZ.D.2014.121"
    bad.unlink()
    bad.write_bytes(b"\x00garbage" * 512)
    kwargs = dict(start=T0 + 3600, end=T0 + 3600 + 600, chunk="10min", workers=0, progress=False)
    # PB03's day file covers the span but holds another station's records: its unit is skipped
    # with a reason; PB04's only file is weeks away: no unit is planned, the report counts it
    (root / "2014/CX/PB03/HHZ.D").mkdir(parents=True)
    (root / "2014/CX/PB03/HHZ.D/CX.PB03..HHZ.D.2014.121").symlink_to(
        sds / "2014/CX/PB01/HHZ.D/CX.PB01..HHZ.D.2014.121")  # holds PB01's data, not PB03's
    (root / "2014/CX/PB04/HHZ.D").mkdir(parents=True)
    (root / "2014/CX/PB04/HHZ.D/CX.PB04..HHZ.D.2014.100").symlink_to(
        sds / "2014/CX/PB01/HHZ.D/CX.PB01..HHZ.D.2014.121")

    first = archive.pick_archive(root, tmp_path / "out", picker, **kwargs)
    s = first.summary
    assert first.exit_code == 1
    assert (s["units"]["done"], s["units"]["failed"], s["units"]["skipped"]) == (1, 1, 1)
    assert s["failed"][0]["station"] == "CX.PB02."
    assert os.path.realpath(bad) in s["failed"][0]["reason"]
    assert s["skipped"][0]["station"] == "CX.PB03." and "no data" in s["skipped"][0]["reason"]
    assert s["chunks_without_data"] == {"CX.PB04.": 1}  # no day file near the span at all
    assert set(first.picks().station) == {"CX.PB01."}

    bad.unlink()
    bad.symlink_to(sds / "2014/CX/PB02/HHZ.D/CX.PB02..HHZ.D.2014.121")
    second = archive.pick_archive(root, tmp_path / "out", picker, **kwargs)
    assert second.exit_code == 0
    assert second.summary["units"]["processed_this_run"] == 1  # only the failed unit ran again
    assert set(second.picks().station) == {"CX.PB01.", "CX.PB02."}
