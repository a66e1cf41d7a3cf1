"""The HTML reports (the EDA report, a run's report, a line's monitoring report) as one product: Jinja2 templates in
``steelseg/templates`` with autoescape on (every string from a dataset, a run or a log reaches the page as text,
never as markup) and one stylesheet. Ground floor: the reports and line wings both render through it."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

__all__ = ["render"]


@lru_cache(maxsize=1)
def _env() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("steelseg", "templates"),
                             autoescape=jinja2.select_autoescape(["html"], default=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["pct"] = lambda v, digits=1: "-" if v is None else f"{100 * v:.{digits}f}%"
    return env


def _num(v: Any, digits: int = 4) -> str:
    """A number as the reports print it: floats to ``digits`` places, None as a dash."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render(template: str, **context: Any) -> str:
    """``template`` (e.g. ``eda.html``) filled with ``context``; a missing name is an error, not an empty cell."""
    return _env().get_template(template).render(**context)
