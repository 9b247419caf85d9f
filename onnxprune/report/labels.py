"""Short, distinct labels and readable numbers for tables and plots (issue 15.15).

Exported graphs name layers by long module paths that share most of their text
(``/features/features.3/conv/conv.0/conv.0.0/Conv+/features/features.3/...``). Cutting such names
to their first characters makes every group look alike; cutting them mid-word makes them
unreadable. ``distinct_labels`` drops what all names share, keeps each name's end (the part that
differs), cuts only at a separator, and prefixes the group id where labels would still collide.

    distinct_labels({3: "/f/f.1/conv/Conv", 4: "/f/f.2/conv/Conv"})  # {3: 'f.1/conv/Conv', 4: 'f.2/conv/Conv'}
"""

from __future__ import annotations

import re

SEPARATORS = "/.+_:"
LINESTYLES = ("-", "--", ":", "-.")


def _segments(name: str) -> list[str]:
    """Split after separators, keeping them: 'a/b.c' -> ['a/', 'b.', 'c']."""
    return [s for s in re.split(r"(?<=[/.+_:])", name) if s]


def tail(name: str, width: int) -> str:
    """The end of ``name`` in at most ``width`` characters, cut at a separator, marked with '…'."""
    if len(name) <= width:
        return name
    kept = ""
    for seg in reversed(_segments(name)):
        if len(kept) + len(seg) + 1 > width:
            break
        kept = seg + kept
    if not kept:  # one segment longer than the width: keep its end
        kept = name[-(width - 1):]
    return "\u2026" + kept.lstrip(SEPARATORS)


def simplify(name: str) -> str:
    """A layer or group name without exporter repetition: PyTorch writes module paths as
    '/features/features.1/conv/conv.0/Conv'; a segment that the next one starts with is dropped
    ('features.1/conv.0/Conv'). A group named after several layers ('A+B+C') keeps the first and
    counts the rest ('A +2')."""
    first, *rest = name.split("+")
    parts = [p for p in first.split("/") if p]
    parts = [p for i, p in enumerate(parts) if not (i + 1 < len(parts) and parts[i + 1].startswith(p))]
    return ("/".join(parts) or first or name) + (f" +{len(rest)}" if rest else "")


def fit(label: str, width: int) -> str:
    """``label`` in ``width`` characters: its first segment (where paths differ most), '…', and
    as much of its end as fits, cut at separators."""
    if len(label) <= width:
        return label
    head = label.split("/")[0]
    if "/" not in label or len(head) > width // 2:
        return tail(label, width)
    return head + "/" + tail(label[len(head) + 1:], width - len(head) - 1)


def _common_dirs(names: list[str]) -> str:
    """The leading path components ('a/b/') every name shares."""
    if len(names) < 2:
        return ""
    split = [n.split("/") for n in names]
    shared = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        shared.append(parts[0])
    shared = shared[: min(len(p) for p in split) - 1]  # never a whole name
    return "/".join(shared) + "/" if shared else ""


def distinct_labels(names: dict, width: int = 28) -> dict:
    """``{key: label}``: each name simplified, without the path components all share, fitted to
    ``width``; keys are prefixed (``"12: ..."``) where two labels would otherwise be equal."""
    simple = {k: simplify(str(v)) for k, v in names.items()}
    prefix = _common_dirs(list(simple.values()))
    rest = {k: v[len(prefix):] or v for k, v in simple.items()}
    labels = {k: fit(v, width) for k, v in rest.items()}
    for shorten in (tail, None):  # colliding labels: try the names' ends, then prefix the keys
        counts: dict[str, int] = {}
        for label in labels.values():
            counts[label] = counts.get(label, 0) + 1
        clash = [k for k, v in labels.items() if counts[v] > 1 or not v]
        for k in clash:
            labels[k] = shorten(rest[k], width) if shorten else f"{k}: {labels[k]}"
    return labels


def line_styles(n: int) -> list[tuple]:
    """``n`` distinct (colour, linestyle) pairs: tab20's 20 colours, then the next line style."""
    import matplotlib

    colours = matplotlib.colormaps["tab20"].colors
    return [(colours[i % len(colours)], LINESTYLES[(i // len(colours)) % len(LINESTYLES)]) for i in range(n)]


def damage_text(value: float, metric: str | None) -> str:
    """A damage value as people read it: shares (accuracy drop, disagreement) in percent with one
    decimal, other metrics with four decimals; never ``1.5e-08``."""
    if metric in ("accuracy_drop", "disagreement"):
        return f"{value * 100:.1f}%"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
