"""SessionDesk holds (an OCPP reservation keeps a connector for one idTag), on a real state
file with the desk Rig of test_sessions_desk: under free vend a held connector's car waits
for its idTag instead of starting, other starts there are refused, and once the hold is gone
the waiting car starts as free vend promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.core.sessions import AuthMethod, SessionEventKind, SessionPhase, SessionRefused
from tests.app.test_sessions_desk import Rig

K = SessionEventKind


def held_for(tag: str, connector: str, active: list[bool]) -> object:
    def hold(cid: str, id_tag: str | None) -> str | None:
        if active[0] and cid == connector and id_tag != tag:
            return f"reserved for {tag}"
        return None

    return hold


def test_free_vend_waits_at_a_held_connector_for_its_tag(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "evsite.sqlite3")
    rig.desk.restore(clean_shutdown=True)
    active = [True]
    rig.desk.holds.append(held_for("MINE", "cp1", active))  # type: ignore[arg-type]
    rig.cars["cp1"] = rig.cars["cp2"] = True
    rig.tick()
    rig.tick()
    # cp2 is not held: free vend starts it; cp1's car waits, without current.
    assert rig.desk.record("cp2").phase is SessionPhase.ACTIVE
    assert rig.desk.record("cp1").phase is SessionPhase.PENDING
    assert rig.hold("cp1") == "not_authorised"
    with pytest.raises(SessionRefused, match="reserved for MINE"):
        rig.desk.start("cp1", method=AuthMethod.CARD, by="card")
    with pytest.raises(SessionRefused, match="reserved for MINE"):
        rig.desk.start("cp1", method=AuthMethod.ID_TAG, by="rfid", id_tag="OTHER")
    started = rig.desk.start("cp1", method=AuthMethod.ID_TAG, by="rfid", id_tag="MINE")
    assert started.phase is SessionPhase.ACTIVE and started.id_tag == "MINE"
    rig.db.close()


def test_a_car_kept_waiting_starts_under_free_vend_once_the_hold_is_gone(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "evsite.sqlite3")
    rig.desk.restore(clean_shutdown=True)
    active = [True]
    rig.desk.holds.append(held_for("MINE", "cp1", active))  # type: ignore[arg-type]
    rig.cars["cp1"] = True
    rig.tick()
    assert rig.desk.record("cp1").phase is SessionPhase.PENDING
    active[0] = False  # the reservation expired or was cancelled
    rig.tick()
    rec = rig.desk.record("cp1")
    assert rec.phase is SessionPhase.ACTIVE and rec.method is AuthMethod.FREE
    assert rig.kinds() == [("cp1", K.PENDING), ("cp1", K.STARTED)]
    assert rig.row(rec.id)["phase"] == "active"  # on disk before anyone was told
    rig.db.close()


def test_a_car_kept_waiting_does_not_start_while_the_disk_fails(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "evsite.sqlite3")
    rig.desk.restore(clean_shutdown=True)
    active = [True]
    rig.desk.holds.append(held_for("MINE", "cp1", active))  # type: ignore[arg-type]
    rig.cars["cp1"] = True
    rig.tick()
    energy_wh = rig.energy_wh["cp1"]
    rig.break_disk()
    active[0] = False
    for _ in range(3):
        rig.tick()
    # Its start is not on disk (the row says pending): the car waits at 0 A, nobody is told.
    assert rig.hold("cp1") == "not_authorised" and rig.energy_wh["cp1"] == energy_wh
    assert rig.desk.record("cp1").phase is SessionPhase.PENDING
    assert rig.kinds() == [("cp1", K.PENDING)]
    rig.mend_disk()
    rig.tick()
    rec = rig.desk.record("cp1")
    assert rec.phase is SessionPhase.ACTIVE and rig.row(rec.id)["phase"] == "active"
    assert rig.kinds() == [("cp1", K.PENDING), ("cp1", K.STARTED)]
    rig.db.close()


def test_a_hold_or_gate_that_raises_refuses_and_the_tick_goes_on(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "evsite.sqlite3")
    rig.desk.restore(clean_shutdown=True)

    def broken_hold(cid: str, id_tag: str | None) -> str | None:
        raise KeyError(cid)

    rig.desk.holds.append(broken_hold)
    rig.cars["cp1"] = True
    rig.tick()  # raised KeyError out of observe (the tick, before allocating) before
    rig.tick()
    assert rig.desk.record("cp1").phase is SessionPhase.PENDING
    assert rig.hold("cp1") == "not_authorised"
    rig.desk.holds.clear()

    def broken_gate(method: AuthMethod) -> str | None:
        raise RuntimeError("outbox gone")

    rig.desk.gates.append(broken_gate)
    rig.tick()  # free vend would start it now: the broken gate refuses instead
    assert rig.desk.record("cp1").phase is SessionPhase.PENDING
    with pytest.raises(SessionRefused, match="gate failed"):
        rig.desk.start("cp1", method=AuthMethod.REMOTE, by="ocpp")
    rig.desk.gates.clear()
    rig.tick()
    assert rig.desk.record("cp1").phase is SessionPhase.ACTIVE
    rig.db.close()
