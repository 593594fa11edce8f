"""Tiny document model and its three renderings: Markdown, self-contained HTML, terminal text.

A document is a list of blocks: ("h1"|"h2"|"p", text), ("ul", [items]), ("table", headers,
rows) and ("img", file name, caption).
"""
from __future__ import annotations

import base64
import html
from typing import Dict, List, Sequence


def text_table(headers: Sequence[str], rows: List[Sequence[str]]) -> str:
    """Aligned plain-text table (first column left, the others right-aligned)."""
    cells = [list(map(str, headers))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]

    def line(r):
        return "  ".join(c.ljust(w) if k == 0 else c.rjust(w)
                         for k, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)]
                     + [line(r) for r in cells[1:]])


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _numeric(cell) -> bool:
    text = str(cell).split(" ")[0].rstrip("%x")
    try:
        float(text)
    except ValueError:
        return text in ("-", "inf")
    return True


def markdown(blocks, images_dir: str) -> str:
    """Render ``blocks`` as Markdown; images are linked as ``images_dir/<name>``."""
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}\n")
        elif kind == "h2":
            out.append(f"## {block[1]}\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in block[1]) + "\n")
        elif kind == "table":
            headers, rows = block[1], block[2]
            align = ["--:" if rows and all(_numeric(r[k]) for r in rows) else "---"
                     for k in range(len(headers))]
            lines = ["| " + " | ".join(map(_md_cell, headers)) + " |", "|" + "|".join(align) + "|"]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
            out.append("\n".join(lines) + "\n")
        elif kind == "img":
            out.append(f"![{block[2]}]({images_dir}/{block[1]})\n")
    return "\n".join(out)


_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}"
          "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
          "td:first-child,th:first-child{text-align:left}th{background:#eee}"
          "img{max-width:100%}")


def html_document(blocks, title: str, images: Dict[str, bytes]) -> str:
    """Render ``blocks`` as one self-contained HTML page (images embedded as data URIs)."""
    esc = html.escape
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
           f"<style>{_STYLE}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{esc(str(block[1]))}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{esc(str(i))}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{esc(str(h))}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>"
                           for r in block[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img" and block[1] in images:
            data = base64.b64encode(images[block[1]]).decode("ascii")
            out.append(f"<figure><img alt='{esc(block[2])}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{esc(block[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)
