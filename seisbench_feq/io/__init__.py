"""Input and output shared by every command: atomic files, the pick table, waveform sources, QuakeML.

- :mod:`seisbench_feq.io.files`: atomic writes, SEED codes made safe as path components.
- :mod:`seisbench_feq.io.picks`: the one pick table (columns, PickList -> DataFrame, CSV/Parquet).
- :mod:`seisbench_feq.io.sources`: SDS archives, MiniSEED files and replays behind one interface.
- :mod:`seisbench_feq.io.quakeml`: the one QuakeML builder.

Submodules are imported on use, so that ``import seisbench_feq.io`` stays cheap.
"""
