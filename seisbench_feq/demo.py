"""``seisbench-feq demo``: pick a real earthquake with shipped weights, offline.

The default stream is the SEISAN example event that ObsPy's wheel ships (station CER, 3 components,
150 Hz, 71 s, 2005-07-23; P near 14:52:34.9). It is resampled to 100 Hz with a logged warning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import obspy

from .models import MODELS


def example_event_path() -> Path:
    """ObsPy's bundled SEISAN test event (real data, ships with every ObsPy install)."""
    import obspy.io.seisan.tests as seisan_tests

    return Path(seisan_tests.__file__).parent / "data" / "2005-07-23-1452-04S.CER___030"


def run_demo(out_dir: str | Path, model_name: str = "feq3", weights: str = "default", path=None) -> dict:
    from .plotting import plot_annotations

    path = Path(path) if path else example_event_path()
    if not path.exists():
        raise FileNotFoundError(f"demo waveform file {path} does not exist")
    stream = obspy.read(str(path))
    model = MODELS[model_name].from_pretrained(weights)
    annotations = model.annotate(stream)
    output = model.classify(stream)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    picks_csv = out_dir / "picks.csv"
    output.picks.to_dataframe().to_csv(picks_csv, index=False)
    figure = out_dir / "picks.png"
    shown, note = stream, ""
    if getattr(model, "highpass", None):  # show the waveforms as the model sees them
        shown = stream.copy().detrend("linear").taper(0.02).filter("highpass", freq=model.highpass, corners=2, zerophase=True)
        note = f", waveforms high-passed at {model.highpass:g} Hz as the model does"
    plot_annotations(
        shown, annotations, output.picks, figure,
        title=f"{model.name} ({weights}) on {path.name}{note}",
    )
    print(f"{model.name} '{weights}' weights on {path.name} ({len(stream)} traces)")
    if output.picks:
        print(output.picks.to_dataframe()[["station", "phase", "time", "probability"]].to_string(index=False))
    else:
        # Say what the model saw rather than print an empty table.
        peaks = ", ".join(f"{tr.stats.channel} {tr.data.max():.2f}" for tr in annotations)
        print(f"no P/S pick above the thresholds; highest probabilities: {peaks}")
    print(f"{len(output.detections)} detection(s)")
    print(f"picks written to {picks_csv}, figure to {figure}")
    return {"picks": output.picks, "detections": output.detections, "figure": figure, "csv": picks_csv}


def _main(args: argparse.Namespace) -> int:
    run_demo(args.out, args.model, args.weights, args.file)
    return 0


def add_subcommands(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="pick a real earthquake (ObsPy's bundled SEISAN event) with shipped weights"
    )
    parser.add_argument("--out", default="demo_output", help="folder for picks.csv and picks.png")
    parser.add_argument("--model", default="feq3", choices=sorted(MODELS))
    parser.add_argument("--weights", default="default", help="name of shipped weights")
    parser.add_argument("--file", help="another waveform file readable by obspy.read")
    parser.set_defaults(func=_main)
