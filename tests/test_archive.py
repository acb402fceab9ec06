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
from seisbench_feq.archive.unit import unit_picks_frame
from seisbench_feq.io.picks import normalise_picks, read_picks
from seisbench_feq.cli import main as cli_main

TESTS_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = TESTS_DIR.parent
PICKER = f"{Path(__file__).stem}:EnvelopePicker"  # importable by Dask workers and subprocesses
T0 = obspy.UTCDateTime("2014-05-01T00:00:00")
# what the `seisbench-feq` console script runs (the venv need not have the entry point installed)
# (only `pick` is registered: another subcommand's breakage cannot fail these tests)
CONSOLE_SCRIPT = ("import sys; import seisbench_feq.cli as cli; "
                  "cli.SUBCOMMAND_MODULES[:] = ['seisbench_feq.archive']; sys.exit(cli.main(sys.argv[1:]))")


@pytest.fixture(autouse=True)
def _only_pick(monkeypatch):
    import seisbench_feq.cli as cli

    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["seisbench_feq.archive"])


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
    return read_picks(path)


def _stations(df: pd.DataFrame) -> set[str]:
    """NET.STA.LOC of the picks (the unit a job plans by)."""
    return set(df.network + "." + df.station + "." + df.location)


def _reference_picks(model, sds, stations, start, end) -> pd.DataFrame:
    """One classify call per station over the whole span (read with the same border pad)."""
    from obspy.clients.filesystem.sds import Client

    _, step, pad, _ = archive.border_geometry(model, {})
    client = Client(str(sds))
    frames = []
    settings = archive.PickSettings(0, 0, 0, 0, 0, 0, (), {}, "csv", False, "EnvelopePicker", "x")
    for station in stations:
        net, sta = station.split(".")
        st = client.get_waveforms(net, sta, "", "HH?", archive.floor_to(start - pad, step), end + pad)
        out = model.classify(st)
        frames.append(unit_picks_frame(out.picks, settings, start, end, stream=st))
    df = pd.concat(frames, ignore_index=True)
    return normalise_picks(df)


def _same_picks(got: pd.DataFrame, ref: pd.DataFrame):
    cols = ["trace_id", "phase", "time", "start_time", "end_time"]
    got, ref = (df.sort_values(["trace_id", "time", "phase"], kind="mergesort").reset_index(drop=True)
                for df in (got, ref))
    pd.testing.assert_frame_equal(got[cols], ref[cols])
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
    with pytest.raises(archive.ArchiveError, match="cannot load model nosuchmodel"):
        archive.pick_archive(sds, tmp_path / "b", "nosuchmodel", workers=0)
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
    assert units[-1].end == archive.iso(end) and without_data == {}
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
    assert got.duplicated(["trace_id", "phase", "time"]).sum() == 0
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
    # the report says which parallelism ran (2 workers x 1 torch thread on <= 2 cores)
    assert dask_report["throughput"]["workers"] == 2 and local.summary["throughput"]["workers"] == 0
    assert dask_report["picks_per_station"] == local.summary["picks_per_station"]
    remote = pd.read_parquet(tmp_path / "dask" / "picks.parquet")
    assert list(remote.columns) == archive.PICK_COLUMNS and len(remote) > 0
    _same_picks(remote, local.picks())
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "dask" / "detections.parquet").drop(columns="weights"),
        pd.read_parquet(tmp_path / "local" / "detections.parquet").drop(columns="weights"))
    workers = {json.loads(line)["worker"]
               for line in (tmp_path / "dask" / "manifest.jsonl").read_text().splitlines()}
    # units ran in the worker processes (Dask may give all four short units to one of the two)
    assert 1 <= len(workers) <= 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)


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
    assert len(resumed) > 0 and resumed.duplicated(["trace_id", "phase", "time"]).sum() == 0
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
    assert "masked/NaN samples" in notes["CX.ODD."] and "treated as gaps" in notes["CX.ODD."]
    assert "CX.ODD..HHN: overlapping records disagree" in notes["CX.ODD."]
    assert "resampling CX.ODD..HHE from 50 Hz" in notes["CX.ODD."]
    assert "HHZ has gaps" in notes["CX.ODD."]
    picks = report.picks()
    assert _stations(picks) >= {"CX.PB02.", "CX.ODD."}
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
    assert _stations(first.picks()) == {"CX.PB01."}

    bad.unlink()
    bad.symlink_to(sds / "2014/CX/PB02/HHZ.D/CX.PB02..HHZ.D.2014.121")
    second = archive.pick_archive(root, tmp_path / "out", picker, **kwargs)
    assert second.exit_code == 0
    assert second.summary["units"]["processed_this_run"] == 1  # only the failed unit ran again
    assert _stations(second.picks()) == {"CX.PB01.", "CX.PB02."}


# ---- hostile input, hangs, resume repairs (the audit's cases) --------------------------------


def _hour_piece(seconds=900, offset=600):
    real = obspy.read(str(shared_path("data", "cx_continuous", "CX_20140301", "CX.PB02..HH.mseed")))
    start = real[0].stats.starttime + offset
    return real.trim(start, start + seconds), start


def _files_outside(root: Path, inside: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and inside not in p.parents}


@pytest.mark.timeout(240)
def test_hostile_station_codes_write_only_inside_the_output_folder(tmp_path, picker):
    piece, start = _hour_piece()
    data = tmp_path / "data"
    for name, (net, sta) in {"slash_net": ("/", "ESC"), "slash_sta": ("CX", "a/b"),
                             "dotdot": ("CX", ".."), "glob": ("C*", "[X]")}.items():
        hostile = piece.copy()
        for tr in hostile:
            tr.stats.network, tr.stats.station = net, sta
        _write(hostile, data / f"{name}.mseed")
    out = tmp_path / "out"
    before = _files_outside(tmp_path, out)
    root_before = set(Path("/").glob(".ESC*"))
    report = archive.pick_archive(str(data), out, picker, chunk="15min", start=start,
                                  end=start + 900, workers=0, progress=False)
    assert report.exit_code == 0
    assert report.summary["units"]["done"] == 4
    assert _files_outside(tmp_path, out) == before  # nothing written beside the output folder
    assert set(Path("/").glob(".ESC*")) == root_before
    # one folder level under units/, each a plain name
    unit_dirs = [p for p in (out / "units").iterdir()]
    assert len(unit_dirs) == 4 and all(p.is_dir() and "/" not in p.name and p.name != ".." for p in unit_dirs)
    assert all(f.parent.parent == out / "units" for f in (out / "units").rglob("*.csv"))
    picks = report.picks()
    # the codes themselves are kept in the pick table (dots inside a code become "_")
    assert {"/", "C*"} <= set(picks.network) and {"a/b", "__", "[X]"} <= set(picks.station)


@pytest.mark.timeout(120)
def test_a_fifo_named_mseed_is_skipped_never_opened(tmp_path, picker):
    piece, start = _hour_piece(300)
    data = tmp_path / "data"
    _write(piece, data / "PB02.mseed")
    os.mkfifo(data / "pipe.mseed")  # opening it for reading would block forever
    report = archive.pick_archive(str(data), tmp_path / "out", picker, chunk="5min", start=start,
                                  end=start + 300, workers=0, progress=False)
    assert report.summary["units"]["done"] == 1
    problems = report.summary["input_problems"]
    assert [Path(p["file"]).name for p in problems] == ["pipe.mseed"]
    assert "not a regular file" in problems[0]["reason"]
    assert report.exit_code == 1  # the unusable input is reported
    # a FIFO given by name is refused the same way
    report = archive.pick_archive(str(data / "pipe.mseed"), tmp_path / "out2", picker, workers=0,
                                  start=start, end=start + 300, progress=False)
    assert report.summary["units"]["total"] == 0 and report.exit_code == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size: must be >= 1"),
    (["--batch-size", "x"], "--batch-size: 'x' is not a whole number"),
    (["--workers", "-1"], "--workers: must be >= 0"),
    (["--torch-threads", "0"], "--torch-threads/--threads: must be >= 1"),
    (["--p-threshold", "2"], "--p-threshold/--P-threshold: must be a probability"),
    (["--start", "yesterday"], "cannot understand 'yesterday' as a time"),
])
def test_bad_numbers_and_times_fail_fast_with_exit_2(tmp_path, sds, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        cli_main(["pick", str(sds), "--out", str(tmp_path / "out"), *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(60)
def test_invalid_classify_arguments_and_outputs_are_refused_before_any_work(tmp_path, sds, picker):
    for kwargs, message in (({"batch_size": 0}, "batch_size must be a whole number >= 1"),
                            ({"overlap": 6000}, "overlap=6000: expected whole samples"),
                            ({"stacking": "foo"}, "stacking must be")):
        with pytest.raises(archive.ArchiveError, match=message):
            archive.pick_archive(sds, tmp_path / "a", picker, workers=0, classify_kwargs=kwargs,
                                 start=T0, end=T0 + 60, progress=False)
    (tmp_path / "file").write_text("x")
    assert cli_main(["pick", str(sds), "--out", str(tmp_path / "file")]) == 2
    with pytest.raises(archive.ArchiveError, match="is a file"):
        archive.pick_archive(sds, tmp_path / "file", picker, workers=0)
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 50)
    assert cli_main(["pick", str(sds), "--out", str(tmp_path / "w1"), "--weights", str(trunc)]) == 2
    assert cli_main(["pick", str(sds), "--out", str(tmp_path / "w2"), "--weights", "nonexist.pt"]) == 2
    with pytest.raises(archive.ArchiveError, match="nonexist"):
        archive.pick_archive(sds, tmp_path / "w3", "feq3", "nonexist.pt", workers=0)


@pytest.mark.timeout(240)
def test_resume_repairs_missing_and_corrupt_unit_files_and_manifest_lines(tmp_path, sds, picker):
    kwargs = dict(start=T0 + 3600, end=T0 + 3600 + 1200, chunk="5min", stations="CX.PB01",
                  workers=0, progress=False)
    clean = archive.pick_archive(sds, tmp_path / "clean", picker, **kwargs)
    out = tmp_path / "job"
    archive.pick_archive(sds, out, picker, **kwargs)
    files = sorted((out / "units").rglob("*.picks.csv"))
    assert len(files) == 4
    files[0].unlink()  # a deleted unit file
    files[1].write_text("not,a,pick,table\n1,2,3,4\n")  # a damaged one
    lines = (out / "manifest.jsonl").read_text().splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]  # a corrupt line in the middle
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")

    second = archive.pick_archive(sds, out, picker, **kwargs)
    assert second.exit_code == 0
    assert second.summary["units"]["processed_this_run"] == 3
    repairs = " | ".join(second.summary["repairs"])
    assert files[0].name in repairs and "is missing" in repairs
    assert files[1].name in repairs and "unreadable" in repairs
    assert "line 3 is corrupt" in repairs
    assert (out / "picks.csv").read_bytes() == (tmp_path / "clean" / "picks.csv").read_bytes()
    assert "Repairs on resume (3)" in (out / "report.md").read_text()
    assert clean.exit_code == 0


@pytest.mark.timeout(260)
def test_a_second_job_on_the_same_folder_is_refused_while_the_first_runs(tmp_path, sds, picker_weights):
    out = tmp_path / "job"
    lock = archive.JobLock(out).acquire()  # this process is "the first job"
    try:
        proc = subprocess.run([sys.executable, "-c", CONSOLE_SCRIPT, "pick", str(sds), "--out", str(out),
                               "--model", PICKER, "--weights", str(picker_weights), "--overwrite",
                               "--no-progress"], cwd=PROJECT_ROOT, env=_env(), capture_output=True,
                              text=True, timeout=220)
    finally:
        lock.release()
    assert proc.returncode == 2
    assert "another pick job (pid" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "run.json").exists()  # --overwrite deleted nothing of the first job


@pytest.mark.timeout(240)
def test_garbage_records_make_a_unit_done_with_errors_named_and_exit_1(tmp_path, sds, picker, caplog):
    root = tmp_path / "sds"
    for src in sds.rglob("CX.PB01..*.D.2014.121"):
        dst = root / src.relative_to(sds)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src)
    bad = root / "2014/CX/PB01/HHZ.D/CX.PB01..HHZ.D.2014.121"
    raw = bytearray(bad.read_bytes())
    bad.unlink()
    from obspy.io.mseed.util import get_record_information

    reclen = get_record_information(str(sds / "2014/CX/PB01/HHZ.D/CX.PB01..HHZ.D.2014.121"))["record_length"]
    middle = (len(raw) // reclen // 2) * reclen
    raw[middle: middle + 40 * reclen] = b"\xff" * (40 * reclen)
    bad.write_bytes(bytes(raw))
    report = archive.pick_archive(root, tmp_path / "out", picker, chunk="1d", workers=0, progress=False)
    s = report.summary
    assert s["units"]["done"] == 1 and s["units"]["done_with_errors"] == 1
    assert report.exit_code == 1
    errors = " ".join(s["done_with_errors"][0]["errors"])
    assert str(bad) in errors and "MiniSEED decoding warning" in errors
    assert len(report.picks()) > 0  # the readable records were picked
    # the flood of ObsPy warnings is one line naming the file, with a count
    named = [r for r in caplog.records if str(bad) in r.getMessage()]
    assert 1 <= len(named) <= 3
    assert not [r for r in caplog.records if "InternalMSEEDWarning" in r.name]


@pytest.mark.timeout(240)
def test_lower_case_channels_and_a_1ppm_rate_error_give_the_same_picks(tmp_path, picker):
    piece, start = _hour_piece()
    _write(piece, tmp_path / "plain" / "PB02.mseed")
    odd = piece.copy()
    for tr in odd:
        tr.stats.channel = tr.stats.channel.lower()
        tr.stats.sampling_rate = 100.0001
    _write(odd, tmp_path / "odd" / "PB02.mseed")
    kwargs = dict(chunk="15min", start=start, end=start + 900, workers=0, progress=False)
    plain = archive.pick_archive(str(tmp_path / "plain"), tmp_path / "o1", picker, **kwargs)
    odd_report = archive.pick_archive(str(tmp_path / "odd"), tmp_path / "o2", picker, **kwargs)
    assert odd_report.summary["units"]["done"] == 1 and len(plain.picks()) > 0
    assert not [n for w in odd_report.summary["warnings"] for n in w["notes"] if "resampled" in n]
    got, ref = odd_report.picks(), plain.picks()
    assert list(got.channel) == list(ref.channel)  # upper-cased
    np.testing.assert_allclose(got.time.astype("int64"), ref.time.astype("int64"), atol=0.011e9)


@pytest.mark.timeout(120)
def test_pick_table_columns_quakeflow_format_and_defaults(tmp_path, picker):
    piece, start = _hour_piece(600)
    _write(piece, tmp_path / "data" / "PB02.mseed")
    report = archive.pick_archive(str(tmp_path / "data"), tmp_path / "out", picker, chunk="10min",
                                  start=start, end=start + 600, output_format="quakeflow",
                                  polarity=True, progress=False)
    head = (tmp_path / "out" / "picks.quakeflow.csv").read_text().splitlines()
    assert head[0] == "station_id,phase_time,phase_score,phase_type,phase_amplitude,phase_polarity"
    full = (tmp_path / "out" / "picks.csv").read_text().splitlines()
    assert full[0].split(",") == archive.PICK_COLUMNS  # no index column
    first = dict(zip(full[0].split(","), full[1].split(",")))
    assert first["time"].endswith("Z") and "T" in first["time"]
    picks = report.picks()
    assert set(picks[picks.phase == "P"].channel) == {"HHZ"}
    assert set(picks[picks.phase == "S"].channel) <= {"HHN", "HHE"}
    assert (picks.amplitude > 0).all() and (picks.amplitude_unit == "counts").all()
    assert picks.snr.notna().all()
    assert set(picks.polarity) <= {"U", "D", ""}
    assert len(head) - 1 == len(picks)
    # defaults never oversubscribe: on 2 cores one worker per core once there is a station-day of
    # work per worker, in-process below that; OMP_NUM_THREADS respected
    assert archive.choose_parallelism(None, None, None, cores=2, omp="") == (0, 1)
    assert archive.choose_parallelism(None, None, None, cores=2, omp="", station_days=8) == (2, 1)
    assert archive.choose_parallelism(None, None, None, cores=2, omp="", station_days=1.5) == (0, 1)
    assert archive.choose_parallelism(None, None, None, cores=8, omp="", station_days=3.2) == (3, 1)
    assert archive.choose_parallelism(None, None, None, cores=2, omp="2", station_days=8) == (0, 2)
    assert archive.choose_parallelism(None, None, None, cores=8, omp="") == (8, 1)
    assert archive.choose_parallelism(None, None, None, cores=8, omp="4") == (2, 4)
    assert archive.choose_parallelism(2, None, None, cores=8, omp="") == (2, 4)
    for cores in (1, 2, 3, 4, 16):
        workers, threads = archive.choose_parallelism(None, None, None, cores=cores, omp="")
        assert max(workers, 1) * threads <= cores


# ------------------------------------------------------------------------------------------
# MC-dropout pick uncertainty (real demo traces, shipped FEQ3 weights)
# ------------------------------------------------------------------------------------------

DEMO_DATA = PROJECT_ROOT / "seisbench_feq" / "demo_data"


@pytest.mark.timeout(300)
def test_pick_uncertainty_is_finite_with_dropout_passes_and_nan_without(tmp_path):
    from seisbench_feq import FEQ3
    from seisbench_feq.models.annotate import pick_uncertainties

    torch.set_num_threads(1)
    model = FEQ3.from_pretrained("default")
    stream = obspy.read(str(DEMO_DATA / "NC.CCOB.mseed"))
    picks = list(model.classify(stream).picks)
    modes = [m.training for m in model.modules()]
    assert {p.phase for p in picks} == {"P", "S"}
    values = pick_uncertainties(model, stream, picks, 6)
    assert all(np.isfinite(v) and 0 <= v < 2 for v in values)
    assert any(v > 0 for v in values)  # the passes differ: the dropouts were really sampled
    assert [p.uncertainty for p in picks] == values
    assert pick_uncertainties(model, stream, picks, 6) == values  # seeded: reproducible
    assert all(np.isnan(v) for v in pick_uncertainties(model, stream, picks, 0))
    assert [m.training for m in model.modules()] == modes  # train/eval states restored
    with pytest.raises(ValueError, match="uncertainty_samples=1"):
        pick_uncertainties(model, stream, picks, 1)

    # the CLI fills the column; without the option it stays empty
    for samples, out in ((4, tmp_path / "with"), (0, tmp_path / "without")):
        rc = cli_main(["pick", str(DEMO_DATA / "NC.CCOB.mseed"), "--out", str(out), "--model", "feq3",
                       "--workers", "0", "--torch-threads", "1", "--no-progress",
                       "--uncertainty-samples", str(samples), "--plot-detections", "1" if samples else "0"])
        assert rc == 0
        figures = list((out / "figures").glob("NC.CCOB*.png"))
        assert len(figures) == (1 if samples else 0) and all(f.stat().st_size > 10_000 for f in figures)
        table = _picks(out / "picks.csv")
        assert len(table) >= 2
        if samples:
            assert table["uncertainty_s"].notna().all() and (table["uncertainty_s"] >= 0).all()
        else:
            assert table["uncertainty_s"].isna().all()
