"""Write the demo traces bundled in ``seisbench_feq/demo_data`` from the NCEDC npz files.

    python scripts/make_demo_data.py ../shared/data/ncedc NC_KMPB_2007112407413145 ...

Each npz (PhaseNet repository, MIT) holds 90 s of demeaned counts in E, N, Z columns and the analyst
P/S sample indices; it holds no absolute time. The MiniSEED written here starts at the time in the
file name (a nominal time: the relation of that time to the event is not documented), samples are
rounded to whole counts (Steim-2), and the analyst picks go to ``analyst_picks.csv`` at that time
base. The first ``TRIM_SAMPLES`` samples are dropped: in the npz files P always lies exactly 30 s after
the first sample, a whole second of the trace start, which EQTransformer-family models learned to
favour from STEAD; the demo should not reward that prior.
Only traces of stations that ``split_by_station`` holds out of training may be bundled.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import obspy
import pandas as pd

from seisbench_feq.data import _station_of, read_ncedc_npz, split_by_station

TRIM_SAMPLES = 237
OUT = Path(__file__).resolve().parents[1] / "seisbench_feq" / "demo_data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ncedc_root")
    parser.add_argument("names", nargs="+", help="npz names without .npz")
    args = parser.parse_args()
    root = Path(args.ncedc_root)
    held_out = split_by_station(pd.DataFrame({"station": [".".join(_station_of(n)) for n in args.names]}))
    if (held_out != "test").any():
        raise SystemExit(f"not held-out stations: {[n for n, s in zip(args.names, held_out) if s != 'test']}")
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.names:
        record = read_ncedc_npz(root / f"{name}.npz")
        net, sta = _station_of(name)
        stamp = name.split("_")[2]
        start = obspy.UTCDateTime(f"{stamp[:8]}T{stamp[8:14]}.{stamp[14:16]}") + TRIM_SAMPLES / 100.0
        channels = record["channels"].split("_")
        traces = []
        for column, channel in enumerate(channels):
            data = np.round(record["data"][TRIM_SAMPLES:, column]).astype(np.int32)
            header = {"network": net, "station": sta, "location": "", "channel": channel,
                      "sampling_rate": 100.0, "starttime": start}
            traces.append(obspy.Trace(data, header=header))
        stream = obspy.Stream(traces).sort(keys=["channel"])
        path = OUT / f"{net}.{sta}.mseed"
        stream.write(str(path), format="MSEED", encoding="STEIM2", reclen=512)
        for phase, index in (("P", record["itp"]), ("S", record["its"])):
            time = start + (index - TRIM_SAMPLES) / 100.0
            rows.append({"file": path.name, "station": f"{net}.{sta}", "phase": phase,
                         "time": time.isoformat() + "Z", "source_npz": f"{name}.npz"})
    pd.DataFrame(rows).to_csv(OUT / "analyst_picks.csv", index=False)
    print(f"wrote {len(args.names)} traces and analyst_picks.csv to {OUT}")


if __name__ == "__main__":
    main()
