"""Architecture, hooks and annotate/classify behaviour of LEQNet and FEQ1-3."""

import logging
from unittest import mock

import numpy as np
import obspy
import pytest
import seisbench.models as sbm
import torch

import seisbench_feq
from seisbench_feq import FEQ1, FEQ2, FEQ3, LEQNet, keras_param_count, torch_param_count
from seisbench_feq.demo import example_event_path
from seisbench_feq.models import Encoder, highpass_windows, max_pool_same, normalize_windows

ALL = [LEQNet, FEQ1, FEQ2, FEQ3]


@pytest.fixture
def seisbench_warnings(caplog):
    caplog.set_level(logging.WARNING, logger="seisbench")
    return caplog


def event_stream():
    return obspy.read(str(example_event_path()))


@pytest.mark.parametrize(
    "cls, keras, pytorch",
    [(LEQNet, 39776, 39712), (FEQ1, 36096, 35936), (FEQ2, 30512, 30480), (FEQ3, 32080, 32080)],
)
def test_parameter_counts_match_papers(cls, keras, pytorch):
    model = cls()
    assert keras_param_count(model) == keras
    assert torch_param_count(model) == pytorch


def test_keras_count_of_seisbench_eqtransformer():
    assert keras_param_count(sbm.EQTransformer(lstm_blocks=2)) == 373495


def test_eqtransformer_constructor_never_runs():
    with mock.patch.object(sbm.EQTransformer, "__init__", side_effect=AssertionError("EqT built")):
        model = LEQNet()
    assert not any(isinstance(m, sbm.EQTransformer) for m in model.modules())


def test_tf_same_pool_alignment():
    # TF "same": 2000 samples pooled by 3 -> 667 windows, the pad sample goes to the right.
    x = torch.arange(2000, dtype=torch.float32).view(1, 1, -1)
    y = max_pool_same(x, 3)
    assert y.shape[-1] == 667 and y[0, 0, -1] == 1999 and y[0, 0, 0] == 2
    # 667 -> 223 pads one sample on each side: the first window is [pad, 0, 1].
    y = max_pool_same(torch.arange(667.0).view(1, 1, -1), 3)
    assert y.shape[-1] == 223 and y[0, 0, 0] == 1 and y[0, 0, 1] == 4


@pytest.mark.parametrize("in_samples", [6000, 3001])
def test_lengths_through_encoder_and_decoder(in_samples):
    model = FEQ3(in_samples=in_samples).eval()
    x = torch.randn(2, 3, in_samples)
    outputs = model(x)
    assert len(outputs) == 3 and all(o.shape == (2, in_samples) for o in outputs)
    assert all(((o >= 0) & (o <= 1)).all() for o in outputs)


def test_encoder_lengths_are_the_papers():
    lengths, x = [], torch.randn(1, 3, 6000)
    encoder = Encoder()
    for index, pool in zip(encoder.conv_order, encoder.pools):
        x = max_pool_same(encoder.convs[index](x), pool)
        lengths.append(x.shape[-1])
    assert lengths == [2000, 667, 223, 112, 56]


def test_forward_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(batch, 3, 6000\)"):
        FEQ3()(torch.zeros(1, 3, 5000))


def test_normalisation_per_channel_and_zero_channels():
    x = torch.randn(4, 3, 6000) * torch.tensor([1.0, 100.0, 0.0]).view(1, 3, 1) + 7
    y = normalize_windows(x)
    assert torch.allclose(y[:, :2].std(-1), torch.ones(4, 2), atol=1e-4)
    assert torch.count_nonzero(y[:, 2]) == 0


def test_highpass_is_obspys_zero_phase_butterworth_and_removes_microseism():
    from scipy.signal import butter, sosfiltfilt

    rng = np.random.default_rng(0)
    t = np.arange(6000) / 100.0
    microseism = 1000 * np.sin(2 * np.pi * 0.2 * t)
    event = rng.normal(size=6000) * (t > 30)  # broadband "arrival" at 30 s
    x = np.stack([microseism + event, rng.normal(size=6000).cumsum(), np.zeros(6000)])[None]
    y = highpass_windows(torch.from_numpy(x), 1.0, 100.0).numpy()
    # ObsPy's filter("highpass", freq=1, corners=2, zerophase=True) is this sosfiltfilt
    expected = sosfiltfilt(butter(2, 1.0, "highpass", fs=100, output="sos"), x)
    inner = slice(500, -500)  # away from the edges, which annotate blinds
    assert np.abs(y[..., inner] - expected[..., inner]).max() < 1e-3 * np.abs(expected[..., inner]).max()
    assert np.abs(y[0, 0, 500:2900]).max() < 0.01 * 1000  # microseism gone before the arrival
    assert np.count_nonzero(y[0, 2]) == 0  # a missing component stays zero


def test_highpass_argument_round_trips_and_is_checked(tmp_path):
    model = FEQ3(highpass=1.0)
    model.save(tmp_path / "hp")
    assert FEQ3.load(tmp_path / "hp").highpass == 1.0
    assert FEQ3().highpass is None
    batch = torch.randn(2, 3, 6000) + torch.linspace(0, 50, 6000)  # a trend: the filter must act
    assert not torch.allclose(model.annotate_batch_pre(batch.clone(), {}), FEQ3().annotate_batch_pre(batch.clone(), {}))
    with pytest.raises(ValueError, match="highpass=60"):
        FEQ3(highpass=60)


@pytest.mark.parametrize("cls", ALL)
def test_batch_hooks_contract(cls):
    # annotate hangs silently when these hooks fail, so their contract is tested directly.
    model = cls().eval()
    batch = torch.randn(5, 3, 6000) * 1000
    with torch.no_grad():
        out = model.annotate_batch_post(model(model.annotate_batch_pre(batch, {})), None, {})
    assert out.shape == (5, 6000, 3) and out.dtype == torch.float32
    assert torch.isnan(out[:, :500]).all() and torch.isnan(out[:, -500:]).all()
    assert not torch.isnan(out[:, 500:-500]).any()


@pytest.mark.parametrize("cls", ALL)
def test_save_load_round_trip(cls, tmp_path):
    model = cls(norm="peak").eval()
    model.save(tmp_path / "m")
    loaded = cls.load(tmp_path / "m").eval()
    assert loaded.get_model_args() == model.get_model_args()
    x = torch.randn(2, 3, 6000)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            assert torch.equal(a, b)
    assert cls(**model.get_model_args()).get_model_args() == model.get_model_args()


def test_unknown_pretrained_name_is_a_clear_error():
    with pytest.raises(ValueError, match="No shipped FEQ3 weights named 'nonexistent'"):
        FEQ3.from_pretrained("nonexistent")


@pytest.mark.timeout(120)
def test_classify_real_event_structure():
    model = FEQ3()
    stream = event_stream()
    annotations = model.annotate(stream)
    assert sorted(tr.stats.channel for tr in annotations) == ["FEQ3_Detection", "FEQ3_P", "FEQ3_S"]
    for trace in annotations:
        assert trace.stats.sampling_rate == 100
        # 50 % overlap with (500, 500) blinding: only the first and last 5 s stay unannotated
        assert abs(trace.stats.starttime - (stream[0].stats.starttime + 5)) < 0.02
        assert not np.isnan(trace.data).any()
    out = model.classify(stream, P_threshold=0.0001, S_threshold=0.0001)
    assert out.creator == "FEQ3"
    assert {p.phase for p in out.picks} <= {"P", "S"}
    assert all(p.trace_id == ".CER." for p in out.picks)


@pytest.mark.timeout(120)
def test_resampling_is_announced(seisbench_warnings):
    FEQ3().annotate(event_stream())
    assert "resampling .CER..BHZ from 150 Hz to the model's 100 Hz" in seisbench_warnings.text


@pytest.mark.timeout(120)
def test_one_component_is_zero_filled_with_warning(seisbench_warnings):
    stream = event_stream().select(channel="BHZ")
    annotations = FEQ3().annotate(stream)
    assert len(annotations) == 3 and annotations[0].stats.npts > 5000
    assert ".CER. has no N/E component(s)" in seisbench_warnings.text


@pytest.mark.timeout(120)
def test_lower_case_channels_are_not_dropped(seisbench_warnings):
    stream = event_stream()
    reference = FEQ3().annotate(stream.copy())
    for trace in stream:
        trace.stats.channel = trace.stats.channel.lower()
    annotations = FEQ3().annotate(stream)
    assert [tr.stats.npts for tr in annotations] == [tr.stats.npts for tr in reference]
    assert "upper-cased" in seisbench_warnings.text
    assert "has no" not in seisbench_warnings.text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["masked", "nan"])
def test_gaps_masks_and_nans_never_become_nan_output(kind, seisbench_warnings):
    stream = event_stream()
    for trace in stream:
        trace.data = trace.data.astype(np.float64)
        if kind == "masked":
            trace.data = np.ma.masked_array(trace.data, mask=np.zeros(trace.stats.npts, bool))
            trace.data.mask[100:400] = True
        else:
            trace.data[100:400] = np.nan
    annotations = FEQ3().annotate(stream)
    assert len(annotations) == 3
    assert all(not np.isnan(tr.data).any() for tr in annotations)
    assert "300 masked/NaN samples" in seisbench_warnings.text


@pytest.mark.timeout(60)
def test_short_and_empty_streams(seisbench_warnings):
    short = event_stream().trim(endtime=event_stream()[0].stats.starttime + 30)
    assert len(FEQ3().annotate(short)) == 0
    assert "shorter than one 60 s window" in seisbench_warnings.text
    assert len(FEQ3().annotate(obspy.Stream())) == 0


def test_public_api():
    assert set(seisbench_feq.MODELS) == {"leqnet", "feq1", "feq2", "feq3"}
    assert all(issubclass(c, sbm.WaveformModel) for c in ALL)
    assert FEQ3().labels == ["Detection", "P", "S"] and FEQ3().component_order == "ZNE"


# --- argument checks: these used to hang forever ---------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"overlap": 6000}, "overlap=6000"),
        ({"overlap": 1.5}, "overlap=1.5"),
        ({"stacking": "foo"}, "stacking='foo'"),
        ({"pick_mode": "best"}, "pick_mode='best'"),
        ({"P_threshold": 0}, "P_threshold=0"),
        ({"min_ps_separation": -1}, "min_ps_separation=-1"),
    ],
)
def test_bad_annotate_arguments_fail_fast(kwargs, message):
    model = FEQ3()
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        model.classify(event_stream(), **kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        model.annotate(event_stream(), **kwargs)


# --- the stream cleaner -------------------------------------------------------------------------------


def _cx(minutes: float = 15):
    from conftest import shared_path

    root = shared_path("data", "cx_continuous", "sds", "2014", "CX", "PB01")
    stream = obspy.Stream()
    for channel in ("HHZ", "HHN", "HHE"):
        stream += obspy.read(str(root / f"{channel}.D" / f"CX.PB01..{channel}.D.2014.121"))
    t0 = min(tr.stats.starttime for tr in stream)
    return stream.trim(t0, t0 + minutes * 60)


@pytest.fixture(scope="module")
def feq3_default():
    return FEQ3.from_pretrained("default")


@pytest.fixture(scope="module")
def cx_reference(feq3_default):
    stream = _cx()
    return stream, feq3_default.annotate(stream), feq3_default.classify(stream).picks


def _pick_keys(picks):
    return [(p.phase, round(float(p.peak_time.timestamp), 2)) for p in picks]


@pytest.mark.timeout(300)
def test_overlap_conflict_keeps_the_rest_and_names_trace_and_span(feq3_default, cx_reference, seisbench_warnings):
    stream, reference, _ = cx_reference
    z = stream.select(channel="HHZ")[0]
    t0 = z.stats.starttime
    first, second = z.slice(t0, t0 + 400), z.slice(t0 + 390, z.stats.endtime).copy()
    second.data = second.data.copy()
    second.data[:1000] += 1000  # the two records disagree on all 10 s of their overlap
    broken = stream.select(channel="HH[NE]") + first + second
    annotations = feq3_default.annotate(broken)
    text = seisbench_warnings.text
    assert "CX.PB01..HHZ: overlapping records disagree on 1000 samples" in text
    assert str(t0 + 390) in text  # the span is named
    # nothing is lost: the annotations still cover the whole span (the conflict is a short gap in Z)
    for ref, got in zip(sorted(reference, key=lambda t: t.id), sorted(annotations, key=lambda t: t.id)):
        assert got.stats.starttime - ref.stats.starttime < 0.02 and ref.stats.endtime - got.stats.endtime < 0.02


@pytest.mark.timeout(300)
def test_identical_overlap_is_merged_silently(feq3_default, cx_reference, seisbench_warnings):
    stream, _, reference_picks = cx_reference
    z = stream.select(channel="HHZ")[0]
    t0 = z.stats.starttime
    doubled = stream.select(channel="HH[NE]") + z.slice(t0, t0 + 400) + z.slice(t0 + 390, z.stats.endtime)
    assert _pick_keys(feq3_default.classify(doubled).picks) == _pick_keys(reference_picks)
    assert "overlapping" not in seisbench_warnings.text


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["all", "one"])
def test_values_beyond_float32_are_scaled_not_lost(feq3_default, cx_reference, how, seisbench_warnings):
    stream, _, reference_picks = cx_reference
    huge = stream.copy()
    for trace in huge:
        trace.data = trace.data.astype(np.float64)
        if how == "all":
            trace.data *= 2.0**126  # about 8.5e37 x the counts
    if how == "one":
        huge.select(channel="HHZ")[0].data[30000] = 1e39
    picks = feq3_default.classify(huge).picks
    annotations = feq3_default.annotate(huge)
    assert all(np.isfinite(tr.data).all() for tr in annotations)
    assert "beyond what float32 windows can normalise" in seisbench_warnings.text
    assert "CX.PB01..HH" in seisbench_warnings.text
    if how == "all":  # an exact power-of-two scale: the same picks
        assert _pick_keys(picks) == _pick_keys(reference_picks)


@pytest.mark.timeout(300)
def test_rate_within_tolerance_is_nominal(feq3_default, cx_reference, seisbench_warnings):
    stream, _, reference_picks = cx_reference
    off = stream.copy()
    for trace in off:
        trace.stats.sampling_rate = 100.0001
    picks = feq3_default.classify(off).picks
    assert "resampling" not in seisbench_warnings.text
    assert len(picks) == len(reference_picks)
    assert max(abs(a[1] - b[1]) for a, b in zip(_pick_keys(picks), _pick_keys(reference_picks))) < 0.1


@pytest.mark.timeout(120)
def test_messages_are_true(seisbench_warnings):
    stream = event_stream()
    stream.resample(100.0)
    short = stream.copy().trim(endtime=stream[0].stats.starttime + 59.99 - 0.005)  # 5999 samples
    FEQ3().annotate(short)
    assert "is 59.99 s long, shorter than one 60 s window" in seisbench_warnings.text
    seisbench_warnings.clear()
    nan = stream.copy()
    for trace in nan:
        trace.data = trace.data.astype(np.float64)
    nan.select(channel="BHZ")[0].data[1000:1300] = np.nan
    annotations = FEQ3().annotate(nan)
    assert "left unannotated" not in seisbench_warnings.text
    assert "zero-filled where other components" in seisbench_warnings.text
    assert all(not np.isnan(tr.data).any() for tr in annotations)


@pytest.mark.timeout(300)
def test_each_warning_once_per_trace_and_call(feq3_default, cx_reference, seisbench_warnings):
    stream, _, _ = cx_reference
    lower = stream.copy()
    for trace in lower:
        trace.stats.channel = trace.stats.channel.lower()
        trace.data = trace.data.astype(np.float64)
        trace.data[1000:1100] = np.nan
        trace.data[50000:50100] = np.nan
    feq3_default.classify(lower, chunk_seconds=120)  # many pieces, one message per trace
    messages = [r.getMessage() for r in seisbench_warnings.records]
    for channel in ("hhz", "hhn", "hhe"):
        assert sum(f"channel code of CX.PB01..{channel} upper-cased" in m for m in messages) == 1
        assert sum(f"CX.PB01..{channel.upper()} has 200 masked/NaN samples" in m for m in messages) == 1


# --- pick modes ---------------------------------------------------------------------------------------


def _annotation_stream(det, p, s, model="FEQ3", rate=100.0):
    start = obspy.UTCDateTime(2020, 1, 1)
    header = dict(network="XX", station="STA", location="", sampling_rate=rate, starttime=start)
    return obspy.Stream(
        [obspy.Trace(np.asarray(x, dtype=np.float32), dict(header, channel=f"{model}_{label}"))
         for label, x in (("Detection", det), ("P", p), ("S", s))]
    ), start


def test_eqt_pick_mode_on_streams_and_arrays_agree():
    from seisbench_feq.models.picking import classify_picks, eqt_window_picks, picks_from_windows

    n = 6000
    det, p, s = np.zeros(n), np.zeros(n), np.zeros(n)
    det[1000:3000] = 0.9
    p[[1099, 1100, 1101, 1199, 1200, 1201, 3999, 4000, 4001]] = [0.3, 0.4, 0.3, 0.5, 0.8, 0.5, 0.8, 0.9, 0.8]
    s[[1999, 2000, 2001, 2499, 2500, 2501]] = [0.4, 0.5, 0.4, 0.8, 0.9, 0.8]
    thresholds = {"detection": 0.5, "P": 0.3, "S": 0.3}
    # EqT: the first S inside the detection (2000, not the higher 2500), the highest P before it
    # (1200); the P at 4000 lies outside every detection.
    assert eqt_window_picks(det, p, s) == ([1200], [2000])
    window = picks_from_windows(np.stack([det, p, s])[None], thresholds, pick_mode="eqt")[0]
    assert [k for k, _ in window.P] == [1200] and [k for k, _ in window.S] == [2000]
    peak = picks_from_windows(np.stack([det, p, s])[None], thresholds, pick_mode="peak")[0]
    assert [k for k, _ in peak.P] == [1100, 1200, 4000] and [k for k, _ in peak.S] == [2000, 2500]
    stream, start = _annotation_stream(det, p, s)
    picks = classify_picks(stream, "FEQ3", "PS", thresholds, pick_mode="eqt")
    assert [(pk.phase, round(pk.peak_time - start, 2)) for pk in picks] == [("P", 12.0), ("S", 20.0)]
    assert picks[0].trace_id == "XX.STA."
    peaks = classify_picks(stream, "FEQ3", "PS", thresholds, pick_mode="peak")
    assert sorted(round(pk.peak_time - start, 2) for pk in peaks) == [11.0, 12.0, 20.0, 25.0, 40.0]


def test_ps_conflicts_keep_the_more_probable_pick():
    from seisbench_feq.models.picking import classify_picks, resolve_ps_conflicts

    n = 6000
    det, p, s = np.zeros(n), np.zeros(n), np.zeros(n)
    # P and S both fire on the arrival at 20 s (S more probable, 0.3 s apart) and at 40 s (P more
    # probable); the P at 12 s and the S at 30 s are far from any pick of the other phase.
    p[[1199, 1200, 1201, 1999, 2000, 2001, 3999, 4000, 4001]] = [0.5, 0.8, 0.5, 0.3, 0.4, 0.3, 0.8, 0.9, 0.8]
    s[[2029, 2030, 2031, 2999, 3000, 3001, 4009, 4010, 4011]] = [0.6, 0.7, 0.6, 0.6, 0.7, 0.6, 0.3, 0.5, 0.3]
    stream, start = _annotation_stream(det, p, s)
    thresholds = {"detection": 0.5, "P": 0.3, "S": 0.3}
    raw = classify_picks(stream, "FEQ3", "PS", thresholds, pick_mode="peak")
    kept = classify_picks(stream, "FEQ3", "PS", thresholds, pick_mode="peak", min_ps_separation=0.5)
    assert [(pk.phase, round(pk.peak_time - start, 2)) for pk in raw] == [
        ("P", 12.0), ("P", 20.0), ("S", 20.3), ("S", 30.0), ("P", 40.0), ("S", 40.1)]
    assert [(pk.phase, round(pk.peak_time - start, 2)) for pk in kept] == [
        ("P", 12.0), ("S", 20.3), ("S", 30.0), ("P", 40.0)]
    assert [(pk.phase, round(pk.peak_time - start, 2)) for pk in resolve_ps_conflicts(raw, 0.2)] == [
        ("P", 12.0), ("P", 20.0), ("S", 20.3), ("S", 30.0), ("P", 40.0)]


@pytest.mark.timeout(300)
def test_classify_resolves_ps_conflicts_by_default(feq3_default, cx_reference):
    stream, _, default_picks = cx_reference
    every = feq3_default.classify(stream, min_ps_separation=0).picks

    def conflicts(picks):
        p_times = [pk.peak_time for pk in picks if pk.phase == "P"]
        return sum(1 for pk in picks if pk.phase == "S" and any(abs(pk.peak_time - t) < 0.5 for t in p_times))

    assert feq3_default._annotate_args["min_ps_separation"][1] == 0.5
    assert conflicts(default_picks) == 0
    assert len(default_picks) <= len(every)
    assert set(_pick_keys(default_picks)) <= set(_pick_keys(every))


@pytest.mark.timeout(300)
def test_classify_pick_mode_eqt_on_real_data(feq3_default, cx_reference):
    from obspy.signal.trigger import trigger_onset

    stream, annotations, default_picks = cx_reference
    eqt = feq3_default.classify(stream, pick_mode="eqt").picks
    peak_picks = feq3_default.classify(stream, pick_mode="peak").picks
    assert feq3_default.default_args.get("pick_mode") == "peak"  # chosen on validation data
    assert _pick_keys(default_picks) == _pick_keys(peak_picks)
    assert 0 < len(eqt) < len(peak_picks)
    det = annotations.select(channel="FEQ3_Detection")[0]
    t0, rate = det.stats.starttime, det.stats.sampling_rate
    events = [(t0 + a / rate, t0 + b / rate) for a, b in trigger_onset(det.data, 0.5, 0.5) if b - a >= 10]
    s_per_event = [sum(1 for pk in eqt if pk.phase == "S" and a < pk.peak_time < b) for a, b in events]
    assert max(s_per_event) == 1 and sum(s_per_event) == sum(pk.phase == "S" for pk in eqt)
    for pick in eqt:  # P from 1 s before its detection on, never after the detection's end
        assert any(a - 1.0 < pick.peak_time < b for a, b in events)


@pytest.mark.timeout(300)
def test_classify_mc_dropout_uncertainty_on_a_real_event():
    from pathlib import Path

    import seisbench_feq

    stream = obspy.read(str(Path(seisbench_feq.__file__).parent / "demo_data" / "NC.CCOB.mseed"))
    model = FEQ3.from_pretrained("default")
    plain = model.classify(stream).picks
    sampled = model.classify(stream, uncertainty_samples=8).picks
    assert len(plain) >= 2 and _pick_keys(plain) == _pick_keys(sampled)  # the picks themselves unchanged
    assert all(np.isfinite(pk.uncertainty) and 0 <= pk.uncertainty < 1.0 for pk in sampled)
    assert all(getattr(pk, "uncertainty", None) is None for pk in plain)
    with pytest.raises(ValueError, match="uncertainty_samples=1"):
        model.classify(stream, uncertainty_samples=1)
