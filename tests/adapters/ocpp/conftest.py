"""Fixtures of the OCPP tests: the test central system (csms.py) on 127.0.0.1.

`csms` is a running central system, function-scoped, in tmp_path; `csms_factory` makes more
(TLS, Basic auth, other initial configuration), started by the caller. Every one is killed at
teardown, whatever the test did, and then the test fails (as a teardown error) if any OCPP 1.6
schema or framing violation was recorded that the test did not take on purpose with
`take_violations()`: a green run has zero violations. The run's terminal summary counts the
frames checked and the violations. Without node or ocpp-rpc the tests are skipped with the
reason; `make test` installs them (tests/outside-deps.sh).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.adapters.ocpp.csms import CentralSystem, TlsFiles, make_tls_files, node_problem


@dataclass
class _RunTotals:
    servers: int = 0
    frames: int = 0
    violations: int = 0
    taken: int = 0


_TOTALS = pytest.StashKey[_RunTotals]()


@pytest.fixture(scope="session")
def csms_node() -> None:
    """Skips the test when the central system cannot run here."""
    problem = node_problem()
    if problem is not None:
        pytest.skip(problem)


@pytest.fixture(scope="session")
def csms_tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A test CA and a server certificate for 127.0.0.1/localhost, shared by the session."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: the test CA is made with it")
    return make_tls_files(tmp_path_factory.mktemp("csms-tls"))


@pytest.fixture
def csms_factory(
    csms_node: None, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., CentralSystem]]:
    """make(**kw) -> a CentralSystem (not started) in its own directory under tmp_path; kw are
    CentralSystem's keyword arguments (tls, password, passwords, boot_status, id_tags, ...).
    """
    made: list[CentralSystem] = []

    def make(**kw: Any) -> CentralSystem:
        c = CentralSystem(tmp_path / f"csms-{len(made)}", **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.kill()
    totals = request.config.stash.setdefault(_TOTALS, _RunTotals())
    failures = []
    for c in made:
        every, left = c.violations(), c.unexpected_violations()
        totals.servers += 1
        totals.frames += len(c.messages())
        totals.violations += len(every)
        totals.taken += len(every) - len(left)
        if left:
            lines = "\n".join(f"  {v}" for v in left)
            failures.append(f"OCPP violations no test expected ({c.directory}):\n{lines}")
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)


@pytest.fixture
def csms(csms_factory: Callable[..., CentralSystem]) -> CentralSystem:
    """A running central system: Accepted boots, no authentication, no id tags."""
    c = csms_factory()
    c.start()
    return c


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    totals = config.stash.get(_TOTALS, None)
    if totals is None or totals.servers == 0:
        return
    terminalreporter.write_line(
        f"OCPP test central system: {totals.servers} servers, {totals.frames} frames checked "
        f"against the OCPP 1.6 schemas, {totals.violations} violations "
        f"({totals.taken} provoked on purpose and taken by their tests)"
    )
