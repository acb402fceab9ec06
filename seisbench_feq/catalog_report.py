"""Former home of the catalog report; kept for one release. Use :mod:`seisbench_feq.catalog.report`."""

from .catalog.report import markdown, plot_map, plot_recall_by_magnitude, plot_residuals, write_report  # noqa: F401
