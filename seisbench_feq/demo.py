"""``seisbench-feq demo``: pick real earthquakes with the shipped weights, offline.

By default the model picks the three NCEDC traces bundled in ``seisbench_feq/demo_data`` (stations
held out of training; provenance in its ATTRIBUTION.md) and prints each analyst pick beside the
model's. ``--seisan`` runs the harder second example: the SEISAN event that ObsPy's wheel ships
(station CER, 150 Hz, resampled to 100 Hz with a logged warning, dominated by ocean microseism).
"""

from __future__ import annotations

from pathlib import Path

import obspy
import pandas as pd

from .models import MODELS

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
MATCH_WINDOW_S = 2.0  # a model pick farther than this from the analyst's is reported as missing


def demo_traces() -> list[Path]:
    """The bundled NCEDC demo files (MiniSEED, one station each)."""
    return sorted(DEMO_DATA.glob("*.mseed"))


def analyst_picks() -> pd.DataFrame:
    """Analyst P/S picks of the bundled traces: ``file, station, phase, time`` (UTC)."""
    table = pd.read_csv(DEMO_DATA / "analyst_picks.csv")
    table["time"] = [obspy.UTCDateTime(t) for t in table["time"]]
    return table


def example_event_path() -> Path:
    """ObsPy's bundled SEISAN test event (real data, ships with every ObsPy install)."""
    import obspy.io.seisan.tests as seisan_tests

    return Path(seisan_tests.__file__).parent / "data" / "2005-07-23-1452-04S.CER___030"


def compare_with_analyst(picks, reference: pd.DataFrame) -> pd.DataFrame:
    """One row per analyst pick: the model's nearest pick of that phase within ``MATCH_WINDOW_S``."""
    rows = []
    for ref in reference.itertuples():
        same = [p for p in picks if p.phase == ref.phase and p.trace_id.startswith(ref.station + ".")]
        best = min(same, key=lambda p: abs(p.peak_time - ref.time), default=None)
        if best is not None and abs(best.peak_time - ref.time) > MATCH_WINDOW_S:
            best = None
        rows.append(
            {
                "station": ref.station,
                "phase": ref.phase,
                "analyst": str(ref.time)[:-4],
                "model": str(best.peak_time)[:-4] if best else "missed",
                "model-analyst (s)": round(best.peak_time - ref.time, 2) if best else float("nan"),
                "probability": round(best.peak_value, 2) if best else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def _shown(stream: obspy.Stream, model) -> tuple[obspy.Stream, str]:
    """The waveforms as the model sees them (its window high-pass), for the figure."""
    if not getattr(model, "highpass", None):
        return stream, ""
    shown = stream.copy().detrend("linear").taper(0.02)
    shown.filter("highpass", freq=model.highpass, corners=2, zerophase=True)
    return shown, f", high-passed at {model.highpass:g} Hz as the model sees them"


def _figure(stream, annotations, picks, reference, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    from .plotting import plot_annotations

    fig = plot_annotations(stream, annotations, picks, None, title=title)
    t0 = min(tr.stats.starttime for tr in stream)
    for ref in (reference.itertuples() if reference is not None else []):
        for ax in fig.axes:
            ax.axvline(ref.time - t0, color="k", ls=":", lw=1.2)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="tab:blue", ls="--", label="model P"),
               Line2D([], [], color="tab:red", ls="--", label="model S")]
    if reference is not None:
        handles.append(Line2D([], [], color="k", ls=":", label="analyst pick"))
    fig.axes[0].legend(handles=handles, loc="upper left", fontsize="small", ncol=len(handles))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(out_dir: str | Path = "demo_output", model_name: str = "feq3", weights: str = "default",
             path=None, seisan: bool = False) -> dict:
    """Pick the demo data (or ``path``) with shipped weights; write ``picks.csv`` and one PNG per file.

    Returns ``picks`` (all model picks, a SeisBench ``PickList``), ``comparison`` (analyst vs model;
    empty for files without analyst picks), ``csv`` and ``figures``.
    """
    if path is not None:
        files = [Path(path)]
    elif seisan:
        files = [example_event_path()]
    else:
        files = demo_traces()
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"demo waveform file {file} does not exist")
    reference_all = analyst_picks() if path is None and not seisan else None
    model = MODELS[model_name].from_pretrained(weights)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    all_picks, comparisons, figures = [], [], []
    for file in files:
        stream = obspy.read(str(file))
        annotations = model.annotate(stream)
        output = model.classify(stream)
        all_picks += list(output.picks)
        reference = None
        if reference_all is not None:
            reference = reference_all[reference_all["file"] == file.name]
            comparisons.append(compare_with_analyst(output.picks, reference))
        shown, note = _shown(stream, model)
        figure = out_dir / f"{file.stem}.png"
        _figure(shown, annotations, output.picks, reference, figure, f"{model.name} ({weights}) on {file.name}{note}")
        figures.append(figure)

    table = pd.DataFrame(
        [{"trace_id": p.trace_id, "phase": p.phase, "time": str(p.peak_time), "probability": round(p.peak_value, 3)}
         for p in all_picks],
        columns=["trace_id", "phase", "time", "probability"],
    )
    picks_csv = out_dir / "picks.csv"
    table.to_csv(picks_csv, index=False)
    comparison = pd.concat(comparisons, ignore_index=True) if comparisons else pd.DataFrame()

    print(f"{model.name} '{weights}' weights, {len(files)} file(s)")
    if len(comparison):
        print(comparison.to_string(index=False))
    elif len(table):
        print(table.to_string(index=False))
    else:
        print("no P/S pick above the thresholds")
    print(f"picks written to {picks_csv}; figures: {', '.join(str(f) for f in figures)}")
    return {"picks": all_picks, "comparison": comparison, "csv": picks_csv, "figures": figures}
