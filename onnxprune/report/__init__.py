"""The pre-deployment report: one data structure rendered as text, JSON or an HTML page.

    model.py   the Report structure (schema onnxprune.report/1) and ReportSettings
    build.py   build_report / write_report: analysis, plan, latency, scores, sensitivity sections
    text.py    render_text, render_json
    html.py    render_html (self-contained page with matplotlib figures)
    plots.py   plot_sensitivity (the sensitivity command's PNG)
    labels.py  short distinct names, line styles and damage values for tables and plots
"""

from .build import build_report, format_of, render, write_report
from ..settings import ReportSettings
from .model import FORMATS, SCHEMA, Report
from .text import render_json, render_text

__all__ = ["FORMATS", "Report", "ReportSettings", "SCHEMA", "build_report", "format_of", "render", "render_json",
           "render_text", "write_report"]
