"""Small formatting helpers shared by the commands."""

from __future__ import annotations


def size(n: int | float) -> str:
    """Bytes as a short human string (1.5K, 16M)."""
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" or n == int(n) else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n}"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A left-aligned plain-text table."""
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def count(n: float) -> str:
    """A count or rate of messages, short (7, 0.5, 950, 12.3k, 4.1M)."""
    if abs(n) < 10 and n != int(n):
        return f"{n:.1f}"
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "" or n == int(n) else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n}"
