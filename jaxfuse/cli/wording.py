"""Counts in the commands' messages, with the noun in the right number ("1 video", "2 videos")."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` with thousands separators, then ``noun``, or its plural (default ``noun + "s"``) unless it is 1.

    Example:
        >>> from jaxfuse.cli.wording import counted
        >>> counted(1, "video"), counted(12000, "detection"), counted(0, "class", "classes")
        ('1 video', '12,000 detections', '0 classes')
    """
    count = int(count)
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"
