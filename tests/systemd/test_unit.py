"""Tests for the systemd unit and the install script: verify, security exposure, script sanity."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD_DIR / "evsite.service"
INSTALL = SYSTEMD_DIR / "install.sh"
MAX_EXPOSURE = 3.0
DEFAULT_EXEC_START = "ExecStart=/opt/evsite/.venv/bin/evsite run -c /etc/evsite/site.yaml"

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def directives(unit_text: str) -> list[tuple[str, str]]:
    """(key, value) of every assignment, in order; repeated keys kept (systemd accumulates)."""
    pairs = []
    for raw in unit_text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        pairs.append((key.strip(), value.strip()))
    return pairs


def values(key: str) -> list[str]:
    return [v for k, v in directives(UNIT.read_text()) if k == key]


def run(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False
    )


@needs_analyze
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    # verify insists that ExecStart= exists and is executable; the real path only exists once
    # install.sh ran, so check a copy that differs in that one line.
    fake = tmp_path / "bin" / "evsite"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    original = UNIT.read_text()
    assert DEFAULT_EXEC_START in original.splitlines()
    copy = tmp_path / "evsite.service"  # same name: User=, directories derive from it
    copy.write_text(original.replace(DEFAULT_EXEC_START, f"ExecStart={fake} run -c /x.yaml"))

    result = run("systemd-analyze", "verify", "--man=no", copy)

    # Unknown keys and bad values are only warnings (exit 0): any line about our unit fails.
    ours = [
        line
        for line in result.stderr.splitlines()
        if str(copy) in line or "evsite" in line or str(tmp_path) in line
    ]
    assert not ours, result.stderr
    if result.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here: {result.stderr.strip()[:300]}")


@needs_analyze
def test_security_exposure_is_at_most_3() -> None:
    result = run("systemd-analyze", "security", "--offline=true", "--no-pager", UNIT)
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (needs systemd 250+)")
    match = re.search(r"Overall exposure level for evsite\.service: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    assert score <= MAX_EXPOSURE, result.stdout


def test_exec_start_is_the_path_install_sh_rewrites() -> None:
    assert values("ExecStart") == [DEFAULT_EXEC_START.removeprefix("ExecStart=")]
    assert "^ExecStart=/opt/evsite/.venv/bin/evsite " in INSTALL.read_text()


def test_serial_ports_stay_reachable() -> None:
    # PrivateDevices=yes would hide /dev/tty*: the device cgroup allow list is the tool instead.
    assert values("PrivateDevices") in ([], ["no"])
    assert values("DevicePolicy") == ["closed"]
    allowed = set(values("DeviceAllow"))
    assert {"char-ttyUSB rw", "char-ttyACM rw", "char-ttyS rw"} <= allowed
    assert "dialout" in " ".join(values("SupplementaryGroups")).split()


def test_supervision_settings() -> None:
    assert values("Type") == ["notify"]
    assert values("NotifyAccess") == ["main"]
    assert values("WatchdogSec") == ["10s"]
    assert values("Restart") == ["always"]
    assert values("KillMode") == ["mixed"]


@needs_bash
def test_install_script_parses() -> None:
    result = run("bash", "-n", INSTALL)
    assert result.returncode == 0, result.stderr


@needs_bash
def test_install_script_help() -> None:
    result = run("bash", INSTALL, "--help")
    assert result.returncode == 0, result.stderr
    for word in ("Usage:", "--enable", "--uninstall", "--prefix", "usermod -aG evsite"):
        assert word in result.stdout


@needs_bash
def test_install_script_rejects_unknown_options() -> None:
    result = run("bash", INSTALL, "--frobnicate")
    assert result.returncode != 0
    assert "unknown option" in result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_install_script_is_shellcheck_clean() -> None:
    result = run("shellcheck", INSTALL)
    assert result.returncode == 0, result.stdout
