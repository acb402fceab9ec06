"""The annotate/classify hooks every picker of the package shares (LEQNet/FEQ and the baselines).

:class:`PickerHooks` is a mixin placed before ``WaveformModel`` (or a subclass of it such as
SeisBench's ``EQTransformer``). It gives a model the package's behaviour on streams: the one stream
cleaner, the window normalisation, EqT's stacking and edge blinding, chunked ``annotate``, the one
pick rule (``pick_mode``, P/S conflicts) and the optional MC-dropout pick uncertainty. A model with
``phases == ""`` (a detector) gets detections and no picks.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path
from typing import Any

import obspy
import seisbench
import seisbench.util as sbu
from seisbench.models import EQTransformer, WaveformModel

from . import picking
from .annotate import DEFAULT_CHUNK_SECONDS, annotate_chunked_async, check_uncertainty_samples, pick_uncertainties
from .streamed_classify import classify_streamed_async
from .preprocessing import clean_stream, preprocess_windows, warn_incomplete_instruments

__all__ = ["PickerHooks", "log_hook_errors"]


def log_hook_errors(hook):
    """SeisBench's annotate hangs silently when a batch hook raises; at least say why first."""

    @functools.wraps(hook)
    def wrapper(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except Exception:
            seisbench.logger.exception(f"{type(self).__name__}.{hook.__name__} failed")
            raise

    return wrapper


_ARGS = WaveformModel._annotate_args.copy()
_ARGS["*_threshold"] = ("Trigger threshold for the phase picks", 0.3)
_ARGS["detection_threshold"] = ("Trigger threshold for detections", 0.5)
_ARGS["blinding"] = ("Prediction samples discarded at each window edge (pre, post): edges see no context", (500, 500))
_ARGS["stacking"] = ("Stacking of overlapping windows, 'max' or 'avg' (NaN-blinded edges are ignored)", "max")
# 50 % overlap: every sample is seen away from a blinded edge, and picks near an edge get a
# second opinion from the neighbouring window (overlap >= sum(blinding) avoids NaN holes).
_ARGS["overlap"] = (_ARGS["overlap"][0], 3000)
_ARGS["pick_mode"] = (
    "Pick rule: 'peak' (SeisBench: every trigger of a phase curve, at its maximum) or 'eqt' "
    "(EQTransformer's: per detection the first S inside it and the highest P from 1 s before its "
    "start to 0.1 s before that S); see seisbench_feq.models.picking",
    "peak",
)
_ARGS["min_ps_separation"] = (
    "Of a P and an S pick of one station closer than this (seconds), only the more probable is "
    "kept (an S-P time under 0.5 s means a hypocentre within about 4 km); 0 keeps every pick",
    0.5,
)
_ARGS["uncertainty_samples"] = (
    "classify only: MC-dropout passes per pick for the pick time's uncertainty (0: none); costs that "
    "many extra forward passes of one window per pick (seisbench_feq.models.annotate.pick_uncertainties)",
    0,
)
_ARGS["chunk_seconds"] = (
    "Continuous segments are annotated in pieces of this many seconds, overlapping by whole "
    "windows (bounded memory, same output); 0 annotates each segment at once",
    DEFAULT_CHUNK_SECONDS,
)


class PickerHooks:
    """Mixin before ``WaveformModel``: the package's annotate/classify behaviour (module docstring).

    The model needs ``norm`` and ``highpass`` attributes (window pre-processing) and ``phases``.
    Its weights ship inside the package, in ``seisbench_feq/weights/<weights_name>/`` (default:
    the class name in lower case), so ``from_pretrained`` works offline and writes nothing.
    """

    _annotate_args = _ARGS
    weights_name: str | None = None

    @classmethod
    def _model_path(cls) -> Path:
        folder = cls.weights_name or cls.__name__.lower()
        return Path(str(importlib.resources.files("seisbench_feq") / "weights" / folder))

    @classmethod
    def _remote_path(cls) -> str:
        raise ValueError(
            f"{cls.__name__} weights are shipped with seisbench_feq, there is no remote repository."
            f" Available: {cls.list_pretrained()}. Load other files with {cls.__name__}.load(path)."
        )

    @log_hook_errors
    def annotate_batch_pre(self, batch, argdict: dict[str, Any]):
        return preprocess_windows(self, batch)

    # stacks the tuple of outputs into (batch, samples, labels) and NaN-blinds the edges
    annotate_batch_post = log_hook_errors(EQTransformer.annotate_batch_post)

    async def annotate_async(self, stream: obspy.Stream, copy: bool = True, **kwargs) -> obspy.Stream:
        # SeisBench's annotate, with long segments processed in overlapping pieces (chunk_seconds).
        if "min_ps_separation" in kwargs:  # fail before the work, not after it in classify_aggregate
            picking.check_ps_separation(kwargs["min_ps_separation"])
        kwargs.pop("uncertainty_samples", None)  # a classify option, not an annotate one
        return await annotate_chunked_async(self, stream, copy=copy, **kwargs)

    async def classify_async(self, stream: obspy.Stream, **kwargs) -> sbu.ClassifyOutput:
        samples = check_uncertainty_samples(kwargs.pop("uncertainty_samples", 0))  # before any work
        # SeisBench's classify_async, with the picks extracted piece by piece (streamed_classify)
        argdict = {**self.default_args, **kwargs}
        stream = self.classify_stream_pre(stream, argdict)
        output = await classify_streamed_async(self, stream, argdict)
        if samples and output.picks:
            pick_uncertainties(self, stream, output.picks, samples, **kwargs)
        return output

    def classify_aggregate(self, annotations: obspy.Stream, argdict: dict[str, Any]) -> sbu.ClassifyOutput:
        """Picks with the ``pick_mode`` rule and P/S conflicts resolved
        (:mod:`seisbench_feq.models.picking`), SeisBench's detections."""
        def arg(key):
            return argdict.get(key, self._annotate_args[key][1])

        thresholds = {phase: argdict.get(f"{phase}_threshold", arg("*_threshold")) for phase in self.phases}
        thresholds["detection"] = arg("detection_threshold")
        name = self.__class__.__name__
        picks = sbu.PickList()
        if self.phases:
            picks = picking.classify_picks(
                annotations, name, self.phases, thresholds, arg("pick_mode"), arg("min_ps_separation")
            )
        detections = self.detections_from_annotations(
            annotations.select(channel=f"{name}_Detection"), thresholds["detection"]
        )
        return sbu.ClassifyOutput(self.name, picks=picks, detections=detections)

    # SeisBench's trigger extraction, piece by piece (same picks, bounded memory on long traces).
    picks_from_annotations = staticmethod(picking.picks_from_annotations)
    detections_from_annotations = staticmethod(picking.detections_from_annotations)

    def annotate_stream_pre(self, stream: obspy.Stream, argdict: dict[str, Any]) -> obspy.Stream:
        stream.traces = clean_stream(stream, self.sampling_rate, self.in_samples, self.name).traces
        return WaveformModel.annotate_stream_pre(self, stream, argdict)

    # The cleaner and SeisBench's grouping only assign new arrays: annotate may share the caller's
    # samples read-only instead of copying them (a subclass overriding this hook gets a copy).
    annotate_stream_pre.shares_input = True

    def annotate_stream_validate(self, stream: obspy.Stream, argdict: dict[str, Any]):
        stream = WaveformModel.annotate_stream_validate(self, stream, argdict)
        warn_incomplete_instruments(stream, self.component_order, self.name)
        return stream
