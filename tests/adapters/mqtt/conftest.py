"""Fixtures of the MQTT tests: a real mosquitto on 127.0.0.1 and a recording cloud client.

The broker runs from a generated config on a free port, with persistence (a restart keeps the
sessions and queued messages of the cloud client) and no limit on queued messages. It is
killed in the fixture's teardown, whatever the test did. Without mosquitto the tests are
skipped with the reason; `make test` installs it (tests/outside-deps.sh).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.adapters.mqtt.backend import CloudClient
from tests.adapters.mqtt.broker import MOSQUITTO, Broker, TlsMaterial, make_tls_material


@pytest.fixture(scope="session")
def mosquitto_bin() -> str:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (make test installs it: tests/outside-deps.sh)")
    return MOSQUITTO


@pytest.fixture
def broker(mosquitto_bin: str, tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: the TLS test makes its CA with it")
    return make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_broker(mosquitto_bin: str, tmp_path: Path, tls_material: TlsMaterial) -> Iterator[Broker]:
    b = Broker(tmp_path / "tls-broker", tls=tls_material)
    b.start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture
def cloud_factory() -> Iterator[Callable[..., CloudClient]]:
    made: list[CloudClient] = []

    def make(port: int, *subscriptions: str, **kw: Any) -> CloudClient:
        client = CloudClient(port=port, client_id=kw.pop("client_id", f"cloud-{len(made)}"), **kw)
        made.append(client)
        return client.connect(*subscriptions)

    yield make
    for client in made:
        with contextlib.suppress(Exception):  # teardown goes on
            client.close()
