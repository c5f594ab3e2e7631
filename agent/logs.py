"""structlog set-up: one event name per line plus context; JSON when not on a terminal (DESIGN.md §4)."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route structlog and the standard library (pymodbus logs there) through one renderer."""
    stream = stream or sys.stderr
    json_output = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(
            colors=stream.isatty(),
            # frame locals in a logged traceback could hold a password or a key: never print them
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False),
        )
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # pymodbus logs every timeout and reconnect as an ERROR with a traceback; the agent reports the same
    # failures once per asset with context, so pymodbus is kept to its critical messages unless debugging.
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if level == "debug" else logging.CRITICAL)


class Throttle:
    """At most `limit` log lines per `window_s` for one kind of message; the rest are counted and reported as one
    line when the window rolls over. A flood of bad input must not flood the log (journald, a small SD card)."""

    def __init__(
        self, limit: int = 20, window_s: float = 60.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.monotonic = monotonic
        self._window_start = -math.inf
        self._logged = 0
        self.suppressed = 0  # in the current window
        self.suppressed_total = 0

    def allow(self) -> tuple[bool, int]:
        """(log this one?, lines suppressed in the window that just ended: report them once when > 0)."""
        now = self.monotonic()
        ended = 0
        if now - self._window_start >= self.window_s:
            ended, self.suppressed = self.suppressed, 0
            self._window_start, self._logged = now, 0
        if self._logged < self.limit:
            self._logged += 1
            return True, ended
        self.suppressed += 1
        self.suppressed_total += 1
        return False, ended
