"""A Plugin's generated sandbox, run under runc: the kernel enforces what it says.

Each test reads a Plugin manifest, renders the bundle with pluginguard.oci and runs a
busybox shell in it. Where a limit is shown to bite, a looser sandbox running the same
commands shows that it is the limit, not the command, that makes the difference.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pluginguard.manifest import parse_plugin
from pluginguard.sandbox import limits, normalize_sandbox
from tests.plugin_factory import plugin
from tests.runtime.runc import Runc

pytestmark = pytest.mark.timeout(60)

DENY_MKDIR = ["mkdir", "mkdirat"]
KILLED_BY_SIGSYS = 128 + signal.SIGSYS
KILLED_BY_SIGKILL = 128 + signal.SIGKILL
# Keeps the container alive, its cgroup readable, until the test closes stdin.
HOLD = "echo ready; read _ || :"


def plugin_sandbox(sandbox: dict[str, Any]) -> Mapping[str, Any]:
    """``spec.sandbox`` of a Plugin manifest carrying ``sandbox``."""
    return parse_plugin(plugin(sandbox=sandbox), where="plugin.yaml").sandbox


# -- seccomp -------------------------------------------------------------------------


def test_allowed_syscalls_run_under_the_installed_filter(runc: Runc) -> None:
    sandbox = plugin_sandbox({"seccomp": {"deny": DENY_MKDIR}})
    done = runc.run(
        sandbox,
        [
            "sh",
            "-c",
            "echo hello from the plugin; ls /; grep Seccomp: /proc/self/status",
        ],
    )

    assert done.status == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "hello from the plugin"
    assert {"bin", "proc", "tmp"} <= set(lines)
    # Mode 2 is a filter; 0 would mean the profile never reached the kernel.
    assert lines[-1].split() == ["Seccomp:", "2"]


@pytest.mark.parametrize(
    ("deny", "status"),
    [(DENY_MKDIR, "status=1"), ([], "status=0")],
    ids=["denied", "allowed"],
)
def test_denied_syscall_fails_with_eperm_under_errno(
    runc: Runc, deny: list[str], status: str
) -> None:
    sandbox = plugin_sandbox({"seccomp": {"defaultAction": "errno", "deny": deny}})
    done = runc.run(sandbox, ["sh", "-c", "mkdir /tmp/made; echo status=$?"])

    assert done.status == 0, done.stderr
    assert done.stdout.strip() == status
    if deny:
        assert done.stderr.strip() == (
            "mkdir: can't create directory '/tmp/made': Operation not permitted"
        )


def test_denied_syscall_kills_the_process_under_kill(runc: Runc) -> None:
    sandbox = plugin_sandbox({"seccomp": {"defaultAction": "kill", "deny": DENY_MKDIR}})

    # The container's own process makes the call: runc reports death by SIGSYS.
    direct = runc.run(sandbox, ["mkdir", "/tmp/made"], label="direct")
    assert direct.status == KILLED_BY_SIGSYS, direct
    assert direct.stdout == ""

    # A child makes it: only the child dies, and the shell sees why.
    child = runc.run(sandbox, ["sh", "-c", "mkdir /tmp/made; echo status=$?"])
    assert child.status == 0, child.stderr
    assert child.stdout.strip() == f"status={KILLED_BY_SIGSYS}"
    assert "Bad system call" in child.stderr


@pytest.mark.parametrize("action", ["errno", "kill"])
def test_runtime_default_baseline_alone_runs_a_shell(runc: Runc, action: str) -> None:
    sandbox = plugin_sandbox({"seccomp": {"defaultAction": action}})
    seccomp = normalize_sandbox(sandbox)["seccomp"]
    assert (seccomp["baseline"], seccomp["allow"], seccomp["deny"]) == (
        "runtime-default",
        [],
        [],
    )

    done = runc.run(
        sandbox,
        ["sh", "-c", "echo up; mkdir /tmp/made && ls -d /tmp/made"],
    )

    assert done.status == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["up", "/tmp/made"]


# -- resources -----------------------------------------------------------------------


def test_cgroup_holds_the_limits_pluginguard_computed(runc: Runc) -> None:
    sandbox = plugin_sandbox(
        {"resources": {"maxMemoryMB": 48, "maxCPUPercent": 30, "maxProcesses": 12}}
    )
    with runc.start(sandbox, ["sh", "-c", HOLD]) as container:
        container.wait_for("ready")
        pid = runc.container_pid(container.name)
        membership = Path(f"/proc/{pid}/cgroup").read_text()
        written = container.cgroup.limits()
        done = container.finish()

    assert done.status == 0, done.stderr
    assert container.cgroup.path in membership
    assert written == limits(sandbox).cgroup()
    assert written == {
        "memory.max": 48 << 20,
        "cpu.max": "30000 100000",
        "pids.max": 12,
    }


# 64 MiB of "a" held in a shell variable, by a subshell the OOM killer may take.
ALLOCATE = "( x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo stored ${#x} ); echo status=$?"


@pytest.mark.parametrize(
    ("memory_mb", "killed"), [(32, True), (256, False)], ids=["32Mi", "256Mi"]
)
def test_memory_limit_oom_kills_an_allocation_beyond_it(
    runc: Runc, memory_mb: int, killed: bool
) -> None:
    sandbox = plugin_sandbox({"resources": {"maxMemoryMB": memory_mb}})
    with runc.start(sandbox, ["sh", "-c", f"{ALLOCATE}; {HOLD}"]) as container:
        output = container.wait_for("ready")
        oom_kills = container.cgroup.oom_kills()
        done = container.finish()

    assert done.status == 0, done.stderr
    if killed:
        assert output.splitlines()[0] == f"status={KILLED_BY_SIGKILL}"
        assert "Killed" in done.stderr
        assert oom_kills >= 1
    else:
        assert output.splitlines()[:2] == ["stored 67108864", "status=0"]
        assert oom_kills == 0


# Twenty sleepers from a subshell; the shell and the subshell count as two pids.
FORK = (
    "( n=0; while [ $n -lt 20 ]; do sleep 30 & n=$((n+1)); echo forked $n; done );"
    " echo status=$?"
)


@pytest.mark.parametrize(("processes", "forked"), [(8, 6), (64, 20)], ids=["8", "64"])
def test_pids_max_refuses_forks_beyond_it(
    runc: Runc, processes: int, forked: int
) -> None:
    sandbox = plugin_sandbox({"resources": {"maxProcesses": processes}})
    with runc.start(sandbox, ["sh", "-c", f"{FORK}; {HOLD}"]) as container:
        lines = container.wait_for("ready").splitlines()
        refused = container.cgroup.forks_refused()
        done = container.finish()

    assert done.status == 0, done.stderr
    assert lines[-3:-1] == [
        f"forked {forked}",
        "status=0" if forked == 20 else "status=2",
    ]
    if forked < 20:
        assert "can't fork: Resource temporarily unavailable" in done.stderr
        assert refused >= 1
    else:
        assert refused == 0


@pytest.mark.parametrize(
    ("cpu_percent", "throttled"), [(20, True), (200, False)], ids=["20%", "200%"]
)
def test_cpu_quota_throttles_a_busy_loop(
    runc: Runc, cpu_percent: int, throttled: bool
) -> None:
    sandbox = plugin_sandbox({"resources": {"maxCPUPercent": cpu_percent}})
    script = f"while :; do :; done & {HOLD}; kill $!"
    with runc.start(sandbox, ["sh", "-c", script]) as container:
        container.wait_for("ready")
        before, started = container.cgroup.cpu(), time.monotonic()
        time.sleep(1.0)
        after, elapsed = container.cgroup.cpu(), time.monotonic() - started
        done = container.finish()

    assert done.status == 0, done.stderr
    share = (after.usage_usec - before.usage_usec) / 1e6 / elapsed
    periods = after.nr_throttled - before.nr_throttled
    if throttled:
        # 20% of a CPU, with one period's quota of slack for the window's edges.
        assert share <= 0.2 + 0.05, share
        assert periods >= 5, periods
        assert after.throttled_usec > before.throttled_usec
    else:
        # One thread cannot use two CPUs' quota, yet it keeps a CPU busy.
        assert periods == 0, periods
        assert share > 0.3, share


# -- filesystem ----------------------------------------------------------------------


@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "writable"])
def test_root_filesystem_is_read_only_except_writable_paths(
    runc: Runc, read_only: bool
) -> None:
    sandbox = plugin_sandbox(
        {
            "filesystem": {
                "readOnlyRootFilesystem": read_only,
                "writablePaths": ["/tmp", "/var/cache"],
            }
        }
    )
    script = (
        "touch /etc/root-file; echo root=$?;"
        " touch /tmp/file /var/cache/file; echo writable=$?;"
        " rm -f /etc/root-file"
    )
    done = runc.run(sandbox, ["sh", "-c", script])

    assert done.status == 0, done.stderr
    root = "root=1" if read_only else "root=0"
    assert done.stdout.split() == [root, "writable=0"]
    if read_only:
        assert "Read-only file system" in done.stderr
