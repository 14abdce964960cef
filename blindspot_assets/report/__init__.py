"""The HTML report: one self-contained page per run, readable offline."""

from blindspot_assets.report.html import ReportSummary, build_report

__all__ = ["ReportSummary", "build_report"]
