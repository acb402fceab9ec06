"""ONNX / TorchScript export: outputs match PyTorch, int8 FEQ3 fits in 64 KB and keeps its F1, CLI.

Windows are real: raw counts from the CX continuous archive (the exported graph normalises them
itself) and the NCEDC evaluation traces for the F1 check.
"""

from __future__ import annotations

import numpy as np
import obspy
import onnx
import pytest
import torch
from conftest import shared_path
from onnx import numpy_helper

from seisbench_feq import FEQ1, FEQ2, FEQ3, LEQNet
from seisbench_feq.cli import main
from seisbench_feq.export import (
    ExportError,
    export_onnx,
    export_torchscript,
    initializer_bytes,
    max_abs_difference,
    onnx_session,
    quantize_weights_int8,
    run_onnx,
)
from seisbench_feq.models import preprocess_windows
from seisbench_feq.models.backends import use_backend

pytest.importorskip("onnxruntime")

ALL = [LEQNet, FEQ1, FEQ2, FEQ3]
INT8_WEIGHT_BUDGET = 64 * 1024


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def only_export_subcommand(monkeypatch):
    """Run ``cli.main`` with just this module's subcommand, so other modules cannot break these tests."""
    import seisbench_feq.cli

    monkeypatch.setattr(seisbench_feq.cli, "SUBCOMMAND_MODULES", ["seisbench_feq.export"])


@pytest.fixture(scope="module")
def raw_windows() -> np.ndarray:
    """4 real 60 s windows in counts (Z, N, E), float32."""
    root = shared_path("data", "cx_continuous", "sds", "2014", "CX", "PB01")
    stream = obspy.Stream()
    for channel in ("HHZ", "HHN", "HHE"):
        stream += obspy.read(str(root / f"{channel}.D" / "*"))
    data = np.stack([stream.select(channel=f"HH{c}")[0].data[: 4 * 6000] for c in "ZNE"])
    return np.ascontiguousarray(data.reshape(3, 4, 6000).transpose(1, 0, 2).astype(np.float32))


def _plain_probabilities(model, windows: np.ndarray) -> np.ndarray:
    with torch.no_grad(), use_backend(model, "plain"):
        x = preprocess_windows(model, torch.from_numpy(windows))
        return torch.stack(model.eval()(x), dim=1).numpy()


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_onnx_matches_pytorch(cls, tmp_path, raw_windows):
    torch.manual_seed(0)
    model = cls().eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    assert [o.name for o in proto.graph.output] == ["Detection", "P", "S"]
    assert max_abs_difference(model, path, raw_windows) <= 1e-4


def test_fused_graph_and_dynamic_batch(tmp_path, raw_windows):
    torch.manual_seed(1)
    model = FEQ3().eval()
    path = export_onnx(model, tmp_path / "fused.onnx", graph="fused")
    session = onnx_session(path)
    expected = _plain_probabilities(model, raw_windows)
    for batch in (1, 3):
        got = run_onnx(session, raw_windows[:batch], batch_size=batch)
        assert got.shape == (batch, 3, 6000)
        assert np.abs(got - expected[:batch]).max() <= 1e-4


def test_int8_weights_rounding_is_per_channel_and_bounded():
    torch.manual_seed(2)
    model = FEQ3().eval()
    from seisbench_feq.export import onnx_bytes

    fp32 = onnx.load_from_string(onnx_bytes(model, graph="compact", normalize=True, logits=False))
    weights = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    q = quantize_weights_int8(onnx.load_from_string(fp32.SerializeToString()))
    stored = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    dequant = [n for n in q.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dequant) >= 20
    for node in dequant:
        name = node.output[0]
        axis = next(a.i for a in node.attribute if a.name == "axis")
        w, qw, scale = weights[name], stored[name + "_int8"], stored[name + "_scale"]
        assert qw.dtype == np.int8 and scale.shape == (w.shape[axis],)
        shape = [1] * w.ndim
        shape[axis] = -1
        assert np.all(np.abs(qw * scale.reshape(shape) - w) <= scale.reshape(shape) / 2 + 1e-9)


@pytest.fixture(scope="module")
def ncedc():
    from seisbench_feq.data import load_ncedc

    return load_ncedc(shared_path("data", "ncedc"))


def _f1(model, waveforms, metadata, tmp_path, int8: bool) -> dict:
    from seisbench_feq.evaluation import picks_from_probabilities, score_picks

    # The graph takes pre-processed windows: the shipped weights high-pass, which ONNX cannot express.
    path = export_onnx(model, tmp_path / f"{model.name}_{int8}.onnx", int8=int8, normalize=False)
    windows = preprocess_windows(model, torch.from_numpy(waveforms.astype(np.float32))).numpy()
    probabilities = run_onnx(onnx_session(path), windows)
    return score_picks(picks_from_probabilities(probabilities), metadata)


def test_int8_feq3_fits_64_kb(tmp_path):
    torch.manual_seed(3)
    feq3 = export_onnx(FEQ3().eval(), tmp_path / "feq3_int8.onnx", int8=True)
    assert initializer_bytes(feq3) <= INT8_WEIGHT_BUDGET
    assert initializer_bytes(feq3) < 0.55 * initializer_bytes(export_onnx(FEQ3(), tmp_path / "fp32.onnx"))


# With every layer quantised, the first shipped FEQ3 (2026-11-21) measured S F1 0.626 -> 0.643 (outside 0.01); the
# default keeps encoder and decoders in float32 (export.INT8_FLOAT_LAYERS), which brings it back.
@pytest.mark.timeout(240)
def test_int8_feq3_keeps_f1(tmp_path, ncedc):
    # F1 needs weights that pick: FEQ3's shipped weights once they do, else the trained original
    # LEQNet (same layers, more of them) stands in.
    waveforms, metadata = ncedc
    candidates = [lambda: FEQ3.from_pretrained("default")] if "default" in FEQ3.list_pretrained() else []
    convert = pytest.importorskip("seisbench_feq.convert")
    candidates.append(lambda: convert.leqnet_from_keras(shared_path("weights", "leqnet_original", "final_model.h5")))
    for make in candidates:
        model = make().eval()
        fp32 = _f1(model, waveforms, metadata, tmp_path, int8=False)
        if fp32["P_f1"] > 0.5 and fp32["S_f1"] > 0.5:
            break
    else:
        pytest.fail(f"no weights with P and S F1 > 0.5 to compare with (last: {fp32})")
    int8 = _f1(model, waveforms, metadata, tmp_path, int8=True)
    for key in ("P_f1", "S_f1"):
        assert abs(int8[key] - fp32[key]) <= 0.01, (model.name, key, fp32[key], int8[key])


def test_torchscript_matches_pytorch(tmp_path, raw_windows):
    torch.manual_seed(4)
    model = FEQ2().eval()
    path = export_torchscript(model, tmp_path / "feq2.pt")
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        got = torch.stack(loaded(torch.from_numpy(raw_windows)), dim=1).numpy()
    assert np.abs(got - _plain_probabilities(model, raw_windows)).max() <= 1e-5


def test_highpass_models_export_for_preprocessed_windows(tmp_path, raw_windows, capsys):
    """ONNX has no FFT: a model with a window high-pass exports a graph for pre-processed windows."""
    torch.manual_seed(5)
    model = FEQ3(highpass=1.0).eval()
    with pytest.raises(ExportError, match="no FFT"):
        export_onnx(model, tmp_path / "x.onnx")
    path = export_onnx(model, tmp_path / "pre.onnx", normalize=False)
    windows = preprocess_windows(model, torch.from_numpy(raw_windows)).numpy()
    expected = _plain_probabilities(model, raw_windows)
    assert np.abs(run_onnx(onnx_session(path), windows) - expected).max() <= 1e-4
    # TorchScript keeps the FFT: raw counts in, same probabilities out.
    script = torch.jit.load(str(export_torchscript(model, tmp_path / "hp.pt")))
    with torch.no_grad():
        got = torch.stack(script(torch.from_numpy(raw_windows)), dim=1).numpy()
    assert np.abs(got - expected).max() <= 1e-5
    model.save(tmp_path / "hp")
    assert main(["export", "feq3", "--weights", str(tmp_path / "hp"), "--out", str(tmp_path / "cli.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "takes pre-processed windows" in printed and "max |ONNX Runtime - PyTorch|" in printed


def test_cli_exports_and_checks(tmp_path, capsys):
    out = tmp_path / "feq3.onnx"
    assert main(["export", "feq3", "--weights", "random", "--format", "onnx", "--out", str(out)]) == 0
    assert out.exists()
    printed = capsys.readouterr().out
    assert "ONNX opset 17, fp32" in printed and "max |ONNX Runtime - PyTorch|" in printed

    out8 = tmp_path / "feq3_int8.onnx"
    assert main(["export", "feq3", "--weights", "random", "--int8", "--out", str(out8)]) == 0
    assert initializer_bytes(out8) <= INT8_WEIGHT_BUDGET
    assert "int8 weights" in capsys.readouterr().out

    script = tmp_path / "leqnet.pt"
    assert main(["export", "leqnet", "--weights", "random", "--format", "torchscript", "--out", str(script)]) == 0
    assert torch.jit.load(str(script))(torch.randn(1, 3, 6000))[0].shape == (1, 6000)


def test_cli_rejects_bad_requests(tmp_path):
    with pytest.raises(SystemExit, match="unknown model 'phasenet'"):
        main(["export", "phasenet", "--out", str(tmp_path / "x.onnx")])
    with pytest.raises(SystemExit, match="--int8 applies to --format onnx only"):
        main(["export", "feq3", "--weights", "random", "--format", "torchscript", "--int8", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(ValueError, match="opset 13"):
        export_onnx(FEQ3(), tmp_path / "old.onnx", opset=13)
