"""The one QuakeML builder (seisbench_feq.io.quakeml): every field written is read back by ObsPy."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from seisbench_feq.io import quakeml

T0 = pd.Timestamp("2021-03-01T12:00:00.123456", tz="UTC")


def _events():
    return pd.DataFrame({
        "event_id": ["a", "b", "no_picks", "no_origin"],
        "time": [T0, T0 + pd.Timedelta(seconds=60), T0 + pd.Timedelta(seconds=90), T0 + pd.Timedelta(seconds=99)],
        "latitude": [33.0, 33.1, 33.2, np.nan],
        "longitude": [-115.6, -115.5, -115.4, np.nan],
        "depth_km": [5.0, np.nan, 3.0, 3.0],
        "n_stations": [2, 1, 1, 1],
        "rms_residual_s": [0.12, 0.3, 0.1, 0.1],
        "azimuthal_gap": [180.0, 360.0, 90.0, 90.0],
        "min_distance_km": [11.1, 20.0, 5.0, 5.0],
    })


def _picks():
    """The pick table layout (trace_id with the channel the picker saw) plus event_id."""
    return pd.DataFrame({
        "event_id": ["a", "a", "a", "b", "no_origin"],
        "trace_id": ["XX.S01..HHZ", "XX.S01..HHZ", "XX.S02.00.HHE", "XX.S02.00.HH2", "XX.S03..HHZ"],
        "network": ["XX"] * 5, "station": ["S01", "S01", "S02", "S02", "S03"],
        "location": ["", "", "00", "00", ""],
        "channel": ["HHZ", "HHZ", "HHE", "HH2", "HHZ"],
        "phase": ["P", "S", "P", "S", "P"],  # the S on S01 says HHZ and the P on S02 says HHE: both corrected
        "time": [T0 + pd.Timedelta(seconds=s) for s in (2.0, 3.5, 2.5, 64.0, 100.0)],
        "probability": [0.91234, 0.5, np.nan, 0.7, 0.8],
        "uncertainty_s": [0.05, np.nan, 0.02, 0.1, 0.1],
        "amplitude": [1.5e-6, 3.0e-6, np.nan, 2e-6, 1e-6],
        "amplitude_unit": ["m/s", "m/s", None, "counts", "m/s"],
        "polarity": ["U", None, "D", None, None],
        "residual_s": [0.01, -0.02, 0.03, np.nan, 0.0],
        "distance_km": [10.0, 10.0, np.nan, 12.0, 5.0],
        "azimuth": [45.0, 45.0, np.nan, 100.0, 0.0],
        "model": ["FEQ3"] * 5,
    })


def _stations():
    return pd.DataFrame({"id": ["XX.S01.", "XX.S02.00"], "latitude": [33.05, 33.1], "longitude": [-115.6, -115.7]})


def test_phase_channel_rule():
    assert quakeml.phase_channel("HHZ", "P") == "HHZ"
    assert quakeml.phase_channel("HHE", "P") == "HHZ"
    assert quakeml.phase_channel("HHZ", "S") == "HHN"
    assert quakeml.phase_channel("HHE", "S") == "HHE"
    assert quakeml.phase_channel("HH1", "S") == "HH1"
    assert quakeml.phase_channel("HH", "P") == "HHZ"
    assert quakeml.phase_channel("HH", "S") == "HHN"
    assert quakeml.phase_channel(None, "P") is None
    assert quakeml.phase_channel("", "S") is None


def test_round_trip_field_by_field(tmp_path, caplog):
    import obspy

    picks = _picks()
    mags = pd.DataFrame({"event_id": ["a"], "magnitude": [1.83], "magnitude_type": ["ML"],
                         "method": ["Hutton & Boore (1987)"], "uncertainty": [0.21], "station_count": [2]})
    sta_mags = pd.DataFrame({"event_id": ["a", "a"], "station": ["XX.S01.", "XX.S02.00"], "magnitude": [1.7, 1.96]})
    with caplog.at_level(logging.WARNING, logger="seisbench_feq.io.quakeml"):
        cat = quakeml.build_catalog(_events(), picks, _stations(), agency="XX", magnitudes=mags,
                                    station_magnitudes=sta_mags, velocity_model="socal (Hadley-Kanamori 1977)")
    assert "without origin time or epicentre" in caplog.text and "no_origin" in caplog.text
    assert "without picks" in caplog.text and "no_picks" in caplog.text
    path = quakeml.write_quakeml(cat, tmp_path / "c.xml")
    assert b"<seisbench_feq:probability>0.9123</seisbench_feq:probability>" in path.read_bytes()
    back = obspy.read_events(str(path), format="QUAKEML")
    assert len(back) == 2  # no event without origin, none with 0 picks
    assert all(len(ev.picks) > 0 and ev.preferred_origin() is not None for ev in back)
    a, b = sorted(back, key=lambda e: e.preferred_origin().time)

    origin = a.preferred_origin()
    assert abs(origin.time - obspy.UTCDateTime("2021-03-01T12:00:00.123456")) < 1e-6
    assert (origin.latitude, origin.longitude, origin.depth) == (33.0, -115.6, 5000.0)
    assert origin.quality.associated_phase_count == 3 and origin.quality.used_station_count == 2
    assert origin.quality.standard_error == pytest.approx(0.12)
    assert origin.quality.azimuthal_gap == pytest.approx(180.0)
    assert origin.quality.minimum_distance == pytest.approx(obspy.geodetics.kilometer2degrees(11.1))
    assert "socal" in str(origin.earth_model_id) and "pyocto" in str(origin.method_id)
    assert origin.creation_info.agency_id == "XX"
    assert b.preferred_origin().depth is None  # unknown depth is not invented

    by_time = sorted(a.picks, key=lambda p: p.time)
    expected = picks[picks["event_id"] == "a"].sort_values("time")
    for pick, row in zip(by_time, expected.itertuples(index=False)):
        assert abs(pick.time - obspy.UTCDateTime(row.time.isoformat())) < 1e-6
        assert pick.phase_hint == row.phase
        assert pick.waveform_id.network_code == "XX" and pick.waveform_id.station_code == row.station
        assert (pick.waveform_id.location_code or "") == row.location
        assert pick.waveform_id.channel_code == ("HHZ" if row.phase == "P" else ("HHN" if row.channel == "HHZ" else row.channel))
        assert str(pick.method_id).endswith("/FEQ3") and pick.creation_info.author == "FEQ3"
        if np.isnan(row.probability):
            assert quakeml.probability_of(pick) is None
        else:
            assert quakeml.probability_of(pick) == pytest.approx(row.probability, abs=1e-4)
        if np.isnan(row.uncertainty_s):
            assert pick.time_errors.uncertainty is None
        else:
            assert pick.time_errors.uncertainty == pytest.approx(row.uncertainty_s)
    assert [p.polarity for p in by_time] == ["positive", "negative", None]
    assert [p.waveform_id.channel_code for p in by_time] == ["HHZ", "HHZ", "HHN"]

    picks_by_id = {str(p.resource_id): p for p in a.picks}
    arrivals = sorted(origin.arrivals, key=lambda r: picks_by_id[str(r.pick_id)].time)
    assert [r.phase for r in arrivals] == ["P", "P", "S"]
    assert [r.time_residual for r in arrivals] == pytest.approx([0.01, 0.03, -0.02])
    assert arrivals[0].distance == pytest.approx(obspy.geodetics.kilometer2degrees(10.0))
    # S02's distance is not in the pick table: computed from the station table (WGS84)
    dist_m, az, _ = obspy.geodetics.gps2dist_azimuth(33.0, -115.6, 33.1, -115.7)
    assert arrivals[1].distance == pytest.approx(obspy.geodetics.kilometer2degrees(dist_m / 1000))
    assert arrivals[1].azimuth == pytest.approx(az)

    amps = {str(x.pick_id): x for x in a.amplitudes}
    assert len(amps) == 2  # the pick without amplitude has none
    assert amps[str(by_time[0].resource_id)].generic_amplitude == pytest.approx(1.5e-6)
    assert amps[str(by_time[0].resource_id)].unit == "m/s"
    assert [x.unit for x in b.amplitudes] == ["other"]  # counts is not a QuakeML unit

    mag = a.preferred_magnitude()
    assert mag.mag == pytest.approx(1.83) and mag.magnitude_type == "ML"
    assert "Hutton" in str(mag.method_id) and "Hutton & Boore (1987)" in mag.comments[0].text
    assert mag.mag_errors.uncertainty == pytest.approx(0.21) and mag.station_count == 2
    assert mag.origin_id == origin.resource_id
    assert sorted(sm.mag for sm in a.station_magnitudes) == pytest.approx([1.7, 1.96])
    assert len(mag.station_magnitude_contributions) == 2
    assert not b.magnitudes


def test_station_id_column_and_channel_prefix():
    """The catalog's tables give ``station`` as NET.STA.LOC and no channel: the prefix completes it."""
    ev = _events().iloc[:1]
    picks = pd.DataFrame({"event_id": ["a", "a"], "station": ["CI.BOM.", "CI.BOM."], "phase": ["P", "S"],
                          "time": [T0, T0 + pd.Timedelta(seconds=1)], "probability": [0.9, 0.8]})
    cat = quakeml.build_catalog(ev, picks, channel_prefix="HH")
    ids = [p.waveform_id.get_seed_string() for p in cat[0].picks]
    assert ids == ["CI.BOM..HHZ", "CI.BOM..HHN"]
    table = quakeml.picks_with_probability(cat)
    assert table["probability"].tolist() == [0.9, 0.8]


def test_empty_inputs_give_a_valid_empty_file(tmp_path):
    import obspy

    cat = quakeml.build_catalog(pd.DataFrame(), pd.DataFrame(), comments=["no events: nothing picked"])
    path = quakeml.write_quakeml(cat, tmp_path / "empty.xml")
    back = obspy.read_events(str(path))
    assert len(back) == 0 and back.comments[0].text == "no events: nothing picked"


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="no 'latitude' column"):
        quakeml.build_catalog(pd.DataFrame({"event_id": ["a"], "time": [T0]}), _picks())
    with pytest.raises(ValueError, match="no 'event_id' column"):
        quakeml.build_catalog(_events(), _picks().drop(columns="event_id"))
