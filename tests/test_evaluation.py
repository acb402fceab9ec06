"""Evaluation: metrics on constructed cases, the FLOP counter, STA/LTA and the CLI on real NCEDC traces."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import shared_path

from seisbench_feq import FEQ3, LEQNet
from seisbench_feq.evaluation import (
    ModelPicker,
    StaLtaPicker,
    count_outcomes,
    detection_outcomes,
    evaluate_models,
    load_model_spec,
    phase_outcomes,
    picks_from_probabilities,
    precision_recall_f1,
    quality_bar,
    residual_stats,
    score_picks,
    scores_for_json,
    window_detections,
    window_picks,
)
from seisbench_feq.flops import count_flops, flops_per_window


@pytest.fixture(scope="module")
def ncedc():
    from seisbench_feq.data import load_ncedc

    return load_ncedc(shared_path("data", "ncedc"))


# --- metrics on constructed cases ---------------------------------------------------------------


def test_precision_recall_f1_known_values():
    p, r, f1 = precision_recall_f1(tp=8, fp=2, fn=4)
    assert p == pytest.approx(0.8)
    assert r == pytest.approx(8 / 12)
    assert f1 == pytest.approx(2 * 0.8 * (8 / 12) / (0.8 + 8 / 12))
    p, r, f1 = precision_recall_f1(0, 0, 5)  # no picks at all: precision undefined, F1 zero
    assert math.isnan(p) and r == 0 and f1 == 0


def test_phase_outcomes_tolerance_edge_and_counts():
    tol = 0.5 * 100  # 0.5 s at 100 Hz
    true = [1000, 1000, 1000, 1000, np.nan, np.nan, 2000]
    pick = [1050, 950, 1051, np.nan, 300, np.nan, 1999.5]
    out = phase_outcomes(pick, true, tol)
    assert list(out) == ["tp", "tp", "wrong", "missed", "false", "tn", "tp"]
    counts = count_outcomes(out)
    # "wrong" is both a false positive and a false negative; "false" only FP; "missed" only FN
    assert counts == {"tp": 3, "fp": 2, "fn": 2, "missed": 1, "wrong": 1}


def test_detection_outcomes_overlap_rule():
    p = [1000, 1000, 1000, 1000, np.nan, 1000]
    s = [1500, 1500, 1500, 1500, np.nan, np.nan]
    detections = [
        [(1400, 1600)],  # overlaps the end of [P, S]
        [(0, 999), (1501, 3000)],  # both just miss: FP + FN
        [],  # nothing: FN
        [(200, 300), (1500, 1500)],  # one touches S exactly: TP
        [(10, 20)],  # noise window with a detection: FP
        [(990, 1010)],  # no S: the event is [P, P]
    ]
    out = detection_outcomes(detections, p, s)
    assert list(out) == ["tp", "wrong", "missed", "tp", "false", "tp"]


def test_residual_stats_known_values():
    r = [0.1, -0.1, 0.2, 0.0]
    t = [10.0, 10.0, 20.0, 5.0]
    stats = residual_stats(r, t)
    assert stats["res_mean_s"] == pytest.approx(0.05)
    assert stats["res_std_s"] == pytest.approx(np.std(r))
    assert stats["mae_s"] == pytest.approx(0.1)
    assert stats["mape_pct"] == pytest.approx(100 * np.mean([0.01, 0.01, 0.01, 0.0]))
    assert all(math.isnan(v) for v in residual_stats([], []).values())
    with pytest.raises(ValueError, match="arrival times"):
        residual_stats([0.1], [0.0])


def test_score_picks_constructed_table_row():
    metadata = pd.DataFrame({"p_sample": [1000, 1000, 1000, np.nan], "s_sample": [1500, 1500, np.nan, np.nan]})
    picks = pd.DataFrame(
        {
            "detections": [[(900, 1700)], [], [(995, 1005)], [(0, 50)]],
            "P_sample": [1010, 1200, 980, np.nan],
            "P_value": [0.9, 0.4, 0.8, np.nan],
            "S_sample": [1450, np.nan, 1500, 300],
            "S_value": [0.7, np.nan, 0.5, 0.4],
        }
    )
    row = score_picks(picks, metadata, tolerance_s=0.5, sampling_rate=100)
    assert (row["detection_tp"], row["detection_fp"], row["detection_fn"]) == (2, 1, 1)
    assert (row["P_tp"], row["P_fp"], row["P_fn"], row["P_wrong"], row["P_missed"]) == (2, 1, 1, 1, 0)
    assert row["P_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert row["P_res_mean_s"] == pytest.approx((0.10 - 0.20) / 2)
    assert row["P_mae_s"] == pytest.approx(0.15)
    assert row["P_mape_pct"] == pytest.approx(100 * np.mean([0.1 / 10, 0.2 / 10]))
    # S: one TP (-0.5 s, on the edge), one missed, two false (window 3 has no S label, 4 is noise)
    assert (row["S_tp"], row["S_fp"], row["S_fn"], row["S_missed"]) == (1, 2, 1, 1)
    assert row["S_res_mean_s"] == pytest.approx(-0.5)
    no_s = score_picks(picks, metadata, phases=("P",))
    assert math.isnan(no_s["S_f1"]) and no_s["P_tp"] == 2


def test_quality_bar_margins():
    table = pd.DataFrame(
        {"P_f1": [0.95, 0.91, 0.89, 0.9], "S_f1": [0.96, 0.92, 0.95, np.nan]},
        index=["EqT original (converted)", "FEQ3 (default)", "LEQNet (default)", "STA/LTA"],
    )
    bar = quality_bar(table, "EqT original (converted)").set_index("model")
    assert list(bar.index) == ["FEQ3 (default)", "LEQNet (default)"]  # STA/LTA has no S: not compared
    assert bar.loc["FEQ3 (default)", "P_margin"] == pytest.approx(0.91 - 0.90)
    assert bar.loc["FEQ3 (default)", "passes"]
    assert bar.loc["LEQNet (default)", "P_margin"] == pytest.approx(-0.01)
    assert not bar.loc["LEQNet (default)", "passes"]
    with pytest.raises(KeyError, match="reference"):
        quality_bar(table, "nope")


# --- pick extraction through SeisBench's trigger rules ------------------------------------------


def test_window_picks_best_first_and_detections():
    t = np.arange(6000)
    prob = 0.6 * np.exp(-0.5 * ((t - 1000) / 10) ** 2) + 0.9 * np.exp(-0.5 * ((t - 3000) / 10) ** 2)
    picks = window_picks(prob, 0.3, "P")
    assert [p[0] for p in picks] == [3000, 1000]
    assert picks[0][1] == pytest.approx(0.9, abs=1e-3)
    assert window_picks(prob, 0.95, "P") == []
    det = np.zeros(6000)
    det[1000:2001] = 0.8
    (on, off), = window_detections(det, 0.5)
    assert on == 1000 and off == 2000
    table = picks_from_probabilities(np.stack([np.stack([det, prob, np.zeros(6000)])]))
    assert table.loc[0, "P_sample"] == 3000 and math.isnan(table.loc[0, "S_sample"])
    assert table.loc[0, "detections"] == [(1000, 2000)]


@pytest.mark.timeout(120)
def test_model_picker_uses_the_models_own_normalisation():
    torch.manual_seed(0)
    model = FEQ3()
    x = np.random.default_rng(0).normal(size=(2, 3, 6000)).astype(np.float32)
    picker = ModelPicker(model, progress=False)
    a = picker.predict(x)
    b = picker.predict(1000.0 * x + 5.0)  # scale and offset are removed by annotate_batch_pre
    assert a.shape == (2, 3, 6000) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert model.training  # predict restores the train/eval state


# --- FLOP counter ------------------------------------------------------------------------------


def test_flop_counter_rnn_formulas():
    lstm = torch.nn.LSTM(16, 16, bidirectional=True)
    assert count_flops(lstm, torch.randn(47, 2, 16)).macs == 2 * 47 * 2 * 4 * 16 * (16 + 16)
    gru = torch.nn.GRU(32, 16, num_layers=2)
    assert count_flops(gru, torch.randn(47, 1, 32)).macs == 47 * (3 * 16 * (32 + 16) + 3 * 16 * (16 + 16))
    conv = torch.nn.Conv1d(8, 8, 5, groups=8, padding=2)  # depthwise: output elements x kernel
    assert count_flops(conv, torch.randn(1, 8, 100)).macs == 8 * 100 * 5


def test_flop_counter_agrees_with_torch_on_convolutions_and_products():
    from torch.utils.flop_counter import FlopCounterMode

    model = LEQNet()
    x = torch.randn(1, 3, 6000)
    with torch.no_grad():
        encoded = model.res_stack(model.encoder(x))
    parts = ((model.encoder, x), (model.decoders[0], torch.randn(1, 16, 56)), (model.transformer_d0, encoded[:, :16]))
    for part, inp in parts:
        with FlopCounterMode(display=False) as reference, torch.no_grad():
            part(inp)
        assert count_flops(part, inp).flops == reference.get_total_flops()


@pytest.mark.timeout(120)
def test_flops_per_window_match_the_spec():
    import seisbench.models as sbm

    # model_spec.md: LEQNet ~ 25 MFLOP, EQTransformer ~ 257 MFLOP per window (2 FLOPs per MAC)
    leqnet = LEQNet()
    backend = getattr(leqnet, "inference_backend", None)
    assert flops_per_window(leqnet) / 1e6 == pytest.approx(25, rel=0.05)
    assert getattr(leqnet, "inference_backend", None) == backend  # the architecture count switches back
    assert flops_per_window(sbm.EQTransformer(lstm_blocks=2)) / 1e6 == pytest.approx(257, rel=0.02)
    assert flops_per_window(FEQ3()) < flops_per_window(LEQNet()) * 1.1


# --- real NCEDC traces --------------------------------------------------------------------------


def test_stalta_finds_p_arrivals_on_real_traces(ncedc):
    waveforms, metadata = ncedc
    waveforms, metadata = waveforms[:40], metadata.iloc[:40].reset_index(drop=True)
    picks = StaLtaPicker().pick_windows(waveforms)
    row = score_picks(picks, metadata, phases=("P",))
    assert row["P_tp"] >= 20, row  # a working STA/LTA finds most of these clear arrivals
    assert abs(row["P_res_mean_s"]) < 0.3
    assert picks["S_sample"].isna().all()  # STA/LTA gives no S


@pytest.mark.timeout(180)
def test_evaluate_models_on_real_traces_and_scores_for_json(ncedc):
    waveforms, metadata = ncedc
    waveforms, metadata = waveforms[:6], metadata.iloc[:6]
    torch.manual_seed(0)
    table = evaluate_models(
        {"FEQ3 random": FEQ3(), "STA/LTA": StaLtaPicker()},
        waveforms,
        metadata,
        timing_repeats=1,
        timing_batch=8,
        progress=False,
    )
    assert list(table.index) == ["FEQ3 random", "STA/LTA"]
    feq3 = table.loc["FEQ3 random"]
    assert feq3["keras_params"] == 32080 and feq3["n_windows"] == 6
    assert 20 < feq3["mflops_per_window"] < 30 and feq3["ms_per_window"] > 0 and feq3["weights_kb"] > 100
    assert feq3["P_tp"] + feq3["P_fn"] == 6  # every window has a P label
    assert math.isnan(table.loc["STA/LTA", "S_f1"]) and math.isnan(table.loc["STA/LTA", "keras_params"])
    scores = scores_for_json(feq3)
    text = json.dumps(scores)  # plain JSON: no NaN, no numpy types
    assert "NaN" not in text
    assert scores["P"]["tp"] == feq3["P_tp"] and scores["cost"]["keras_params"] == 32080
    assert scores["thresholds"] == {"detection": 0.5, "P": 0.3, "S": 0.3} and scores["tolerance_s"] == 0.5


def test_windows_use_each_models_own_thresholds_unless_given(ncedc):
    """As classify does: a model's weights' default_args set its thresholds; explicit ones win."""
    from seisbench_feq.evaluation import model_thresholds

    waveforms, metadata = ncedc
    waveforms, metadata = waveforms[:8], metadata.iloc[:8]
    strict = FEQ3.from_pretrained("default")
    strict.default_args = {**strict.default_args, "P_threshold": 0.99, "S_threshold": 0.99}
    assert model_thresholds(strict) == {"detection": 0.5, "P": 0.99, "S": 0.99}
    assert model_thresholds(StaLtaPicker()) == {"detection": 0.5, "P": 0.3, "S": 0.3}
    plain = FEQ3.from_pretrained("default")
    table = evaluate_models({"plain": plain, "strict": strict}, waveforms, metadata, costs=False, progress=False)
    assert table.loc["plain", "threshold_P"] == model_thresholds(plain)["P"] and table.loc["strict", "threshold_P"] == 0.99
    assert table.loc["plain", "P_tp"] > 0 and table.loc["strict", ["P_tp", "P_fp", "S_tp", "S_fp"]].sum() == 0
    given = evaluate_models({"strict": strict}, waveforms, metadata, costs=False, progress=False,
                            thresholds={"P": 0.3, "S": 0.3})
    assert given.loc["strict", "threshold_P"] == 0.3 and given.loc["strict", "P_tp"] > 0


def test_bad_input_is_named(ncedc):
    waveforms, metadata = ncedc
    w = waveforms[:3].copy()
    w[1, 0, 10] = np.nan
    with pytest.raises(ValueError, match=metadata.loc[1, "trace_name"]):
        evaluate_models({"STA/LTA": StaLtaPicker()}, w, metadata.iloc[:3], costs=False, progress=False)
    with pytest.raises(ValueError, match="3 waveforms but 2 metadata rows"):
        evaluate_models({"STA/LTA": StaLtaPicker()}, waveforms[:3], metadata.iloc[:2], costs=False)
    with pytest.raises(KeyError, match="s_sample"):
        evaluate_models({"x": StaLtaPicker()}, waveforms[:3], metadata.iloc[:3].drop(columns="s_sample"))
    with pytest.raises(TypeError, match="cannot evaluate"):
        evaluate_models({"x": object()}, waveforms[:3], metadata.iloc[:3], costs=False)


def test_load_model_spec_weights_pairs(tmp_path):
    FEQ3().save(tmp_path / "student")
    for spec in (str(tmp_path / "student"), str(tmp_path / "student.pt"), f"feq3:{tmp_path / 'student'}"):
        label, model = load_model_spec(spec)
        assert type(model) is FEQ3 and "student" in label
    label, model = load_model_spec(f"leqnet:{tmp_path / 'student'}")  # explicit class wins
    assert type(model) is LEQNet and model.rnn_blocks == 1
    label, picker = load_model_spec("stalta")
    assert isinstance(picker, StaLtaPicker) and label == "STA/LTA"
    with pytest.raises(FileNotFoundError, match="not a known model name"):
        load_model_spec(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="eqt-original:PATH.h5"):
        load_model_spec("eqt-original")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_spec(f"eqt-original:{tmp_path / 'none.h5'}")


@pytest.mark.timeout(240)
def test_cli_writes_markdown_and_plots(tmp_path, capsys):
    from seisbench_feq.cli import main

    ncedc_dir = shared_path("data", "ncedc")
    FEQ3().save(tmp_path / "feq3_random")
    out = tmp_path / "report"
    rc = main(
        [
            "evaluate", str(tmp_path / "feq3_random"), "stalta", "--data", str(ncedc_dir), "--limit", "12",
            "--split", "all", "test", "--out", str(out), "--timing-repeats", "1", "--timing-batch", "8", "--quiet",
        ]
    )
    assert rc == 0
    report = (out / "evaluation.md").read_text()
    assert "## Split `all`: 12 windows" in report and "## Split `test`" in report
    assert "| FEQ3 (feq3_random) |" in report and "| STA/LTA |" in report
    assert "32,080" in report  # Keras parameter count of FEQ3 in the cost table
    assert "seisbench-feq evaluate" in report and "--limit 12" in report
    for name in ("scores_all.png", "residuals_all.png", "scores_test.png", "residuals_test.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    scores = pd.read_csv(out / "scores_all.csv", index_col="model")
    assert scores.loc["STA/LTA", "n_windows"] == 12
    windows = pd.read_csv(out / "window_picks.csv")
    assert len(windows) == 2 * 12 and set(windows["split"]) <= {"train", "test"}
    assert "| STA/LTA |" in capsys.readouterr().out
    # both pick modes by default, and windows with P at random sub-sample positions
    assert "pick mode `eqt`" in report and (out / "scores_all_eqt.csv").is_file()
    assert (out / "window_picks_eqt.csv").is_file() and (out / "residuals_test_eqt.png").is_file()
    assert (windows["p_sample"] % 1 != 0).all() and "random position" in report
    assert "P max (median window max, windows at max)" in report
    assert {"P_max_prob", "S_max_prob", "S_windows_at_max", "pick_mode"} <= set(scores.columns)


def test_cli_reference_protocol_and_argument_errors(tmp_path):
    """--offset-seed none: the deterministic P positions of the reference results; bad arguments exit 2."""
    import zlib

    from seisbench_feq.cli import main

    ncedc_dir = shared_path("data", "ncedc")
    out = tmp_path / "ref"
    argv = ["evaluate", "stalta", "--data", str(ncedc_dir), "--limit", "6", "--offset-seed", "none",
            "--pick-mode", "peak", "--no-costs", "--split", "all", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    windows = pd.read_csv(out / "window_picks.csv")
    expected = [500 + zlib.crc32(f"{name}.npz".encode()) % 2000 for name in windows["trace_name"]]
    assert list(windows["p_sample"]) == expected
    assert not (out / "scores_all_eqt.csv").exists()
    report = (out / "evaluation.md").read_text()
    assert "--offset-seed none" in report and "500 + crc32" in report
    for bad in (["evaluate", "stalta"], ["evaluate", "stalta", "--data", str(ncedc_dir), "--offset-seed", "x"],
                ["evaluate", "stalta", "--data", str(ncedc_dir), "--batch-size", "0"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(bad)
        assert exit_info.value.code == 2


def test_seisbench_dataset_windows(tmp_path):
    """A SeisBench-format dataset (written here from three real NCEDC traces) gives the same windows."""
    import seisbench.data as sbd

    from seisbench_feq.data import read_ncedc_npz
    from seisbench_feq.evaluation import _p_offset, load_labelled_windows

    ncedc_dir = shared_path("data", "ncedc")
    names = sorted(p.name for p in ncedc_dir.glob("*.npz"))[:3]
    records = {}
    with sbd.WaveformDataWriter(tmp_path / "metadata.csv", tmp_path / "waveforms.hdf5") as writer:
        writer.data_format = {"dimension_order": "CW", "component_order": "ZNE", "sampling_rate": 100}
        for name in names:
            rec = read_ncedc_npz(ncedc_dir / name)
            zne = rec["data"][:, [2, 1, 0]].T.astype(np.float32)
            records[name[:-4]] = (zne, rec)
            net, sta = name.split("_")[:2]
            writer.add_trace(
                {
                    "trace_name": name[:-4],
                    "station_network_code": net,
                    "station_code": sta,
                    "trace_sampling_rate_hz": 100,
                    "trace_p_arrival_sample": rec["itp"],
                    "trace_s_arrival_sample": rec["its"],
                },
                zne,
            )
    waveforms, metadata = load_labelled_windows(tmp_path, offset_seed=None)  # the deterministic positions
    assert waveforms.shape == (3, 3, 6000) and len(metadata) == 3
    for i, row in metadata.iterrows():
        zne, rec = records[row["trace_name"]]
        offset = _p_offset(row["trace_name"], 6000)
        assert row["p_sample"] == offset and 500 <= offset < 2500
        assert row["s_sample"] == rec["its"] - rec["itp"] + offset
        start = rec["itp"] - offset
        np.testing.assert_allclose(waveforms[i], zne[:, start : start + 6000], rtol=1e-6)
    table = evaluate_models({"STA/LTA": StaLtaPicker()}, waveforms, metadata, costs=False, progress=False)
    assert table.loc["STA/LTA", "n_P"] == 3


def test_picks_are_reused_only_for_identical_inputs(tmp_path, ncedc):
    """An interrupted or repeated run reuses stored picks; other settings or windows recompute."""
    from dataclasses import dataclass

    from seisbench_feq.evaluation import _evaluate

    @dataclass
    class CountingStaLta(StaLtaPicker):
        calls = []

        def pick_windows(self, waveforms, pick_mode="peak"):
            self.calls.append(len(waveforms))
            return super().pick_windows(waveforms)

    waveforms, metadata = ncedc
    kwargs = dict(
        thresholds=None, tolerance_s=0.5, batch_size=64, costs=False, timing_repeats=1, progress=False,
        cache_dir=tmp_path / "cache",
    )
    first, _, _ = _evaluate({"sta": CountingStaLta()}, waveforms[:5], metadata.iloc[:5], **kwargs)
    again, _, _ = _evaluate({"sta": CountingStaLta()}, waveforms[:5], metadata.iloc[:5], **kwargs)
    assert CountingStaLta.calls == [5]  # second run read the stored picks
    pd.testing.assert_frame_equal(first["peak"], again["peak"])
    _evaluate({"sta": CountingStaLta(trigger_on=5.0)}, waveforms[:5], metadata.iloc[:5], **kwargs)
    _evaluate({"sta": CountingStaLta()}, waveforms[:4], metadata.iloc[:4], **kwargs)
    assert CountingStaLta.calls == [5, 5, 4]
    (tmp_path / "cache" / "sta.peak.npz").write_bytes(b"truncated")  # an interrupted write: recompute
    _evaluate({"sta": CountingStaLta()}, waveforms[:4], metadata.iloc[:4], **kwargs)
    assert CountingStaLta.calls == [5, 5, 4, 4]


class _Payload:
    """Unpickling this object creates a file: proof that a pickle was loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickles_in_the_cache_are_never_loaded(tmp_path, ncedc, caplog):
    """A hostile OUT/cache/*.pkl (the old format) or an .npz with pickled objects never runs code."""
    import pickle

    from seisbench_feq.evaluation import _evaluate, picks_key

    waveforms, metadata = ncedc
    w, md = waveforms[:4], metadata.iloc[:4].reset_index(drop=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    marker_pkl, marker_npz = tmp_path / "ran_from_pkl", tmp_path / "ran_from_npz"
    (cache / "sta.pkl").write_bytes(pickle.dumps({"key": "x", "picks": _Payload(marker_pkl)}))
    picker = StaLtaPicker()
    key = picks_key("sta", picker, w, md, {"detection": 0.5, "P": 0.3, "S": 0.3}, "peak")
    # right provenance key, but the picks are a pickled object array: allow_pickle=False refuses it
    empty = np.zeros(0, np.int64)
    np.savez(cache / "sta.peak.npz", key=np.array(key), n_windows=np.array(4), detection_window=empty,
             detection_on=empty, detection_off=empty, P_sample=np.array([_Payload(marker_npz)] * 4, dtype=object))  # fmt: skip
    kwargs = dict(thresholds=None, tolerance_s=0.5, batch_size=64, costs=False, timing_repeats=1, progress=False)
    with caplog.at_level("WARNING"):
        tables, picks, _ = _evaluate({"sta": picker}, w, md, cache_dir=cache, **kwargs)
    assert not marker_pkl.exists() and not marker_npz.exists()
    assert "sta.pkl" in caplog.text and "never loaded" in caplog.text
    assert "unreadable pick cache" in caplog.text and "allow_pickle" in caplog.text
    reference, _, _ = _evaluate({"sta": StaLtaPicker()}, w, md, cache_dir=None, **kwargs)
    pd.testing.assert_frame_equal(tables["peak"], reference["peak"])  # recomputed, not taken from the plant
    # the rewritten cache holds plain arrays only, and is used on the next run
    with np.load(cache / "sta.peak.npz", allow_pickle=False) as npz:
        assert str(npz["key"]) == key and npz["P_sample"].dtype == np.float64
    again, _, _ = _evaluate({"sta": StaLtaPicker()}, w, md, cache_dir=cache, **kwargs)
    pd.testing.assert_frame_equal(again["peak"], reference["peak"])


def test_cache_round_trip_keeps_every_column(tmp_path, ncedc):
    """Model picks (both modes, detections, maximum outputs) come back identical from the .npz cache."""
    from seisbench_feq.evaluation import _evaluate

    waveforms, metadata = ncedc
    w, md = waveforms[:3], metadata.iloc[:3].reset_index(drop=True)
    torch.manual_seed(0)
    model = FEQ3()
    kwargs = dict(thresholds={"P": 0.01, "S": 0.01, "detection": 0.01}, tolerance_s=0.5, batch_size=64,
                  costs=False, timing_repeats=1, progress=False, cache_dir=tmp_path / "c", pick_modes=("peak", "eqt"))  # fmt: skip
    _, first, _ = _evaluate({"m": model}, w, md, **kwargs)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["m.eqt.npz", "m.peak.npz"]
    _, second, _ = _evaluate({"m": model}, w, md, **kwargs)
    for mode in ("peak", "eqt"):
        assert list(second[mode]["m"].columns) == list(first[mode]["m"].columns)
        pd.testing.assert_frame_equal(first[mode]["m"], second[mode]["m"])
    assert any(len(d) for d in first["peak"]["m"]["detections"])  # detections survive the round trip


def test_evaluate_on_ncedc_scores_only_the_held_out_stations(ncedc):
    from seisbench_feq.data import split_by_station
    from seisbench_feq.evaluation import evaluate_on_ncedc

    _, metadata = ncedc
    held_out = split_by_station(metadata) == "test"
    table = evaluate_on_ncedc({"STA/LTA": StaLtaPicker()}, shared_path("data", "ncedc"), costs=False, progress=False)
    assert table.loc["STA/LTA", "n_windows"] == held_out.sum() < len(metadata)
    with pytest.raises(ValueError, match="split"):
        evaluate_on_ncedc({}, shared_path("data", "ncedc"), split="dev")


# --- evaluation protocol: random offsets, pick modes, maximum outputs -------------------------------


def test_eqt_pick_mode_takes_first_s_and_best_p_before_it():
    """EQTransformer's event-gated rule against SeisBench's peak rule on one constructed window."""
    t = np.arange(6000)

    def bump(at, height, width=10):
        return height * np.exp(-0.5 * ((t - at) / width) ** 2)

    det = np.zeros(6000)
    det[1000:3001] = 0.9  # one detection, 10-30 s
    p = bump(850, 0.99) + bump(950, 0.6) + bump(1200, 0.8) + bump(2495, 0.95) + bump(4000, 0.97)
    s = bump(2500, 0.6) + bump(2800, 0.9)
    window = np.stack([det, p, s])
    eqt = picks_from_probabilities(window[None], pick_mode="eqt").iloc[0]
    peak = picks_from_probabilities(window[None], pick_mode="peak").iloc[0]
    # 850 lies before the detection start - 1 s (900); 2495 after the S - 0.1 s (2490); 4000 outside;
    # S: the first S in the detection, not the highest
    assert (eqt["P_sample"], eqt["S_sample"]) == (1200, 2500) and eqt["P_value"] == pytest.approx(0.8, abs=1e-3)
    assert (peak["P_sample"], peak["S_sample"]) == (850, 2800)  # the highest peak anywhere
    assert eqt["detections"] == peak["detections"] == [(1000, 3000)]
    assert peak["P_max"] == pytest.approx(p.max()) and eqt["S_max"] == pytest.approx(s.max())
    # no S: P candidates run to the detection end; a short (< 0.1 s) detection gives nothing
    no_s = picks_from_probabilities(np.stack([det, p, np.zeros(6000)])[None], pick_mode="eqt").iloc[0]
    assert no_s["P_sample"] == 2495 and math.isnan(no_s["S_sample"])
    short = np.zeros(6000)
    short[1200:1205] = 0.9
    assert math.isnan(picks_from_probabilities(np.stack([short, p, s])[None], pick_mode="eqt").loc[0, "P_sample"])
    with pytest.raises(ValueError, match="pick_mode"):
        picks_from_probabilities(window[None], pick_mode="nope")


def test_maximum_outputs_show_a_capped_model():
    from seisbench_feq.evaluation import output_stats

    metadata = pd.DataFrame({"p_sample": [1000.0, 1000.0, 1000.0, np.nan], "s_sample": [1500.0, 1500.0, np.nan, np.nan]})
    picks = pd.DataFrame(
        {
            "detections": [[], [], [], []],
            "P_sample": [np.nan] * 4, "P_value": [np.nan] * 4, "S_sample": [np.nan] * 4, "S_value": [np.nan] * 4,
            "detection_max": [0.9, 0.8, 0.7, 0.1], "P_max": [0.45, 0.2, 0.3, 0.05],
            "S_max": [0.516443, 0.516443, 0.516443, 0.516443],
        }
    )  # fmt: skip
    row = score_picks(picks, metadata)
    assert row["P_max_prob"] == pytest.approx(0.45) and row["P_median_window_max"] == pytest.approx(0.3)
    assert row["S_windows_at_max"] == 4 and row["S_max_prob"] == pytest.approx(0.516443)
    assert row["S_median_window_max"] == pytest.approx(0.516443)  # over the 2 windows with an S label
    assert row["detection_max_prob"] == pytest.approx(0.9)
    scores = scores_for_json(row)
    assert scores["P"]["max_prob"] == pytest.approx(0.45) and scores["S"]["windows_at_max"] == 4
    assert math.isnan(output_stats(picks.drop(columns="P_max"), "P")["P_max_prob"])  # STA/LTA: no output


def test_random_offset_windows_keep_the_labels_on_the_arrivals(ncedc):
    """offset_seed puts P at a random sub-sample position; the waveform moves with the label."""
    from seisbench_feq.data import load_ncedc, read_ncedc_npz
    from seisbench_feq.evaluation import load_labelled_windows

    root = shared_path("data", "ncedc")
    w0, md0 = load_labelled_windows(root, limit=8)  # the protocol default: seed 0
    w1, md1 = load_labelled_windows(root, limit=8, offset_seed=1)
    wn, mdn = load_labelled_windows(root, limit=8, offset_seed=None)
    ref_w, ref_md = load_ncedc(root, offset_seed=0, names=list(md0["file_name"]))
    np.testing.assert_array_equal(w0, ref_w)
    assert (md0["p_sample"] % 1 != 0).all() and (mdn["p_sample"] % 1 == 0).all()
    assert (md0["p_sample"] != md1["p_sample"]).all()
    assert ((md0["p_sample"] >= 500) & (md0["p_sample"] < 2500)).all()
    np.testing.assert_allclose(md0["s_sample"] - md0["p_sample"], mdn["s_sample"] - mdn["p_sample"])
    _, md0_again = load_labelled_windows(root, limit=8)
    pd.testing.assert_frame_equal(md0, md0_again)  # the same seed gives the same windows
    # the waveform moves with the label by the sub-sample part: window sample j is trace sample
    # itp - p_sample + j (a linear interpolation of the raw trace matches it best without extra shift)
    for i in range(4):
        rec = read_ncedc_npz(root / md0.loc[i, "file_name"])
        z = rec["data"][:, 2] - rec["data"][:, 2].mean()
        errors = []
        for extra in (0.0, 0.5, -0.5):
            times = rec["itp"] - md0.loc[i, "p_sample"] + np.arange(6000) + extra
            expected = np.interp(times, np.arange(len(z)), z)
            got = w0[i, 0] - w0[i, 0].mean()
            errors.append(np.linalg.norm(got - (expected - expected.mean())) / np.linalg.norm(expected))
        assert errors[0] < min(errors[1:]), errors


def test_evaluate_on_ncedc_offset_seed(ncedc):
    from seisbench_feq.evaluation import evaluate_on_ncedc

    root = shared_path("data", "ncedc")
    random_pos = evaluate_on_ncedc({"STA/LTA": StaLtaPicker()}, root, split="all", costs=False, progress=False)
    fixed = evaluate_on_ncedc(
        {"STA/LTA": StaLtaPicker()}, root, split="all", offset_seed=None, costs=False, progress=False
    )
    assert random_pos.loc["STA/LTA", "n_windows"] == fixed.loc["STA/LTA", "n_windows"] == len(ncedc[1])
    assert random_pos.loc["STA/LTA", "P_res_mean_s"] != fixed.loc["STA/LTA", "P_res_mean_s"]
    assert random_pos.loc["STA/LTA", "pick_mode"] == "peak"


# --- continuous data ----------------------------------------------------------------------------


def test_continuous_scores_on_constructed_picks():
    from obspy import UTCDateTime

    from seisbench_feq.evaluation.continuous import grid_shifts, score_continuous

    t0 = UTCDateTime("2014-04-01T00:00:00.000")
    key = ("f", "CX.A.")

    def frame(rows):
        return pd.DataFrame(
            [{"model": "m", "file": "f", "trace_id": "CX.A.", "phase": ph, "time": t0 + dt, "probability": 0.9}
             for ph, dt in rows]  # fmt: skip
        )

    reference = frame([("P", 100.37), ("S", 105.0)])
    picks = frame([("P", 100.5), ("P", 300.0), ("S", 300.2), ("S", 700.0), ("P", 800.01)])
    row = score_continuous(picks, reference, {key: t0}, {key: (t0, 1200.0)})
    assert (row["P_picks"], row["S_picks"]) == (3, 2)
    assert row["P_on_whole_seconds_pct"] == pytest.approx(200 / 3)  # 300.0 and 800.01 (one sample)
    assert row["S_on_whole_seconds_pct"] == pytest.approx(50)
    assert row["S_near_own_P_pct"] == pytest.approx(50)  # 300.2 lies 0.2 s after the P at 300.0
    assert row["reference_P_matched_pct"] == 100 and row["reference_S_matched_pct"] == 0
    assert row["P_confirmed_by_reference_pct"] == pytest.approx(100 / 3)
    assert row["noise_hours"] == pytest.approx(600 / 3600)  # the second block has no reference pick
    assert row["noise_picks"] == 2 and row["noise_picks_per_hour"] == pytest.approx(12)
    assert "reference_P_clear" not in row  # no SNR column: no clear-pick columns
    clear = score_continuous(picks, reference.assign(snr=[5.0, 1.2]), {key: t0}, {key: (t0, 1200.0)})
    assert clear["reference_P_clear"] == 1 and clear["reference_P_clear_matched_pct"] == 100
    assert clear["reference_S_clear"] == 0 and np.isnan(clear["reference_S_clear_matched_pct"])
    assert grid_shifts(8) == [0, 13, 25, 38, 50, 63, 75, 88] and grid_shifts(1) == [0]


def test_arrival_snr_separates_an_arrival_from_noise():
    import obspy

    from seisbench_feq.evaluation.continuous import arrival_snr, band_passed

    rng = np.random.default_rng(0)
    start = obspy.UTCDateTime("2014-04-01T00:00:00")
    stream = obspy.Stream()
    for channel in ("HHZ", "HHN", "HHE"):
        data = rng.normal(0, 1, 6000)
        if channel == "HHZ":
            data[3000:3300] += 8 * np.sin(2 * np.pi * 8 * np.arange(300) / 100)  # a P at 30 s
        else:
            data[4000:4300] += 8 * np.sin(2 * np.pi * 5 * np.arange(300) / 100)  # an S at 40 s
        header = {"network": "CX", "station": "PB01", "location": "", "channel": channel,
                  "sampling_rate": 100.0, "starttime": start}  # fmt: skip
        stream += obspy.Trace(data, header)
    filtered = band_passed(stream)
    assert arrival_snr(filtered, "CX.PB01.", start + 30, "P") > 4
    assert arrival_snr(filtered, "CX.PB01.", start + 30, "S") < 2  # the horizontals are quiet at 30 s
    assert arrival_snr(filtered, "CX.PB01.", start + 40, "S") > 4
    assert arrival_snr(filtered, "CX.PB01.", start + 15, "P") < 2
    assert np.isnan(arrival_snr(filtered, "CX.PB01.", start + 2, "P"))  # no noise window before it
    assert np.isnan(arrival_snr(filtered, "CX.PB02.", start + 30, "P"))  # another station


@pytest.mark.timeout(600)
def test_cli_continuous_check_on_real_hours(tmp_path, capsys):
    """The continuous check on the first 4 minutes of both CX stations of one held-out day."""
    from seisbench_feq.cli import main

    cx = shared_path("data", "cx_continuous", "CX_20140401")
    h5 = shared_path("weights", "eqtransformer_original", "EqT_original_model.h5")
    out = tmp_path / "cont"
    argv = [
        "evaluate", "feq3", f"eqt-original:{h5}", "--continuous", str(cx), "--continuous-seconds", "240",
        "--continuous-reference", f"eqt-original:{h5}", "--continuous-shifts", "4", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    table = pd.read_csv(out / "continuous.csv", index_col="model")
    reference = "reference: EqT original (converted), 4 grid shifts averaged"
    assert list(table.index) == [reference, "FEQ3 (default)", "EqT original (converted)"]
    picks = pd.read_csv(out / "continuous_picks.csv")
    assert set(picks["file"]) == {"CX_20140401/CX.PB01..HH.mseed", "CX_20140401/CX.PB02..HH.mseed"}
    for model, row in table.iterrows():
        mine = picks[picks["model"] == model]
        assert row["P_picks"] == (mine["phase"] == "P").sum() and row["S_picks"] == (mine["phase"] == "S").sum()
    eqt = table.loc["EqT original (converted)"]
    assert eqt["P_picks"] > 0 and eqt["P_on_whole_seconds_pct"] > 50  # EqT's grid prior on continuous data
    assert table.loc["FEQ3 (default)", "P_picks"] > 0
    assert table.loc[reference, "reference_P_matched_pct"] == 100  # the reference agrees with itself
    ref_picks = picks[picks["model"] == reference]
    assert ref_picks["snr"].notna().all() and picks.loc[picks["model"] != reference, "snr"].isna().all()
    for phase in ("P", "S"):
        assert table.loc[reference, f"reference_{phase}_clear"] == (
            (ref_picks["phase"] == phase) & (ref_picks["snr"] >= 3)
        ).sum()
    report = (out / "evaluation.md").read_text()
    assert "## Continuous data" in report and "| FEQ3 (default) |" in report
    shown = ref_picks[(ref_picks["phase"] == "P") & ((ref_picks["snr"] < 1.5) | (ref_picks["snr"] >= 3))]
    assert (out / "continuous_reference_snr.png").is_file() == (len(shown) > 0)
    assert ("continuous_reference_snr.png" in report) == (len(shown) > 0)
    assert "## Continuous data" in capsys.readouterr().out


class _GridLockedPicker:
    """A stand-in for EQTransformer on continuous data: one arrival that stays put, one that it
    snaps to a whole second of its window grid (it moves with the stream start), and an artefact
    that only the unshifted stream shows."""

    sampling_rate = 100.0
    default_args = {"P_threshold": 0.3, "S_threshold": 0.3}

    def __init__(self, start, stable, snapped, artefact):
        self.start, self.stable, self.snapped, self.artefact = start, stable, snapped, artefact

    def annotate(self, stream):
        import obspy

        begin = min(tr.stats.starttime for tr in stream)
        n = int(round((max(tr.stats.endtime for tr in stream) - begin) * 100)) + 1
        t = np.arange(n) / 100.0

        def bump(at):
            return 0.9 * np.exp(-0.5 * ((t - (at - begin)) / 0.1) ** 2)

        p = bump(self.stable) + bump(begin + round(self.snapped - begin))
        if abs(begin - self.start) < 1e-6:
            p += bump(self.artefact)
        header = {"network": "CX", "station": "PB01", "location": "", "sampling_rate": 100.0, "starttime": begin}
        return obspy.Stream([obspy.Trace(p.astype(np.float32), {**header, "channel": "X_P"}),
                             obspy.Trace(np.zeros(n, np.float32), {**header, "channel": "X_S"})])  # fmt: skip


def test_grid_free_reference_rules_on_a_grid_locked_picker():
    import obspy

    from seisbench_feq.evaluation.continuous import consensus_picks, grid_shifts, reference_picks

    t0 = obspy.UTCDateTime("2014-04-01T00:00:00")
    stream = obspy.Stream(
        [obspy.Trace(np.zeros(30000, np.float32), {"network": "CX", "station": "PB01", "channel": f"HH{c}",
                                                    "sampling_rate": 100.0, "starttime": t0}) for c in "ZNE"]
    )  # fmt: skip
    model = _GridLockedPicker(t0, stable=t0 + 100.37, snapped=t0 + 200.44, artefact=t0 + 250.0)
    shifts = grid_shifts(8)
    averaged = reference_picks(model, stream, shifts, "ref", "f")
    consensus = consensus_picks(model, stream, shifts, "ref", "f")
    times = lambda frame: sorted(round(float(t - t0), 2) for t in frame["time"])  # noqa: E731
    # averaging keeps the arrival that stays put; the snapped one and the artefact fall below 0.3
    assert times(averaged) == [100.37]
    # consensus keeps both real arrivals, the snapped one near its true time, never the artefact
    found = times(consensus)
    assert len(found) == 2 and found[0] == pytest.approx(100.37, abs=0.02) and abs(found[1] - 200.44) < 0.2
