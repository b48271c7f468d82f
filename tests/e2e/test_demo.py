"""``make demo`` as a newcomer runs it: its own control plane, PluginGuard on it, and a
report of what was admitted and refused; run twice, then stopped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo"


def demo(action: str, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEMO), action, str(directory)],
                          capture_output=True, text=True, timeout=300, check=False)


def running(directory: Path) -> list[str]:
    """Processes whose command line names ``directory``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(directory) in argv and "scripts/demo" not in argv:
            found.append(argv.replace("\0", " ")[:120])
    return found


def test_the_demo_admits_the_signed_and_refuses_the_tampered(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    try:
        for attempt in ("first run", "rerun"):  # a rerun signs with a new key
            shown = demo("up", directory)
            assert shown.returncode == 0, f"{attempt}: {shown.stderr}"
            out = shown.stdout
            assert "ADMITTED  Plugin hkp/ratelimit (signed)" in out, attempt
            assert "DENIED    Plugin hkp/abuse-detect" in out, attempt
            assert "SandboxMismatch" in out and "maxMemoryMB is 4096, signed 128" in out
            assert "ADMITTED  Pod hkp/ratelimit-0" in out, attempt
            assert "DENIED    Pod hkp/ratelimit-tagged" in out, attempt
            assert "must be pinned by digest" in out and "1Gi is above the plugin's 256Mi" in out
            events = out.split("since the demo started:", 1)[1].split("Everything keeps", 1)[0]
            assert "Normal  Verified: signed by key keyserver-release" in events, attempt
            assert "Warning PodRefused" in events, attempt
            assert "UntrustedSigner" not in events, attempt  # the last run's Plugins went first
            assert (directory / "kubeconfig").is_file()
        assert running(directory), "make demo leaves its processes running"
    finally:
        stopped = demo("down", directory)
    assert stopped.returncode == 0, stopped.stderr
    assert "PluginGuard demo stopped" in stopped.stdout
    assert running(directory) == []
    assert not list(directory.glob("**/*.pid"))
