"""The `evsite` command as a technician meets it (the real console script)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _evsite(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("evsite", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "controller.cli.main"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, check=False)


def test_help_lists_the_commands() -> None:
    out = _evsite("--help")
    assert out.returncode == 0
    for command in ("run", "status", "config", "limit"):
        assert command in out.stdout


def test_status_without_a_service_fails_with_a_clear_message(tmp_path: Path) -> None:
    out = _evsite("status", "--socket", str(tmp_path / "evsite.sock"))
    assert out.returncode == 3
    assert "is the service running?" in out.stderr


def test_config_check_on_the_example_and_on_a_bad_file(tmp_path: Path) -> None:
    good = _evsite("config", "check", str(ROOT / "config" / "example-site.yaml"), "--json")
    assert good.returncode == 0, good.stdout + good.stderr
    assert json.loads(good.stdout)["ok"] is True
    bad = tmp_path / "site.yaml"
    bad.write_text("site: {id: x, timezone: Europe/Berlin, nominal_voltage_v: 230}\ngrid: {}\n")
    out = _evsite("config", "check", str(bad))
    assert out.returncode == 1
    assert "site.yaml:2: grid" in out.stdout + out.stderr
    assert "rating_a" in out.stdout + out.stderr


def test_run_refuses_a_bad_config_with_exit_78(tmp_path: Path) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text("site: [\n")
    out = _evsite("run", "-c", str(bad))
    assert out.returncode == 78
    assert "YAML syntax error" in out.stderr
