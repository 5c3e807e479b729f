"""Tests for the logging setup: JSON lines for the journal, console for a terminal, stdlib."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from controller.app.logs import configure_logging

NO_SYSTEMD: dict[str, str] = {}


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # The Modbus drivers and simulators mute the "pymodbus" logger process-wide (its timeouts
    # are our errors' business); these tests use it as a stdlib logger like any other.
    muted = [logging.getLogger(name) for name in ("pymodbus", "pymodbus.logging")]
    levels = [logger.level for logger in muted]
    for logger in muted:
        logger.setLevel(logging.NOTSET)
    yield
    for logger, was in zip(muted, levels, strict=True):
        logger.setLevel(was)
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_has_timestamp_level_event_and_bound_context() -> None:
    out = io.StringIO()
    assert configure_logging("json", stream=out, environ=NO_SYSTEMD) == "json"
    log = structlog.get_logger("evsite.control").bind(site="depot-1", connector="c2")
    log.info("limit_applied", current_a=16.0)

    [entry] = lines(out)
    assert entry["event"] == "limit_applied"
    assert entry["level"] == "info"
    assert entry["site"] == "depot-1"
    assert entry["connector"] == "c2"
    assert entry["current_a"] == 16.0
    assert entry["logger"] == "evsite.control"
    stamp = datetime.fromisoformat(entry["timestamp"])
    assert stamp.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60


def test_contextvars_are_merged() -> None:
    out = io.StringIO()
    configure_logging("json", stream=out, environ=NO_SYSTEMD)
    structlog.contextvars.bind_contextvars(device="meter-main")
    structlog.get_logger().warning("meter_stale", age_s=3.2)
    [entry] = lines(out)
    assert entry["device"] == "meter-main"
    assert entry["level"] == "warning"


def test_level_filters_our_events() -> None:
    out = io.StringIO()
    configure_logging("json", level="warning", stream=out, environ=NO_SYSTEMD)
    log = structlog.get_logger()
    log.info("quiet")
    log.error("loud")
    assert [e["event"] for e in lines(out)] == ["loud"]


def test_stdlib_records_join_the_stream_at_warning_and_above() -> None:
    out = io.StringIO()
    configure_logging("json", level="debug", stream=out, environ=NO_SYSTEMD)
    library = logging.getLogger("pymodbus.logging")
    library.info("chatty frame dump")
    library.warning("no response from slave %d", 3)
    structlog.get_logger().debug("ours_still_at_debug")

    entries = lines(out)
    assert [e["event"] for e in entries] == ["no response from slave 3", "ours_still_at_debug"]
    assert entries[0]["level"] == "warning"
    assert entries[0]["logger"] == "pymodbus.logging"
    assert "timestamp" in entries[0]


def test_exceptions_are_one_json_line() -> None:
    out = io.StringIO()
    configure_logging("json", stream=out, environ=NO_SYSTEMD)
    try:
        raise RuntimeError("bus gone")
    except RuntimeError:
        structlog.get_logger().exception("tick_failed")
    [entry] = lines(out)
    assert entry["level"] == "error"
    assert "RuntimeError: bus gone" in entry["exception"]


def test_default_stream_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", environ=NO_SYSTEMD)
    structlog.get_logger().info("service_starting", version="0.1.0")
    entry = json.loads(capsys.readouterr().err)
    assert entry["event"] == "service_starting"
    assert entry["version"] == "0.1.0"


def test_reconfiguring_replaces_the_previous_setup() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", stream=first, environ=NO_SYSTEMD)
    configure_logging("json", stream=second, environ=NO_SYSTEMD)
    logging.getLogger("x").error("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1


@pytest.mark.parametrize(
    ("stream", "environ", "expected"),
    [
        (TerminalStream(), NO_SYSTEMD, "console"),
        (io.StringIO(), NO_SYSTEMD, "json"),
        (TerminalStream(), {"INVOCATION_ID": "4f2c"}, "json"),
        (TerminalStream(), {"JOURNAL_STREAM": "8:12345"}, "json"),
    ],
)
def test_auto_format(stream: io.StringIO, environ: dict[str, str], expected: str) -> None:
    assert configure_logging("auto", stream=stream, environ=environ) == expected


def test_console_format_is_readable() -> None:
    out = TerminalStream()
    assert configure_logging("console", stream=out, environ={"INVOCATION_ID": "x"}) == "console"
    structlog.get_logger().info("limit_applied", connector="c1")
    text = out.getvalue()
    assert "limit_applied" in text
    assert "connector" in text
    assert "c1" in text
    assert "\x1b[" in text  # coloured on a terminal


def test_journal_stream_gets_syslog_priority_prefixes(tmp_path: Path) -> None:
    with (tmp_path / "journal").open("w+") as out:
        st = os.fstat(out.fileno())
        configure_logging(
            "auto", stream=out, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        )
        structlog.get_logger().info("service_ready")
        logging.getLogger("pymodbus").error("crc mismatch")
        out.seek(0)
        first, second = out.read().splitlines()
    assert first.startswith("<6>{")
    assert json.loads(first[3:])["event"] == "service_ready"
    assert second.startswith("<3>{")


def test_other_file_under_systemd_gets_no_prefix() -> None:
    out = io.StringIO()
    configure_logging("auto", stream=out, environ={"JOURNAL_STREAM": "1:2", "INVOCATION_ID": "x"})
    structlog.get_logger().info("service_ready")
    assert out.getvalue().startswith("{")


@pytest.mark.parametrize(("fmt", "level"), [("xml", "info"), ("json", "loud")])
def test_bad_arguments_are_rejected(fmt: str, level: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(fmt, level, stream=io.StringIO(), environ=NO_SYSTEMD)
