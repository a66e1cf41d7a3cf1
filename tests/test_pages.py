"""The HTML reports are one product (issue #37): Jinja2 templates with autoescape and one stylesheet. A hostile
string from a dataset or a run (an image id, a class name, a path) reaches the page as text, never as markup; a
name missing from a template is an error, not an empty cell."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from steelseg.pages import render

HOSTILE = '<img src=x onerror=alert(1)>"\''


def _monitor(level: str = "ok") -> dict:
    return {"images": 10, "bundle": HOSTILE, "reference_images": 5, "window": 500, "level": level,
            "thresholds": {"warn": 0.1, "alert": 0.25}, "latest": [{"signal": HOSTILE, "psi": 0.1, "excess": 0.0,
                                                                     "level": "ok"}],
            "windows": [{"images": [1, 500], "level": level, "rows": []}]}


def test_hostile_strings_reach_the_page_as_text() -> None:
    page = render("monitor.html", out=HOSTILE, m=_monitor(), plot=None)
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    head = [(HOSTILE, HOSTILE)]
    run = render("run.html", name=HOSTILE, run=HOSTILE, head=head, figs={"loss": "l.png", "scores": "s.png"},
                 per_class=[(HOSTILE, 0.5, None)], detection=None, detection_rows=[], search=None, search_rows=[],
                 eval_dir="", worst=[])
    assert "<img src=x" not in run and run.count("&lt;img src=x") >= 4


def test_every_report_shares_one_stylesheet() -> None:
    css = (Path(render.__code__.co_filename).parent / "templates" / "style.css").read_text().strip()
    page = render("monitor.html", out="o", m=_monitor("alert"), plot="monitor.png")
    assert css in page and len(re.findall(r"<style>", page)) == 1


def test_a_missing_name_is_an_error() -> None:
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        render("monitor.html", out="o", m={"images": 1}, plot=None)
