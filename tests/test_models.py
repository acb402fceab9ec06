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


@pytest.mark.timeout(180)
def test_demo_picks_the_bundled_earthquake(tmp_path):
    """`make demo`: shipped FEQ3 on ObsPy's SEISAN event (P near 14:52:34.9) writes a CSV and a plot."""
    import pandas as pd

    from seisbench_feq.demo import run_demo

    result = run_demo(tmp_path)
    picks = pd.read_csv(result["csv"])
    assert result["figure"].stat().st_size > 10_000
    assert len(picks) == len(result["picks"]) >= 1
    times = [obspy.UTCDateTime(t) for t in picks["time"]]
    # every pick lies on the earthquake, between its P and the end of its S coda
    assert all(obspy.UTCDateTime("2005-07-23T14:52:33") <= t <= obspy.UTCDateTime("2005-07-23T14:52:50") for t in times)
