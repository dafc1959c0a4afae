"""Wikimedia pageview lines ("wiki title views ...", ``metadata.pageviews``) -> summed
views per title per wiki code (the title entries' ranking).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from worldclip.pipelines.metadata_build.codes import normal_code


def parse_pageview_line(line: str) -> tuple[str, str, int] | None:
    """("en", "Hot dog", 12) from "en Hot_dog 12 0"; None for non-Wikipedia projects
    (en.b, en.d, ...), namespace pages (a ":" in the title) and malformed lines.

    Accepts the pageviews dumps' domain codes "xx", "xx.m", "xx.wikipedia", "xx.m.wikipedia".
    """
    parts = line.split(" ")
    if len(parts) < 3:
        return None
    domain, title, views = parts[0], parts[1], parts[2]
    domain = domain.removesuffix(".wikipedia")
    code, _, project = domain.partition(".")
    if not code or project not in ("", "m") or code.startswith('"'):
        return None
    title = title.strip().replace("_", " ")
    if not title or title == "-" or ":" in title:
        return None
    try:
        n = int(views)
    except ValueError:
        return None
    if n <= 0:
        return None
    return normal_code(code), title, n


def count_pageview_lines(lines: Iterable[str | bytes]) -> dict[str, Counter[str]]:
    """Summed views per title per wiki code."""
    out: dict[str, Counter[str]] = {}
    for line in lines:
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        parsed = parse_pageview_line(line.rstrip("\r\n"))
        if parsed is not None:
            code, title, n = parsed
            out.setdefault(code, Counter())[title] += n
    return out
