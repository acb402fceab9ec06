"""The one pick table of the package: columns, PickList -> DataFrame, CSV/Parquet in and out.

Every command that writes or reads picks (``pick``, ``realtime``, ``associate``, ``compare``)
goes through this module, so a picks file written by one is read by the others unchanged.

Columns (:data:`PICK_COLUMNS`):

========================= ==================================================================
``trace_id``              ``NET.STA.LOC.CHA`` of the channel the pick is on: P on the vertical,
                          S on the horizontal with the larger amplitude after the pick
``network`` ... ``channel`` the SEED codes of ``trace_id``
``phase``                 ``P`` or ``S``
``time``                  peak of the probability (UTC)
``probability``           peak probability
``start_time, end_time``  trigger on / off (UTC)
``uncertainty_s``         standard deviation of the pick time (s) when estimated, else empty
``amplitude``             peak absolute amplitude (mean removed) in ``amplitude_window_s`` after
                          the pick, on ``channel``
``amplitude_unit``        ``counts`` for raw data, else the trace's ``stats.units``
``snr``                   signal-to-noise ratio in dB: 10 log10 of the mean square after the
                          pick over the mean square in ``noise_window_s`` before it, on data
                          high-passed at 1 Hz as the model sees it
``polarity``              first motion of P (``U``/``D``) when asked for and clear, else empty
``model, weights``        the model and weights that made the pick
========================= ==================================================================

Times are UTC pandas Timestamps in memory and ISO 8601 strings ending in ``Z`` in CSV files;
CSV files carry no index column. ``--format quakeflow`` writes PhaseNet/QuakeFlow's columns
(:data:`QUAKEFLOW_COLUMNS`) instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .files import atomic_write

if TYPE_CHECKING:  # heavy imports stay out of `seisbench-feq --help`
    import obspy
    import pandas as pd

PICK_COLUMNS = [
    "trace_id", "network", "station", "location", "channel", "phase", "time", "probability",
    "start_time", "end_time", "uncertainty_s", "amplitude", "amplitude_unit", "snr", "polarity",
    "model", "weights",
]
TIME_COLUMNS = ["time", "start_time", "end_time"]
FLOAT_COLUMNS = ["probability", "uncertainty_s", "amplitude", "snr"]
TEXT_COLUMNS = ["trace_id", "network", "station", "location", "channel", "phase",
                "amplitude_unit", "polarity", "model", "weights"]
#: PhaseNet / QuakeFlow pick columns, written by ``format="quakeflow"``.
QUAKEFLOW_COLUMNS = ["station_id", "phase_time", "phase_score", "phase_type", "phase_amplitude",
                     "phase_polarity"]
#: Columns of the pick CSV before this table (still read by :func:`read_picks`).
LEGACY_COLUMNS = ["station", "phase", "time", "probability"]
FORMATS = ("csv", "parquet", "quakeflow")

_ISO = "%Y-%m-%dT%H:%M:%S.%fZ"
VERTICAL = ("Z",)
HORIZONTALS = ("N", "E", "1", "2")


class PickTableError(ValueError):
    """A picks file that cannot be read as a pick table; the message names the file."""


# --------------------------------------------------------------------------------------------
# Building the table
# --------------------------------------------------------------------------------------------

def empty_picks() -> "pd.DataFrame":
    """A pick table with no rows and the right dtypes."""
    import pandas as pd

    return normalise_picks(pd.DataFrame({c: pd.Series(dtype=object) for c in PICK_COLUMNS}))


def split_id(trace_id: str) -> tuple[str, str, str, str]:
    """``"NET.STA.LOC[.CHA]"`` -> (net, sta, loc, cha); missing parts are ``""``."""
    parts = (str(trace_id).split(".") + ["", "", "", ""])[:4]
    return parts[0], parts[1], parts[2], parts[3]


def picks_frame(picks, *, stream: "obspy.Stream | None" = None, model: str = "",
                weights: str = "", amplitude_window_s: float = 3.0, noise_window_s: float = 5.0,
                polarity: bool = False, uncertainties: Sequence[float | None] | None = None,
                ) -> "pd.DataFrame":
    """The pick table of a :class:`seisbench.util.PickList` (built on ``PickList.to_dataframe``).

    With ``stream`` (the waveforms the picks were made on), each pick gets its channel (P on the
    vertical, S on the horizontal with the larger amplitude), amplitude, SNR and, with
    ``polarity=True``, the first motion of P. ``uncertainties`` (one per pick, in the list's
    order) fill ``uncertainty_s``; by default a pick's own ``uncertainty`` attribute is used.
    """
    import numpy as np
    import pandas as pd

    picks = list(picks)
    if not picks:
        df = empty_picks()
        df["model"], df["weights"] = str(model), str(weights)
        return df
    from seisbench.util import PickList

    df = PickList(picks).to_dataframe()  # sorted by time; "index" points back into the list
    order = list(df["index"])
    if uncertainties is None:
        unc = [getattr(picks[i], "uncertainty", None) for i in order]
    else:
        unc = [list(uncertainties)[i] for i in order]
    df["uncertainty_s"] = pd.to_numeric(pd.Series(unc, dtype=object), errors="coerce")
    codes = [split_id(t) for t in df["station"]]
    df["network"] = [c[0] for c in codes]
    df["station"] = [c[1] for c in codes]
    df["location"] = [c[2] for c in codes]
    df["channel"] = [c[3] for c in codes]
    df["amplitude"], df["amplitude_unit"], df["snr"] = np.nan, "", np.nan
    df["polarity"] = ""
    if stream is not None:
        by_station = _traces_by_station(stream)
        for row, i in enumerate(order):
            pick = picks[i]
            traces = by_station.get(".".join(split_id(pick.trace_id)[:3]), [])
            m = measure_pick(traces, pick.peak_time, pick.phase,
                             amplitude_window_s=amplitude_window_s,
                             noise_window_s=noise_window_s, polarity=polarity)
            if m is None:
                continue
            df.loc[row, ["channel", "amplitude", "amplitude_unit", "snr", "polarity"]] = [
                m["channel"], m["amplitude"], m["amplitude_unit"], m["snr"], m["polarity"]]
    df["trace_id"] = (df["network"] + "." + df["station"] + "." + df["location"] + "."
                      + df["channel"])
    df["model"], df["weights"] = str(model), str(weights)
    return normalise_picks(df[PICK_COLUMNS])


def _traces_by_station(stream) -> dict[str, list]:
    out: dict[str, list] = {}
    for tr in stream:
        key = f"{tr.stats.network}.{tr.stats.station}.{tr.stats.location}"
        out.setdefault(key, []).append(tr)
    return out


def _samples(traces, channel: str, t0, t1):
    """Samples of one channel in [t0, t1) (first trace that covers t0), as float64."""
    import numpy as np

    for tr in traces:
        if tr.stats.channel != channel:
            continue
        st, sr = tr.stats.starttime, tr.stats.sampling_rate
        a = int(np.ceil((t0 - st) * sr))
        b = int(np.ceil((t1 - st) * sr))
        a, b = max(a, 0), min(b, tr.stats.npts)
        if b > a:
            data = np.ma.filled(np.ma.asarray(tr.data[a:b], dtype=np.float64), np.nan)
            return data, sr, st + a / sr
    return None, None, None


def _highpass(x, sr: float, freq: float = 1.0):
    from scipy.signal import butter, sosfilt

    sos = butter(2, freq, btype="highpass", fs=sr, output="sos")
    return sosfilt(sos, x - x[0])


def measure_pick(traces, time, phase: str, *, amplitude_window_s: float = 3.0,
                 noise_window_s: float = 5.0, polarity: bool = False) -> dict | None:
    """Channel, amplitude, SNR (dB) and optional polarity of one pick on a station's traces.

    Returns None when none of the traces covers the pick.
    """
    import numpy as np

    channels = sorted({tr.stats.channel for tr in traces})
    wanted = VERTICAL if str(phase).upper().startswith("P") else HORIZONTALS
    candidates = [c for c in channels if c[-1:].upper() in wanted] or channels
    best = None
    for ch in candidates:
        data, sr, start = _samples(traces, ch, time - noise_window_s, time + amplitude_window_s)
        if data is None or not np.isfinite(data).any():
            continue
        n_noise = int(round((time - start) * sr))
        noise, signal = data[:max(n_noise, 0)], data[max(n_noise, 0):]
        if not len(signal):
            continue
        ref = np.nanmean(noise) if np.isfinite(noise).any() else np.nanmean(data)
        amplitude = float(np.nanmax(np.abs(signal - ref)))
        if best is not None and amplitude <= best["amplitude"]:
            continue
        tr = next(t for t in traces if t.stats.channel == ch)
        snr = np.nan
        pol = ""
        clean = np.nan_to_num(data - ref)
        if len(clean) > 8 and sr:
            filtered = _highpass(clean, sr)
            f_noise, f_signal = filtered[:n_noise], filtered[n_noise:]
            noise_power = float(np.mean(f_noise[len(f_noise) // 5:] ** 2)) if len(f_noise) > 5 else 0.0
            signal_power = float(np.mean(f_signal ** 2))
            if noise_power > 0 and signal_power > 0:
                snr = 10.0 * np.log10(signal_power / noise_power)
            if polarity and str(phase).upper().startswith("P") and noise_power > 0:
                first = f_signal[: max(int(0.2 * sr), 1)]
                peak = first[int(np.argmax(np.abs(first)))]
                if abs(peak) > 3.0 * np.sqrt(noise_power):  # a clear first motion only
                    pol = "U" if peak > 0 else "D"
        best = {"channel": ch, "amplitude": amplitude, "snr": float(snr), "polarity": pol,
                "amplitude_unit": str(tr.stats.get("units", "") or "counts")}
    return best


# --------------------------------------------------------------------------------------------
# Types, sorting, files
# --------------------------------------------------------------------------------------------

def normalise_picks(df: "pd.DataFrame") -> "pd.DataFrame":
    """All :data:`PICK_COLUMNS` in order, UTC times (microseconds), floats, strings, sorted by
    time, phase and trace id (a stable order, so reruns write identical files)."""
    import numpy as np
    import pandas as pd

    df = df.copy()
    for col in PICK_COLUMNS:
        if col not in df:
            df[col] = np.nan if col in FLOAT_COLUMNS else ""
    for col in TIME_COLUMNS:
        df[col] = pd.to_datetime(df[col], utc=True, format="ISO8601").astype("datetime64[us, UTC]")
    for col in FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in TEXT_COLUMNS:
        df[col] = df[col].fillna("").astype(str).replace({"nan": "", "None": ""})
    df = df[PICK_COLUMNS]
    return df.sort_values(["time", "phase", "trace_id"], kind="mergesort").reset_index(drop=True)


def to_quakeflow(df: "pd.DataFrame") -> "pd.DataFrame":
    """PhaseNet/QuakeFlow's pick columns (``station_id`` is ``NET.STA.LOC.CHA``)."""
    import pandas as pd

    return pd.DataFrame({
        "station_id": df["trace_id"],
        "phase_time": df["time"],
        "phase_score": df["probability"],
        "phase_type": df["phase"],
        "phase_amplitude": df["amplitude"],
        "phase_polarity": df["polarity"],
    })


def _format_times(df: "pd.DataFrame", columns) -> "pd.DataFrame":
    df = df.copy()
    for col in columns:
        df[col] = df[col].dt.strftime(_ISO).fillna("")
    return df


def picks_format(path: str | os.PathLike, format: str | None = None) -> str:
    """``csv``, ``parquet`` or ``quakeflow``: ``format`` if given, else from the suffix."""
    if format:
        if format not in FORMATS:
            raise PickTableError(f"unknown pick format {format!r}; choose from {', '.join(FORMATS)}")
        return format
    return "parquet" if Path(path).suffix.lower() == ".parquet" else "csv"


def write_picks(df: "pd.DataFrame", path: str | os.PathLike, format: str | None = None) -> Path:
    """Write a pick table atomically: Parquet for ``*.parquet``, CSV otherwise (ISO 8601 ``Z``
    times, no index column); ``format="quakeflow"`` writes :data:`QUAKEFLOW_COLUMNS` as CSV."""
    fmt = picks_format(path, format)
    df = normalise_picks(df)
    if fmt == "parquet":
        return atomic_write(path, lambda p: df.to_parquet(p, index=False))
    if fmt == "quakeflow":
        table = _format_times(to_quakeflow(df), ["phase_time"])
    else:
        table = _format_times(df, TIME_COLUMNS)
    return atomic_write(path, lambda p: table.to_csv(p, index=False))


def read_picks(path: str | os.PathLike) -> "pd.DataFrame":
    """A pick table from CSV or Parquet written by :func:`write_picks`, or from older files:
    the ``station, phase, time, probability`` CSV (``station`` as ``NET.STA.LOC``), the earlier
    realtime CSV and PhaseNet/QuakeFlow's columns. Raises :class:`PickTableError` naming the
    file when it is missing or lacks the columns."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise PickTableError(f"picks file {path} does not exist or is not a file")
    try:
        if path.suffix.lower() == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas/pyarrow raise many types for a bad file
        raise PickTableError(f"cannot read picks file {path}: {exc}") from None
    return picks_from_table(df, source=str(path))


def picks_from_table(df: "pd.DataFrame", source: str = "table") -> "pd.DataFrame":
    """:func:`read_picks` for a DataFrame already in memory (any of the accepted layouts)."""
    df = df.copy()
    df = df.drop(columns=[c for c in ("index", "Unnamed: 0") if c in df])
    if set(QUAKEFLOW_COLUMNS[:4]) <= set(df.columns) and "trace_id" not in df:
        df = df.rename(columns={"station_id": "trace_id", "phase_time": "time",
                                "phase_score": "probability", "phase_type": "phase",
                                "phase_amplitude": "amplitude", "phase_polarity": "polarity"})
    if "trace_id" not in df:
        if not set(LEGACY_COLUMNS) <= set(df.columns):
            missing = sorted(set(LEGACY_COLUMNS) - set(df.columns))
            raise PickTableError(f"{source} is not a pick table: missing column(s) "
                                 f"{', '.join(missing)} (expected {', '.join(PICK_COLUMNS)})")
        df = df.rename(columns={"station": "trace_id", "uncertainty": "uncertainty_s"})
        for col in ("network", "station", "location", "channel"):
            df = df.drop(columns=[col], errors="ignore")
    missing = [c for c in ("trace_id", "phase", "time") if c not in df]
    if missing:
        raise PickTableError(f"{source} is not a pick table: missing column(s) {', '.join(missing)}")
    codes = [split_id(t) for t in df["trace_id"].astype(str)]
    for i, col in enumerate(("network", "station", "location", "channel")):
        if col not in df or (df[col].astype(str) == "").all():
            df[col] = [c[i] for c in codes]
    df["trace_id"] = [".".join(split_id(t)) for t in df["trace_id"].astype(str)]
    for col in ("start_time", "end_time"):
        if col not in df:
            df[col] = df["time"]
    if "probability" not in df:
        df["probability"] = float("nan")
    try:
        return normalise_picks(df)
    except (ValueError, TypeError) as exc:
        raise PickTableError(f"{source}: bad values in the pick table: {exc}") from None
