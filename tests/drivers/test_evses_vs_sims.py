"""Every EVSE driver against its hil simulator: setup, limits, pause, state, watchdog feeding.

Heidelberg runs on a pty RS-485 line (its only link) at 19200 8E1 (its factory setting) and
9600 8N1; the others over loopback TCP. The simulators' clocks are fake where a watchdog is
tested, so a 15 s timeout takes no real time.
"""

from __future__ import annotations

import math

import pytest

from controller.core.model import EvseState
from drivers.modbus.bus import BusPool
from drivers.modbus.evse import RegisterMapEvse
from drivers.registry import build_evse
from hil.devices.bender import BenderController
from hil.devices.chargepoint import ChargePoint, Ev
from hil.devices.heidelberg import HeidelbergBox
from hil.devices.phoenix import PhoenixCharx, PhoenixEvEth
from hil.devices.rtu import LineSettings
from hil.devices.schneider import SchneiderEvlink
from hil.devices.vestel import VestelWallbox
from tests.drivers.sims import (
    LINE_9600_8N1,
    LINE_19200_8E1,
    LINUX_ONLY,
    rtu,
    rtu_spec,
    run,
    tcp,
    tcp_spec,
)


class FakeClock:
    def __init__(self) -> None:
        self.t_s = 1000.0

    def __call__(self) -> float:
        return self.t_s


def evse(device: object) -> RegisterMapEvse:
    assert isinstance(device, RegisterMapEvse)
    return device


# --- Heidelberg (RTU) -----------------------------------------------------------------------------


@LINUX_ONLY
@pytest.mark.parametrize("line", [LINE_19200_8E1, LINE_9600_8N1], ids=["19200-8E1", "9600-8N1"])
def test_heidelberg_setup_limit_pause_over_rtu(line: LineSettings) -> None:
    async def main() -> None:
        box = HeidelbergBox(ChargePoint(max_current_a=16.0, ev=Ev(max_current_a=16.0)))
        async with rtu([box.device], line) as bus:
            spec = rtu_spec(bus, "heidelberg_ec", unit_id=1, line=line)
            ec = evse(build_evse(spec, pool=BusPool()))
            await ec.setup(6.0)
            programmed = (box.cp.watchdog_timeout_s, box.cp.failsafe_current_a, box.standby)
            await ec.write_limit(10.0)
            charging = await ec.read(now_s=1.0)
            await ec.write_limit(0.0)
            paused = await ec.read(now_s=2.0)
            await ec.close()
        assert ec.setup_warnings == []
        assert programmed == (15.0, 6.0, 4)
        assert box.remote_lock == 1
        assert ec.watchdog_refresh_s == pytest.approx(15 * 0.333)
        assert charging.state is EvseState.C
        assert charging.current_a == pytest.approx((10.0, 10.0, 10.0))
        assert charging.power_w == pytest.approx(3 * 10 * 230)
        assert paused.state is EvseState.B and paused.current_a == (0.0, 0.0, 0.0)
        assert [a for _, a in box.cp.writes] == [10.0, 0.0]

    run(main)


@LINUX_ONLY
def test_heidelberg_watchdog_fed_by_the_driver_and_failsafe_without_it() -> None:
    async def main() -> None:
        clock = FakeClock()
        box = HeidelbergBox(
            ChargePoint(max_current_a=16.0, ev=Ev(max_current_a=16.0)), clock=clock, recover_s=10
        )
        async with rtu([box.device], LINE_19200_8E1) as bus:
            spec = rtu_spec(
                bus, "heidelberg_ec", unit_id=1, line=LINE_19200_8E1, watchdog_timeout_s=3
            )
            ec = evse(build_evse(spec, pool=BusPool()))
            await ec.setup(6.0)
            await ec.write_limit(12.0)
            assert ec.watchdog_refresh_s == pytest.approx(1.0, abs=0.01)
            # the controller running: a request every second (reads and refreshes)
            for _ in range(10):
                clock.t_s += 1.0
                await ec.read(now_s=clock.t_s)
                assert not box.cp.in_failsafe(clock.t_s)
            # the controller killed: nothing for longer than the timeout
            clock.t_s += 3.5
            in_failsafe = box.cp.in_failsafe(clock.t_s)
            applied = box.cp.applied_limit_a(clock.t_s)
            # back: fed every second, the box leaves failsafe after its ~10 s recovery
            back: list[bool] = []
            for _ in range(12):
                await ec.write_limit(12.0)
                back.append(box.cp.in_failsafe(clock.t_s))
                clock.t_s += 1.0
            await ec.close()
        assert box.cp.watchdog_timeout_s == 3.0
        assert in_failsafe and applied == 6.0
        assert back == [True] * 10 + [False] * 2

    run(main)


@LINUX_ONLY
def test_heidelberg_standby_silences_the_box_unless_setup_disables_it() -> None:
    async def main() -> None:
        clock = FakeClock()
        boxes = [
            HeidelbergBox(unit_id=u, clock=clock, standby_after_s=60, name=f"hd{u}") for u in (1, 2)
        ]
        async with rtu([b.device for b in boxes], LINE_19200_8E1) as bus:
            pool = BusPool()
            one, two = (
                evse(
                    build_evse(
                        rtu_spec(
                            bus, "heidelberg_ec", unit_id=u, line=LINE_19200_8E1, timeout_s=0.1
                        ),
                        pool=pool,
                    )
                )
                for u in (1, 2)
            )
            await one.setup(6.0)  # only box 1 gets "standby disabled"
            clock.t_s += 61
            idle_one = await one.read(now_s=0.0)
            with pytest.raises(Exception, match="no answer"):
                await two.read(now_s=0.0)
            await pool.close_all()
        assert idle_one.state is EvseState.A

    run(main)


# --- Bender (TCP) ---------------------------------------------------------------------------------


def test_bender_limit_pause_state_and_no_watchdog() -> None:
    async def main() -> None:
        ctl = BenderController(ChargePoint(ev=Ev(max_current_a=32.0, phases=1)))
        async with tcp([ctl.device]) as server:
            bender = evse(build_evse(tcp_spec(server, "bender_cc612", unit_id=255), pool=BusPool()))
            await bender.setup(6.0)
            await bender.write_limit(16.0)
            charging = await bender.read(now_s=0.0)
            await bender.write_limit(0.0)
            paused = await bender.read(now_s=1.0)
            ctl.no_value = True
            no_value = await bender.read(now_s=2.0)
            await bender.close()
        assert bender.watchdog_refresh_s is None
        assert any("no watchdog" in w for w in bender.setup_warnings)
        assert any("no fallback current register" in w for w in bender.setup_warnings)
        assert charging.state is EvseState.C
        assert charging.current_a == pytest.approx((16.0, 0.0, 0.0))
        assert charging.energy_wh >= 0 and charging.power_w == pytest.approx(16 * 230)
        assert paused.state is EvseState.B
        assert all(math.isnan(a) for a in no_value.current_a)

    run(main)


# --- Phoenix EV-ETH and CHARX (TCP) ---------------------------------------------------------------


def test_phoenix_ev_eth_pauses_with_the_enable_coil() -> None:
    async def main() -> None:
        ctl = PhoenixEvEth(ChargePoint(ev=Ev(max_current_a=16.0)))
        async with tcp([ctl.device]) as server:
            eth = evse(build_evse(tcp_spec(server, "phoenix_ev_eth", unit_id=255), pool=BusPool()))
            await eth.write_limit(12.0)
            charging = await eth.read(now_s=0.0)
            await eth.write_limit(0.0)
            paused = await eth.read(now_s=1.0)
            setpoint_while_paused = ctl.cp.setpoint_a
            await eth.write_limit(8.0)
            resumed = await eth.read(now_s=2.0)
            await eth.close()
        assert charging.state is EvseState.C
        assert charging.current_a == pytest.approx((12.0, 12.0, 12.0))
        assert paused.state is EvseState.B and setpoint_while_paused == 12.0
        assert resumed.state is EvseState.C and ctl.cp.enabled
        assert resumed.current_a == pytest.approx((8.0, 8.0, 8.0))

    run(main)


def test_phoenix_charx_second_connector_block() -> None:
    async def main() -> None:
        first = ChargePoint(ev=Ev(max_current_a=16.0))
        second = ChargePoint(ev=Ev(max_current_a=32.0), energy_wh=12345.0)
        ctl = PhoenixCharx([first, second])
        async with tcp([ctl.device]) as server:
            spec = tcp_spec(server, "phoenix_charx", unit_id=1, connector=2)
            charx = evse(build_evse(spec, pool=BusPool()))
            await charx.write_limit(20.0)
            reading = await charx.read(now_s=0.0)
            await charx.write_limit(0.0)
            paused = await charx.read(now_s=1.0)
            await charx.close()
        assert first.setpoint_a is None and [a for _, a in second.writes] == [20.0, 0.0]
        assert reading.state is EvseState.C
        assert reading.current_a == pytest.approx((20.0, 20.0, 20.0))
        assert reading.energy_wh == pytest.approx(12345.0, abs=1.0)
        assert paused.state is EvseState.B

    run(main)


# --- Vestel (TCP, alive register) -----------------------------------------------------------------


def test_vestel_state_rules_failsafe_and_alive_register() -> None:
    async def main() -> None:
        clock = FakeClock()
        box = VestelWallbox(ChargePoint(max_current_a=32.0), clock=clock)
        async with tcp([box.device]) as server:
            spec = tcp_spec(server, "vestel_evc04", unit_id=255, failsafe_timeout_s=6)
            vestel = evse(build_evse(spec, pool=BusPool()))
            await vestel.setup(8.0)
            programmed = (box.cp.failsafe_current_a, box.cp.watchdog_timeout_s)
            no_ev = await vestel.read(now_s=0.0)
            box.cp.plug(Ev(max_current_a=16.0), clock.t_s)
            await vestel.write_limit(0.0)
            plugged = await vestel.read(now_s=1.0)
            await vestel.write_limit(10.0)
            charging = await vestel.read(now_s=2.0)
            alive_after_write = box.alive_register(clock.t_s)
            # refreshes every timeout/3 keep the box out of failsafe
            for _ in range(6):
                clock.t_s += 2.0
                await vestel.write_limit(10.0)
                assert not box.cp.in_failsafe(clock.t_s)
            clock.t_s += 6.5  # the controller died
            failsafe = box.cp.in_failsafe(clock.t_s), box.cp.applied_limit_a(clock.t_s)
            await vestel.close()
        assert vestel.setup_warnings == [] and programmed == (8.0, 6.0)
        assert vestel.watchdog_refresh_s == pytest.approx(2.0, abs=0.01)
        assert no_ev.state is EvseState.A
        assert plugged.state is EvseState.B
        assert charging.state is EvseState.C
        assert charging.current_a == pytest.approx((10.0, 10.0, 10.0))
        assert alive_after_write == 1
        assert failsafe == (True, 8.0)

    run(main)


# --- Schneider (TCP, life bit) --------------------------------------------------------------------


@pytest.mark.parametrize("watched", [True, False])
def test_schneider_life_bit(watched: bool) -> None:
    async def main() -> None:
        station = SchneiderEvlink(ChargePoint(ev=Ev(max_current_a=32.0)), watched=watched)
        async with tcp([station.device]) as server:
            schneider = evse(
                build_evse(tcp_spec(server, "schneider_evlink", unit_id=255), pool=BusPool())
            )
            await schneider.read(now_s=0.0)  # the poll sees whether the station watches
            await schneider.write_limit(16.0)
            reading = await schneider.read(now_s=1.0)
            await schneider.write_limit(16.0)
            await schneider.close()
        assert reading.state is EvseState.C
        assert reading.current_a == pytest.approx((16.0, 16.0, 16.0))
        assert schneider.watchdog_refresh_s == pytest.approx(2.0, abs=0.01)
        # watched: every limit write feeds the life bit; not watched (reads 2): none does
        assert station.life_bit_writes == (2 if watched else 0)

    run(main)
