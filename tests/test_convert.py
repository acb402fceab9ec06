"""Keras -> PyTorch conversion of the original EQTransformer and LEQNet files.

Faithfulness is checked layer by layer against ``tests/keras_reference.py``, an independent
NumPy execution of the Keras layer graph stored in each h5 file (float64, Keras semantics), on
real NCEDC windows. The Keras tensor names below were read from the files' layer graphs (e.g.
``lstm_3 -> attentionP -> ... -> picker_P``), independently of the converter's own graph parsing.
Converted LEQNet weights are written to tmp_path only (the LEQNet h5 has no licence).
"""

from __future__ import annotations

from contextlib import nullcontext
import hashlib
import json

import h5py
import numpy as np
import pytest
import torch
from conftest import shared_path
from keras_reference import load_keras_model, normalize_per_channel

from seisbench_feq import LEQNet
from seisbench_feq.cli import main
from seisbench_feq.convert import (
    KerasConversionError,
    OriginalEQTransformer,
    eqt_picks,
    eqtransformer_from_keras,
    leqnet_from_keras,
    mc_dropout_predict,
    ncedc_check,
)
from seisbench_feq.data import load_ncedc
from seisbench_feq.models.backends import use_backend


def _eqt_h5():
    return shared_path("weights", "eqtransformer_original", "EqT_original_model.h5")


def _leq_h5():
    return shared_path("weights", "leqnet_original", "final_model.h5")


@pytest.fixture(scope="module")
def eqt():
    return eqtransformer_from_keras(_eqt_h5())


@pytest.fixture(scope="module")
def leq():
    return leqnet_from_keras(_leq_h5())


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def windows():
    """Two real NCEDC windows (ZNE rows, normalised per channel): 3-component and vertical-only."""
    waveforms, meta = load_ncedc(shared_path("data", "ncedc"))
    three_c = np.flatnonzero(~meta["vertical_only"].to_numpy())[:1]
    z_only = np.flatnonzero(meta["vertical_only"].to_numpy())[:1]
    idx = np.concatenate([three_c, z_only])
    return normalize_per_channel(waveforms[idx].astype(np.float64)), meta.iloc[idx]


_REFERENCE_CACHE: dict = {}


def _reference(h5, x_zne):
    """All Keras tensors of the reference forward for ``x_zne`` (cached: the NumPy run is the slow part)."""
    key = (str(h5), x_zne.tobytes())
    if key not in _REFERENCE_CACHE:
        # ZNE rows -> Keras layout (batch, time, channels) in E, N, Z order
        _REFERENCE_CACHE[key] = load_keras_model(h5).forward(x_zne[:, ::-1, :].transpose(0, 2, 1))
    return _REFERENCE_CACHE[key]


def _run_both(model, h5, x_zne, taps):
    """Torch activations at ``taps`` and the Keras reference tensors for the same windows."""
    captured = {}
    handles = []
    for path in dict.fromkeys(t[0] for t in taps):  # one hook per module: reused modules append per call
        module = model.get_submodule(path)
        captured[path] = []
        handles.append(
            module.register_forward_hook(lambda m, i, o, path=path: captured[path].append(o))
        )
    x = torch.from_numpy(x_zne.astype(np.float32))
    try:
        # Taps need the modules as written; LEQNet's default inference path fuses them.
        with torch.no_grad(), use_backend(model, "plain") if isinstance(model, LEQNet) else nullcontext():
            model(x)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():  # final outputs of the default inference path, also checked against Keras
        outputs = model(x)
    return captured, outputs, _reference(h5, x_zne)


def _as_btc(output, kind):
    if kind == "bct":  # (B, C, T) tensor
        y = output
    elif kind == "bct0":  # tuple whose first element is (B, C, T): attention, transformer
        y = output[0]
    elif kind == "relu_bct":  # nn.Conv1d output before the Keras activation
        y = torch.relu(output)
    elif kind == "tbc0":  # RNN: (output (T, B, C), state)
        return output[0].numpy().transpose(1, 0, 2)
    else:
        raise ValueError(kind)
    return y.numpy().transpose(0, 2, 1)


def _compare(model, h5, x, taps, outputs_keras):
    captured, outputs, ref = _run_both(model, h5, x, taps)
    diffs = {}
    for path, call, layer, node, kind in taps:
        mine = _as_btc(captured[path][call], kind)
        keras = ref[(layer, node)]
        assert mine.shape == keras.shape, (path, layer, mine.shape, keras.shape)
        scale = max(1.0, float(np.abs(keras).max()))
        diffs[f"{path}[{call}] ~ {layer}:{node}"] = float(np.abs(mine - keras).max())
        assert np.abs(mine - keras).max() <= 1e-4 * scale, (path, layer, np.abs(mine - keras).max(), scale)
    for out, name in zip(outputs, outputs_keras):
        keras = ref[(name, 0)][..., 0]
        diffs[name] = float(np.abs(out.numpy() - keras).max())
        assert np.abs(out.numpy() - keras).max() < 1e-5, (name, diffs[name])
    # shown with `pytest -s`; docs/conversion.md quotes this table
    print(f"\nmax |PyTorch - Keras reference| on {len(x)} NCEDC windows, {type(model).__name__}:")
    for key, value in diffs.items():
        print(f"  {key:60s} {value:.2e}")
    return diffs


EQT_TAPS = [
    ("encoder.convs.0", 0, "conv1d_1", 0, "relu_bct"),  # first layer: ENZ -> ZNE permutation
    ("encoder", 0, "max_pooling1d_7", 0, "bct"),  # TF-"same" pooling of odd lengths (375 -> 188)
    ("res_cnn_stack.members.0", 0, "add_1", 0, "bct"),
    ("res_cnn_stack.members.4", 0, "add_5", 0, "bct"),  # kernel-2 "same" padding
    ("res_cnn_stack", 0, "add_7", 0, "bct"),
    ("bi_lstm_stack.members.0.lstm", 0, "bidirectional_1", 0, "tbc0"),
    ("bi_lstm_stack.members.0", 0, "batch_normalization_15", 0, "bct"),
    ("bi_lstm_stack", 0, "batch_normalization_16", 0, "bct"),
    ("transformer_d0.attention", 0, "attentionD0", 0, "bct0"),
    ("transformer_d0", 0, "layer_normalization_2", 0, "bct0"),
    ("transformer_d", 0, "layer_normalization_4", 0, "bct0"),
    ("pick_lstms.0", 0, "lstm_3", 0, "tbc0"),
    ("pick_lstms.1", 0, "lstm_4", 0, "tbc0"),
    ("pick_attentions.0", 0, "attentionP", 0, "bct0"),
    ("pick_attentions.1", 0, "attentionS", 0, "bct0"),
    ("decoder_d", 0, "conv1d_30", 0, "bct"),  # includes the 752 -> 750 crop
    ("pick_decoders.0", 0, "conv1d_37", 0, "bct"),
    ("pick_decoders.1", 0, "conv1d_44", 0, "bct"),
]

LEQ_TAPS = [
    ("encoder.convs.0", 0, "separable_conv1d_1", 0, "bct"),
    ("encoder.convs.2", 0, "separable_conv1d_3", 0, "bct"),
    ("encoder.convs.2", 1, "separable_conv1d_3", 1, "bct"),  # the reused layer's second call
    ("encoder", 0, "max_pooling1d_5", 0, "bct"),  # pools 3,3,3,2,2 with TF alignment
    ("res_stack.blocks.0", 0, "add_1", 0, "bct"),
    ("res_stack", 0, "add_4", 0, "bct"),  # last block: kernel 2
    ("rnn_stack.blocks.0.rnn", 0, "bidirectional_1", 0, "tbc0"),
    ("rnn_stack.blocks.0", 0, "batch_normalization_13", 0, "bct"),
    ("rnn_stack", 0, "batch_normalization_14", 0, "bct"),
    ("transformer_d0.attention", 0, "attentionD0", 0, "bct0"),
    ("transformer_d0", 0, "layer_normalization_2", 0, "bct0"),
    ("transformer_d", 0, "layer_normalization_4", 0, "bct0"),
    ("pick_rnns.0", 0, "lstm_3", 0, "tbc0"),
    ("pick_rnns.1", 0, "lstm_4", 0, "tbc0"),
    ("pick_attentions.0", 0, "attentionP", 0, "bct0"),
    ("pick_attentions.1", 0, "attentionS", 0, "bct0"),
    ("decoders.0.convs.0", 0, "separable_conv1d_5", 0, "bct"),
    ("decoders.0.convs.1", 0, "separable_conv1d_6", 0, "bct"),  # after the 224 -> 223 crop
    ("decoders.0.convs.2", 0, "separable_conv1d_7", 0, "bct"),  # after 669 -> 667
    ("decoders.0.convs.2", 1, "separable_conv1d_7", 1, "bct"),  # reused, after 2001 -> 2000
    ("decoders.0.convs.3", 0, "separable_conv1d_8", 0, "bct"),
    ("decoders.1.convs.3", 0, "separable_conv1d_12", 0, "bct"),
    ("decoders.2.convs.2", 1, "separable_conv1d_15", 1, "bct"),
    ("decoders.2.convs.3", 0, "separable_conv1d_16", 0, "bct"),
]

OUTPUTS = ["detector", "picker_P", "picker_S"]


def test_eqtransformer_matches_keras_layer_by_layer(eqt, windows):
    x, _ = windows
    assert isinstance(eqt, OriginalEQTransformer)
    # recurrent_activation "sigmoid" in the file -> SeisBench's non-conservative mode
    assert eqt.original_compatible == "non-conservative" and eqt.lstm_blocks == 2
    _compare(eqt, _eqt_h5(), x, EQT_TAPS, OUTPUTS)


def test_leqnet_matches_keras_layer_by_layer(leq, windows):
    x, _ = windows
    assert isinstance(leq, LEQNet)
    assert tuple(leq.res_kernels) == (3, 3, 3, 2) and leq.rnn_blocks == 2
    _compare(leq, _leq_h5(), x, LEQ_TAPS, OUTPUTS)


@pytest.mark.parametrize("which", ["eqt", "leq"])
def test_channel_order_matters(which, eqt, leq, windows):
    """The comparison is sensitive: feeding E, N, Z instead of Z, N, E changes the output a lot."""
    x, _ = windows
    model, h5 = (eqt, _eqt_h5()) if which == "eqt" else (leq, _leq_h5())
    keras_p = _reference(h5, x)[("picker_P", 0)][..., 0]
    with torch.no_grad():
        swapped = model(torch.from_numpy(np.ascontiguousarray(x[:, ::-1, :]).astype(np.float32)))[1]
    assert np.abs(swapped.numpy() - keras_p).max() > 0.05


def test_conservative_variant_file_converts():
    """The hard-sigmoid, 3-BiLSTM EQTransformer file maps to SeisBench's conservative mode."""
    h5 = shared_path("weights", "eqtransformer_original", "EqT_model_conservative_or_variant.h5")
    model = eqtransformer_from_keras(h5)
    assert model.original_compatible == "conservative" and model.lstm_blocks == 3
    waveforms, _ = load_ncedc(shared_path("data", "ncedc"))
    x = normalize_per_channel(waveforms[:1].astype(np.float64))
    ref = load_keras_model(h5).predict(x[:, ::-1, :].transpose(0, 2, 1))
    with torch.no_grad():
        out = model(torch.from_numpy(x.astype(np.float32)))
    for mine, keras in zip(out, ref):
        assert np.abs(mine.numpy() - keras[..., 0]).max() < 1e-5


def test_weights_only_leqnet_file_needs_and_uses_a_graph(leq):
    weights_only = shared_path("weights", "leqnet_original", "model_weights.h5")
    with pytest.raises(KerasConversionError, match="weights-only"):
        leqnet_from_keras(weights_only)
    model = leqnet_from_keras(weights_only, config_from=_leq_h5())
    for (name, a), b in zip(leq.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_deterministic_in_eval_and_mc_dropout_is_explicit(leq, windows):
    x = torch.from_numpy(windows[0][:2].astype(np.float32))
    with torch.no_grad():
        first, second = leq(x), leq(x)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    mean, std = mc_dropout_predict(leq, x, n_samples=4, seed=1)
    assert [m.shape for m in mean] == [o.shape for o in first]
    assert max(float(s.max()) for s in std) > 1e-3  # the spatial dropouts did sample
    assert not any(m.training for m in leq.modules())  # state restored, BN never left eval
    again, _ = mc_dropout_predict(leq, x, n_samples=4, seed=1)
    assert all(torch.allclose(a, b) for a, b in zip(mean, again))


def test_original_eqt_normalises_each_channel_by_its_std(eqt):
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.normal(size=(2, 3, 6000)).astype(np.float32))
    batch[:, 1] *= 1000.0
    batch[:, 2] = 0.0  # missing component
    out = eqt.annotate_batch_pre(batch.clone(), {})
    inner = out[..., 6:-6].numpy()  # away from the 6-sample taper
    expected = normalize_per_channel(batch.numpy().astype(np.float64))[..., 6:-6]
    assert np.abs(inner - expected).max() < 1e-4
    assert torch.all(out[:, 2] == 0)


@pytest.mark.timeout(120)
def test_original_eqt_classify_picks_a_real_trace(eqt):
    import obspy

    path = shared_path("data", "ncedc", "NC_MEM_2017100709282692.npz")
    with np.load(path) as npz:
        data, itp, its = npz["data"], int(npz["itp"]), int(npz["its"])
    start = obspy.UTCDateTime(2017, 10, 7, 9, 28)
    stream = obspy.Stream(
        [
            obspy.Trace(
                data[:, k].astype(np.float32),
                {"network": "NC", "station": "MEM", "channel": f"EH{c}", "sampling_rate": 100.0,
                 "starttime": start},
            )
            for k, c in enumerate("ENZ")
        ]
    )
    picks = eqt.classify(stream).picks
    p_times = [p.peak_time for p in picks if p.phase == "P"]
    s_times = [p.peak_time for p in picks if p.phase == "S"]
    assert min(abs(t - (start + itp / 100)) for t in p_times) <= 0.5
    assert min(abs(t - (start + its / 100)) for t in s_times) <= 0.5


@pytest.mark.slow
@pytest.mark.parametrize("which", ["eqt", "leq"])
def test_converted_models_pick_real_ncedc_traces(which, eqt, leq):
    """Every 3rd NCEDC trace (52 windows), model_spec.md protocol and the original EqT picker.

    Reference (originals in TensorFlow, all 154 traces): P recall .942 (EqT) / .864 (LEQNet),
    S recall .929 / .805. A broken port does not get near these.
    """
    model = eqt if which == "eqt" else leq
    row = ncedc_check(model, shared_path("data", "ncedc"), every=3)  # scored by seisbench_feq.evaluation
    assert row["n_windows"] == 52
    assert row["P_recall"] > 0.8 and row["P_precision"] > 0.9, row
    assert row["S_recall"] > 0.7 and row["S_precision"] > 0.85, row
    assert row["P_mae_s"] < 0.15 and row["S_mae_s"] < 0.15


def test_eqt_picker_rule():
    """One detection: the most probable P before the first S is kept, picks outside are dropped."""
    n = 6000
    det, p, s = np.zeros(n), np.zeros(n), np.zeros(n)
    det[1000:3000] = 0.9
    p[[1100, 1200, 4000]] = [0.4, 0.8, 0.9]  # 4000 lies outside the detection
    s[[2000, 2500]] = [0.5, 0.9]
    assert eqt_picks(det, p, s) == ([1200], [2000])
    det[1000:1005] = 0.9
    det[1005:] = 0.0  # a detection shorter than 10 samples keeps nothing
    assert eqt_picks(det, p, s) == ([], [])


# --- files and CLI -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def only_convert_subcommand(monkeypatch):
    """Run ``cli.main`` with just this module's subcommand, so other modules cannot break these tests."""
    import seisbench_feq.cli

    monkeypatch.setattr(seisbench_feq.cli, "SUBCOMMAND_MODULES", ["seisbench_feq.convert"])


def test_cli_converts_eqtransformer_to_seisbench_pair(tmp_path, eqt, windows):
    h5 = _eqt_h5()
    assert main(["convert", str(h5), str(tmp_path / "eqt_original")]) == 0
    meta = json.loads((tmp_path / "eqt_original.json").read_text())
    assert meta["source"]["sha256"] == hashlib.sha256(h5.read_bytes()).hexdigest()
    assert meta["source"]["file"] == h5.name and "MIT" in meta["source"]["licence"]
    assert meta["model_args"]["original_compatible"] == "non-conservative"
    loaded = OriginalEQTransformer.load(tmp_path / "eqt_original")
    loaded.eval()
    assert loaded.default_args["P_threshold"] == 0.3
    x = torch.from_numpy(windows[0][:1].astype(np.float32))
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded(x), eqt(x)))
    # plain SeisBench refuses the file instead of silently normalising differently
    import seisbench.models as sbm

    with pytest.raises(TypeError, match="per_channel_std"):
        sbm.EQTransformer.load(tmp_path / "eqt_original")


def test_cli_converts_leqnet_with_licence_note(tmp_path, leq, capsys):
    assert main(["convert", str(_leq_h5()), str(tmp_path / "leq"), "--model", "leqnet"]) == 0
    meta = json.loads((tmp_path / "leq.json").read_text())
    assert "do not redistribute" in meta["source"]["licence"]
    assert "licence" in capsys.readouterr().err
    loaded = LEQNet.load(tmp_path / "leq")
    for (name, a), b in zip(leq.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_cli_rejects_the_other_models_file(tmp_path, capsys):
    assert main(["convert", str(_eqt_h5()), str(tmp_path / "x"), "--model", "leqnet"]) == 2
    assert "holds a eqtransformer model, not a leqnet" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(KerasConversionError, match="not a LEQNet"):
        leqnet_from_keras(_eqt_h5())
    with pytest.raises(KerasConversionError, match="not an EQTransformer"):
        eqtransformer_from_keras(_leq_h5())


def test_bogus_files_give_clear_errors(tmp_path, capsys):
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("not an HDF5 file")
    with pytest.raises(KerasConversionError, match="not a readable HDF5"):
        eqtransformer_from_keras(not_hdf5)

    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(KerasConversionError, match="not a Keras model"):
        leqnet_from_keras(plain)

    # a real (tiny) Keras model layout, but not an EQTransformer-family network
    dense = tmp_path / "dense.h5"
    config = {
        "class_name": "Model",
        "config": {
            "name": "tiny",
            "layers": [
                {"class_name": "InputLayer", "name": "input", "config": {"batch_input_shape": [None, 4]},
                 "inbound_nodes": []},
                {"class_name": "Dense", "name": "dense_1", "config": {"units": 1},
                 "inbound_nodes": [[["input", 0, 0, {}]]]},
            ],
            "input_layers": [["input", 0, 0]],
            "output_layers": [["dense_1", 0, 0]],
        },
    }
    with h5py.File(dense, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = [b"input", b"dense_1"]
        g.create_group("input").attrs["weight_names"] = []
        d = g.create_group("dense_1")
        d.attrs["weight_names"] = [b"dense_1/kernel:0", b"dense_1/bias:0"]
        d["dense_1/kernel:0"] = np.zeros((4, 1), np.float32)
        d["dense_1/bias:0"] = np.zeros(1, np.float32)
    with pytest.raises(KerasConversionError, match="not an EQTransformer-family model"):
        eqtransformer_from_keras(dense)
    assert main(["convert", str(dense), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "dense.h5" in err and "not an EQTransformer-family model" in err

    with pytest.raises(FileNotFoundError):
        eqtransformer_from_keras(tmp_path / "missing.h5")
