"""Every speed and memory optimisation computes what the straightforward path computes, on real data.

- the fused forward pass (``seisbench_feq.models.fast``) against the plain modules;
- the fast additive attention against SeisBench's ``SeqSelfAttention``;
- chunked annotate against a single pass over the segment;
- the bounded-memory pick extraction against SeisBench's / ObsPy's;
- the ONNX Runtime backend and its fallback.

Trained weights make the comparison meaningful (random-weight outputs hover near 0.5): the
original LEQNet converted from ../shared/weights (kept in memory only, the file has no licence),
and an FEQ3 whose layers shared with LEQNet carry those trained weights. Real waveforms: the
CX continuous archive in ../shared/data/cx_continuous.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import obspy
import pytest
import seisbench.models as sbm
import torch
from conftest import shared_path
from obspy.signal.trigger import trigger_onset
from seisbench.models.eqtransformer import SeqSelfAttention

from seisbench_feq import FEQ1, FEQ2, FEQ3, LEQNet
from seisbench_feq.models import annotate, fast, normalize_windows
from seisbench_feq.models.annotate import _chunk_plan
from seisbench_feq.models.backends import set_inference_backend, use_backend
from seisbench_feq.models.fast import additive_attention, fused_forward
from seisbench_feq.models.picking import detections_from_annotations, picks_from_annotations, trigger_onsets

PROB_ATOL = 1e-5  # fused vs plain probabilities: float32 rounding of a rearranged sum


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sds(station: str, channel: str) -> str:
    root = shared_path("data", "cx_continuous", "sds")
    return str(root / "2014" / "CX" / station / f"{channel}.D" / f"CX.{station}..{channel}.D.2014.121")


def real_stream(station: str = "PB01", minutes: float = 60, offset_minutes: float = 0) -> obspy.Stream:
    stream = obspy.Stream()
    for channel in ("HHZ", "HHN", "HHE"):
        stream += obspy.read(_sds(station, channel))
    t0 = min(tr.stats.starttime for tr in stream) + offset_minutes * 60
    return stream.trim(t0, t0 + minutes * 60)


N_WINDOWS = 6  # one batch size for all tests: oneDNN prepares kernels per shape


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    """Real, normalised 60 s windows (Z, N, E) from the aftershock-rich CX archive."""
    stream = real_stream(minutes=N_WINDOWS + 1)
    data = np.stack([stream.select(channel=f"HH{c}")[0].data[: N_WINDOWS * 6000] for c in "ZNE"])
    x = torch.from_numpy(data.reshape(3, N_WINDOWS, 6000).transpose(1, 0, 2).astype(np.float32))
    return normalize_windows(x)


@pytest.fixture(scope="module")
def leqnet_trained() -> LEQNet:
    convert = pytest.importorskip("seisbench_feq.convert")
    h5 = shared_path("weights", "leqnet_original", "final_model.h5")
    torch.manual_seed(0)
    return convert.leqnet_from_keras(h5).eval()


@pytest.fixture(scope="module")
def feq3_trained(leqnet_trained) -> FEQ3:
    """FEQ3 with the trained LEQNet weights in every layer the two share (the GRUs stay random)."""
    torch.manual_seed(1)
    model = FEQ3().eval()
    source = leqnet_trained.state_dict()
    state = model.state_dict()
    shared = {k: v for k, v in source.items() if k in state and state[k].shape == v.shape}
    assert len(shared) > 0.7 * len(state)
    state.update(shared)
    model.load_state_dict(state)
    return model


def _both(model, x, logits=False):
    with torch.no_grad():
        fused = model(x, logits=logits)
        with use_backend(model, "plain"):
            plain = model(x, logits=logits)
    return fused, plain


# --- fused forward pass ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["leqnet_trained", "feq3_trained", "feq1", "feq2"])
def test_fused_forward_equals_plain_on_real_windows(which, request, windows):
    if which in ("feq1", "feq2"):
        torch.manual_seed(2)
        model = {"feq1": FEQ1, "feq2": FEQ2}[which]().eval()
    else:
        model = request.getfixturevalue(which)
    fused, plain = _both(model, windows)
    for a, b in zip(fused, plain):
        assert a.shape == b.shape == (N_WINDOWS, 6000)
        assert torch.allclose(a, b, atol=PROB_ATOL, rtol=0)
    if which == "leqnet_trained":  # the comparison is not between two flat 0.5 curves
        assert max(float(p.max()) for p in plain[1:]) > 0.5
    logits_fused, logits_plain = _both(model, windows, logits=True)
    for a, b in zip(logits_fused, logits_plain):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("in_samples", [3001, 4000])
def test_fused_forward_other_window_lengths(in_samples):
    # Other lengths crop in the last decoder stage too (no polyphase head there).
    torch.manual_seed(3)
    model = FEQ3(in_samples=in_samples).eval()
    x = torch.randn(3, 3, in_samples)
    fused, plain = _both(model, x)
    for a, b in zip(fused, plain):
        assert a.shape == (3, in_samples)
        assert torch.allclose(a, b, atol=PROB_ATOL, rtol=0)


def test_large_batches_are_split_without_changing_results(leqnet_trained, windows):
    x = windows.repeat(11, 1, 1)  # 66 windows > FUSED_BATCH
    with torch.no_grad():
        whole = fused_forward(leqnet_trained, x)
        single = fused_forward(leqnet_trained, x[-N_WINDOWS:])
    for a, b in zip(whole, single):
        assert torch.allclose(a[-N_WINDOWS:], b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("width", [None, 3])
def test_attention_matches_seisbench(width, leqnet_trained):
    trained = leqnet_trained.pick_attentions[0] if width else leqnet_trained.transformer_d0.attention
    reference = SeqSelfAttention(16, attention_width=width, eps=1e-7)
    reference.load_state_dict(trained.state_dict())
    torch.manual_seed(4)
    x = torch.randn(9, 16, 56) * 3  # 9: not a multiple of the batch chunk
    # A loud step far from most bands: their rows' Keras maximum lies outside the band, which the
    # banded path must recover (ignoring it changes outputs by more than 1 here).
    x[:, :, 40] *= 10
    with torch.no_grad():
        expected = reference(x)[0]
        got = additive_attention(reference, x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_training_and_autograd_run_the_plain_modules(windows):
    torch.manual_seed(5)
    model = FEQ3()
    model.train()
    loss = sum(y.mean() for y in model(windows[:1]))
    loss.backward()  # the fused path writes in place; training must never reach it
    assert model.decoders[1].head.weight.grad is not None
    model.eval()
    with torch.enable_grad():
        with_grad = model(windows)
    assert all(y.requires_grad for y in with_grad)
    with torch.no_grad():
        without = model(windows)
    for a, b in zip(with_grad, without):
        assert torch.allclose(a.detach(), b, atol=PROB_ATOL, rtol=0)


def test_fused_weights_follow_parameter_changes(windows, leqnet_trained):
    torch.manual_seed(6)
    model = LEQNet().eval()
    with torch.no_grad():
        before = model(windows)[1]
    model.load_state_dict(leqnet_trained.state_dict())  # in-place copy: the cache must notice
    fused, plain = _both(model, windows)
    assert not torch.allclose(before, fused[1], atol=1e-3)
    for a, b in zip(fused, plain):
        assert torch.allclose(a, b, atol=PROB_ATOL, rtol=0)


# --- annotate / classify on a real hour -----------------------------------------------------------


@pytest.fixture(scope="module")
def half_hour() -> obspy.Stream:
    return real_stream(minutes=30, offset_minutes=5)


@pytest.fixture(scope="module")
def half_hour_annotations(leqnet_trained, half_hour) -> obspy.Stream:
    return leqnet_trained.annotate(half_hour)


@pytest.mark.timeout(240)
def test_classify_fused_equals_plain_on_real_data(leqnet_trained, half_hour, half_hour_annotations):
    model = leqnet_trained
    fused_ann = half_hour_annotations
    with use_backend(model, "plain"):
        plain_ann = model.annotate(half_hour)
    argdict = dict(model.default_args)
    fused = model.classify_aggregate(fused_ann, argdict)
    plain = model.classify_aggregate(plain_ann, argdict)
    for a, b in zip(fused_ann, plain_ann):
        assert a.id == b.id and a.stats.starttime == b.stats.starttime and a.stats.npts == b.stats.npts
        assert np.nanmax(np.abs(a.data - b.data)) <= 1e-3
    assert len(plain.picks) > 0
    assert [p.phase for p in fused.picks] == [p.phase for p in plain.picks]
    for a, b in zip(fused.picks, plain.picks):
        assert abs(a.peak_time - b.peak_time) <= 0.01
        assert abs(a.peak_value - b.peak_value) <= 1e-3


@pytest.mark.timeout(240)
def test_chunked_annotate_equals_one_pass(leqnet_trained):
    # Two stations, one with a 5-minute gap in every component: three segments, pieces of 10 min.
    first = real_stream("PB01", minutes=45)
    t0 = first[0].stats.starttime
    gapped = first.copy().trim(t0, t0 + 12 * 60) + first.copy().trim(t0 + 15 * 60, t0 + 45 * 60)
    stream = gapped + real_stream("PB02", minutes=25)
    model = leqnet_trained
    one_pass = model.annotate(stream, chunk_seconds=0)
    chunked = model.annotate(stream, chunk_seconds=300)
    assert len(one_pass) == len(chunked) == 9
    key = lambda tr: (tr.id, tr.stats.starttime)  # noqa: E731
    for a, b in zip(sorted(one_pass, key=key), sorted(chunked, key=key)):
        assert key(a) == key(b) and a.stats.npts == b.stats.npts
        assert np.array_equal(np.isnan(a.data), np.isnan(b.data))
        assert np.nanmax(np.abs(a.data - b.data)) <= 1e-6
    argdict = dict(model.default_args)
    picks_one = model.classify_aggregate(one_pass, argdict).picks
    picks_chunked = model.classify_aggregate(chunked, argdict).picks
    assert len(picks_one) > 0
    assert [(p.trace_id, p.phase, p.peak_time) for p in picks_one] == [
        (p.trace_id, p.phase, p.peak_time) for p in picks_chunked
    ]


def _pick_set(output):
    # SeisBench's Pick.__lt__ is not a total order: equal sets may sort differently
    picks = {(p.trace_id, p.phase, round(p.peak_time.timestamp, 5), round(p.start_time.timestamp, 5),
              round(p.end_time.timestamp, 5), round(float(p.peak_value), 6)) for p in output.picks}
    detections = {(d.trace_id, round(d.start_time.timestamp, 5), round(d.end_time.timestamp, 5),
                   round(float(d.peak_value), 6)) for d in output.detections}
    return picks, detections


@pytest.mark.timeout(300)
def test_streamed_classify_equals_classify_of_the_annotations(leqnet_trained):
    # classify extracts picks piece by piece at quiet points; the whole-stream extraction on the
    # annotations is the reference, for both pick rules and a threshold that is rarely quiet
    first = real_stream("PB01", minutes=45)
    t0 = first[0].stats.starttime
    stream = first.copy().trim(t0, t0 + 12 * 60) + first.copy().trim(t0 + 15 * 60, t0 + 45 * 60)
    stream += real_stream("PB02", minutes=25)
    model = leqnet_trained
    annotations = model.annotate(stream, chunk_seconds=300)
    for options in ({}, {"pick_mode": "eqt"}, {"P_threshold": 0.02, "S_threshold": 0.02, "min_ps_separation": 2.0}):
        kwargs = {"chunk_seconds": 300, **options}
        expected = _pick_set(model.classify_aggregate(annotations, {**model.default_args, **kwargs}))
        got = _pick_set(model.classify(stream, **kwargs))
        assert len(expected[0]) > 5 and len(expected[1]) > 0, options
        assert got == expected, options


def test_quiet_cut_buffer_cuts_only_where_every_output_is_quiet(half_hour_annotations):
    from seisbench_feq.models.streamed_classify import QuietCutBuffer

    labels = np.stack([tr.data for tr in half_hour_annotations.select(station="PB01")])  # Detection, P, S
    levels = np.array([0.25, 0.15, 0.15])
    buffer = QuietCutBuffer(layout={}, off_levels=levels, margin=150)
    pieces, block = [], 30_000
    for start in range(0, labels.shape[1], block):
        buffer.append(labels[:, start : start + block], 100.0)
        taken = buffer.take(last=start + block >= labels.shape[1])
        if taken is not None:
            pieces.append(taken)
    assert len(pieces) > 2  # the half hour is cut several times
    assert [p[0] for p in pieces] == list(np.cumsum([0] + [p[1].shape[1] for p in pieces[:-1]]))
    assert np.array_equal(np.concatenate([p[1] for p in pieces], axis=1), labels, equal_nan=True)
    for start, _ in pieces[1:]:
        around = labels[:, start - 150 : start + 151]
        assert (around < levels[:, None]).all()


def _newest_quiet_cut(labels, levels, margin):
    """The rule of QuietCutBuffer, searched over the whole buffer at once (the reference)."""
    width = 2 * margin + 1
    if labels.shape[1] < width:
        return None
    quiet = np.flatnonzero(np.convolve(~(labels < levels[:, None]).all(axis=0), np.ones(width), "valid") == 0)
    return int(quiet[-1]) + margin if len(quiet) else None


@pytest.mark.parametrize("blocks", [[7, 3, 50, 1, 200, 13], [400], [1] * 60, [25, 25, 333, 4, 4, 90]])
def test_quiet_cut_buffer_cuts_where_a_search_of_the_whole_buffer_does(blocks):
    from seisbench_feq.models.streamed_classify import QuietCutBuffer

    rng = np.random.default_rng(len(blocks))
    levels, margin = np.array([0.5, 0.5]), 4
    # quiet and loud stretches of random lengths, a NaN (loud) here and there
    runs = rng.integers(1, 30, size=200)
    loud = np.repeat(np.arange(len(runs)) % 2 == 1, runs)[: sum(blocks)]
    labels = np.where(loud, 0.9, 0.1)[None, :].repeat(2, axis=0).astype(np.float32)
    labels[1, rng.integers(0, labels.shape[1], 5)] = np.nan
    buffer = QuietCutBuffer(layout={}, off_levels=levels, margin=margin)
    start, pending = 0, labels[:, :0]
    cuts = 0
    for first, stop in zip(np.cumsum([0] + blocks[:-1]), np.cumsum(blocks)):
        block = labels[:, first:stop]
        buffer.append(block, 100.0)
        pending = np.concatenate([pending, block], axis=1)
        expected = _newest_quiet_cut(pending, levels, margin)
        taken = buffer.take(last=False)
        if expected is None:
            assert taken is None, (first, start)
            continue
        assert taken[0] == start and np.array_equal(taken[1], pending[:, :expected], equal_nan=True)
        start, pending, cuts = start + expected, pending[:, expected:], cuts + 1
    assert cuts > 0
    rest = buffer.take(last=True)
    if pending.shape[1]:
        assert rest[0] == start and np.array_equal(rest[1], pending, equal_nan=True)
    else:
        assert rest is None


@pytest.mark.timeout(120)
def test_annotate_leaves_the_input_stream_alone(feq3_trained):
    stream = real_stream(minutes=12)
    before = [tr.data.copy() for tr in stream]
    feq3_trained.annotate(stream, chunk_seconds=300)
    assert all(np.array_equal(a, tr.data) for a, tr in zip(before, stream))
    assert all(tr.data.flags.writeable for tr in stream)


@pytest.mark.parametrize("n", [6000, 6001, 9000, 12000, 365_000, 1_000_000, 1_003_217])
@pytest.mark.parametrize("chunk", [3000, 600_000])
def test_chunk_plan_cores_tile_the_segment(n, chunk):
    plan = _chunk_plan(n, in_samples=6000, step=3000, chunk=chunk)
    assert plan[0][2] == 0 and plan[-1][3] == n
    for (start, stop, core_start, core_stop), following in zip(plan, plan[1:] + [None]):
        assert start % 3000 == 0  # on the segment's window grid
        assert start <= core_start < core_stop <= stop <= n
        assert stop - start >= min(6000, n)
        if start > 0:
            assert core_start - start >= 6000  # every core window lies inside the piece
        if stop < n:
            assert stop - core_stop >= 6000  # and the piece's end-aligned window outside the core
        if following is not None:
            assert following[2] == core_stop


# --- pick extraction ---------------------------------------------------------------------------------


def test_trigger_onsets_equal_obspy_on_hard_cases():
    rng = np.random.default_rng(7)
    for trial in range(200):
        n = int(rng.integers(1, 3000))
        data = np.convolve(rng.random(n), np.ones(15) / 15, "same").astype(np.float32)
        if trial % 3 == 0:
            data[rng.integers(0, n, 4)] = np.nan
        if trial % 5 == 0:
            data[:] = 0.9  # a trigger from the first to the last sample
        threshold = float(rng.uniform(0.2, 0.8))
        expected = [tuple(map(int, t)) for t in trigger_onset(data, threshold, threshold / 2)]
        for piece in (1, 5, 64, 1 << 20):
            assert trigger_onsets(data, threshold, piece=piece) == expected


def test_picks_and_detections_equal_seisbench(half_hour_annotations):
    annotations = half_hour_annotations
    for phase, threshold in (("P", 0.3), ("S", 0.3), ("P", 0.05)):
        traces = annotations.select(channel=f"*_{phase}")
        expected = sbm.WaveformModel.picks_from_annotations(traces, threshold, phase)
        got = picks_from_annotations(traces, threshold, phase)
        assert len(expected) > 0
        assert [vars(p) for p in got] == [vars(p) for p in expected]
    traces = annotations.select(channel="*_Detection")
    expected = sbm.WaveformModel.detections_from_annotations(traces, 0.5)
    assert [vars(d) for d in detections_from_annotations(traces, 0.5)] == [vars(d) for d in expected]


# --- backends -------------------------------------------------------------------------------------------


def test_backend_names_are_checked():
    with pytest.raises(ValueError, match="inference backend 'cuda-magic'"):
        set_inference_backend(FEQ3(), "cuda-magic")


@pytest.mark.timeout(120)
def test_onnxruntime_backend_matches_fused(feq3_trained, windows):
    pytest.importorskip("onnxruntime")
    with torch.no_grad():
        fused = feq3_trained(windows)
        with use_backend(feq3_trained, "onnxruntime"):
            ort = feq3_trained(windows)
            again = feq3_trained(windows[:2])  # the session is built once and reused
    assert feq3_trained.__dict__.get("_ort_runner") is not None
    assert again[0].shape == (2, 6000)
    for a, b in zip(fused, ort):
        assert torch.allclose(a, b, atol=1e-4, rtol=0)


def test_onnxruntime_backend_falls_back_when_missing(monkeypatch, caplog, windows):
    torch.manual_seed(8)
    model = FEQ3().eval()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # "import onnxruntime" raises ImportError
    caplog.set_level(logging.WARNING, logger="seisbench_feq.models.backends")
    with torch.no_grad():
        expected = model(windows)
        with use_backend(model, "onnxruntime"):
            got = model(windows)
    assert "ONNX Runtime backend unavailable" in caplog.text
    for a, b in zip(expected, got):
        assert torch.equal(a, b)
    assert model.inference_backend == "fused"  # use_backend restored the class default


def test_module_constants_are_sane():
    assert fast.FUSED_BATCH >= 16 and annotate.DEFAULT_CHUNK_SECONDS >= 600
