"""The reports wing: the EDA report, the run report, the table that compares runs (HTML pages with
plots, JSON and CSV beside them)."""

from steelseg.lazy import lazy_exports

_EXPORTS = {"run_eda": "steelseg.reports.eda", "write_report": "steelseg.reports.report",
            "find_runs": "steelseg.reports.runs", "run_row": "steelseg.reports.runs", "compare": "steelseg.reports.runs"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
