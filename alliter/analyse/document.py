"""A document as one list of blocks (headings, paragraphs, tables, images, stories), rendered to markdown and to one
self-contained HTML file (images embedded, every text escaped): a report's sections are written once."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import pandas as pd


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    frame: pd.DataFrame


@dataclass
class Image:
    path: Path  # markdown links it relative to the document's folder; HTML embeds it
    alt: str = ""


@dataclass
class Story:
    head: str  # where it is from
    text: str


Block = Union[Heading, Text, Bullets, Table, Image, Story]


def fence(text: str) -> str:
    """A fenced block that no backtick run in the text can end early."""
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"{ticks}text\n{text}\n{ticks}"


def to_markdown(blocks: list[Block], folder: Path) -> str:
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Text):
            parts.append(b.text)
        elif isinstance(b, Bullets):
            parts.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Table):
            parts.append(b.frame.to_markdown(index=False, disable_numparse=True))  # as written
        elif isinstance(b, Image):
            parts.append(f"![{b.alt or b.path.name}]({_relative(b.path, folder)})")
        else:
            parts.append(f"{b.head}:\n\n{fence(b.text)}")
    return "\n\n".join(parts) + "\n"


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path)


# the text in a column a reader follows, a figure at its own size (up to the window's), centred on the column: a
# 13-inch figure shrunk into the text's 1100 pixels has ticks and legends too small to read
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
         "pre{white-space:pre-wrap;background:#f6f6f6;padding:8px}"
         "img{max-width:calc(100vw - 2em);display:block;margin:1em 0;position:relative;left:50%;"
         "transform:translateX(-50%)}")


def inline(text: str) -> str:
    """A line of prose as HTML: escaped, then markdown's **bold** and *emphasis* (the document's own words; a story
    is never run through this)."""
    escaped = html.escape(text)
    return re.sub(r"\*(\S[^*]*?)\*", r"<em>\1</em>", re.sub(r"\*\*(\S.*?)\*\*", r"<strong>\1</strong>", escaped))


def to_html(blocks: list[Block], title: str) -> str:
    e = html.escape
    body = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            body.append(f"<p>{inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in b.items) + "</ul>")
        elif isinstance(b, Table):
            body.append(b.frame.to_html(index=False, escape=True))
        elif isinstance(b, Image):
            if b.path.exists():
                data = base64.b64encode(b.path.read_bytes()).decode()
                body.append(f'<img alt="{e(b.alt or b.path.name)}" src="data:image/png;base64,{data}">')
        else:
            body.append(f"<p>{e(b.head)}:</p><pre>{e(b.text)}</pre>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")
