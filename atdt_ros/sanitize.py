"""Text taken from a message, made safe to log or republish.

A camera message is input from outside: its ``frame_id`` or ``encoding`` may hold newlines and
terminal escape codes (which forge log lines such as ``[FATAL] ...``) or megabytes of text
(which would be copied into every later /diagnostics message and log line). Everything the node
echoes from a message goes through :func:`printable` first.
"""

from __future__ import annotations

import unicodedata

MAX_ECHO: int = 120
"""Longest text taken from one message field that the node logs or republishes (characters)."""
MAX_MESSAGE: int = 400
"""Longest diagnostic or log message built around such text (characters)."""


def printable(text: object, limit: int = MAX_ECHO) -> str:
    """``text`` with every control or format character escaped (``\\n``, ``\\x1b``, ``\\u202e``)
    and cut to ``limit`` characters, the cut marked with how much was left out."""
    s = text if isinstance(text, str) else str(text)
    head = s[:limit]
    out = []
    for ch in head:
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch)[0] in ("C", "Z") and ch != " ":
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    safe = "".join(out)
    if len(safe) > limit:  # escapes made it longer
        safe = safe[:limit]
    if len(s) > limit:
        safe += f"...(+{len(s) - limit} chars)"
    return safe
