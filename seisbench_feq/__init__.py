"""seisbench_feq: light EQTransformer descendants (LEQNet, FEQ1-3) for SeisBench and ObsPy."""

from .models import FEQ1, FEQ2, FEQ3, MODELS, LEQNet, keras_param_count, torch_param_count

__version__ = "0.1.0"

__all__ = [
    "LEQNet",
    "FEQ1",
    "FEQ2",
    "FEQ3",
    "MODELS",
    "keras_param_count",
    "torch_param_count",
]
