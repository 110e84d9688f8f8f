"""Reading KaSA adapters and base weights without changing them: what a saved adapter holds (``inspection``),
what the truncation would remove before training (``truncation_report``, the pre-flight report), and the factor
algebra both read from (``factors``). Torch and the core only; plots import matplotlib when asked for."""

from .inspection import format_inspection, inspect_adapter, plot_adapter
from .truncation_report import TruncationReport, format_truncation_report, plot_spectra, truncation_report

__all__ = [
    "TruncationReport", "format_inspection", "format_truncation_report", "inspect_adapter", "plot_adapter",
    "plot_spectra", "truncation_report",
]
