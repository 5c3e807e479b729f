"""App layer: logging setup for the service and the CLI (structlog, one output stream).

Our own events go through structlog at the configured level. Library messages sent to the stdlib
``logging`` module (pymodbus, websockets, paho, asyncio) are routed through the same renderer at
WARNING or above, so they are neither lost nor noisy.

Formats:
- ``console``: human-readable, coloured when the stream is a terminal.
- ``json``: one JSON object a line: ``timestamp`` (ISO 8601, UTC), ``level``, ``event``, then the
  bound context. When the stream is the systemd journal, each line carries a ``<N>`` syslog
  priority prefix that journald strips and stores as the entry's priority, so
  ``journalctl -p warning`` works.
- ``auto``: json under systemd (JOURNAL_STREAM or INVOCATION_ID set) or when the stream is not a
  terminal, else console.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["console", "json"]

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# syslog priorities understood by journald's SyslogLevelPrefix= (on by default).
_SYSLOG_PRIORITY: Mapping[str, int] = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "info": 6,
    "debug": 7,
}


def configure_logging(
    fmt: str = "auto",
    level: str = "info",
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> LogFormat:
    """Configure structlog and the stdlib root logger; return the format chosen.

    ``stream`` defaults to the current ``sys.stderr``, ``environ`` to ``os.environ``. Calling it
    again replaces the previous setup (tests, or the CLI switching format).
    """
    out = sys.stderr if stream is None else stream
    env = os.environ if environ is None else environ
    chosen = _choose_format(fmt, out, env)
    try:
        min_level = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}") from None

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    if chosen == "json":
        shared.append(structlog.processors.format_exc_info)
        renderer = _KeysFirst(structlog.processors.JSONRenderer())
        if _is_journal(out, env):
            renderer = _JournalPriorityPrefix(renderer)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=_isatty(out),
            # Plain tracebacks: rich's default shows local variables, which may hold secrets.
            exception_formatter=structlog.dev.plain_traceback,
        )

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=_NamedWriteLoggerFactory(out),
        # Not cached: a second configure_logging() must reach loggers already handed out. Cheap,
        # since we log transitions, not ticks.
        cache_logger_on_first_use=False,
    )
    _route_stdlib(out, shared, renderer, max(min_level, logging.WARNING))
    return chosen


def _choose_format(fmt: str, out: TextIO, env: Mapping[str, str]) -> LogFormat:
    if fmt in ("console", "json"):
        return "console" if fmt == "console" else "json"
    if fmt != "auto":
        raise ValueError(f"unknown log format {fmt!r}; use auto, console or json")
    if env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"):
        return "json"
    return "console" if _isatty(out) else "json"


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # closed or file-like without isatty
        return False


def _is_journal(out: TextIO, env: Mapping[str, str]) -> bool:
    """True if ``out`` is the journal stream systemd connected us to (JOURNAL_STREAM=dev:inode).

    Compared with the stream itself, as sd_journal_stream_fd(3) advises: a redirected stderr under
    systemd must not get priority prefixes.
    """
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(out.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


class _KeysFirst:
    """Wraps a renderer: timestamp, level, event lead each line, so a reader's eye finds them."""

    _FIRST = ("timestamp", "level", "event")

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> Any:
        ordered = {key: event_dict[key] for key in self._FIRST if key in event_dict}
        ordered.update(event_dict)
        return self._renderer(logger, method_name, ordered)


class _JournalPriorityPrefix:
    """Wraps a renderer: prefixes ``<N>`` so journald records the event's priority."""

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        priority = _SYSLOG_PRIORITY.get(str(event_dict.get("level", "info")), 6)
        rendered = self._renderer(logger, method_name, event_dict)
        text = rendered.decode() if isinstance(rendered, bytes | bytearray) else str(rendered)
        return f"<{priority}>{text}"


class _NamedWriteLogger(structlog.WriteLogger):
    """A WriteLogger that remembers the name passed to ``structlog.get_logger(name)``."""

    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        name = args[0] if args and isinstance(args[0], str) else None
        return _NamedWriteLogger(self._file, name)


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    name = record.name if isinstance(record, logging.LogRecord) else getattr(logger, "name", None)
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


class _StructlogHandler(logging.Handler):
    """Root handler for library records: formats them like our events, writes with our lock."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self._writer = structlog.WriteLogger(out)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.msg(self.format(record))
        except Exception:
            self.handleError(record)


def _route_stdlib(out: TextIO, shared: list[Processor], renderer: Processor, level: int) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StructlogHandler)]:
        root.removeHandler(handler)
        handler.close()
    handler = _StructlogHandler(out)
    handler.setLevel(level)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root.addHandler(handler)
    root.setLevel(level)
    # Python warnings (DeprecationWarning from a library, ...) become records of "py.warnings".
    logging.captureWarnings(True)
