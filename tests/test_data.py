"""NCEDC reader, noise windows and the station split, on the real shared NCEDC traces."""

import zlib

import numpy as np
import pandas as pd
import pytest
from conftest import shared_path

from seisbench_feq.data import (
    load_ncedc,
    load_ncedc_noise,
    ncedc_p_offset,
    read_ncedc_npz,
    split_by_station,
)


@pytest.fixture(scope="module")
def ncedc():
    root = shared_path("data", "ncedc")
    waveforms, metadata = load_ncedc(root)
    return root, waveforms, metadata


def test_ncedc_shapes_and_columns(ncedc):
    root, waveforms, metadata = ncedc
    n_files = len(pd.read_csv(root / "waveform.csv"))
    assert waveforms.shape == (n_files, 3, 6000)
    assert waveforms.dtype == np.float32
    assert len(metadata) == n_files
    for col in ("trace_name", "network", "station", "p_sample", "s_sample", "channels", "vertical_only"):
        assert col in metadata.columns
    assert metadata["station"].str.fullmatch(r"[A-Z0-9]+\.[A-Z0-9]+").all()
    assert (metadata["s_sample"] > metadata["p_sample"]).all()
    assert (metadata["s_sample"] < 6000).all()


def test_ncedc_zne_order_and_p_position(ncedc):
    root, waveforms, metadata = ncedc
    for i in [0, 1, 7, len(metadata) - 1]:
        row = metadata.iloc[i]
        raw = read_ncedc_npz(root / row["file_name"])
        expected_p = 500 + zlib.crc32(row["file_name"].encode()) % 2000
        assert row["p_sample"] == expected_p == ncedc_p_offset(row["file_name"])
        start = raw["itp"] - expected_p
        # npz columns are E, N, Z; rows of the output are Z, N, E
        np.testing.assert_allclose(waveforms[i, 0], raw["data"][start : start + 6000, 2], rtol=1e-6)
        np.testing.assert_allclose(waveforms[i, 1], raw["data"][start : start + 6000, 1], rtol=1e-6)
        np.testing.assert_allclose(waveforms[i, 2], raw["data"][start : start + 6000, 0], rtol=1e-6)
        assert row["s_sample"] == raw["its"] - start


def test_ncedc_vertical_only_traces(ncedc):
    _, waveforms, metadata = ncedc
    vertical = metadata["vertical_only"].to_numpy()
    assert vertical.any() and not vertical.all()
    assert not waveforms[vertical, 1:].any()  # N and E rows are zero
    assert (np.abs(waveforms[vertical, 0]).max(axis=-1) > 0).all()  # Z carries the data
    # the channel list agrees: a vertical-only trace names one channel ending in Z
    assert metadata.loc[vertical, "channels"].str.fullmatch(r"..Z").all()


def test_ncedc_noise_windows_precede_p(ncedc):
    root, waveforms, metadata = ncedc
    noise, noise_meta = load_ncedc_noise(root, window_samples=2900, guard_samples=100)
    assert noise.shape == (len(metadata), 3, 2900)
    raw = read_ncedc_npz(root / metadata["file_name"].iloc[0])
    np.testing.assert_allclose(noise[0, 0], raw["data"][raw["itp"] - 3000 : raw["itp"] - 100, 2], rtol=1e-6)
    padded, padded_meta = load_ncedc_noise(root, pad_to=6000)
    assert padded.shape == (len(metadata), 3, 6000)
    np.testing.assert_array_equal(padded[:, :, :2900], noise)
    assert (padded_meta["real_samples"] == 2900).all()
    with pytest.raises(ValueError, match="noise samples exist"):
        load_ncedc_noise(root, window_samples=6000)


def test_corrupt_npz_names_the_file(tmp_path):
    bad = tmp_path / "NC_BAD_2000010100000000.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(ValueError, match="NC_BAD_2000010100000000.npz"):
        load_ncedc(tmp_path)
    truncated = tmp_path / "sub"
    truncated.mkdir()
    good = shared_path("data", "ncedc", "NC_MEM_2017100709282692.npz").read_bytes()
    (truncated / "NC_MEM_2017100709282692.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="NC_MEM_2017100709282692.npz"):
        load_ncedc(truncated)


def test_split_by_station_never_shares_stations(ncedc):
    _, _, metadata = ncedc
    split = split_by_station(metadata, test_fraction=0.5, seed=0)
    assert set(split.unique()) == {"train", "test"}
    train_st = set(metadata.loc[split == "train", "station"])
    test_st = set(metadata.loc[split == "test", "station"])
    assert train_st.isdisjoint(test_st)
    assert train_st | test_st == set(metadata["station"])
    # deterministic, and independent of which other rows are present
    again = split_by_station(metadata.iloc[::-1].iloc[:40], test_fraction=0.5, seed=0)
    pd.testing.assert_series_equal(again, split.loc[again.index])
    # another seed gives another partition; the fraction moves the share of test stations
    assert not split.equals(split_by_station(metadata, seed=1))
    share = lambda f: metadata.loc[split_by_station(metadata, test_fraction=f) == "test", "station"].nunique()
    assert share(0.0) == 0 and share(1.0) == metadata["station"].nunique()
    assert share(0.2) < share(0.5) < share(0.8)


def test_split_by_station_accepts_seisbench_columns():
    meta = pd.DataFrame({"station_network_code": ["CX", "CX", "NC"], "station_code": ["PB01", "PB01", "MEM"]})
    split = split_by_station(meta, test_fraction=0.5)
    assert split.iloc[0] == split.iloc[1]
    with pytest.raises(KeyError):
        split_by_station(pd.DataFrame({"x": [1]}))
