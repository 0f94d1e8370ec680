"""The `cellmap-train runs` table, fitted to a terminal's width.

Columns are chosen by what differs between the runs: a value every run shares (an override, the
class set, the metric's name, the epochs done) is said once above the table instead of in every
row. What is left is shortened to fit: override keys to their last component where that is
unambiguous, long values and run paths in the middle, errors at the end; columns of least use
go first when even that is not enough.
"""

from __future__ import annotations

import os
from typing import Sequence

ELLIPSIS = "…"
GAP = "  "
# shown only when the runs differ in them (else said once above the table)
OPTIONAL = ("classes", "metric", "best_epoch", "epochs_done", "error")
# dropped in this order when the table does not fit even with its text columns shortened
DROP_ORDER = ("wall_time_s", "best_epoch", "epochs_done", "classes", "metric")
FLEXIBLE_MIN = {"overrides": 30, "error": 20, "run": 14, "classes": 12}


def shorten(text: str, width: int, keep: str = "both") -> str:
    """`text` in at most `width` characters, elided where it says least: keep="both" keeps both
    ends (a path), "start" the start (a sentence, a class list), "end" the end (a run folder)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    if keep == "start":
        return text[:width - 1] + ELLIPSIS
    if keep == "end":
        return ELLIPSIS + text[len(text) - width + 1:]
    head = width // 2
    tail = width - 1 - head
    return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")


def render(column: str, value, width: int) -> str:
    """A cell in at most `width` characters. Overrides (a list of (key, value)) shorten their
    values first, each alike, so every key stays readable."""
    if isinstance(value, list):
        for value_width in range(24, 3, -1):
            text = override_text(value, value_width)
            if len(text) <= width:
                return text
        return shorten(text, width, "start")
    return shorten(value, width, {"run": "end", "error": "start", "classes": "start"}.get(column, "both"))


def short_keys(overrides: Sequence[Sequence[str]]) -> dict[str, str]:
    """Override key -> the shortest trailing part of it no other key in these runs ends with
    (`data.dataloader_kwargs.num_workers` -> `num_workers`)."""
    keys = {o.split("=", 1)[0] for items in overrides for o in items if "=" in o}
    short = {}
    for key in keys:
        parts = key.lstrip("+~").split(".")
        prefix = key[:len(key) - len(key.lstrip("+~"))]
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(other != key and other.lstrip("+~").split(".")[-n:] == parts[-n:] for other in keys):
                short[key] = prefix + tail
                break
        else:
            short[key] = key
    return short


def override_text(items: Sequence[tuple[str, str]], value_width: int = 24) -> str:
    return " ".join(f"{key}={shorten(value, value_width)}" if value is not None else key for key, value in items) or "-"


def common_prefix(paths: Sequence[str]) -> str:
    """The leading folders every run path shares (`multirun/2026-12-01/`), '' if none."""
    split = [p.split("/") for p in paths]
    if len(split) < 2:
        return ""
    shared = os.path.commonprefix([parts[:-1] for parts in split])
    return "/".join(shared) + "/" if shared else ""


def cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fit(header: list[str], rows: list[list[str]], width: int) -> list[str]:
    """Lines of the table no longer than `width`: flexible columns shortened first (the widest
    first), then columns dropped (DROP_ORDER), then every line cut as a last resort."""
    columns = list(header)
    widths = {c: max([len(c)] + [len(render(c, r[i], 10_000)) for r in rows]) for i, c in enumerate(header)}

    def total() -> int:
        return sum(widths[c] for c in columns) + len(GAP) * (len(columns) - 1)

    for name in DROP_ORDER + (None,):
        flexible = [c for c in columns if c in FLEXIBLE_MIN]
        while total() > width and flexible:
            widest = max(flexible, key=lambda c: widths[c] - FLEXIBLE_MIN[c])
            room = widths[widest] - max(FLEXIBLE_MIN[widest], len(widest))
            if room <= 0:
                break
            widths[widest] -= min(room, total() - width)
        if total() <= width or name is None:
            break
        if name in columns:
            columns.remove(name)
    index = [header.index(c) for c in columns]
    lines = []
    for values in [header] + rows:
        cells = []
        for c, i in zip(columns, index):
            text = render(c, values[i], widths[c]) if values is not header else c
            cells.append(text if c == columns[-1] else text.ljust(widths[c]))
        lines.append(GAP.join(cells).rstrip()[:width])
    return lines
