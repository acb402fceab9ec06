"""One model spec for every command: ``load_model(spec)`` and ``model_label(spec)``.

Grammar of a spec (case-insensitive names):

=============================  ==============================================================
``feq3`` ``feq2`` ``feq1``      the shipped ``default`` weights of that class
``leqnet``
``NAME:WEIGHTS``               ``WEIGHTS`` is a shipped name (``feq3:default``), ``random``, or
                               a weights prefix ``PREFIX`` (``PREFIX.json[.vN]`` + ``PREFIX.pt[.vN]``,
                               also given as ``PREFIX.pt`` / ``PREFIX.json``) loaded into class NAME
                               (NAME: feq1-3, leqnet, eqtransformer, phasenet, original-eqtransformer)
``PREFIX``                     a weights pair; the class is read from the json
``PATH.h5``                    an original Keras EQTransformer or LEQNet file (type detected), converted
``eqt-original:PATH.h5``       the same, type given
``leqnet-original:PATH.h5``
``eqtransformer`` ``phasenet``  SeisBench's classes; with ``:WEIGHTS`` as above (``eqtransformer:PREFIX``)
``cba`` ``eqt-gru``            the baselines (:mod:`seisbench_feq.baselines`): their shipped ``default``
``simple-cnn``                 weights (``seisbench_feq/weights/NAME/default.*``; an error names the
``simple-cnn-flat``            missing file), ``NAME:PREFIX`` for other weights (the decision tree:
``decision-tree``              ``PREFIX.skops`` + ``PREFIX.json``), ``NAME:random``
``random-NAME``                class NAME with random weights, seed 0 (plumbing and timing only)
``module:Class[:WEIGHTS]``     any importable WaveformModel class (``WEIGHTS`` as above; default: random)
=============================  ==============================================================
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_SEED = 0
FEQ_NAMES = ("feq3", "feq2", "feq1", "leqnet")
SEISBENCH_NAMES = ("eqtransformer", "phasenet")
BASELINE_NAMES = ("cba", "eqt-gru", "simple-cnn", "simple-cnn-flat", "decision-tree")
BASELINE_LABELS = {
    "cba": "CBA",
    "eqt-gru": "EqT-GRU",
    "simple-cnn": "Simple CNN",
    "simple-cnn-flat": "Simple CNN (flat)",
    "decision-tree": "Decision tree",
}
ORIGINAL_NAMES = {"eqt-original": "eqtransformer", "leqnet-original": "leqnet"}
_ORIGINAL_EQT_ALIASES = ("original-eqtransformer", "originaleqtransformer", "eqt-original")

SPEC_HELP = (
    "model spec: feq3 | feq2 | feq1 | leqnet | cba | eqt-gru | simple-cnn | simple-cnn-flat | decision-tree"
    " (shipped weights), NAME:WEIGHTS (a shipped name, 'random' or "
    "a PREFIX of PREFIX.json/PREFIX.pt), PREFIX (class read from the json), PATH.h5 (original Keras "
    "EqT/LEQNet, converted), eqt-original:PATH.h5, leqnet-original:PATH.h5, eqtransformer:PREFIX, "
    "phasenet:PREFIX, random-NAME, module:Class"
)


class ModelSpecError(ValueError):
    """A model spec that names no loadable model; the message names the spec or file."""


def _classes() -> dict:
    import seisbench.models as sbm

    from .models import MODELS

    from .baselines import BASELINES

    classes = dict(MODELS)
    classes.update(BASELINES)
    classes.update({cls.__name__.lower(): cls for cls in BASELINES.values()})  # names recorded in jsons
    classes["eqtransformer"] = sbm.EQTransformer
    classes["phasenet"] = sbm.PhaseNet
    return classes


def _class_by_name(name: str):
    key = name.lower().replace("_", "-")
    if key in _ORIGINAL_EQT_ALIASES:
        from .convert import OriginalEQTransformer

        return OriginalEQTransformer
    classes = _classes()
    if key not in classes:
        raise ModelSpecError(f"unknown model class {name!r}; expected one of {sorted(classes)}")
    return classes[key]


def weights_prefix(path: str | Path) -> tuple[Path, str | None]:
    """'x', 'x.pt', 'x.json', 'x.pt.v2' -> (Path('x'), version or None)."""
    p = Path(path)
    name, version = p.name, None
    for ext in (".pt", ".json"):
        if ext + ".v" in name:
            name, version = name.split(ext + ".v", 1)
            break
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    prefix = p.with_name(name)
    if version is None and not Path(f"{prefix}.json").is_file():
        # what `seisbench-feq train --save-weights` writes: PREFIX.json.v1 + PREFIX.pt.v1
        versions = [q.name.rsplit(".v", 1)[1] for q in prefix.parent.glob(f"{glob.escape(prefix.name)}.json.v*")]
        if versions:
            version = max(versions, key=lambda v: (len(v), v))
    return prefix, version


def _json_path(prefix: Path, version: str | None) -> Path:
    return Path(f"{prefix}.json" + (f".v{version}" if version else ""))


def class_for_weights(json_path: Path):
    """The model class a SeisBench weights json describes (its recorded class, else its layout)."""
    import seisbench.models as sbm

    from .models import MODELS

    try:
        meta = json.loads(Path(json_path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelSpecError(f"cannot read the weights description {json_path}: {err}") from err
    args = meta.get("model_args", {})
    named = meta.get("model_class") or meta.get("class")
    if named:
        return _class_by_name(str(named).rsplit(".", 1)[-1])
    if "per_channel_std" in args:
        from .convert import OriginalEQTransformer

        return OriginalEQTransformer
    if "lstm_blocks" in args:
        return sbm.EQTransformer
    if "res_kernels" in args:  # the LEQNet family: the class whose defaults match the saved layout
        for cls in MODELS.values():
            arch = cls._default_architecture
            if (
                list(args.get("res_kernels", [])) == list(arch["res_kernels"])
                and args.get("rnn") == arch["rnn"]
                and args.get("rnn_blocks") == arch["rnn_blocks"]
                and args.get("pick_rnn") == arch["pick_rnn"]
            ):
                return cls
        return MODELS["leqnet"]
    if "phases" in args and "filter_factor" in args:
        return sbm.PhaseNet
    raise ModelSpecError(f"{json_path}: cannot tell the model class; use CLASS:PREFIX ({SPEC_HELP})")


def _baseline(spec: str, key: str, rest: str):
    """A baseline by name: shipped ``default`` (or another shipped name), ``random`` or a PREFIX."""
    from .baselines import BASELINES, DecisionTreeDetector

    cls = BASELINES[key]
    label = BASELINE_LABELS[key]
    name = rest or "default"
    if name.lower() == "random":
        return _random(cls, spec)
    if name in cls.list_pretrained() or not rest:
        model = cls.from_pretrained(name)  # MissingWeightsError names the missing file
        return _labelled(model, spec, name, f"{label} ({name})")
    if cls is DecisionTreeDetector:
        model = cls.load(rest)
        return _labelled(model, spec, weights_prefix(rest.removesuffix(".skops"))[0].name,
                         f"{label} ({weights_prefix(rest.removesuffix('.skops'))[0].name})")
    model = _from_weights(spec, cls, rest)
    model._feq_label = f"{label} ({weights_prefix(rest)[0].name})"
    return model


def _random(cls, spec: str):
    import torch

    logger.warning("model %s with RANDOM weights (seed %d): picks are meaningless; use this "
                   "for timing and plumbing only", spec, RANDOM_WEIGHTS_SEED)
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = cls()
    return _labelled(model, spec, f"random(seed={RANDOM_WEIGHTS_SEED})", f"{cls.__name__} (random)")


def _labelled(model, spec: str, weights: str, label: str):
    model = model.eval()
    model._feq_spec = spec
    model._feq_label = label
    model._archive_weights_label = weights  # read by archive.weights_label (older name)
    return model


def _from_h5(spec: str, path: str, kind: str | None):
    from . import convert

    h5 = Path(path)
    if not h5.is_file():
        raise FileNotFoundError(f"{spec!r}: Keras file {h5} does not exist")
    try:
        detected = convert.detect_model_type(h5)
        if kind is not None and detected != kind:
            raise convert.KerasConversionError(f"{h5} holds a {detected} model, not a {kind}")
        model = convert.CONVERTERS[detected](h5)
    except (OSError, KeyError) as err:  # h5py reports truncated files as OSError
        raise ModelSpecError(f"{spec!r}: cannot read the Keras file {h5}: {err}") from err
    what = "EqT" if detected == "eqtransformer" else "LEQNet"
    return _labelled(model, spec, h5.name, f"{what} original (converted)")


def _from_weights(spec: str, cls, weights: str):
    """Class ``cls`` (None: read from the json) with ``weights``: shipped name, 'random' or PREFIX."""
    if weights.lower() == "random":
        if cls is None:
            raise ModelSpecError(f"{spec!r}: random weights need a class (random-NAME)")
        return _random(cls, spec)
    if weights.endswith(".h5"):
        return _from_h5(spec, weights, None)
    prefix, version = weights_prefix(weights)
    json_path = _json_path(prefix, version)
    if json_path.is_file() and version is None and Path(f"{prefix}.skops").is_file():  # a decision tree
        from .baselines import DecisionTreeDetector

        model = DecisionTreeDetector.load(prefix)
        return _labelled(model, spec, prefix.name, f"{BASELINE_LABELS['decision-tree']} ({prefix.name})")
    if json_path.is_file():
        pt_path = Path(f"{prefix}.pt" + (f".v{version}" if version else ""))
        if not pt_path.is_file():
            raise FileNotFoundError(f"weights {json_path}: no {pt_path.name} beside it")
        cls = cls or class_for_weights(json_path)
        try:
            model = cls.load(str(prefix), version_str=version, map_location="cpu")
        except Exception as err:  # torch reports a truncated .pt in many ways
            raise ModelSpecError(f"{spec!r}: cannot load weights {pt_path}: {type(err).__name__}: {err}") from err
        tag = f"@{model.weights_version}" if getattr(model, "weights_version", None) else ""
        return _labelled(model, spec, f"{prefix.name}{tag}", f"{cls.__name__} ({prefix.name})")
    looks_like_path = "/" in weights or "\\" in weights or Path(weights).suffix in (".pt", ".json")
    pt_path = Path(f"{prefix}.pt" + (f".v{version}" if version else ""))
    if pt_path.is_file() or Path(weights).suffix in (".pt", ".json") or ".pt.v" in weights:
        raise FileNotFoundError(f"weights {weights}: no {json_path.name} beside it")
    if cls is not None and not looks_like_path:
        try:
            model = cls.from_pretrained(weights)
        except Exception as err:
            raise ModelSpecError(f"{spec!r}: cannot load weights {weights!r} for {cls.__name__}: "
                                 f"{type(err).__name__}: {err}") from None
        tag = f"@{model.weights_version}" if getattr(model, "weights_version", None) else ""
        return _labelled(model, spec, f"{weights}{tag}", f"{cls.__name__} ({weights})")
    raise FileNotFoundError(f"{spec!r} is not a known model name and {json_path} does not exist ({SPEC_HELP})")


def _is_module(name: str) -> bool:
    """A dotted name, or a top-level module that can be imported (``test_archive:EnvelopePicker``)."""
    if "." in name:
        return True
    try:
        return name.isidentifier() and importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def load_model(spec: str, weights: str | None = None):
    """The WaveformModel a spec names (see the module docstring), in ``eval()`` mode on the CPU.

    ``weights``, when given, is appended as ``spec:weights`` (``load_model("feq3", "random")``).
    The returned model carries its label for :func:`weights_label` and :func:`label_of`.
    """
    spec = str(spec).strip()
    if weights is not None and weights != "":
        spec = f"{spec}:{weights}"
    if not spec:
        raise ModelSpecError(f"empty model spec ({SPEC_HELP})")
    head, sep, rest = spec.partition(":")
    key = head.lower()
    if len(head) == 1 and sep and rest[:1] in ("/", "\\"):  # a Windows drive letter, not a class
        head, sep, rest, key = spec, "", "", spec.lower()

    if key in ORIGINAL_NAMES:
        if not rest:
            raise ModelSpecError(f"{spec!r}: give the Keras file as {key}:PATH.h5")
        return _from_h5(spec, rest, ORIGINAL_NAMES[key])
    if key.startswith("random-") and not sep:
        return _random(_class_by_name(key[len("random-"):]), spec)
    if key in BASELINE_NAMES:
        return _baseline(spec, key, rest)
    if key in FEQ_NAMES or key in SEISBENCH_NAMES or key in _ORIGINAL_EQT_ALIASES:
        cls = _class_by_name(key)
        if rest:
            return _from_weights(spec, cls, rest)
        if key in FEQ_NAMES:
            if "default" in cls.list_pretrained():
                return _from_weights(spec, cls, "default")
            return _random(cls, spec)
        raise ModelSpecError(f"{spec!r}: give weights for {cls.__name__} as {key}:PREFIX or {key}:NAME")
    if sep and _is_module(head) and not Path(head).exists():  # module:Class[:WEIGHTS]
        attr, _, cls_weights = rest.partition(":")
        try:
            cls = getattr(importlib.import_module(head), attr)
        except (ImportError, AttributeError) as err:
            raise ModelSpecError(f"{spec!r}: cannot import {attr} from {head}: {err}") from err
        if cls_weights:
            return _from_weights(spec, cls, cls_weights)
        return _random(cls, spec)
    if spec.endswith(".h5"):
        return _from_h5(spec, spec, None)
    return _from_weights(spec, None, spec)


def weights_label(model) -> str:
    """A short name of the weights a model carries (``default@1``, ``student``, ``random(seed=0)``)."""
    label = getattr(model, "_archive_weights_label", None)
    if label:
        return label
    version = getattr(model, "weights_version", None)
    return f"v{version}" if version else "unnamed"


def label_of(model) -> str:
    """A human label of a loaded model (``FEQ3 (default)``)."""
    return getattr(model, "_feq_label", None) or f"{type(model).__name__} ({weights_label(model)})"


def model_label(spec: str) -> str:
    """A human label of a spec without loading the weights (``FEQ3 (default)``, ``EqT original (converted)``)."""
    spec = str(spec).strip()
    head, sep, rest = spec.partition(":")
    key = head.lower()
    if key in ORIGINAL_NAMES:
        return ("EqT" if key == "eqt-original" else "LEQNet") + " original (converted)"
    if key.startswith("random-") and not sep:
        return f"{_class_by_name(key[len('random-'):]).__name__} (random)"
    if key in BASELINE_NAMES:
        return f"{BASELINE_LABELS[key]} ({weights_prefix(rest.removesuffix('.skops'))[0].name if rest else 'default'})"
    if key in FEQ_NAMES or key in SEISBENCH_NAMES or key in _ORIGINAL_EQT_ALIASES:
        cls = _class_by_name(key)
        name = rest or "default"
        return f"{cls.__name__} ({weights_prefix(name)[0].name if rest else name})"
    if spec.endswith(".h5"):
        return f"{Path(spec).stem} (converted)"
    if sep and _is_module(head):
        return f"{rest.partition(':')[0]} ({rest.partition(':')[2] or 'random'})"
    prefix, version = weights_prefix(spec)
    json_path = _json_path(prefix, version)
    if json_path.is_file():
        try:
            return f"{class_for_weights(json_path).__name__} ({prefix.name})"
        except ModelSpecError:
            pass
    return prefix.name
