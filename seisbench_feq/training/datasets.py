"""Supervised data: STEAD converted offline from its original files, or any SeisBench dataset folder."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def _deterministic_fraction(names, fraction: float, salt: str) -> np.ndarray:
    import zlib

    return np.array([zlib.crc32(f"{salt}:{n}".encode()) / 2**32 < fraction for n in names], dtype=bool)


def ensure_stead(basepath: str | Path, test_npy: str | Path | None = None, **dataset_kwargs):
    """``seisbench.data.STEAD`` converted offline from ``basepath/merged.csv`` + ``merged.hdf5``.

    SeisBench's converter downloads the EqT test-trace list (``test.npy``) from GitHub. Offline,
    ``test_npy`` supplies that file; without it a deterministic 10 % of trace names (crc32 hash)
    become the test split, written in the same format. All other remote look-ups are answered
    "not available" so SeisBench converts from source. Once converted (in SeisBench's cache,
    ``$SEISBENCH_CACHE_ROOT/datasets/stead``), later calls load the cached files directly.
    """
    from unittest import mock

    import pandas as pd
    import seisbench.data as sbd
    import seisbench.util

    basepath = Path(basepath)
    dataset_kwargs.setdefault("component_order", "ZNE")
    dataset_kwargs.setdefault("sampling_rate", 100)
    if (sbd.STEAD._path_internal() / "metadata.csv").is_file():
        return sbd.STEAD(**dataset_kwargs)
    for name in ("merged.csv", "merged.hdf5"):
        if not (basepath / name).is_file():
            raise FileNotFoundError(f"STEAD source file {basepath / name} is missing (need merged.csv + merged.hdf5)")
    if test_npy is not None and not Path(test_npy).is_file():
        raise FileNotFoundError(f"--stead-test-npy {test_npy} does not exist")

    def offline_download(url, target, *args, **kwargs):
        if str(url).endswith("test.npy"):
            if test_npy is not None:
                names = np.load(test_npy, allow_pickle=False)
            else:
                logger.warning(
                    "no EqT test.npy given: a deterministic %d%% of STEAD trace names (crc32) is the test split", 10
                )
                all_names = pd.read_csv(basepath / "merged.csv", usecols=["trace_name"])["trace_name"].astype(str)
                names = all_names[_deterministic_fraction(all_names, 0.1, "stead-test")]
            np.save(target, np.asarray(names, dtype="U"))
            return
        raise ValueError(f"offline: {url} is not fetched (converting STEAD from source)")

    with mock.patch.object(seisbench.util, "download_http", offline_download):
        return sbd.STEAD(
            compile_from_source=True, download_kwargs={"basepath": str(basepath)}, **dataset_kwargs
        )


def load_waveform_dataset(spec: str, stead_basepath=None, stead_test_npy=None):
    """``"stead"`` (converted offline) or the path of a SeisBench-format dataset folder."""
    import seisbench.data as sbd

    if spec.lower() == "stead":
        if stead_basepath is None and not (sbd.STEAD._path_internal() / "metadata.csv").is_file():
            raise ValueError("--dataset stead needs --stead-basepath DIR (with merged.csv and merged.hdf5)")
        return ensure_stead(stead_basepath, stead_test_npy)
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"--dataset {spec}: not 'stead' and not a SeisBench dataset folder")
    if not any(path.glob("metadata*.csv")):
        raise FileNotFoundError(f"--dataset {spec}: no metadata*.csv (SeisBench format: metadata.csv + waveforms.hdf5)")
    return sbd.WaveformDataset(path, component_order="ZNE", sampling_rate=100)


def supervised_splits(dataset, val_fraction: float = 0.1):
    """(train, dev) parts: the dataset's own ``split`` column, else a deterministic hash split.

    With station columns the hash split holds out whole stations; evaluation sets should be split
    the same way (:func:`seisbench_feq.data.split_by_station`).
    """
    meta = dataset.metadata
    if "split" in meta.columns and (meta["split"] == "train").any():
        train, dev = dataset.train(), dataset.dev()
        if len(dev):
            return train, dev
        logger.warning("dataset has no 'dev' rows; holding out a hash split of the train rows for validation")
        dataset, meta = train, train.metadata
    if {"station_network_code", "station_code"} <= set(meta.columns):
        from ..data import split_by_station

        is_dev = (split_by_station(meta, test_fraction=val_fraction, seed=101) == "test").to_numpy()
    else:
        is_dev = _deterministic_fraction(meta["trace_name"].astype(str), val_fraction, "dev")
    if is_dev.all() or not is_dev.any():  # tiny sets: fall back to rows
        is_dev = _deterministic_fraction(meta["trace_name"].astype(str), val_fraction, "dev-rows")
        if not is_dev.any():
            is_dev[-1] = True
    return dataset.filter(~is_dev, inplace=False), dataset.filter(is_dev, inplace=False)
