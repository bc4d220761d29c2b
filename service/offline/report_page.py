"""The offline reports' HTML page (`make evaluate`'s, `make outcomes`'): one self-contained file, its
style inline, nothing fetched, so that it opens offline and as an attachment."""

from __future__ import annotations

import html

STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1150px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; }
.verdict { font-size: 1.2em; font-weight: bold; padding: 0.8em; background: #eef6ee; border-left: 6px solid #3a3; }
"""


def page(title: str, body: str, style: str = "") -> str:
    """A whole HTML document: the shared style (and a report's own), then body as given."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}{style}</style></head><body>
{body}
</body></html>
"""


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"
