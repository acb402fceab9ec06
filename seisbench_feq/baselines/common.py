"""What every baseline shares with LEQNet/FEQ: the annotate/classify hooks and the shipped-weights
lookup, so that a baseline cleans streams, normalises windows, stacks and picks exactly as the
package's own models do."""

from __future__ import annotations

from pathlib import Path

from seisbench.models import WaveformModel

from ..models.hooks import PickerHooks


class MissingWeightsError(FileNotFoundError):
    """No shipped weights file for a baseline; the message names the file that is missing."""


def check_highpass(highpass: float | None, sampling_rate: float) -> None:
    if highpass is not None and not 0 < highpass < sampling_rate / 2:
        raise ValueError(f"highpass={highpass!r}: expected None or a frequency in (0, {sampling_rate / 2}) Hz")


def check_norm(norm: str) -> None:
    if norm not in ("std", "peak"):
        raise ValueError(f"norm={norm!r}: expected 'std' or 'peak'")


class BaselineHooks(PickerHooks):
    """Mixin placed before ``WaveformModel``: the package's annotate/classify hooks
    (:class:`~seisbench_feq.models.hooks.PickerHooks`, as LEQNet's) and the shipped-weights lookup.

    A subclass sets ``weights_name`` (its folder below ``seisbench_feq/weights``, the spec name of
    :func:`seisbench_feq.load_model`) and has ``norm``, ``highpass`` and ``phases`` attributes
    (``phases == ""`` for detectors: ``classify`` then gives detections and no picks).
    """

    weights_suffixes = (".json.v1", ".pt.v1")  # SeisBench's pair written by export/save(version "1")
    #: The published figure of the design (from the authors' own STEAD subsets, not this data).
    published = ""

    # --- shipped weights ----------------------------------------------------------------------

    @classmethod
    def shipped_files(cls, name: str = "default") -> list[Path]:
        return [cls._model_path() / f"{name}{suffix}" for suffix in cls.weights_suffixes]

    @classmethod
    def list_pretrained(cls, details: bool = False, remote: bool = False):
        folder = cls._model_path()
        suffix = cls.weights_suffixes[0]
        names = sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}")) if folder.is_dir() else []
        return {n: "" for n in names} if details else names

    @classmethod
    def list_versions(cls, name: str, remote: bool = False) -> list[str]:
        return ["1"] if name in cls.list_pretrained() else []

    @classmethod
    def from_pretrained(cls, name: str = "default", version_str: str = "latest", **kwargs):
        missing = [p for p in cls.shipped_files(name) if not p.is_file()]
        if missing:
            raise MissingWeightsError(
                f"no shipped {cls.__name__} weights {name!r}: {missing[0]} does not exist. Train them with"
                f" `seisbench-feq train --model {cls.weights_name} --save-weights {cls._model_path()} ...`"
                f" or load other weights as {cls.weights_name}:PREFIX"
            )
        return cls.load(cls._model_path() / name, version_str="1", map_location="cpu", **kwargs)


class WindowDetector(BaselineHooks, WaveformModel):
    """A detection-only baseline: one ``Detection`` output per sample, no phases (no picks)."""

    @property
    def phases(self) -> str:
        return ""

    def __init__(self, citation: str, in_channels: int = 3, in_samples: int = 6000, sampling_rate: float = 100,
                 norm: str = "std", highpass: float | None = None, **kwargs):  # fmt: skip
        check_norm(norm)
        check_highpass(highpass, sampling_rate)
        for key in ("labels", "phases"):  # fixed by the design; older jsons may carry them
            kwargs.pop(key, None)
        super().__init__(
            citation=citation, output_type="array", in_samples=in_samples, pred_sample=(0, in_samples),
            labels=["Detection"], sampling_rate=sampling_rate, component_order="ZNE", **kwargs,
        )  # fmt: skip
        self.in_channels = in_channels
        self.norm = norm
        self.highpass = highpass
