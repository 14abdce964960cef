"""The report's page: the Jinja2 template (autoescaped) ``templates/page.html.j2`` with the styles
``static/report.css`` and the script ``static/report.js`` put inline, so the page is one file
plus its images and opens offline. All three are package files (``resource``)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

from blindspot_assets.report.svg import fmt

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)


def _tojson(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def resource(name: str) -> str:
    """A file of the report package (``templates/…``, ``static/…``), as text."""
    return resources.files("blindspot_assets.report").joinpath(name).read_text(encoding="utf-8")


_ENV.globals.update(fmt=fmt, tojson=_tojson)
TEMPLATE = _ENV.from_string(resource("templates/page.html.j2"))
_CSS, _JS = resource("static/report.css"), resource("static/report.js")


def render_page(**context: Any) -> str:
    """The page; SVG figure strings are inserted as markup (they are escaped where drawn)."""
    sections = context["sections"]
    for s in sections:
        s.figures = [Markup(f) for f in s.figures]
    context["cross"] = [(Markup(f), cap) for f, cap in context["cross"]]
    context["analyses"] = [  # (id, title, markup) sections after the models
        {"id": i, "title": t, "body": Markup(b)} for i, t, b in context.get("analyses", [])
    ]
    lineage = context["lineage"]
    context["lineage_json"] = json.dumps(lineage.__dict__, indent=1, default=str)
    return TEMPLATE.render(css=Markup(_CSS), js=Markup(_JS), **context)
