"""Catalogs: association (PyOcto), QuakeML export, comparison with an agency catalog.

Synthetic networks give exact expectations (known hypocentres, exact travel times); the Imperial
Valley data in ../shared give the real case (PhaseNet picks of 16 CI stations, the SCSN catalog).
"""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pandas as pd
import pytest

from conftest import PROJECT_ROOT, shared_path

pytest.importorskip("pyocto")

from seisbench_feq import catalog  # noqa: E402

T0 = pd.Timestamp("2021-03-01T12:00:00", tz="UTC")
CENTER = (33.0, -115.6)
EVENTS = pd.DataFrame(
    {  # three shallow events inside the network, 60 s apart
        "time": [T0 + pd.Timedelta(seconds=s) for s in (10.0, 70.0, 130.0)],
        "latitude": [33.02, 32.95, 33.08],
        "longitude": [-115.58, -115.65, -115.52],
        "depth_km": [5.0, 8.0, 3.0],
    }
)
HOMOGENEOUS = pd.DataFrame({"depth": [0.0], "vp": [6.0]})
TWO_LAYERS = pd.DataFrame({"depth": [0.0, 4.0], "vp": [4.5, 6.3]})


def _stations(n: int = 8) -> pd.DataFrame:
    """A ring of stations 15-35 km around the centre."""
    az = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.where(np.arange(n) % 2, 15.0, 35.0)
    lat = CENTER[0] + r * np.cos(az) / 111.19
    lon = CENTER[1] + r * np.sin(az) / (111.19 * np.cos(np.radians(CENTER[0])))
    return pd.DataFrame(
        {"id": [f"XX.S{i:02d}." for i in range(n)], "latitude": lat, "longitude": lon, "elevation": 0.0}
    )


def _synthetic_picks(stations: pd.DataFrame, layers=HOMOGENEOUS, events=EVENTS) -> pd.DataFrame:
    """Exact first arrivals for every event at every station, P and S."""
    rows = []
    for ev in events.itertuples(index=False):
        dist = catalog._epicentral_km(ev.latitude, ev.longitude, stations["latitude"], stations["longitude"])
        for phase in ("P", "S"):
            tt = np.array([catalog.layered_travel_times(layers, [d], [ev.depth_km], phase)[0, 0] for d in dist])
            for sid, t in zip(stations["id"], tt):
                rows.append((sid, phase, ev.time + pd.Timedelta(seconds=float(t)), 0.9))
    return pd.DataFrame(rows, columns=["station", "phase", "time", "probability"])


def _check_located(result, events=EVENTS, horizontal_km=2.5, depth_km=3.0, time_s=0.4):
    assert result.reason is None, result.reason
    assert len(result.events) == len(events)
    for ev, found in zip(events.itertuples(index=False), result.events.itertuples(index=False)):
        offset = catalog._epicentral_km(ev.latitude, ev.longitude, found.latitude, found.longitude)
        assert offset < horizontal_km
        assert abs(found.depth_km - ev.depth_km) < depth_km
        assert abs((found.time - ev.time).total_seconds()) < time_s


@pytest.fixture(scope="module")
def synthetic():
    stations = _stations()
    picks = _synthetic_picks(stations)
    result = catalog.associate(picks, stations, "homogeneous", n_threads=1, picker="FEQ3")
    return stations, picks, result


# ------------------------------------------------------------------------------------------
# Travel times and association
# ------------------------------------------------------------------------------------------


def test_layered_travel_times_match_closed_forms():
    x, z = np.array([0.0, 3.0, 40.0, 120.0]), np.array([0.0, 2.0, 10.0])
    homogeneous = catalog.layered_travel_times(HOMOGENEOUS, x, z, "P")
    np.testing.assert_allclose(homogeneous, np.hypot(x[:, None], z[None]) / 6.0, rtol=1e-9)
    s = catalog.layered_travel_times(HOMOGENEOUS, x, z, "S", vp_vs_ratio=1.73)
    np.testing.assert_allclose(s, homogeneous * 1.73, rtol=1e-9)
    # two layers, source at the surface: direct wave, then the head wave beyond the crossover
    h, v1, v2 = 4.0, 4.5, 6.3
    t = catalog.layered_travel_times(TWO_LAYERS, x, [0.0], "P")[:, 0]
    head = x / v2 + 2 * h * np.sqrt(1 / v1**2 - 1 / v2**2)
    np.testing.assert_allclose(t, np.minimum(x / v1, np.where(x >= 2 * h * (v1 / v2) / np.sqrt(1 - (v1 / v2) ** 2), head, np.inf)))
    assert t[-1] == pytest.approx(head[-1])  # 120 km: the head wave arrives first


@pytest.mark.timeout(120)
def test_associate_locates_synthetic_events(synthetic):
    stations, picks, result = synthetic
    _check_located(result)
    assert len(result.picks) == len(picks)  # every pick belongs to its event
    assert set(result.picks.groupby("event_id")["station"].nunique()) == {len(stations)}
    assert (result.events["rms_residual_s"] < 0.2).all()
    assert (result.events["azimuthal_gap"] < 120).all()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("layers", [HOMOGENEOUS, TWO_LAYERS], ids=["one-layer-table", "two-layer-table"])
def test_associate_with_layered_model_table(tmp_path, layers):
    """The 1-D table written for PyOcto must reproduce locations made with the same model."""
    stations = _stations()
    picks = _synthetic_picks(stations, layers)
    result = catalog.associate(picks, stations, layers, n_threads=1, table_dir=tmp_path)
    _check_located(result)
    assert list(tmp_path.glob("*.bin"))


# ------------------------------------------------------------------------------------------
# QuakeML
# ------------------------------------------------------------------------------------------


def test_quakeml_round_trip(tmp_path, synthetic):
    import obspy

    _, _, result = synthetic
    path = catalog.write_quakeml(result, tmp_path / "catalog.xml", agency_id="XX", pick_uncertainty=0.05)
    back = obspy.read_events(str(path), format="QUAKEML")
    assert len(back) == len(result.events)
    for ev, row in zip(sorted(back, key=lambda e: e.origins[0].time), result.events.itertuples(index=False)):
        origin = ev.preferred_origin()
        assert abs(origin.time - obspy.UTCDateTime(row.time.isoformat())) < 1e-5
        assert origin.latitude == pytest.approx(row.latitude, abs=1e-7)
        assert origin.longitude == pytest.approx(row.longitude, abs=1e-7)
        assert origin.depth == pytest.approx(row.depth_km * 1000, abs=1e-3)
        assert origin.quality.associated_phase_count == row.n_picks
        assert origin.quality.used_station_count == row.n_stations
        assert origin.quality.standard_error == pytest.approx(row.rms_residual_s)
        assert origin.quality.azimuthal_gap == pytest.approx(row.azimuthal_gap)
        assert "pyocto" in str(origin.method_id)
        assert not ev.magnitudes  # nothing computed, nothing written
        ours = result.picks[result.picks["event_id"] == row.event_id].sort_values("time")
        assert len(ev.picks) == len(ours) == len(origin.arrivals)
        picks_by_id = {str(p.resource_id): p for p in ev.picks}
        for arrival in origin.arrivals:  # arrivals link to this event's picks
            pick = picks_by_id[str(arrival.pick_id)]
            assert arrival.phase == pick.phase_hint
            assert arrival.time_residual is not None
        for pick, p in zip(sorted(ev.picks, key=lambda q: q.time), ours.itertuples(index=False)):
            net, sta, loc = p.station.split(".")
            assert (pick.waveform_id.network_code, pick.waveform_id.station_code) == (net, sta)
            assert (pick.waveform_id.location_code or "") == loc
            assert pick.phase_hint == p.phase
            assert abs(pick.time - obspy.UTCDateTime(p.time.isoformat())) < 1e-5
            assert pick.time_errors.uncertainty == pytest.approx(0.05)
            assert pick.creation_info.author == "FEQ3"
            assert str(pick.method_id).endswith("/FEQ3")
            assert float(pick.extra["probability"]["value"]) == pytest.approx(p.probability, abs=1e-4)
    # and the catalog reader sees the same events
    table = catalog.read_catalog(path)
    np.testing.assert_allclose(table.events["latitude"], result.events["latitude"], atol=1e-7)
    assert len(table.picks) == len(result.picks)


def test_empty_result_still_writes_valid_quakeml(tmp_path):
    import obspy

    result = catalog.associate(_empty_pick_frame(), _stations())
    assert result.reason == "the pick set is empty"
    path = catalog.write_quakeml(result, tmp_path / "empty.xml")
    back = obspy.read_events(str(path))
    assert len(back) == 0


def _empty_pick_frame():
    return pd.DataFrame({"station": [], "phase": [], "time": [], "probability": []})


# ------------------------------------------------------------------------------------------
# Readers and bad input
# ------------------------------------------------------------------------------------------


def test_read_picks_from_seisbench_picklist():
    from obspy import UTCDateTime
    from seisbench.util import Pick, PickList

    t = UTCDateTime("2021-03-01T12:00:00")
    picks = PickList(
        [
            Pick("XX.S01.", t, t + 1, t + 0.5, peak_value=0.8, phase="P"),
            Pick("XX.S01.", t + 3, t + 4, t + 3.5, peak_value=0.6, phase="S"),
        ]
    )
    df = catalog.read_picks(picks)
    assert list(df["phase"]) == ["P", "S"]
    assert df["time"].iloc[0] == pd.Timestamp("2021-03-01T12:00:00.5", tz="UTC")
    assert df["probability"].tolist() == [0.8, 0.6]
    # straight from classify(): the ClassifyOutput names the model
    from seisbench.util import ClassifyOutput

    out = ClassifyOutput("FEQ3", picks=picks)
    assert len(catalog.read_picks(out)) == 2
    result = catalog.associate(out, _stations())
    assert result.picker == "FEQ3" and "too few stations" in result.reason


def test_read_picks_cli_output_and_parquet(tmp_path, synthetic):
    _, picks, _ = synthetic
    csv = tmp_path / "picks.csv"
    picks.to_csv(csv, index=False)  # the `seisbench-feq pick` layout: station, phase, time, probability
    parquet = tmp_path / "picks.parquet"
    picks.to_parquet(parquet)
    for path in (csv, parquet):
        df = catalog.read_picks(path)
        assert len(df) == len(picks)
        assert str(df["time"].dt.tz) == "UTC"


def test_picks_from_unknown_stations_are_reported(caplog, synthetic):
    stations, picks, _ = synthetic
    extra = picks[picks["station"] == "XX.S00."].assign(station="YY.GHOST.")
    with caplog.at_level(logging.WARNING, logger="seisbench_feq.catalog"):
        result = catalog.associate(pd.concat([picks, extra]), stations, "homogeneous", n_threads=1)
    assert "YY.GHOST." in caplog.text and "missing from the station list" in caplog.text
    assert any("YY.GHOST." in d for d in result.diagnostics)
    assert len(result.events) == 3  # the known stations still give the events
    assert "YY.GHOST." not in set(result.picks["station"])


def test_only_unknown_stations_gives_the_reason(synthetic):
    stations, picks, _ = synthetic
    result = catalog.associate(picks.assign(station="ZZ.NOPE."), stations, "homogeneous")
    assert len(result) == 0
    assert "no pick comes from a station with coordinates" in result.reason


def test_too_few_stations_gives_the_reason(synthetic):
    stations, picks, _ = synthetic
    few = picks[picks["station"].isin(["XX.S00.", "XX.S01.", "XX.S02."])]
    result = catalog.associate(few, stations, "homogeneous")
    assert len(result) == 0
    assert result.reason.startswith("too few stations: 3 stations")


def test_station_without_coordinates_is_dropped_with_a_warning(caplog, synthetic):
    stations, picks, _ = synthetic
    broken = stations.copy()
    broken.loc[0, "latitude"] = np.nan
    with caplog.at_level(logging.WARNING, logger="seisbench_feq.catalog"):
        result = catalog.associate(picks, broken, "homogeneous", n_threads=1)
    assert "without coordinates" in caplog.text and "XX.S00." in caplog.text
    assert "XX.S00." not in set(result.stations["id"])
    assert len(result.events) == 3


def test_duplicate_picks_are_collapsed(caplog, synthetic):
    stations, picks, result = synthetic
    dup = picks.copy()
    dup["time"] = dup["time"] + pd.Timedelta(seconds=0.02)
    dup["probability"] = 0.5
    with caplog.at_level(logging.WARNING, logger="seisbench_feq.catalog"):
        df = catalog.read_picks(pd.concat([picks, dup, picks.iloc[:5]]))
    assert len(df) == len(picks)
    assert f"{len(picks) + 5} duplicate picks" in caplog.text
    assert (df["probability"] == 0.9).all()  # the more probable copy is kept
    again = catalog.associate(pd.concat([picks, dup]), stations, "homogeneous", n_threads=1)
    assert len(again.events) == len(result.events)


def test_empty_pick_sets():
    assert len(catalog.read_picks(_empty_pick_frame())) == 0
    result = catalog.associate(catalog.read_picks(_empty_pick_frame()), _stations())
    assert len(result) == 0 and "empty" in result.reason


def test_stations_without_elevation(caplog, tmp_path):
    stations = _stations().drop(columns="elevation")
    with caplog.at_level(logging.WARNING, logger="seisbench_feq.catalog"):
        table = catalog.read_stations(stations)
    assert (table["elevation"] == 0).all()
    assert "no elevation column" in caplog.text
    partial = _stations()
    partial.loc[2, "elevation"] = np.nan
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seisbench_feq.catalog"):
        table = catalog.read_stations(partial)
    assert table.loc[2, "elevation"] == 0 and "XX.S02." in caplog.text


def test_station_inventory_and_seed_ids():
    from obspy.core.inventory import Channel, Inventory, Network, Station

    chans = [Channel(c, "00", 33.1, -115.6, 12.0, 0.0) for c in ("HHZ", "HHN", "HHE")]
    inv = Inventory(networks=[Network("XX", stations=[Station("ABC", 33.1, -115.6, 12.0, channels=chans)])])
    table = catalog.read_stations(inv)
    assert table.to_dict("records") == [{"id": "XX.ABC.00", "latitude": 33.1, "longitude": -115.6, "elevation": 12.0}]
    per_channel = pd.DataFrame({"station": ["XX.ABC..HH", "XX.ABC..HN"], "lat": [1.0, 1.0], "lon": [2.0, 2.0], "elevation(m)": [5, 5]})
    assert catalog.read_stations(per_channel)["id"].tolist() == ["XX.ABC."]
    # picks without location code still find a station listed with one
    matched = catalog._match_station_ids(pd.Series(["XX.ABC."]), table["id"])
    assert matched.tolist() == ["XX.ABC.00"]


def test_timestamps_naive_aware_and_mixed(caplog):
    with caplog.at_level(logging.INFO, logger="seisbench_feq.catalog"):
        naive = catalog.to_utc(pd.Series(["2021-03-01T12:00:00", "2021-03-01T12:00:01.25"]), "picks")
    assert "taken as UTC" in caplog.text
    assert naive.iloc[1] == pd.Timestamp("2021-03-01T12:00:01.25", tz="UTC")
    # offsets are converted: 13:00+01:00 is 12:00 UTC
    aware = catalog.to_utc(pd.Series(["2021-03-01T13:00:00+01:00", "2021-03-01T12:00:00Z"]), "picks")
    assert (aware == pd.Timestamp("2021-03-01T12:00:00", tz="UTC")).all()
    berlin = pd.Series(pd.to_datetime(["2021-03-01T13:00:00"]).tz_localize("Europe/Berlin"))
    assert catalog.to_utc(berlin).iloc[0] == pd.Timestamp("2021-03-01T12:00:00", tz="UTC")
    with pytest.raises(ValueError, match="mixes time stamps with a time zone"):
        catalog.to_utc(pd.Series(["2021-03-01T12:00:00Z", "2021-03-01T12:00:01"]), "picks")
    with pytest.raises(ValueError, match="column 'time'.*mixes"):
        catalog.read_picks(
            pd.DataFrame({"station": ["XX.A.", "XX.A."], "phase": ["P", "S"],
                          "time": ["2021-03-01T12:00:00+00:00", "2021-03-01T12:00:05"]})
        )


# ------------------------------------------------------------------------------------------
# Comparison
# ------------------------------------------------------------------------------------------


def _reference_csv(tmp_path, drop=()):
    ref = EVENTS.assign(magnitude=[1.2, 2.0, 3.1], time=EVENTS["time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f"))
    ref = pd.concat([ref, pd.DataFrame({"time": ["2021-03-01T12:30:00.000000"], "latitude": [33.0], "longitude": [-115.6],
                                        "depth_km": [4.0], "magnitude": [1.7]})])
    path = tmp_path / "reference.csv"
    ref.drop(columns=list(drop)).to_csv(path, index=False)
    return path


def test_compare_counts_and_one_to_one(tmp_path, synthetic):
    _, _, result = synthetic
    # a split event: a second origin 1 s after the first one may not match the same reference event
    split = result.events.iloc[[0]].assign(event_id="split", time=result.events["time"].iloc[0] + pd.Timedelta(seconds=1))
    ours = catalog.CatalogTable(pd.concat([result.events, split], ignore_index=True), result.picks)
    cmp = catalog.compare(ours, _reference_csv(tmp_path))
    assert cmp.counts == {"reference": 4, "ours": 4, "matched": 3, "missed": 1, "new": 1,
                          "precision": 0.75, "recall": 0.75}
    assert cmp.new["event_id"].tolist() == ["split"]
    assert (cmp.matches["distance_km"] < 2.5).all()
    assert cmp.recall(1.5) == pytest.approx(2 / 3)
    assert cmp.precision(1.5) == pytest.approx(2 / 3)
    bins = cmp.by_magnitude.set_index("magnitude")
    assert bins.loc["1 <= M < 1.5", "matched"] == 1 and bins.loc["1.5 <= M < 2", "matched"] == 0


def test_compare_reference_missing_depth_and_magnitude(tmp_path, caplog, synthetic):
    _, _, result = synthetic
    with caplog.at_level(logging.WARNING, logger="seisbench_feq.catalog"):
        cmp = catalog.compare(result, _reference_csv(tmp_path, drop=("depth_km", "magnitude")))
    assert "no depth_km" in caplog.text and "no magnitude" in caplog.text
    assert cmp.counts["matched"] == 3
    assert cmp.matches["ddepth_km"].isna().all()
    assert cmp.by_magnitude["magnitude"].tolist()[-1] == "unknown"
    assert cmp.by_magnitude["reference"].iloc[-1] == 4
    assert "depth" not in cmp.summary().split("\n")[2]


def test_compare_picks_with_tolerance(tmp_path, synthetic):
    """Reference picks: ours shifted by 0.2 s (matched) and 0.8 s (beyond 0.5 s: unmatched)."""
    import obspy

    _, _, result = synthetic
    ref = result.picks.copy()
    shift = np.where(ref["phase"] == "P", 0.2, 0.8)
    ref["time"] = ref["time"] - pd.to_timedelta(shift, unit="s")
    reference = catalog.CatalogTable(result.events.assign(magnitude=2.0), ref[["event_id", "station", "phase", "time"]])
    cmp = catalog.compare(result, reference)
    assert cmp.pick_counts["matched_P"] == (result.picks["phase"] == "P").sum()
    assert cmp.pick_counts["matched_S"] == 0
    np.testing.assert_allclose(cmp.pick_matches["residual_s"], 0.2, atol=1e-5)
    # the same through QuakeML on both sides
    path = catalog.write_quakeml(result, tmp_path / "ours.xml")
    assert len(obspy.read_events(str(path))) == 3
    cmp2 = catalog.compare(path, reference)
    assert cmp2.pick_counts["matched_P"] == cmp.pick_counts["matched_P"]


def test_compare_with_picks_table_as_catalog(tmp_path, synthetic):
    """Our side as a table of associated picks (event_id, station, phase, time): the first pick
    stands in for the origin, without a location."""
    _, _, result = synthetic
    path = tmp_path / "assoc_picks.csv"
    result.picks.to_csv(path, index=False)
    cmp = catalog.compare(path, _reference_csv(tmp_path), time_tolerance=10.0)
    assert cmp.counts["ours"] == 3 and cmp.counts["matched"] == 3
    assert (cmp.matches["dt_s"] > 0).all()  # first arrival after the origin
    assert cmp.matches["distance_km"].isna().all()


def test_report_files(tmp_path, synthetic):
    from seisbench_feq.catalog_report import write_report

    stations, _, result = synthetic
    cmp = catalog.compare(result, _reference_csv(tmp_path))
    report = write_report(cmp, tmp_path / "report", stations=stations)
    text = report.read_text()
    assert "| 4 | 3 | 3 | 1 | 0 | 1.000 | 0.750 |" in text
    for name in ("residuals.png", "map.png", "recall_by_magnitude.png"):
        assert (tmp_path / "report" / name).stat().st_size > 1000
        assert name in text
    assert not (tmp_path / "report" / "missed.csv").exists()  # reference rows only on request


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_cli_associate_and_compare(tmp_path, monkeypatch, capsys, synthetic):
    from seisbench_feq import cli

    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["seisbench_feq.catalog"])  # others are tested elsewhere
    stations, picks, _ = synthetic
    picks.to_csv(tmp_path / "picks.csv", index=False)
    stations.to_csv(tmp_path / "stations.csv", index=False)
    rc = cli.main(["associate", str(tmp_path / "picks.csv"), "--station-file", str(tmp_path / "stations.csv"),
                   "--out", str(tmp_path / "cat"), "--velocity-model", "homogeneous", "--pyocto-threads", "1",
                   "--picker", "FEQ3"])
    assert rc == 0 and "3 events" in capsys.readouterr().out
    out = tmp_path / "cat" / "catalog.xml"  # --out is a folder with fixed names inside
    assert len(pd.read_csv(tmp_path / "cat" / "events.csv")) == 3
    assert "event_id" in pd.read_csv(tmp_path / "cat" / "associated_picks.csv").columns
    rc = cli.main(["associate", str(tmp_path / "picks.csv"), "--station-file", str(tmp_path / "stations.csv"),
                   "--out", str(tmp_path / "first_two"), "--velocity-model", "homogeneous", "--pyocto-threads", "1",
                   "--end", (T0 + pd.Timedelta(seconds=100)).isoformat()])
    assert rc == 0 and "2 events" in capsys.readouterr().out
    rc = cli.main(["compare", str(out), str(_reference_csv(tmp_path)), "--out", str(tmp_path / "rep")])
    text = capsys.readouterr().out
    assert rc == 0 and "matched 3" in text and "recall 0.750" in text
    assert (tmp_path / "rep" / "report.md").exists()
    # an empty station file: a one-line error naming it, exit 2 (was a ValueError traceback)
    (tmp_path / "nothing.csv").write_text("")
    rc = cli.main(["associate", str(tmp_path / "picks.csv"), "--station-file", str(tmp_path / "nothing.csv"),
                   "--out", str(tmp_path / "cat")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nothing.csv" in err and "empty" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------------
# Imperial Valley (real PhaseNet picks, SCSN catalog)
# ------------------------------------------------------------------------------------------

def test_imperial_valley_readers():
    iv = shared_path("data", "imperial_valley")
    picks = catalog.read_picks(iv / "picks.csv")
    assert picks["station"].nunique() == 16
    assert picks["time"].min() >= pd.Timestamp("2020-10-01", tz="UTC")
    assert picks["time"].max() < pd.Timestamp("2020-10-03", tz="UTC")
    # the PhaseNet hour files give the pick table's columns: P on the vertical, S on a horizontal
    from seisbench_feq.io.picks import PICK_COLUMNS

    assert set(PICK_COLUMNS) <= set(picks.columns)
    assert set(picks.loc[picks["phase"] == "P", "channel"]) == {"HHZ"}
    assert set(picks.loc[picks["phase"] == "S", "channel"]) == {"HHN"}
    assert (picks["trace_id"].str.count(r"\.") == 3).all() and set(picks["amplitude_unit"]) == {"m/s"}
    assert (picks["amplitude"] > 0).all()
    ref = catalog.read_catalog(iv / "events.csv")
    assert len(ref.events) == 1062
    assert ref.events["depth_km"].between(0, 25).all()
    # the 16 real stations, elevations from the elv(m) column (some below sea level in the Salton Trough)
    stations = catalog.read_stations(iv / "stations.csv").set_index("id")
    assert len(stations) == 16 and set(stations.index) == set(picks["station"])
    assert stations.loc["CI.SLV.", "elevation"] == pytest.approx(254.6)
    assert stations.loc["CI.BOM.", "elevation"] == pytest.approx(-54.0)
    assert stations.loc["CI.BOM.", ["latitude", "longitude"]].tolist() == pytest.approx([33.365, -115.730])


def _load_example():
    spec = importlib.util.spec_from_file_location("imperial_valley_example", PROJECT_ROOT / "examples" / "imperial_valley.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_imperial_valley_example(tmp_path):
    """The example on the first 15 minutes (the full 48 h take minutes: docs/imperial_valley has
    them): real picks -> PyOcto -> QuakeML -> read back -> compared with the SCSN catalog."""
    shared_path("data", "imperial_valley")
    example = _load_example()
    numbers = example.run(tmp_path / "report", hours=0.25, quakeml=tmp_path / "iv.xml", threads=1)
    assert numbers["reference"] >= 10
    assert numbers["recall"] > 0.6
    assert numbers["precision"] > 0.3  # many unlisted small swarm events: a lower bound
    text = (tmp_path / "report" / "report.md").read_text()
    assert "recall, M >= 1.5" in text and "precision, all" in text
    for name in ("residuals.png", "map.png"):
        assert (tmp_path / "report" / name).stat().st_size > 1000
    cmp = catalog.compare(tmp_path / "iv.xml", shared_path("data", "imperial_valley", "events.csv"),
                          start="2020-10-01T00:00:00Z", end="2020-10-01T00:15:00Z")
    assert cmp.counts["matched"] == numbers["matched"]
    assert cmp.matches["distance_km"].median() < 5.0
    assert abs(cmp.matches["dt_s"].median()) < 0.5
    # local magnitudes from PhaseNet's peak velocities agree with the SCSN's within a few tenths
    assert numbers["events_with_ml"] >= numbers["events"]
    assert abs(numbers["ml_minus_scsn_median"]) < 0.5
    assert abs(np.median(cmp.magnitude_differences()) - numbers["ml_minus_scsn_median"]) < 1e-6
    assert not list(PROJECT_ROOT.glob("docs/imperial_valley/catalog.xml"))  # nothing written into docs/


def test_wadati_vp_vs_recovers_the_model_ratio():
    stations = _stations()
    picks = _synthetic_picks(stations)  # homogeneous, Vp/Vs 1.73, straight rays
    picks["event_id"] = np.repeat(np.arange(len(EVENTS)), 2 * len(stations))
    ratio, n = catalog.wadati_vp_vs(picks)
    assert ratio == pytest.approx(1.73, abs=1e-6) and n == len(EVENTS) * len(stations)
    with pytest.raises(ValueError, match="P and S"):
        catalog.wadati_vp_vs(picks[picks["phase"] == "P"])


# ------------------------------------------------------------------------------------------
# Pick table, channels, magnitudes
# ------------------------------------------------------------------------------------------


def test_pick_table_file_round_trip_and_channels(tmp_path, synthetic):
    """Picks written by io.picks.write_picks (the `pick` output) associate to the same events,
    and the QuakeML puts P on the vertical and S on a horizontal channel of the pick table."""
    import obspy

    from seisbench_feq.io.picks import write_picks

    stations, picks, result = synthetic
    net_sta = picks["station"].str.split(".")
    table = picks.assign(network=net_sta.str[0], station=net_sta.str[1], location="",
                         channel=np.where(picks["phase"] == "P", "HHZ", "HHE"))
    table["trace_id"] = table["network"] + "." + table["station"] + ".." + table["channel"]
    path = write_picks(table, tmp_path / "picks.csv")
    again = catalog.associate(path, stations, "homogeneous", n_threads=1)
    assert len(again.events) == len(result.events)
    np.testing.assert_allclose(again.events["latitude"], result.events["latitude"], atol=1e-3)
    assert again.picks["station"].str.count(r"\.").eq(2).all()  # NET.STA.LOC inside the catalog
    back = obspy.read_events(str(catalog.write_quakeml(again, tmp_path / "c.xml")))
    channels = {(p.phase_hint, p.waveform_id.channel_code) for ev in back for p in ev.picks}
    assert channels == {("P", "HHZ"), ("S", "HHE")}


def _with_amplitudes(picks: pd.DataFrame, stations: pd.DataFrame, magnitudes) -> pd.DataFrame:
    """Peak velocities that give exactly ``magnitudes`` (one per event) by Hutton & Boore (1987)
    at 5 Hz: the inverse of the formula."""
    from seisbench_feq.catalog.magnitude import WOOD_ANDERSON_GAIN

    rows = []
    for (ev, mag) in zip(EVENTS.itertuples(index=False), magnitudes):
        dist = catalog.epicentral_km(ev.latitude, ev.longitude, stations["latitude"], stations["longitude"])
        r = np.hypot(dist, ev.depth_km)
        log_a = mag - 1.110 * np.log10(r / 100) - 0.00189 * (r - 100) - 3.0
        velocity = 10 ** log_a / (WOOD_ANDERSON_GAIN * 1000.0) * 2 * np.pi * 5.0
        rows.append(dict(zip(stations["id"], velocity)))
    event_of = np.searchsorted(EVENTS["time"].to_numpy(), picks["time"].to_numpy()) - 1
    amp = [rows[e][s] for e, s in zip(event_of, picks["station"])]
    return picks.assign(amplitude=amp, amplitude_unit="m/s")


@pytest.mark.timeout(120)
def test_local_magnitude_recovers_hutton_boore(tmp_path):
    import obspy

    stations = _stations()
    picks = _with_amplitudes(_synthetic_picks(stations), stations, [1.2, 2.5, 3.1])
    result = catalog.associate(picks, stations, "homogeneous", n_threads=1)
    np.testing.assert_allclose(result.events["magnitude"], [1.2, 2.5, 3.1], atol=0.05)  # location error only
    assert set(result.magnitudes["station_count"]) == {len(stations)}
    assert "Hutton & Boore (1987)" in result.magnitudes["method"].iloc[0]
    ev = sorted(obspy.read_events(str(catalog.write_quakeml(result, tmp_path / "ml.xml"))), key=lambda e: e.origins[0].time)
    assert [round(e.preferred_magnitude().mag, 1) for e in ev] == [1.2, 2.5, 3.1]
    assert all(e.preferred_magnitude().magnitude_type == "ML" and len(e.station_magnitudes) == 8 for e in ev)
    assert "Hutton" in ev[0].preferred_magnitude().comments[0].text
    # another formula, set by name; none at all
    other = catalog.associate(picks, stations, "homogeneous", n_threads=1, magnitude="bakun-joyner-1984")
    assert not np.allclose(other.events["magnitude"], result.events["magnitude"])
    assert catalog.associate(picks, stations, "homogeneous", n_threads=1, magnitude=None).magnitudes is None
    # amplitudes in counts give no magnitude (no response, no physical amplitude)
    counts = catalog.associate(picks.assign(amplitude_unit="counts"), stations, "homogeneous", n_threads=1)
    assert counts.magnitudes is None and "magnitude" not in counts.events.columns
    with pytest.raises(ValueError, match="unknown magnitude formula"):
        catalog.local_magnitudes(result.picks, result.events, formula="richter-1935")


def test_map_has_stations_scale_and_depth_section(tmp_path, synthetic):
    from seisbench_feq.catalog import report

    stations, _, result = synthetic
    cmp = catalog.compare(result, _reference_csv(tmp_path))
    path = report.plot_map(cmp, tmp_path / "map.png", stations)
    assert path.stat().st_size > 1000
    assert report._scale_bar_km(73.0) == 10.0 and report._scale_bar_km(260.0) == 50.0
    assert report._ref_depth(cmp).notna().all()  # the section plots reference depths of matched events


# ------------------------------------------------------------------------------------------
# CLI: clear errors, one grammar, old spellings
# ------------------------------------------------------------------------------------------


def _cli(monkeypatch):
    from seisbench_feq import cli

    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["seisbench_feq.catalog"])
    return cli


def test_cli_compare_missing_file_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    cli = _cli(monkeypatch)
    ref = _reference_csv(tmp_path)
    for args, named in (([str(tmp_path / "nope.xml"), str(ref)], "nope.xml"),
                        ([str(ref), str(tmp_path / "absent.csv")], "absent.csv")):
        assert cli.main(["compare", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err and "does not exist" in err


def test_cli_out_folder_file_mismatch(tmp_path, monkeypatch, capsys, synthetic):
    cli = _cli(monkeypatch)
    stations, picks, _ = synthetic
    picks.to_csv(tmp_path / "picks.csv", index=False)
    stations.to_csv(tmp_path / "stations.csv", index=False)
    (tmp_path / "afile").write_text("x")
    rc = cli.main(["associate", str(tmp_path / "picks.csv"), "--station-file", str(tmp_path / "stations.csv"),
                   "--out", str(tmp_path / "afile")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "is a file; --out is an output folder" in err and len(err.splitlines()) == 1
    rc = cli.main(["associate", str(tmp_path / "picks.csv"), "--station-file", str(tmp_path / "stations.csv"),
                   "--out", str(tmp_path / "afile" / "c.xml")])
    assert rc == 2 and "is a file, not a folder" in capsys.readouterr().err
    # the input picks are never overwritten by an output of the old form
    rc = cli.main(["associate", str(tmp_path / "picks.csv"), "--station-file", str(tmp_path / "stations.csv"),
                   "--out", str(tmp_path / "c.xml"), "--picks-csv", str(tmp_path / "picks.csv")])
    assert rc == 2 and "would overwrite the input" in capsys.readouterr().err
    rc = cli.main(["compare", str(_reference_csv(tmp_path)), str(_reference_csv(tmp_path)), "--out", str(tmp_path / "afile")])
    assert rc == 2 and "is a file; compare writes a report folder" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_cli_old_spellings_and_times(tmp_path, monkeypatch, capsys, synthetic):
    cli = _cli(monkeypatch)
    stations, picks, _ = synthetic
    picks.to_csv(tmp_path / "picks.csv", index=False)
    stations.to_csv(tmp_path / "stations.csv", index=False)
    rc = cli.main(["associate", str(tmp_path / "picks.csv"), "--inventory", str(tmp_path / "stations.csv"),
                   "--out", str(tmp_path / "c.xml"), "--velocity-model", "homogeneous", "--threads", "1",
                   "--checkpoint-dir", str(tmp_path / "blocks"), "--start", "2021-03-01", "--end", "2021-03-01T12:01:40",
                   "--events-csv", str(tmp_path / "ev.csv")])
    captured = capsys.readouterr()
    assert rc == 0 and "2 events" in captured.out
    # the old file meanings of --out and --events-csv still work for one release, with a warning
    assert (tmp_path / "c.xml").exists() and len(pd.read_csv(tmp_path / "ev.csv")) == 2
    assert not (tmp_path / "events.csv").exists() and not (tmp_path / "associated_picks.csv").exists()
    assert "deprecated: associate --out" in captured.err and "deprecated: --inventory is now --station-file" in captured.err
    assert list((tmp_path / "blocks").glob("*_events.csv"))  # the old spelling still resumes
    rc = cli.main(["compare", str(tmp_path / "c.xml"), str(_reference_csv(tmp_path)), "--report-dir", str(tmp_path / "old"),
                   "--stations", str(tmp_path / "stations.csv")])
    assert rc == 0 and (tmp_path / "old" / "report.md").exists()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", str(tmp_path / "c.xml"), str(_reference_csv(tmp_path)), "--start", "yesterday"])
    assert exit_info.value.code == 2 and "cannot understand 'yesterday' as a time" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_checkpoint_blocks_are_reused(tmp_path, synthetic):
    """A rerun with the same inputs reads the finished blocks instead of associating again, and
    gives the same catalog; a block file removed (an interrupted run) is redone."""
    stations, picks, result = synthetic
    kwargs = dict(n_threads=1, block_seconds=60.0, checkpoint_dir=tmp_path / "blocks")
    first = catalog.associate(picks, stations, "homogeneous", **kwargs)
    files = sorted((tmp_path / "blocks").glob("*_events.csv"))
    assert len(files) >= 3
    stamps = {f: f.stat().st_mtime_ns for f in files}
    files[-1].unlink()  # as if the run had been killed before its last block
    again = catalog.associate(picks, stations, "homogeneous", **kwargs)
    pd.testing.assert_frame_equal(first.events, again.events)
    assert all(f.stat().st_mtime_ns == stamps[f] for f in files[:-1]) and files[-1].exists()
    assert len(first.events) == len(result.events)
