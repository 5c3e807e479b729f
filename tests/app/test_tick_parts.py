"""The tick hook of `evsite run`: a failing part is contained and logged, not repeated."""

from __future__ import annotations

from structlog.testing import capture_logs

from controller.app import run


def test_a_failing_part_neither_escapes_nor_floods_the_log() -> None:
    ran_after: list[int] = []
    with capture_logs() as logs:
        for n in range(5):
            with run._contained("pricing_test"):
                raise ValueError("a bug in pricing")
            ran_after.append(n)  # the tick goes on to the next part
    assert ran_after == [0, 1, 2, 3, 4]
    failed = [e for e in logs if e["event"] == "tick_part_failed"]
    assert len(failed) == 1 and failed[0]["part"] == "pricing_test"
