"""TariffBook on a real state file: which tariff is in force, across restarts (a restart is a
new Database and a new book on the same file), and a disk that cannot be written
(``PRAGMA query_only``: every write fails as on a read-only file).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from controller.app.tariffs import TariffBook, TariffChange, TariffNotSaved
from controller.config import load_config_text
from controller.core.errors import ConfigError
from controller.store.db import Database

YAML = """\
site: {id: t, timezone: Europe/Berlin}
grid: {rating_a: 32, worst_case_non_ev_a: 5}
tariff: {id: standard, currency: EUR, vat_rate_pct: 19, price_per_kwh: 0.39,
         preauth_cents: 3000, preauth_cap_cents: 4000}
"""
CLOUD = {"id": "app", "currency": "EUR", "vat_rate_pct": 19, "price_per_kwh": "0.4999",
         "preauth_cents": 9000}  # fmt: skip


def test_cloud_tariff_in_force_until_the_site_file_tariff_changes(tmp_path: Path) -> None:
    configured = load_config_text(YAML).tariff
    db = Database.in_state_dir(tmp_path)
    book = TariffBook(db, configured)
    heard: list[TariffChange] = []
    book.listeners.append(heard.append)
    assert book.current() == configured and book.source == "config"
    tariff = book.update(CLOUD, by="mqtt")
    assert book.current() is tariff and tariff.price_per_kwh == Decimal("0.4999")
    # The site's cap stays: 9000 asked, 4000 pre-authorised.
    document = book.document()
    assert document is not None and document["preauth_cents"] == 4000
    assert [(c.source, c.by, c.previous) for c in heard] == [("cloud", "mqtt", configured)]
    db.close()

    db = Database.in_state_dir(tmp_path)  # a restart, same site file
    assert TariffBook(db, configured).current() == tariff
    edited = load_config_text(YAML.replace("0.39", "0.42")).tariff
    assert TariffBook(db, edited).current() == edited  # the installer's edit wins
    assert TariffBook(db, configured).current() == configured  # and the cloud's is gone
    db.close()


def test_a_refused_or_unsaved_update_changes_nothing(tmp_path: Path) -> None:
    configured = load_config_text(YAML).tariff
    db = Database.in_state_dir(tmp_path)
    book = TariffBook(db, configured)
    heard: list[TariffChange] = []
    book.listeners.append(heard.append)
    with pytest.raises(ConfigError, match="price_per_kwh"):
        book.update({**CLOUD, "price_per_kwh": -1}, by="mqtt")
    db.connection.execute("PRAGMA query_only = ON")  # the disk refuses every write
    with pytest.raises(TariffNotSaved, match="did not change"):
        book.update(CLOUD, by="mqtt")
    with pytest.raises(TariffNotSaved):
        book.clear(by="mqtt")
    assert book.current() == configured and heard == []
    db.connection.execute("PRAGMA query_only = OFF")
    db.close()
    db = Database.in_state_dir(tmp_path)
    assert TariffBook(db, configured).source == "config"
    db.close()


def test_a_site_without_a_tariff_may_get_one_from_the_cloud(tmp_path: Path) -> None:
    db = Database.in_state_dir(tmp_path)
    book = TariffBook(db, None)
    assert book.current() is None and book.document() is None
    book.update(CLOUD, by="mqtt")
    current = book.current()
    assert current is not None and current.preauth_cap_cents is None
    assert book.clear(by="mqtt") is None and book.current() is None
    db.close()
