"""Collect every warning a job prints, for the report's ``warnings`` list.

qdm-med prints warnings through the ``"qdm_med"`` logger (and its children such as ``"qdm_med.io"``);
:func:`collect_warnings` attaches a handler to that logger for the duration of a job, so whatever is
printed as a warning is also in the list, in order and without duplicates.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

__all__ = ["collect_warnings"]


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = " ".join(record.getMessage().split())
        except Exception:  # a malformed log call must not break the job
            return
        if text and text not in self.sink:
            self.sink.append(text)


@contextlib.contextmanager
def collect_warnings(logger_name: str = "qdm_med") -> Iterator[list[str]]:
    """Yield a list that receives the one-line text of every WARNING (or worse) logged under ``logger_name``."""
    sink: list[str] = []
    handler = _ListHandler(sink)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield sink
    finally:
        logger.removeHandler(handler)
