"""JSON log lines on stderr: one object per line, with whatever ``extra`` fields were given."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, BinaryIO

import orjson

from training.json_logs import JsonFormatter


def configure_logging(level: str) -> None:
    """Send fraudscore's and uvicorn's logs to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    # Warnings from libraries (numpy, say) become JSON lines too, not raw stderr text.
    logging.captureWarnings(True)
    for name in ("fraudscore", "uvicorn", "uvicorn.error", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    # uvicorn's access log is replaced by ours (with the request id, without the query).
    logging.getLogger("uvicorn.access").disabled = True


class AccessLog:
    """One JSON line per request, written without the logging machinery.

    At thousands of requests per second a ``logging`` record costs as much as scoring the
    transaction, and stderr is unbuffered (a system call per line); these lines are built
    with one ``orjson.dumps`` and written in bunches. Call :meth:`flush` periodically and at
    shutdown (the app does, every second).
    """

    # Lines held before they are written: a few hundred requests' worth, well under a second.
    max_lines = 256

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr.buffer
        self._lines: list[bytes] = []
        self._second = -1
        self._stamp = ""

    def write(self, fields: dict[str, Any]) -> None:
        """Append one line: time, level, logger and message first, then ``fields``."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        stamp = f"{self._stamp}.{int((now - second) * 1000):03d}+00:00"
        line = {"time": stamp, "level": "INFO", "logger": "fraudscore.access", "message": "request"}
        line.update(fields)
        self._lines.append(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
        if len(self._lines) >= self.max_lines:
            self.flush()

    def flush(self) -> None:
        """Write the held lines to the stream (in one system call when it can)."""
        if not self._lines:
            return
        data = memoryview(b"".join(self._lines))
        self._lines.clear()
        while data:
            written = self._stream.write(data)
            # An unbuffered stream may take part of it; None means it would block: retry.
            data = data[written or 0 :]
        self._stream.flush()
