"""Rendering of a comparison report as Markdown (``report.md``) and HTML (``report.html``).

The report is a list of blocks (heading, paragraph, table, list, image, code) rendered by
:func:`to_markdown` and :func:`to_html`, so both versions say the same thing. Inline text uses
two Markdown marks only, ``**bold**`` and ```code```, which the HTML renderer translates.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shoal.experiments.report import Column, SummaryTable
from shoal.experiments.report_stats import Interval, fmt, higher_is_better


@dataclass
class Block:
    """One block of a report.

    ``kind`` is ``h1``, ``h2``, ``p``, ``list`` (``items``), ``table`` (``header``, ``rows``),
    ``img`` (``text`` = file name, ``caption``) or ``code`` (``text``).
    """

    kind: str
    text: str = ""
    items: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""


def table_block(table: SummaryTable) -> Block:
    """The summary table: mean ± interval; a column's winner in bold."""
    header = ["strategy", "seeds"]
    for col in table.columns:
        arrow = "↑" if higher_is_better(col.metric) else "↓"
        header.append(f"{col.label} {arrow}")
    rows = []
    for s in table.strategies:
        row = [f"`{s}`", str(table.seeds(s))]
        for col in table.columns:
            iv = table.cells.get((s, col))
            if iv is None:
                row.append("—")
                continue
            text = fmt(iv, col.digits)
            v = table.verdicts[col]
            row.append(f"**{text}**" if v.win and v.leader == s else text)
        rows.append(row)
    return Block("table", header=header, rows=rows)


def paired_block(
    diffs: dict[tuple[str, Column], Interval], strategies: Sequence[str], baseline: str
) -> Block:
    """Differences to the baseline; bold where the interval excludes 0."""
    cols = list(dict.fromkeys(c for _, c in diffs))
    header = ["strategy"] + [f"Δ {c.label}" for c in cols]
    rows = []
    for s in strategies:
        if s == baseline:
            continue
        row = [f"`{s}`"]
        for c in cols:
            iv = diffs.get((s, c))
            if iv is None:
                row.append("—")
                continue
            text = f"{iv.mean:+.{c.digits}f}" + (
                "" if math.isnan(iv.half) else f" ± {iv.half:.{c.digits}f}"
            )
            row.append(f"**{text}**" if iv.low > 0 or iv.high < 0 else text)
        rows.append(row)
    return Block("table", header=header, rows=rows)


def verdict_items(table: SummaryTable) -> list[str]:
    """One line per column: who wins, or which leader is tied with whom."""
    items = []
    for col in table.columns:
        v = table.verdicts[col]
        if v.leader is None:
            continue
        if v.win:
            items.append(f"{col.label}: **`{v.leader}`** wins (no other interval overlaps it).")
        elif v.overlaps:
            tied = ", ".join(f"`{s}`" for s in v.overlaps)
            items.append(
                f"{col.label}: `{v.leader}` has the best mean but overlaps {tied}: no winner."
            )
        else:
            items.append(f"{col.label}: only `{v.leader}` has values.")
    return items


def _inline_md(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(blocks: Sequence[Block]) -> str:
    """Markdown text of the blocks (images linked by relative file name)."""
    out: list[str] = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.text}")
        elif b.kind == "h2":
            out.append(f"## {b.text}")
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "list":
            out.append("\n".join(f"- {i}" for i in b.items))
        elif b.kind == "table":
            lines = ["| " + " | ".join(_inline_md(h) for h in b.header) + " |"]
            lines.append("|" + "---|" * len(b.header))
            lines += ["| " + " | ".join(_inline_md(c) for c in r) + " |" for r in b.rows]
            out.append("\n".join(lines))
        elif b.kind == "img":
            out.append(f"![{b.caption}]({b.text})\n\n*{b.caption}*")
        elif b.kind == "code":
            out.append(f"```bash\n{b.text}\n```")
        else:
            raise ValueError(f"unknown report block kind {b.kind!r}")
    return "\n\n".join(out) + "\n"


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def _inline_html(text: str) -> str:
    t = html.escape(text, quote=False)
    t = _CODE.sub(r"<code>\1</code>", t)
    return _BOLD.sub(r"<b>\1</b>", t)


CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.55rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
code { background: #f4f4f4; padding: 0 0.2rem; border-radius: 3px; }
pre { background: #f4f4f4; padding: 0.8rem; overflow-x: auto; }
figure { margin: 1rem 0; } figcaption { font-style: italic; color: #555; }
img { max-width: 100%; }
"""


def to_html(blocks: Sequence[Block], image_dir: Path, title: str) -> str:
    """A self-contained HTML page of the blocks (PNG images embedded as data URIs)."""
    out = [
        "<!doctype html>",
        f'<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{CSS}</style></head><body>",
    ]
    for b in blocks:
        if b.kind in ("h1", "h2"):
            out.append(f"<{b.kind}>{_inline_html(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{_inline_html(b.text)}</p>")
        elif b.kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in b.rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "img":
            data = base64.b64encode((image_dir / b.text).read_bytes()).decode()
            out.append(
                f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(b.caption)}</figcaption></figure>"
            )
        elif b.kind == "code":
            out.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        else:
            raise ValueError(f"unknown report block kind {b.kind!r}")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
