"""Training: STEAD offline conversion, the augmentation pipeline, the loss, and tiny CLI runs.

The STEAD fixture is written in STEAD's original layout (merged.csv + merged.hdf5 with (6000, 3)
E, N, Z datasets and attributes) from real NCEDC windows (earthquakes) and real pre-P noise.
"""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import shared_path, small_distillation_data

from seisbench_feq.data import load_ncedc, load_ncedc_noise, split_by_station

pytestmark = pytest.mark.timeout(120)

STEAD_COLUMNS = [
    "network_code", "receiver_code", "receiver_type", "receiver_latitude", "receiver_longitude",
    "receiver_elevation_m", "p_arrival_sample", "p_status", "p_weight", "p_travel_sec",
    "s_arrival_sample", "s_status", "s_weight", "source_id", "source_origin_time",
    "source_origin_uncertainty_sec", "source_latitude", "source_longitude", "source_error_sec",
    "source_gap_deg", "source_horizontal_uncertainty_km", "source_depth_km",
    "source_depth_uncertainty_km", "source_magnitude", "source_magnitude_type",
    "source_magnitude_author", "source_mechanism_strike_dip_rake", "source_distance_deg",
    "source_distance_km", "back_azimuth_deg", "snr_db", "coda_end_sample", "trace_start_time",
    "trace_category", "trace_name",
]  # fmt: skip


def write_stead_fixture(folder, n_events=8, n_noise=4):
    """merged.csv + merged.hdf5 as STEAD ships them, from real NCEDC data."""
    root = shared_path("data", "ncedc")
    waveforms, meta = load_ncedc(root)
    noise, noise_meta = load_ncedc_noise(root, pad_to=6000)
    rows, arrays = [], {}
    for i in range(n_events):
        m = meta.iloc[i]
        net, sta = m["station"].split(".")
        name = f"{sta}.{net}_2020010100000{i}_EV"
        row = dict.fromkeys(STEAD_COLUMNS, None)
        row.update(
            network_code=net, receiver_code=sta, receiver_type=m["channels"][:2], receiver_latitude=37.0,
            receiver_longitude=-122.0, receiver_elevation_m=100.0, p_arrival_sample=float(m["p_sample"]),
            p_status="manual", p_weight=0.5, p_travel_sec=5.0, s_arrival_sample=float(m["s_sample"]),
            s_status="manual", s_weight=0.5, source_id=str(1000 + i), source_magnitude=2.0,
            source_magnitude_type="md", source_distance_km=30.0, snr_db="[20. 20. 20.]",
            coda_end_sample=f"[[{m['s_sample'] + 500:.1f}]]", trace_start_time="2020-01-01 00:00:00",
            trace_category="earthquake_local", trace_name=name,
        )  # fmt: skip
        rows.append(row)
        arrays[name] = waveforms[i][::-1].T  # STEAD stores (6000, 3) in E, N, Z columns
    for i in range(n_noise):
        m = noise_meta.iloc[i]
        net, sta = m["station"].split(".")
        name = f"{sta}.{net}_2020010200000{i}_NO"
        row = dict.fromkeys(STEAD_COLUMNS, None)
        row.update(
            network_code=net, receiver_code=sta, receiver_type=m["channels"][:2],
            trace_start_time="2020-01-02 00:00:00", trace_category="noise", trace_name=name,
        )  # fmt: skip
        rows.append(row)
        arrays[name] = noise[i][::-1].T
    frame = pd.DataFrame(rows, columns=STEAD_COLUMNS)
    frame.to_csv(folder / "merged.csv", index=False)
    with h5py.File(folder / "merged.hdf5", "w") as f:
        group = f.create_group("data")
        for row in rows:
            dset = group.create_dataset(row["trace_name"], data=arrays[row["trace_name"]].astype(np.float32))
            for key, value in row.items():
                if value is not None:
                    dset.attrs[key] = value
    return frame, arrays


def original_name(row):
    """STEAD's trace name: SeisBench's writer renames bucketed traces and keeps the original."""
    original = row.get("trace_name_original")
    return original if isinstance(original, str) else row["trace_name"]


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A fresh SeisBench dataset cache per test (STEAD is converted into it)."""
    import seisbench

    cache = tmp_path / "sbcache"
    monkeypatch.setattr(seisbench, "cache_root", cache)
    monkeypatch.setattr(seisbench, "cache_data_root", cache / "datasets")
    return cache


@pytest.fixture
def stead_source(tmp_path):
    folder = tmp_path / "stead_source"
    folder.mkdir()
    frame, arrays = write_stead_fixture(folder)
    return folder, frame, arrays


def test_stead_converts_offline_from_original_layout(stead_source, isolated_cache):
    from seisbench_feq.training import ensure_stead

    folder, frame, arrays = stead_source
    dataset = ensure_stead(folder)
    assert len(dataset) == len(frame)
    assert (isolated_cache / "datasets" / "stead" / "metadata.csv").is_file()
    assert set(dataset.metadata["split"]) <= {"train", "dev", "test"}
    for i in (0, len(frame) - 1):
        name = original_name(dataset.metadata.iloc[i])
        waveform, meta = dataset.get_sample(i)
        raw = arrays[name]
        np.testing.assert_allclose(waveform[0], raw[:, 2], rtol=1e-6)  # Z row <- STEAD column 2
        np.testing.assert_allclose(waveform[2], raw[:, 0], rtol=1e-6)  # E row <- STEAD column 0
        source_row = frame.set_index("trace_name").loc[name]
        if source_row["trace_category"] == "noise":
            assert np.isnan(meta["trace_p_arrival_sample"])
        else:
            assert meta["trace_p_arrival_sample"] == source_row["p_arrival_sample"]
    # a user-supplied EqT test list decides the test split
    test_npy = folder / "test.npy"
    chosen = frame["trace_name"].iloc[[1, 9]].to_numpy(dtype="U")
    np.save(test_npy, chosen)
    import shutil

    shutil.rmtree(isolated_cache / "datasets" / "stead")
    dataset = ensure_stead(folder, test_npy=test_npy)
    test_rows = dataset.metadata[dataset.metadata["split"] == "test"]
    assert {original_name(row) for _, row in test_rows.iterrows()} == set(chosen)


def test_stead_missing_files_named(tmp_path, isolated_cache):
    from seisbench_feq.training import ensure_stead

    with pytest.raises(FileNotFoundError, match="merged.csv"):
        ensure_stead(tmp_path)


def test_pipeline_labels_and_augmentations(stead_source, isolated_cache):
    import seisbench.generate as sbg

    from seisbench_feq.training import augmentation_pipeline, ensure_stead, phase_columns

    folder, frame, _ = stead_source
    dataset = ensure_stead(folder)
    phase_dict = phase_columns(dataset.metadata.columns)
    assert set(phase_dict.values()) == {"P", "S"}

    # evaluation pipeline: no shift, labels where the analyst put them
    gen = sbg.GenericGenerator(dataset)
    gen.add_augmentations(augmentation_pipeline(6000, phase_dict, train=False))
    for i in range(len(dataset)):
        sample = gen[i]
        assert sample["X"].shape == (3, 6000) and sample["X"].dtype == np.float32
        assert sample["y"].shape == (3, 6000) and sample["y"].dtype == np.float32
        meta = dataset.metadata.iloc[i]
        det, p, s = sample["y"]
        if meta["trace_category"] == "noise":
            assert not sample["y"].any()
            continue
        p_at, s_at = int(meta["trace_p_arrival_sample"]), int(meta["trace_s_arrival_sample"])
        assert abs(int(np.argmax(p)) - p_at) <= 1 and p.max() > 0.99
        assert abs(int(np.argmax(s)) - s_at) <= 1
        assert p[p_at + 10] == pytest.approx(np.exp(-0.5), rel=0.05)  # Gaussian, sigma 10 samples
        end = int(s_at + 1.4 * (s_at - p_at))
        assert det[p_at + 1 : end - 1].min() == 1 and det[: p_at - 1].max() == 0 and det[end + 1 :].max() == 0
        np.testing.assert_allclose(sample["X"].mean(axis=-1), 0, atol=1e-2 * np.abs(sample["X"]).max())

    # training pipeline: shapes hold, labels stay in [0, 1], windows move, augmentations act
    np.random.seed(0)
    gen = sbg.GenericGenerator(dataset)
    gen.add_augmentations(augmentation_pipeline(6000, phase_dict, train=True))
    p_positions, zero_rows = set(), 0
    for _ in range(6):
        for i in np.flatnonzero(dataset.metadata["trace_category"] != "noise"):
            sample = gen[int(i)]
            assert sample["X"].shape == (3, 6000) and sample["y"].shape == (3, 6000)
            assert np.isfinite(sample["X"]).all()
            assert sample["y"].min() >= 0 and sample["y"].max() <= 1
            if sample["y"][1].max() > 0.9:
                p_positions.add(int(np.argmax(sample["y"][1])))
            zero_rows += int((~sample["X"].any(axis=-1)).sum())
    assert len(p_positions) > 10  # window shift
    assert zero_rows > 0  # channel drop (and the vertical-only traces)


def test_targets_combine_teacher_and_analyst():
    from seisbench_feq.training import CombineTargets, SecondEvent

    analyst = np.zeros((3, 100), dtype=np.float32)
    analyst[1, 50] = 1.0
    analyst[:, 90:] = np.nan  # unknown
    teacher = np.full((3, 100), 0.2, dtype=np.float32)
    teacher[:, :10] = np.nan  # teacher blinded
    state = {"analyst": (analyst, None), "teacher": (teacher, None)}
    CombineTargets(analyst_weight=0.25)(state)
    y = state["y"][0]
    assert y[1, 50] == pytest.approx(0.25 * 1 + 0.75 * 0.2)
    assert y[0, 5] == 0  # analyst only
    assert y[0, 95] == pytest.approx(0.2)  # teacher only
    state = {"analyst": (np.full((3, 10), np.nan, dtype=np.float32), None)}
    CombineTargets()(state)
    assert np.isnan(state["y"][0]).all()  # neither known: masked in the loss

    x = np.zeros((3, 1000), dtype=np.float32)
    x[:, 100] = 1.0
    y = np.zeros((3, 1000), dtype=np.float32)
    y[1, 100] = 1.0
    state = {"X": (x, {}), "y": (y, None)}
    np.random.seed(1)
    SecondEvent()(state)
    x2, y2 = state["X"][0], state["y"][0]
    assert (x2[0] > 0).sum() == 2 and 0.1 <= np.sort(x2[0])[-2] <= 1.0  # a weaker copy
    assert (y2[1] == 1).sum() == 2


def test_loss_sees_model_normalisation_and_masks_nan():
    from seisbench_feq import FEQ3
    from seisbench_feq.training import masked_bce, picker_loss

    torch.manual_seed(0)
    model = FEQ3().eval()
    x = torch.randn(2, 3, 6000)
    y = torch.rand(2, 3, 6000)
    loss, parts = picker_loss(model, x, y)
    loss_scaled, _ = picker_loss(model, 1000 * x + 50, y)  # counts scale and offset do not matter
    assert torch.isfinite(loss) and len(parts) == 3
    assert loss_scaled.item() == pytest.approx(loss.item(), rel=1e-4)

    pred = torch.zeros(1, 4)
    target = torch.tensor([[1.0, float("nan"), 0.0, float("nan")]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(pred[:, [0, 2]], target[:, [0, 2]])
    assert masked_bce(pred, target).item() == pytest.approx(expected.item())
    # pos_weight scales each known sample by 1 + w * target (picks weigh more, NaN still masked)
    soft = torch.tensor([[0.5, float("nan"), 0.0, 1.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(pred, torch.nan_to_num(soft), reduction="none")
    weighted = (bce * torch.tensor([[1 + 10 * 0.5, 0, 1, 1 + 10]])).sum() / 3
    assert masked_bce(pred, soft, pos_weight=10).item() == pytest.approx(weighted.item())


@pytest.mark.timeout(600)  # three short trainings (first, --resume, --init)
def test_cli_train_on_stead_fixture(stead_source, isolated_cache, tmp_path):
    from seisbench_feq import FEQ3
    from seisbench_feq.cli import main

    folder, _, _ = stead_source
    out, weights = tmp_path / "run", tmp_path / "weights"
    argv = [
        "train", "--model", "feq3", "--dataset", "stead", "--stead-basepath", str(folder),
        "--out", str(out), "--batch-size", "2", "--steps-per-epoch", "1", "--max-steps", "2",
        "--save-weights", str(weights),
    ]  # fmt: skip
    assert main(argv) == 0
    assert (out / "checkpoints" / "last.ckpt").is_file()
    metrics = pd.concat(pd.read_csv(p) for p in out.glob("logs/version_*/metrics.csv"))
    assert np.isfinite(metrics["train_loss_epoch"].dropna()).all() and metrics["val_loss"].notna().any()
    info = json.loads((weights / "default.json.v1").read_text())
    assert info["version"] == "1" and info["seisbench_requirement"] == "0.10.0"
    assert info["training"]["command"].startswith("seisbench-feq train --model feq3 --dataset stead")
    assert info["training"]["steps"] == 2 and info["training"]["git"]
    model = FEQ3.load(weights / "default", version_str="1")
    assert model.in_samples == 6000 and model.highpass == 1.0  # --highpass default, kept with the weights
    trained = torch.load(weights / "default.pt.v1")
    assert any(not torch.equal(trained[k], v) for k, v in FEQ3().state_dict().items() if v.is_floating_point())

    # --resume continues from last.ckpt, loaded as data only (weights_only=True), and keeps the commands
    resume = argv[:-2] + ["--max-steps", "3", "--resume"]  # argparse keeps the last --max-steps
    assert main(resume) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["steps"] == 3 and len(summary["commands"]) == 2
    assert "--max-steps 3" in summary["commands"][1] and "--resume" in summary["commands"][1]

    # A continuation records the chain of commands that led to its weights.
    argv2 = argv[:-2] + [  # a repeated --out: argparse keeps the last
        "--out", str(tmp_path / "run2"), "--init", str(weights / "default"), "--highpass", "0",
        "--save-weights", str(tmp_path / "weights2"),
    ]  # fmt: skip
    assert main(argv2) == 0
    info2 = json.loads((tmp_path / "weights2" / "default.json.v1").read_text())
    assert [h["command"] for h in info2["history"]] == [info["training"]["command"]]
    assert "--init" in info2["training"]["command"]
    assert FEQ3.load(tmp_path / "weights2" / "default", version_str="1").highpass is None


def test_cli_distillation_keeps_test_stations_out(tmp_path, monkeypatch, capsys):
    """Distillation on real CX data + NCEDC with a random teacher: held-out stations are never read."""
    import seisbench_feq.data as data
    from seisbench_feq.cli import main

    cx, ncedc, subset = small_distillation_data(tmp_path, 24)
    stations = subset["fname"].str.split("_").str[:2].str.join(".")
    test_stations = set(stations[split_by_station(pd.DataFrame({"station": stations})) == "test"])
    assert test_stations

    opened = []
    original = data.read_ncedc_npz
    monkeypatch.setattr(data, "read_ncedc_npz", lambda p: opened.append(p.name) or original(p))
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = [
        "train", "--model", "leqnet", "--distill", "--teacher", "random-eqtransformer",
        "--cx-root", str(cx), "--ncedc-root", str(ncedc), "--cache-dir", str(cache), "--out", str(out),
        "--batch-size", "2", "--steps-per-epoch", "1", "--max-steps", "1", "--save-weights", str(tmp_path / "w"),
    ]  # fmt: skip
    assert main(argv) == 0
    opened_stations = {".".join(n.split("_")[:2]) for n in opened}
    assert opened and opened_stations.isdisjoint(test_stations)
    info = json.loads((tmp_path / "w" / "default.json.v1").read_text())
    assert set(info["data"]["ncedc_test_stations_held_out"]) == test_stations
    assert set(info["data"]["ncedc_train_stations"]).isdisjoint(test_stations)
    assert info["data"]["cx_stations"] == ["CX.PB01"]
    cached = sorted(cache.rglob("*.npy"))
    assert cached
    stamps = [p.stat().st_mtime_ns for p in cached]
    # a second run reuses the teacher cache instead of recomputing
    assert main(argv[:-2] + ["--out", str(tmp_path / "run2"), "--source-shares", "cx_random=1,ncedc=3"]) == 0
    assert [p.stat().st_mtime_ns for p in sorted(cache.rglob("*.npy"))] == stamps
    from seisbench_feq.training import build_distillation_sources

    source, weights, _, _ = build_distillation_sources("random-eqtransformer", str(cx), str(ncedc), cache,
                                                       shares={"cx_random": 1, "ncedc": 3})
    by_kind = pd.Series(weights).groupby(source.metadata["kind"].to_numpy()).sum()
    assert by_kind.get("cx_event", 0) == 0 and by_kind["ncedc"] == pytest.approx(0.75)
    with pytest.raises(SystemExit):
        main(argv[:-2] + ["--source-shares", "ncedc"])  # not KIND=SHARE

    # the validation pick F1 of both runs, read back from their real CSV logs and plotted
    from seisbench_feq.training import validation_history

    history = validation_history(out)
    assert len(history) >= 1 and history["windows_seen"].iloc[-1] == 2  # 1 step x batch 2
    assert history[["val_f1_P", "val_f1_S"]].apply(lambda c: c.between(0, 1)).all().all()
    assert history[["val_mae_P", "val_mae_S"]].apply(lambda c: c.between(0, 0.5)).all().all()
    png = tmp_path / "curves.png"
    assert main(["train-report", str(out), str(tmp_path / "run2"), "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "leqnet (run)" in printed and "leqnet (run2)" in printed and "best P F1" in printed
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        validation_history(tmp_path / "cx")


def test_real_noise_from_training_data_only(tmp_path):
    """The real-noise pool holds pre-P noise of NCEDC train traces and quiet continuous stretches only;
    RealNoise adds another station's noise at the stated level and leaves the labels alone."""
    from seisbench_feq.data import ArrayWaveformSource, is_validation_station
    from seisbench_feq.training import RealNoise, build_distillation_sources, real_noise_pool

    cx, ncedc, subset = small_distillation_data(tmp_path, 24)
    source, _, val_source, info = build_distillation_sources("random-eqtransformer", None, str(ncedc), tmp_path / "c")
    pool = real_noise_pool(source)
    train_stations = set(info["ncedc_train_stations"])
    assert len(pool) == len(source) and {station for station, _ in pool} == train_stations
    assert not any(is_validation_station(station, 0) for station, _ in pool)
    for (station, piece), item in zip(pool, source.metadata.itertuples()):
        assert station == item.station and piece.shape == (3, int(item.trace_p_arrival_sample) - 100)
        np.testing.assert_array_equal(piece, source.arrays[item.array][:3, : piece.shape[1]])

    # continuous items: only half-window stretches where every teacher row stays quiet
    quiet, loud = np.zeros((6, 24000), np.float32), np.zeros((6, 24000), np.float32)
    quiet[:3] = loud[:3] = np.random.default_rng(0).normal(size=(3, 24000))
    loud[4, 13000] = 0.9  # a teacher P label in the second stretch
    items = pd.DataFrame(
        [{"array": a, "station": f"XX.S{a}", "start": s, "stop": s + 12000, "kind": "cx_random"}
         for a in (0, 1) for s in (0, 3000, 6000, 9000, 12000)]
    )  # fmt: skip
    pieces = real_noise_pool(ArrayWaveformSource([quiet, loud], items))
    assert [p.shape for _, p in pieces] == [(3, 3000)] * 9 and sum(s == "XX.S1" for s, _ in pieces) == 4

    x, meta = val_source.get_sample(0)
    x = x[:3] - x[:3].mean(axis=-1, keepdims=True)
    np.random.seed(1)
    for _ in range(20):
        state = {"X": (x.copy(), meta), "y": (np.ones((3, x.shape[1])), None)}
        RealNoise(pool)(state)
        added = state["X"][0] - x
        ratio = np.sqrt(np.mean(added**2)) / np.abs(x).max()
        assert 10**-2.5 * 0.999 <= ratio <= 10**-1 * 1.001 and state["X"][0].shape == x.shape
        assert (state["y"][0] == 1).all()
    with pytest.raises(ValueError, match="non-empty"):
        RealNoise([])


def test_ema_weights_are_validated_checkpointed_and_exported(tmp_path):
    """--ema-decay: checkpoints and exported weights hold the moving average, not the last raw weights."""
    from seisbench_feq import LEQNet
    from seisbench_feq.cli import main

    cx, ncedc, _ = small_distillation_data(tmp_path, 24)
    argv = [
        "train", "--model", "leqnet", "--distill", "--teacher", "random-eqtransformer", "--cx-root", str(cx),
        "--ncedc-root", str(ncedc), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
        "--batch-size", "2", "--steps-per-epoch", "3", "--max-steps", "3", "--lr", "0.01", "--ema-decay", "0.5",
        "--save-weights", str(tmp_path / "w"),
    ]  # fmt: skip
    assert main(argv) == 0
    (best,) = (tmp_path / "run" / "checkpoints").glob("best-*.ckpt")
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    key = "model.decoders.1.head.weight"
    assert not torch.equal(averaged[key], raw[key])
    exported = LEQNet.load(tmp_path / "w" / "default", version_str="1").state_dict()
    assert torch.equal(exported[key[len("model."):]], averaged[key])
    info = json.loads((tmp_path / "w" / "default.json.v1").read_text())
    assert info["training"]["recipe"]["ema_decay"] == 0.5
    with pytest.raises(ValueError, match="ema_decay"):
        main(argv[:-2] + ["--ema-decay", "1"])


def test_warm_start_copies_matching_tensors(tmp_path):
    """FEQ2 starts from FEQ3 weights: all but the BiLSTM -> BiGRU stack are copied."""
    from seisbench_feq import FEQ2, FEQ3
    from seisbench_feq.training import warm_start

    torch.manual_seed(0)
    source = FEQ3()
    source.save(tmp_path / "feq3", version_str="1")
    student = FEQ2()
    info = warm_start(student, str(tmp_path / "feq3"))
    assert info["tensors_random"] and all(k.startswith("rnn_stack.blocks.0.rnn.") for k in info["tensors_random"])
    src, dst = source.state_dict(), student.state_dict()
    assert torch.equal(dst["decoders.1.head.weight"], src["decoders.1.head.weight"])
    assert torch.equal(dst["pick_rnns.0.weight_ih_l0"], src["pick_rnns.0.weight_ih_l0"])  # both GRU
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        warm_start(student, str(tmp_path / "nothing_here"))


def test_teacher_pick_targets_sharpen_teacher_peaks():
    from seisbench_feq.training import teacher_pick_targets

    probs = np.zeros((3, 2000), dtype=np.float32)
    probs[0, 400:900] = 0.8
    probs[1] = 0.45 * np.exp(-0.5 * ((np.arange(2000) - 500) / 25.0) ** 2)  # a wide, low teacher P
    probs[2, 700:710] = 0.2  # below the 0.3 trigger: no S pick
    probs[:, :100] = np.nan  # blinded edge
    out = teacher_pick_targets(probs)
    assert int(np.nanargmax(out[1])) == 500 and np.nanmax(out[1]) == pytest.approx(1.0)
    assert out[1, 510] == pytest.approx(np.exp(-0.5), rel=1e-3)  # sigma 10 samples
    assert np.nanmax(out[2]) == 0
    np.testing.assert_array_equal(out[0, 100:], probs[0, 100:])  # detection stays soft
    assert np.isnan(out[:, :100]).all() and not np.isnan(out[:, 100:]).any()


def test_train_takes_keyword_arguments_only_from_its_defaults(tmp_path):
    from seisbench_feq.training import TRAIN_DEFAULTS, train

    with pytest.raises(TypeError, match="unknown options"):
        train(modle="feq3")
    with pytest.raises(ValueError, match="--dataset"):
        train(out=str(tmp_path / "run"))  # neither a dataset nor distillation
    assert TRAIN_DEFAULTS["teacher_grid_shifts"] == (0,) and TRAIN_DEFAULTS["select_on"] == "loss"
    with pytest.raises(ValueError, match="noise_rate"):
        train(dataset="stead", noise_rate=1.5, out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="pick_sigma"):
        train(dataset="stead", pick_sigma=0, out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="source_shares"):
        train(dataset="stead", source_shares={"stead": 1.0}, out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="select_on='score' needs distill"):
        train(dataset="stead", select_on="score", out=str(tmp_path / "run"))


def test_pick_sigma_sets_the_label_width():
    from seisbench_feq.training import AnalystTargets

    widths = []
    for sigma in (5, 10):
        state = {"X": (np.zeros((3, 1000)), {"trace_p_arrival_sample": 300, "trace_s_arrival_sample": 600})}
        AnalystTargets({"trace_p_arrival_sample": "P", "trace_s_arrival_sample": "S"}, sigma=sigma)(state)
        p = state["analyst"][0][1]
        assert p.argmax() == 300 and p.max() == pytest.approx(1.0)
        widths.append(int((p > 0.5).sum()))
    assert widths[0] < widths[1] and abs(widths[1] - 2 * widths[0]) <= 2


class _GridLockedTeacher:
    """A teacher that snaps one arrival to a whole second of its window grid (it moves with the
    stream start), keeps another in place, and shows an artefact only on the unshifted grid."""

    labels = ["Detection", "P", "S"]

    def __init__(self, start, stable_s, snapped_s, artefact_s):
        self.start, self.stable, self.snapped, self.artefact = start, stable_s, snapped_s, artefact_s

    def annotate(self, stream):
        import obspy

        begin = stream[0].stats.starttime
        n = stream[0].stats.npts
        t = np.arange(n) / 100.0 + (begin - self.start)  # seconds from the unshifted start

        def bump(at):
            return 0.9 * np.exp(-0.5 * ((t - at) / 0.1) ** 2)

        p = bump(self.stable) + bump((begin - self.start) + round(self.snapped - (begin - self.start)))
        if abs(begin - self.start) < 1e-6:
            p = p + bump(self.artefact)
        header = {"network": "CX", "station": "PB01", "sampling_rate": 100.0, "starttime": begin}
        rows = {"Detection": np.full(n, 0.8), "P": p, "S": np.zeros(n)}
        return obspy.Stream([obspy.Trace(v.astype(np.float32), {**header, "channel": f"X_{k}"}) for k, v in rows.items()])


def test_teacher_grid_rules_keep_arrivals_and_drop_artefacts():
    import obspy

    from seisbench_feq.training import teacher_pick_targets, teacher_probabilities

    t0 = obspy.UTCDateTime("2014-05-01T00:00:00")
    teacher = _GridLockedTeacher(t0, stable_s=100.37, snapped_s=200.44, artefact_s=250.0)
    data = np.zeros((3, 30000), np.float32)
    shifts = (0, 25, 50, 75)
    single = teacher_pick_targets(teacher_probabilities(teacher, data, "CX.PB01", t0))
    averaged = teacher_pick_targets(teacher_probabilities(teacher, data, "CX.PB01", t0, grid_shifts=shifts))
    consensus = teacher_probabilities(teacher, data, "CX.PB01", t0, grid_shifts=shifts, grid_rule="consensus")

    def peaks(row):
        from scipy.signal import find_peaks

        return list(find_peaks(np.nan_to_num(row), height=0.5)[0])

    assert peaks(single[1]) == [10037, 20000, 25000]  # one grid: the snapped pick and the artefact
    assert peaks(averaged[1]) == [10037]  # averaging drops the artefact, but also the snapped arrival
    found = peaks(consensus[1])
    assert len(found) == 2 and found[0] == 10037 and abs(found[1] - 20044) <= 10  # median of the grids
    assert np.nanmax(consensus[1]) == pytest.approx(1.0) and not np.nanmax(consensus[2])
    np.testing.assert_allclose(consensus[0][~np.isnan(consensus[0])], 0.8, rtol=1e-6)  # detection averaged
    with pytest.raises(ValueError, match="grid_rule"):
        teacher_probabilities(teacher, data, "CX.PB01", t0, grid_rule="median")


def test_teacher_ps_conflicts_become_unknown():
    from seisbench_feq.training.distillation import mask_ps_conflicts

    n = 3000
    t = np.arange(n)
    targets = np.zeros((3, n), dtype=np.float32)
    targets[0] = 0.5
    for row, peak in ((1, 500), (2, 1500), (1, 2000), (2, 2030)):  # a clean pair, then one arrival labelled twice
        targets[row] = np.maximum(targets[row], np.exp(-0.5 * ((t - peak) / 10) ** 2))
    masked, count = mask_ps_conflicts(targets)
    assert count == 1
    assert np.isnan(masked[1:, 1930:2131]).all() and not np.isnan(masked[1:, :1930]).any()
    np.testing.assert_array_equal(masked[0], targets[0])  # detection untouched
    np.testing.assert_array_equal(masked[1:, :1900], targets[1:, :1900])
    assert mask_ps_conflicts(targets[:, :1800])[1] == 0


def test_teacher_labels_of_arrivals_that_do_not_show_become_unknown():
    from seisbench_feq.training.distillation import mask_weak_teacher_picks

    rng = np.random.default_rng(1)
    n = 9000
    data = rng.normal(0, 1, (3, n))
    data[0, 3000:3300] += 8 * np.sin(2 * np.pi * 8 * np.arange(300) / 100)  # a P at sample 3000 (Z)
    data[1, 4500:4800] += 8 * np.sin(2 * np.pi * 5 * np.arange(300) / 100)  # its S at 4500 (N)
    t = np.arange(n)
    targets = np.zeros((3, n), dtype=np.float32)
    targets[0] = 0.7
    for row, peak in ((1, 3000), (2, 4500), (1, 6500), (2, 7500), (1, 200)):  # real, real, noise, noise, edge
        targets[row] = np.maximum(targets[row], np.exp(-0.5 * ((t - peak) / 10) ** 2))
    masked, count = mask_weak_teacher_picks(targets, data, min_snr=2.0)
    assert count == 2
    assert np.isnan(masked[1, 6400:6601]).all() and np.isnan(masked[2, 7400:7601]).all()
    assert not np.isnan(masked[2, 6400:6601]).any() and not np.isnan(masked[1, 7400:7601]).any()
    keep = np.ones(n, bool)
    keep[6400:7601] = False
    np.testing.assert_array_equal(masked[:, keep], targets[:, keep])  # the real pair and the edge label stay
    np.testing.assert_array_equal(masked[0], targets[0])


@pytest.mark.timeout(600)
def test_continuous_validation_tail_reference_and_agreement(tmp_path):
    """The continuous validation tail is the part training never sees, its reference is cached as
    CSV (never pickled) and re-read identically, and the agreement score is 1 against the model's
    own picks and 0 against picks 2 s away."""
    import obspy

    from seisbench_feq.loading import load_model
    from seisbench_feq.training import VAL_FRACTION, ContinuousValidation, continuous_validation

    stream = obspy.read(str(shared_path("data", "cx_continuous", "CX_20140401", "CX.PB01..HH.mseed")))
    t0 = stream[0].stats.starttime
    cx = tmp_path / "cx"
    cx.mkdir()
    stream.slice(t0, t0 + 1200).write(str(cx / "CX.PB01.mseed"), format="MSEED")
    cache = tmp_path / "cache"
    tail = continuous_validation(cx, "random-eqtransformer", cache_dir=cache, shifts=2)
    (name, st), = tail.streams.items()
    assert st[0].stats.npts == pytest.approx(120001 * VAL_FRACTION, abs=2)
    assert abs(st[0].stats.starttime - (t0 + 1200 * (1 - VAL_FRACTION))) < 0.02
    (csv,) = cache.glob("continuous_validation_reference_*.csv")
    again = continuous_validation(cx, "random-eqtransformer", cache_dir=cache, shifts=2)
    assert list(cache.iterdir()) == [csv]
    assert again.reference[["trace_id", "phase"]].equals(tail.reference[["trace_id", "phase"]])
    assert [abs(a - b) < 1e-5 for a, b in zip(again.reference["time"], tail.reference["time"])] == [True] * len(tail.reference)
    assert "snr" not in pd.read_csv(csv).columns  # recomputed from the data, not cached
    np.testing.assert_allclose(again.reference["snr"], tail.reference["snr"])
    assert tail.reference["snr"].notna().any()

    feq3 = load_model("feq3")
    whole = {"hour": stream.slice(t0, t0 + 1200)}
    from seisbench_feq.evaluation import continuous

    own = continuous.classify_picks(feq3, whole["hour"], "reference", "hour")
    assert set(own["phase"]) == {"P", "S"}
    assert ContinuousValidation(whole, own).score(feq3)["continuous_mean_f1"] == 1.0
    moved = own.assign(time=[t + 2.0 for t in own["time"]])
    score = ContinuousValidation(whole, moved).score(feq3)
    assert score["continuous_mean_f1"] == 0.0 and score["cont_P_matched"] == 0.0


def test_derived_weights_keep_the_source_records(tmp_path):
    """Weights derived from shipped ones (re-initialised heads, averages) keep their training records."""
    from pathlib import Path

    from seisbench_feq import FEQ3
    from seisbench_feq.training.run import save_derived_weights

    source = str(Path(__file__).parents[1] / "seisbench_feq" / "weights" / "feq3" / "default")
    model = FEQ3.load(source, version_str="1")
    save_derived_weights(model, source, str(tmp_path / "derived" / "default"), "a note")
    records = json.loads(Path(source + ".json.v1").read_text())
    derived = json.loads((tmp_path / "derived" / "default.json.v1").read_text())
    assert derived["history"] == records["history"] and derived["data"] == records["data"]
    assert derived["training"]["then"] == "a note"
    assert derived["training"]["command"] == records["training"]["command"]
    reloaded = FEQ3.load(str(tmp_path / "derived" / "default"), version_str="1")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
