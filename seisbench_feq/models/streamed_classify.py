"""``classify`` of long streams without holding the day's annotation traces.

SeisBench's ``classify`` annotates the whole stream, then extracts picks and detections from it: for
a station-day the three float32 output traces alone take 104 MB. Here the chunked annotation
(:func:`.annotate.iter_label_pieces`) feeds a buffer per segment, and the model's own
``classify_aggregate`` runs on the buffer each time it can be cut at a *quiet* point: a sample
with ``QUIET_MARGIN_S`` on each side where every output is below the level at which any trigger
switches off (half its threshold). No trigger spans such a point, no P/S pair closer than
``min_ps_separation`` straddles it and no event-gated (``pick_mode="eqt"``) P window reaches
across it, so the picks and detections on either side are those of the whole stream. A segment
that is never quiet is kept whole (the memory of SeisBench's path, the same result).
"""

from __future__ import annotations

import numpy as np
import obspy

from .annotate import _label_traces, iter_label_pieces, prepare_groups

__all__ = ["QUIET_MARGIN_S", "QuietCutBuffer", "classify_streamed_async"]

#: Seconds of quiet output each side of a cut: more than EqT's rule looks back for a P before a
#: detection (1 s) and than the default ``min_ps_separation`` (0.5 s).
QUIET_MARGIN_S = 1.5


class QuietCutBuffer:
    """Output labels of one segment since its last quiet cut.

    Each appended block is searched once, with the few samples before it that a quiet window
    can reach back to, so a segment that stays loud for hours costs no more than a quiet one
    (searching the whole buffer again per piece made a never-quiet station-day quadratic).

    :param off_levels: per label row, the level below which the row cannot hold or start a trigger.
    :param margin: samples that must be quiet on each side of a cut.
    """

    def __init__(self, layout: dict, off_levels: np.ndarray, margin: int):
        self.layout = layout
        self.off_levels = np.asarray(off_levels, dtype=np.float32)[:, None]
        self.margin = int(margin)
        self.start = 0  # segment sample of the buffer's first sample
        self.blocks: list[np.ndarray] = []
        self.length = 0  # samples in the buffer
        self.cut: int | None = None  # newest quiet cut, in buffer samples
        self._tail = np.zeros(0, dtype=bool)  # loudness of the buffer's last 2 * margin samples
        self.rate: float | None = None

    def append(self, labels: np.ndarray, rate: float | None) -> None:
        # NaN counts as loud: a failed window inside a segment must not become a cut
        loud = np.concatenate([self._tail, ~(labels < self.off_levels).all(axis=0)])
        offset = self.length - len(self._tail)  # buffer sample of loud[0]
        width = 2 * self.margin + 1
        if len(loud) >= width:
            # quiet windows of width samples, through a cumulative count of loud samples
            count = np.concatenate([[0], np.cumsum(loud)])
            quiet = np.flatnonzero(count[width:] == count[:-width])
            if len(quiet):
                self.cut = offset + int(quiet[-1]) + self.margin
        self._tail = loud[len(loud) - min(width - 1, len(loud)):]
        self.blocks.append(labels)
        self.length += labels.shape[1]
        self.rate = rate or self.rate

    def take(self, last: bool) -> tuple[int, np.ndarray] | None:
        """``(start, labels)`` up to the newest quiet cut (everything when ``last``); the rest stays."""
        cut = self.length if last else self.cut
        if not self.blocks or cut is None:
            return None
        labels = self.blocks[0] if len(self.blocks) == 1 else np.concatenate(self.blocks, axis=1)
        start = self.start
        # a copy, so that the taken part's memory is freed once it is aggregated
        self.blocks = [labels[:, cut:].copy()] if cut < labels.shape[1] else []
        self.start += cut
        self.length -= cut
        self.cut = None  # the cut was the newest quiet window: none lies after it yet
        self._tail = self._tail[len(self._tail) - min(len(self._tail), self.length):]
        return start, labels[:, :cut]


def _off_levels(model, argdict: dict) -> np.ndarray | None:
    """Half of each label's threshold (where ObsPy's and EqT's triggers switch off), or None if a
    label has no threshold (the stream is then never cut)."""
    def arg(key):
        return argdict.get(key, model._annotate_args[key][1])

    levels = []
    for label in model.labels:
        if label == "Detection":
            threshold = arg("detection_threshold")
        elif label in model.phases:
            threshold = argdict.get(f"{label}_threshold", arg("*_threshold"))
        else:
            return None
        levels.append(float(threshold) / 2)
    return np.array(levels)


async def classify_streamed_async(model, stream: obspy.Stream, argdict: dict):
    """``classify_aggregate(annotate(stream))`` with picks extracted segment piece by segment piece
    (module docstring); the same ``ClassifyOutput``, up to float rounding of the times."""
    import seisbench.util as sbu

    from .picking import check_ps_separation

    separation = check_ps_separation(argdict.get("min_ps_separation", 0.0))  # before any work
    prepared = prepare_groups(model, stream, True, argdict)
    levels = _off_levels(model, argdict)
    if prepared is None or levels is None:
        annotations = await model.annotate_async(stream, **argdict)
        return model.classify_aggregate(annotations, argdict)
    groups, annotate_args, step, chunk = prepared
    picks, detections = [], []

    def aggregate(annotations: obspy.Stream) -> None:
        output = model.classify_aggregate(annotations, argdict)
        picks.extend(output.picks)
        detections.extend(output.detections)

    buffer = None
    async for piece in iter_label_pieces(model, groups, annotate_args, step, chunk):
        if piece.whole is not None:
            aggregate(model._predictions_to_stream(piece.whole))
            continue
        if buffer is None or buffer.layout is not piece.layout:
            margin_s = max(QUIET_MARGIN_S, separation + 0.5)
            margin = int(np.ceil(margin_s * (piece.rate or model.sampling_rate)))
            buffer = QuietCutBuffer(piece.layout, levels, margin)
        buffer.append(piece.labels, piece.rate)
        taken = buffer.take(piece.last)
        if taken is not None and buffer.rate is not None:
            start, labels = taken
            rate = buffer.rate
            layout = {**piece.layout, "start_time": piece.layout["start_time"] + start / rate}
            aggregate(_label_traces(model, layout, labels, rate))
    return sbu.ClassifyOutput(model.name, picks=sbu.PickList(sorted(picks)),
                              detections=sbu.DetectionList(sorted(detections)))
