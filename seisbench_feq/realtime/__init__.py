"""Real-time picking: SeedLink or file replay -> per-station ring buffers -> the model -> picks.

The model runs on windows cut from the ring buffers, each window once, batched over stations,
through its own window hooks; the outputs are blinded and stacked with SeisBench's own routine
(the same defaults as ``classify``), so a real-time run gives the picks that ``model.classify``
gives on the same continuous data. Models or stations where that is not possible (stream-level
filtering, another sampling rate) go through ``annotate`` on every call.

The stages, one module each:

- :mod:`.sources`: :class:`ReplaySource` (files or SDS through :mod:`seisbench_feq.io.sources`)
  and :class:`SeedLinkSource` (ObsPy's SeedLink client, reconnecting with back-off);
- :mod:`.buffers`: per-channel rings with a bounded reorder buffer for late records, and the
  :class:`~.buffers.Planner` of model windows;
- :mod:`.direct`: the model on window arrays, each window once, and the stacking;
- :mod:`.finality`: the final annotation buffer and which picks in it are final;
- :mod:`.early`: the low-latency picks from samples that are not final yet;
- :mod:`.outputs`: the picks CSV (the package's pick table plus latencies), QuakeML, figures;
- :mod:`.picker`: :class:`RealtimePicker`, which ties them together.

How it stays equal to ``classify`` (all in samples; ``in``/``overlap``/``blinding=(pre, post)``
are the model's annotate arguments, ``stride = in - overlap``):

* Windows lie on the grid ``segment start + k * stride``, as in ``classify``. A call computes the
  newest complete grid windows; their blinded outputs are kept while they overlap samples that are
  not final, so the stacking sees every window that overlaps the new samples. (On the ``annotate``
  path a call re-runs ``ceil((overlap - pre - post) / stride)`` earlier windows instead.)
* **Annotation finality:** after windows up to offset ``o`` have run, every sample before
  ``o + stride + pre`` is final. Final samples are appended to a per-station annotation buffer and
  never recomputed.
* **Pick finality:** picks come from the model's own ``classify_aggregate`` on the final buffer. A
  pick is final, and emitted, once its trigger has switched off inside the final part. At the end
  of a segment (a gap in all components, a station silent for ``silence_timeout`` seconds, the end
  of a replay, Ctrl-C) the tail is flushed the way ``classify`` ends a stream.
* **Exactly once:** emitted picks are remembered per station (same phase, peak within
  ``dedupe_tolerance`` s) and never emitted again.
* **Late records** are held back (up to ``reorder_window`` s of data per channel) until the
  missing record arrives; a gap given up, and every record arriving after that, is logged at
  WARNING with its span.

**Low latency** (:mod:`.early`, ``stride=5.0, early_picks=True``): after each model call the
windows run so far are also stacked over the samples that are not final yet, and picks whose
trigger has switched off there are emitted at once (``RealtimePick.early``); a final pick whose
trigger overlaps an early one is not emitted again. Early picks may differ slightly from
``classify``'s (fewer windows stacked); each is still emitted once.

Known, bounded differences from ``classify`` on the same data: a station that goes silent for
longer than ``silence_timeout`` and then resumes without a gap starts a new segment: picks within
one window (60 s) of the junction can differ. Data arriving later than ``max_component_lag`` behind
its station's other components is zero-filled, as ``classify`` fills missing components. Traces at
another rate than the model's are resampled per call (rates within 1e-4 of it are taken as
nominal), so filter edges differ slightly from a whole-stream resampling.

Latency of a pick (all wall-clock seconds, in the CSV and the log):
``wait_data`` = arrival of the data that made the pick final - data time of the pick (on the
source's clock: UTC for SeedLink, the replay clock for a replay); ``queue`` = model start - that
arrival; ``model`` = emission - model start; ``latency`` = their sum.
"""

from .common import CSV_COLUMNS, RATE_TOLERANCE, RealtimeError, RealtimePick, parse_streams
from .picker import RealtimePicker, window_geometry
from .sources import ReplaySource, SeedLinkSource, Source

__all__ = ["CSV_COLUMNS", "RATE_TOLERANCE", "RealtimeError", "RealtimePick", "RealtimePicker",
           "ReplaySource", "SeedLinkSource", "Source", "parse_streams", "window_geometry"]
