"""HTML building blocks for the report pages: one self-contained file, no scripts, no network
(plots and thumbnails are inlined as data URIs)."""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Any

from .plots import Plot

CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; margin: 0; color: #1d1d1f; background: #f6f7f9; }
header { background: #1f2937; color: #f9fafb; padding: 18px 28px; }
header h1 { margin: 0 0 6px 0; font-size: 22px; }
header p { margin: 2px 0; color: #d1d5db; font-size: 14px; }
main { padding: 10px 28px 40px 28px; max-width: 1400px; }
section { background: white; border: 1px solid #e5e7eb; border-radius: 8px; padding: 14px 20px; margin: 16px 0; }
h2 { font-size: 18px; margin: 4px 0 12px 0; }
.plots { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #eef0f3; }
figcaption { font-size: 12px; color: #6b7280; margin-top: 4px; }
table { border-collapse: collapse; font-size: 14px; }
th, td { padding: 5px 12px; border-bottom: 1px solid #e5e7eb; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.text { text-align: left; max-width: 720px; }
th { background: #f3f4f6; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 14px 0 0 0; }
.card { background: #374151; border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.card b { display: block; font-size: 20px; color: white; }
.card span { font-size: 12px; color: #d1d5db; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.tile { width: 176px; font-size: 12px; background: #fafafa; border: 1px solid #e5e7eb; border-radius: 6px; padding: 6px; }
.tile img { width: 164px; height: 164px; object-fit: contain; background: #eee; display: block; margin: 0 auto 4px auto; }
.tile .path { color: #6b7280; overflow-wrap: anywhere; }
.attr { padding: 1px 2px; border-radius: 3px; }
.true { color: #15803d; font-weight: 600; }
.pred { color: #b91c1c; font-weight: 600; }
.note { color: #6b7280; font-size: 13px; }
.best { font-weight: 700; background: #ecfdf5; }
"""


def page(title: str, header_html: str, sections: list[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<header>{header_html}</header>",
        "<main>",
        *sections,
        "</main></body></html>",
        "",
    ])


def section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{escape(title)}</h2>\n{body}\n</section>'


def figure(plot: Plot, caption: str) -> str:
    return (
        # The figure is as wide as its plot, so the caption wraps there and plots sit side by side.
        f'<figure style="width: {plot.width}px"><img class="plot" src="{plot.data_uri()}" width="{plot.width}" height="{plot.height}" '
        f'alt="{escape(plot.alt)}"><figcaption>{escape(caption)}</figcaption></figure>'
    )


def cards(items: list[tuple[str, str]]) -> str:
    return '<div class="cards">' + "".join(f"<div class=\"card\"><b>{escape(v)}</b><span>{escape(k)}</span></div>" for k, v in items) + "</div>"


class Markup(str):
    """HTML that a table cell or tile takes as it is (built from escaped parts by its maker)."""


def table(headers: list[str], rows: list[list[Any]], classes: list[list[str]] | None = None) -> str:
    """A plain table; cells are escaped (but :class:`Markup`); ``classes`` gives optional CSS classes per cell."""
    out = ["<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr></thead><tbody>"]
    for r, row in enumerate(rows):
        cells = []
        for c, value in enumerate(row):
            css = classes[r][c] if classes and classes[r][c] else ""
            attr = f' class="{css}"' if css else ""
            cells.append(f"<td{attr}>{value if isinstance(value, Markup) else escape(str(value))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def thumbnail(path: str, size: int = 192) -> str | None:
    """A JPEG data URI of the image, at most ``size`` pixels on a side; None when unreadable."""
    from ..data.images import open_bounded
    from ..core.errors import DataError

    try:
        with open_bounded(path) as image:  # a file replaced by a decompression bomb since training
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
    except (OSError, ValueError, DataError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_tile(row: dict[str, Any], explanation: str | None = None, detail: str | None = None) -> str:
    """One error's tile: the thumbnail with its true and predicted labels; the number in brackets is
    the confidence, or ``detail`` and row["confidence"] (an error size) when ``detail`` names it.
    ``explanation``: a data URI of its Grad-CAM overlay, shown under the image."""
    uri = thumbnail(row["input"])
    picture = f'<img src="{uri}" alt="{escape(Path(row["input"]).name)}">' if uri else '<div class="note">(image not found)</div>'
    if explanation:
        picture += f'<img class="cam" src="{explanation}" alt="Grad-CAM for {escape(Path(row["input"]).name)}">'
    number = f'{row["confidence"]:.1%}' if detail is None else f'{escape(detail)} {row["confidence"]:.3g}'
    return (
        f'<div class="tile">{picture}'
        f'<div>true <span class="true">{escape(str(row["label"]))}</span></div>'
        f'<div>predicted <span class="pred">{escape(str(row["predicted"]))}</span> ({number})</div>'
        f'<div class="path">{escape(Path(row["input"]).name)}</div></div>'
    )
