"""The HTML report: one page per run, with its images beside it, readable offline.

A plain library (no Dagster): ``build_report(cfg, out_dir)`` reads the results tables, the image
sets and the codes stores of a run and writes ``out_dir/index.html`` plus ``out_dir/img/``.
"""

from blindspot_assets.report.html import ReportOptions, ReportSummary, build_report

__all__ = ["ReportOptions", "ReportSummary", "build_report"]
