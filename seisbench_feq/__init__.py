"""seisbench_feq: light EQTransformer descendants (LEQNet, FEQ1-3) for SeisBench and ObsPy.

The public names are loaded on first use, so that importing a submodule (``seisbench_feq.cli`` for
``seisbench-feq --help``) does not import torch.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "LEQNet": "models",
    "FEQ1": "models",
    "FEQ2": "models",
    "FEQ3": "models",
    "MODELS": "models",
    "keras_param_count": "models",
    "torch_param_count": "models",
    "load_model": "loading",
    "model_label": "loading",
}

__all__ = list(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):  # seisbench_feq.models etc. without an explicit import, as before 0.2
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
