"""Old home of the FLOP counter (before 0.2); kept as an alias for one release: use
:mod:`seisbench_feq.models.costs` (built on ``torch.utils.flop_counter.FlopCounterMode``)."""

from .models.costs import FlopCount, count_flops, flops_per_window

__all__ = ["FlopCount", "count_flops", "flops_per_window"]
