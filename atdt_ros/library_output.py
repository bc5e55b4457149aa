"""What inference libraries print while they load or first run a model, kept out of the user's way.

ONNX Runtime's C++ logger writes ``[E:onnxruntime:...]`` lines straight to file descriptor 2
before it raises, and ``torch.export.load`` logs the whole traceback of a failed load as a
warning, then raises a RuntimeError that only says "check the warnings above". Around such a
call, :func:`captured` holds back both (fd 2 and the named Python loggers). When the call
works, what was held back is passed on unchanged; when it fails, :func:`summary` folds the
library's reason into one line for the caller's error message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

MAX_SUMMARY = 400
"""Characters of a library's reason kept in one error line."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ORT_STATUS = re.compile(r"\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ")
_ORT_LINE = re.compile(r"^\S* ?\S* ?\[[EWF]:onnxruntime:[^\]]*\]\s*")  # date time [E:onnxruntime:, x.cc:1 f]
_SOURCE = re.compile(r"(/\S+|\b\w+)\.(?:cc|cpp|h):\d+(?: [\w:~<>]+(?:\([^()]*\))?(?: const)?)?\s*")


@dataclass
class Captured:
    """Text written to fd 2 and log records of the named loggers while :func:`captured` ran."""

    text: str = ""
    records: list[logging.LogRecord] = field(default_factory=list)


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def captured(*logger_names: str) -> Iterator[Captured]:
    """Hold back fd 2 and the records of ``logger_names`` while the block runs; passed on
    unchanged when it returns, kept in the yielded :class:`Captured` when it raises."""
    out = Captured()
    loggers = [logging.getLogger(name) for name in logger_names]
    saved = [(lg.propagate, lg.level, list(lg.handlers)) for lg in loggers]
    keep = _Keep(out.records)
    for lg in loggers:
        lg.propagate, lg.handlers = False, [keep]
        if lg.getEffectiveLevel() > logging.WARNING:
            lg.setLevel(logging.WARNING)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        real = os.dup(2)
    except OSError:  # no fd 2 (a daemon): nothing to hold back
        real = None
    sink = tempfile.TemporaryFile() if real is not None else None
    if sink is not None:
        os.dup2(sink.fileno(), 2)
    failed = True
    try:
        yield out
        failed = False
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        if sink is not None:
            os.dup2(real, 2)
            os.close(real)
            sink.seek(0)
            out.text = sink.read().decode("utf-8", "replace")
            sink.close()
        for lg, (propagate, level, handlers) in zip(loggers, saved):
            lg.propagate, lg.handlers = propagate, handlers
            lg.setLevel(level)
        if not failed:  # it worked: what the libraries said is theirs to say
            if out.text:
                os.write(2, out.text.encode("utf-8", "replace"))
            for record in out.records:  # as far as the restored levels would have shown them
                source = logging.getLogger(record.name)
                if source.isEnabledFor(record.levelno):
                    source.handle(record)


def clean(text: str) -> str:
    """A library's message on one line: colours, ONNX Runtime's status prefixes and log headers
    and C++ source locations removed, whitespace collapsed."""
    text = _ANSI.sub("", text)
    lines = [_ORT_LINE.sub("", line) for line in text.splitlines()]
    text = _SOURCE.sub("", _ORT_STATUS.sub("", " ".join(lines)))
    return " ".join(text.split())


def summary(exc: BaseException, held: Captured | None = None) -> str:
    """Why a library call failed, in one line: the exception, or the exception behind it that
    the library logged (torch.export's "check the warnings above"), plus anything it printed to
    fd 2 that the exception does not already say."""
    cause = exc
    for record in held.records if held else ():
        if record.exc_info and record.exc_info[1] is not None:
            cause = record.exc_info[1]
    reason = clean(f"{type(cause).__name__}: {cause}")
    printed = clean(held.text) if held else ""
    if printed and printed not in reason:
        reason = f"{reason} (it printed: {printed})"
    if len(reason) > MAX_SUMMARY:
        reason = reason[:MAX_SUMMARY - 3] + "..."
    return reason
