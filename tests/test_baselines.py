"""The earlier designs as baselines: layer sizes, a few training steps on real windows, save / load
round trips, ``classify`` on a real stream, registration and evaluation rows."""

import json
from pathlib import Path

import numpy as np
import obspy
import pytest
import torch
from conftest import shared_path, small_distillation_data

from seisbench_feq.baselines import (
    BASELINES,
    CBA,
    DecisionTreeDetector,
    EQTransformerGRU,
    MissingWeightsError,
    SimpleCNN,
    SimpleCNNFlat,
)
from seisbench_feq.models import torch_param_count

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("one_torch_thread")]

DEMO = Path(__file__).resolve().parents[1] / "seisbench_feq" / "demo_data"
NETWORKS = {"cba": CBA, "eqt-gru": EQTransformerGRU, "simple-cnn": SimpleCNN, "simple-cnn-flat": SimpleCNNFlat}


@pytest.fixture(scope="module")
def real_windows():
    """12 NCEDC windows (counts, ZNE) with (detection, P, S) analyst targets, and 4 pre-P noise windows."""
    from seisbench_feq.data import load_ncedc, load_ncedc_noise

    root = shared_path("data", "ncedc")
    waveforms, meta = load_ncedc(root, offset_seed=0)
    waveforms, meta = waveforms[:12], meta.iloc[:12]
    t = np.arange(waveforms.shape[-1])
    targets = np.zeros((len(meta), 3, len(t)), np.float32)
    for i, (p, s) in enumerate(zip(meta["p_sample"], meta["s_sample"])):
        targets[i, 0] = (t >= p) & (t <= s + 0.4 * (s - p))
        targets[i, 1] = np.exp(-0.5 * ((t - p) / 10) ** 2)
        targets[i, 2] = np.exp(-0.5 * ((t - s) / 10) ** 2)
    noise, _ = load_ncedc_noise(root, pad_to=6000)
    return waveforms.astype(np.float32), targets, noise[:4].astype(np.float32)


def test_layer_sizes_and_parameter_counts():
    assert torch_param_count(SimpleCNN()) == 3537  # as published
    assert torch_param_count(SimpleCNNFlat()) == 3408 + 8999 * 128 + 1
    cba, gru = CBA(), EQTransformerGRU()
    assert torch_param_count(cba) == 365_493 and torch_param_count(gru) == 367_223
    assert not hasattr(cba, "pick_lstms")  # no pick-branch recurrent layer
    assert all(isinstance(block.lstm, torch.nn.GRU) and block.lstm.bidirectional for block in gru.bi_lstm_stack.members)
    assert all(isinstance(rnn, torch.nn.GRU) for rnn in gru.pick_lstms)
    assert not any(isinstance(m, torch.nn.LSTM) for m in gru.modules())
    x = torch.randn(2, 3, 6000)
    with torch.no_grad():
        per_step, = SimpleCNN().eval()(x)
        per_window, = SimpleCNNFlat().eval()(x)
    assert per_step.shape == per_window.shape == (2, 6000)
    assert per_step[0].std() > 0 and torch.all(per_window == per_window[:, :1])  # one value per window
    assert [m.labels for m in (cba, SimpleCNN(), DecisionTreeDetector())] == [["Detection", "P", "S"], ["Detection"], ["Detection"]]


@pytest.mark.parametrize("name", list(NETWORKS))
def test_network_trains_saves_loads_and_classifies(name, real_windows, tmp_path):
    from seisbench_feq import load_model
    from seisbench_feq.training import picker_loss
    from seisbench_feq.training.run import export_weights

    waveforms, targets, _ = real_windows
    torch.manual_seed(0)
    model = NETWORKS[name](highpass=1.0).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.from_numpy(waveforms[:4]), torch.from_numpy(targets[:4])
    losses = []
    for _ in range(3):  # the training loss of seisbench-feq train (detection only for detectors)
        loss, parts = picker_loss(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and len(parts) == len(model.labels)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if v.is_floating_point())

    pt, js = export_weights(model, tmp_path, "default", {"model_class": type(model).__name__}, "test weights")
    loaded = load_model(f"{name}:{tmp_path / 'default'}")
    assert type(loaded) is type(model) and loaded.highpass == 1.0
    model.eval()
    with torch.no_grad():
        batch = torch.from_numpy(waveforms[:2])
        for a, b in zip(model(model.annotate_batch_pre(batch, {})), loaded(loaded.annotate_batch_pre(batch, {}))):
            torch.testing.assert_close(a, b)
    # a plain prefix: the class is read from the json
    assert type(load_model(str(tmp_path / "default"))) is type(model)

    stream = obspy.read(str(DEMO / "NC.CCOB.mseed"))
    output = loaded.classify(stream, batch_size=8)
    annotations = loaded.annotate(stream, batch_size=8)
    expected = {f"{type(model).__name__}_{label}" for label in model.labels}
    assert {tr.stats.channel for tr in annotations} == expected
    if len(model.labels) == 1:
        assert len(output.picks) == 0  # a detector gives no picks
    else:
        assert all(p.phase in ("P", "S") for p in output.picks)


def test_decision_tree_fits_saves_with_skops_and_loads_checked(real_windows, tmp_path):
    from seisbench_feq import load_model

    waveforms, _, noise = real_windows
    windows = np.concatenate([waveforms, noise])
    labels = np.r_[np.ones(len(waveforms)), np.zeros(len(noise))]
    model = DecisionTreeDetector(highpass=1.0).fit(windows, labels)
    probability = model.predict_windows(windows)
    assert ((probability >= 0.5) == labels).mean() == 1.0  # a depth-10 tree fits 16 windows
    skops_path, json_path = model.save(tmp_path / "tree")
    assert skops_path.read_bytes()[:2] == b"PK"  # a skops zip, not a pickle
    loaded = load_model(f"decision-tree:{tmp_path / 'tree'}")
    np.testing.assert_array_equal(loaded.predict_windows(windows), probability)
    assert type(load_model(str(tmp_path / "tree"))) is DecisionTreeDetector

    stream = obspy.read(str(DEMO / "NC.CCOB.mseed"))
    output = loaded.classify(stream, batch_size=8)
    assert len(output.picks) == 0
    (trace,) = loaded.annotate(stream, batch_size=8)
    assert trace.stats.channel == "DecisionTreeDetector_Detection" and np.nanmax(trace.data) <= 1.0

    # a skops file holding anything but a decision tree is refused
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    sio.dump(LogisticRegression(), tmp_path / "evil.skops")
    (tmp_path / "evil.json").write_text(json_path.read_text())
    with pytest.raises(ValueError, match="LogisticRegression"):
        DecisionTreeDetector.load(tmp_path / "evil")


def test_registration_names_and_missing_weights(tmp_path):
    from seisbench_feq import load_model, model_label

    for name, cls in BASELINES.items():
        if "default" in cls.list_pretrained():
            assert type(load_model(name)) is cls
        else:
            with pytest.raises(MissingWeightsError, match=f"weights.{name}.default"):
                load_model(name)
        assert type(load_model(f"{name}:random")) is cls
    assert model_label("cba") == "CBA (default)"
    assert model_label(f"eqt-gru:{tmp_path / 'mine'}") == "EqT-GRU (mine)"
    assert model_label("simple-cnn-flat") == "Simple CNN (flat) (default)"
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_model(f"decision-tree:{tmp_path / 'nothing'}")


@pytest.mark.timeout(300)
def test_cli_trains_detector_and_tree_on_distillation_windows(tmp_path):
    """``seisbench-feq train --model simple-cnn|decision-tree`` on real CX + NCEDC windows (random teacher)."""
    from seisbench_feq.cli import main

    cx, ncedc, _ = small_distillation_data(tmp_path, 16)
    common = [
        "--distill", "--teacher", "random-eqtransformer", "--cx-root", str(cx), "--ncedc-root", str(ncedc),
        "--cache-dir", str(tmp_path / "cache"), "--batch-size", "2", "--steps-per-epoch", "1", "--max-steps", "2",
    ]  # fmt: skip
    assert main(["train", "--model", "simple-cnn", *common, "--out", str(tmp_path / "cnn"),
                 "--save-weights", str(tmp_path / "w_cnn")]) == 0  # fmt: skip
    info = json.loads((tmp_path / "w_cnn" / "default.json.v1").read_text())
    assert info["model_class"] == "SimpleCNN" and info["training"]["steps"] == 2
    assert main(["train", "--model", "decision-tree", *common, "--out", str(tmp_path / "tree"),
                 "--save-weights", str(tmp_path / "w_tree")]) == 0  # fmt: skip
    tree_info = json.loads((tmp_path / "w_tree" / "default.json").read_text())
    assert 1 <= tree_info["training"]["train"]["windows"] <= 4 and "--model decision-tree" in tree_info["training"]["command"]
    assert DecisionTreeDetector.load(tmp_path / "w_tree" / "default").tree is not None


def test_evaluation_rows_for_detectors_and_published_column(real_windows):
    import pandas as pd

    from seisbench_feq.evaluation import evaluate_models
    from seisbench_feq.evaluation.run import published_markdown

    waveforms, targets, noise = real_windows
    torch.manual_seed(0)
    tree = DecisionTreeDetector().fit(np.concatenate([waveforms, noise]), np.r_[np.ones(12), np.zeros(4)])
    meta = pd.DataFrame({"p_sample": [float(np.argmax(t[1])) for t in targets], "s_sample": [float(np.argmax(t[2])) for t in targets]})
    table = evaluate_models({"tree": tree, "cnn": SimpleCNN()}, waveforms, meta, timing_repeats=1, timing_batch=2, progress=False)
    assert table.loc["tree", "detection_f1"] == 1.0 and table.loc["tree", "detection_tp"] == 12
    assert table[["P_f1", "S_f1", "P_tp", "S_mae_s"]].isna().all().all()  # no picks: empty P/S columns
    assert np.isnan(table.loc["tree", "torch_params"]) and table.loc["tree", "tree_nodes"] >= 1
    assert table.loc["cnn", "torch_params"] == 3537
    assert table.loc["tree", "published"].startswith("accuracy 0.96")
    assert "different dataset" in published_markdown(table)
