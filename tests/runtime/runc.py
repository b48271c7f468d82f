"""PluginGuard's OCI bundles run under runc, on a busybox root, and their cgroups read.

runc is what containerd and CRI-O call on Kubernetes nodes, so a sandbox that holds
here holds there: the seccomp profile is loaded by the same libseccomp, the limits land
in the same cgroup files. Every container gets a ``cgroupsPath`` of our choosing so
the host can read its cgroup while it runs; runc uses the cgroupfs driver unless told
``--systemd-cgroup``, and its state lives in a directory of the session's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pluginguard.oci import runtime_config, write_bundle

SKIP_ENV = "PLUGINGUARD_SKIP_RUNC"
REPO = Path(__file__).resolve().parents[2]
BUSYBOX = Path("/bin/busybox")
CGROUP_ROOT = Path("/sys/fs/cgroup")
TIMEOUT = 20.0

_PT_INTERP = 3
_V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")
_V2_CONTROLLERS = ("memory", "cpu", "pids")


class RuntimeUnavailable(Exception):
    """runc cannot run PluginGuard's containers on this machine; the text says why."""


# ---------------------------------------------------------------- the machine --


def ensure_packages() -> None:
    """Install runc and busybox-static through scripts/system-deps when missing."""
    if shutil.which("runc") and _is_static(BUSYBOX):
        return
    done = subprocess.run(
        [REPO / "scripts" / "system-deps"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeUnavailable(
            f"scripts/system-deps could not install runc and busybox-static:"
            f" {done.stderr.strip() or done.stdout.strip()}"
        )
    if not shutil.which("runc"):
        raise RuntimeUnavailable("runc is not on PATH after scripts/system-deps")
    if not _is_static(BUSYBOX):
        raise RuntimeUnavailable(
            f"{BUSYBOX} is missing or dynamically linked; the container root holds"
            " nothing but busybox, so it must be busybox-static"
        )


def _is_static(path: Path) -> bool:
    """Whether ``path`` is an ELF executable without a program interpreter."""
    try:
        with path.open("rb") as elf:
            header = elf.read(64)
            if header[:4] != b"\x7fELF":
                return False
            order = "<" if header[5] == 1 else ">"
            if header[4] == 2:
                (table,) = struct.unpack_from(order + "Q", header, 0x20)
                size, count = struct.unpack_from(order + "HH", header, 0x36)
            else:
                (table,) = struct.unpack_from(order + "I", header, 0x1C)
                size, count = struct.unpack_from(order + "HH", header, 0x2A)
            elf.seek(table)
            entries = elf.read(size * count)
    except OSError:
        return False
    kinds = (
        struct.unpack_from(order + "I", entries, i * size)[0] for i in range(count)
    )
    return _PT_INTERP not in kinds


def cgroup_version() -> int:
    """The hierarchy runc will use: 2 when /sys/fs/cgroup is cgroup2, else 1.

    Raises RuntimeUnavailable when the memory, cpu or pids controller is missing.
    """
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.exists():
        found = set(controllers.read_text().split())
        missing = [name for name in _V2_CONTROLLERS if name not in found]
        version = 2
    else:
        missing = [
            name for name in _V1_CONTROLLERS if not (CGROUP_ROOT / name).is_dir()
        ]
        version = 1
    if missing:
        raise RuntimeUnavailable(
            f"cgroup v{version}: controller(s) {', '.join(missing)} not available at"
            f" {CGROUP_ROOT}; the limits cannot be enforced"
        )
    return version


def build_rootfs(directory: Path) -> Path:
    """A root filesystem of static busybox and a link to it for each applet.

    ``busybox --install -s`` would link to the absolute path it was run from, which
    does not exist inside the container, so the links are made here, relative.
    """
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy2(BUSYBOX, bin_dir / "busybox")
    listed = subprocess.run(
        [BUSYBOX, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in listed:
        if applet != "busybox":
            (bin_dir / applet).symlink_to("busybox")
    for mount_point in ("proc", "dev", "sys", "tmp", "etc"):
        (directory / mount_point).mkdir()
    return directory


# --------------------------------------------------------------- the cgroups --


@dataclass(frozen=True)
class Cgroup:
    """A container's cgroup, read from the host, in cgroup v2's terms either way."""

    version: int
    path: str

    def file(self, controller: str, name: str) -> Path:
        relative = self.path.lstrip("/")
        if self.version == 2:
            return CGROUP_ROOT / relative / name
        return CGROUP_ROOT / controller / relative / name

    def read(self, controller: str, name: str) -> str:
        return self.file(controller, name).read_text().strip()

    def keyed(self, controller: str, name: str) -> dict[str, int]:
        """A flat-keyed file such as cpu.stat, as {key: value}."""
        pairs = (line.split() for line in self.read(controller, name).splitlines())
        return {key: int(value) for key, value in pairs}

    def limits(self) -> dict[str, int | str]:
        """memory.max, cpu.max and pids.max as Limits.cgroup() names them."""
        if self.version == 2:
            return {
                "memory.max": int(self.read("memory", "memory.max")),
                "cpu.max": self.read("cpu", "cpu.max"),
                "pids.max": int(self.read("pids", "pids.max")),
            }
        quota = self.read("cpu", "cpu.cfs_quota_us")
        period = self.read("cpu", "cpu.cfs_period_us")
        return {
            "memory.max": int(self.read("memory", "memory.limit_in_bytes")),
            "cpu.max": f"{quota} {period}",
            "pids.max": int(self.read("pids", "pids.max")),
        }

    def oom_kills(self) -> int:
        if self.version == 2:
            return self.keyed("memory", "memory.events")["oom_kill"]
        return self.keyed("memory", "memory.oom_control")["oom_kill"]

    def forks_refused(self) -> int:
        """How many times pids.max refused a new task (pids.events "max")."""
        return self.keyed("pids", "pids.events")["max"]

    def cpu(self) -> CpuStat:
        stat = self.keyed("cpu", "cpu.stat")
        if self.version == 2:
            return CpuStat(
                usage_usec=stat["usage_usec"],
                nr_periods=stat["nr_periods"],
                nr_throttled=stat["nr_throttled"],
                throttled_usec=stat["throttled_usec"],
            )
        usage_ns = int(self.read("cpuacct", "cpuacct.usage"))
        return CpuStat(
            usage_usec=usage_ns // 1000,
            nr_periods=stat["nr_periods"],
            nr_throttled=stat["nr_throttled"],
            throttled_usec=stat["throttled_time"] // 1000,
        )


@dataclass(frozen=True)
class CpuStat:
    """CPU time used and throttled so far, in microseconds, as cgroup v2 counts it."""

    usage_usec: int
    nr_periods: int
    nr_throttled: int
    throttled_usec: int


# ---------------------------------------------------------------- containers --


@dataclass(frozen=True)
class Exit:
    """How a container ended: runc's exit status and what the process printed."""

    status: int
    stdout: str
    stderr: str
    seconds: float


class Container:
    """A container started with ``runc run``; it ends when its main process does."""

    def __init__(
        self,
        name: str,
        process: subprocess.Popen[bytes],
        cgroup: Cgroup,
        delete: Sequence[str],
    ):
        self.name = name
        self.cgroup = cgroup
        self._process = process
        self._delete = list(delete)
        self._started = time.monotonic()
        self._stdout = b""

    def wait_for(self, marker: str, timeout: float = TIMEOUT) -> str:
        """Read standard output until a line equal to ``marker``; what was read."""
        assert self._process.stdout is not None
        deadline = time.monotonic() + timeout
        wanted = marker.encode() + b"\n"
        while not (self._stdout.startswith(wanted) or b"\n" + wanted in self._stdout):
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self._process.stdout], [], [], max(left, 0))
            chunk = os.read(self._process.stdout.fileno(), 65536) if readable else b""
            if not chunk:
                rest = self.kill()
                raise AssertionError(
                    f"container {self.name} never printed {marker!r}; stdout:"
                    f" {self._stdout.decode(errors='replace')!r}, stderr:"
                    f" {rest[1].decode(errors='replace')!r}"
                )
            self._stdout += chunk
        return self._stdout.decode(errors="replace")

    def finish(self, timeout: float = TIMEOUT) -> Exit:
        """Close the container's standard input and wait for it to end."""
        stdout, stderr = self._process.communicate(timeout=timeout)
        return Exit(
            status=self._process.returncode,
            stdout=(self._stdout + stdout).decode(errors="replace"),
            stderr=stderr.decode(errors="replace"),
            seconds=time.monotonic() - self._started,
        )

    def kill(self) -> tuple[bytes, bytes]:
        """End the container if it still runs; what it printed since the last read.

        Killing ``runc run`` alone would leave the container running; deleting it
        kills every process in it, and then runc exits.
        """
        if self._process.returncode is not None:
            return b"", b""
        subprocess.run(self._delete, check=False, capture_output=True, timeout=10)
        try:
            return self._process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.communicate()


class Runc:
    """runc with a state directory and a cgroup parent of the session's own."""

    def __init__(self, work: Path, rootfs: Path, cgroup_version: int):
        self.state = work / "state"
        self.bundles = work / "bundles"
        self.rootfs = rootfs
        self.cgroup_version = cgroup_version
        self.cgroup_parent = f"/pluginguard-runtime-{uuid.uuid4().hex[:8]}"
        self.state.mkdir(parents=True)
        self.bundles.mkdir()

    def version(self) -> str:
        done = subprocess.run(
            ["runc", "--version"], check=False, capture_output=True, text=True
        )
        return done.stdout.splitlines()[0] if done.stdout else "unknown"

    def _command(self, *args: str) -> list[str]:
        return ["runc", "--root", str(self.state), *args]

    def _bundle(
        self, sandbox: Mapping[str, Any], args: Sequence[str], label: str
    ) -> tuple[str, Path, Cgroup]:
        name = (
            f"{re.sub(r'[^a-z0-9]+', '-', label.lower())[:40]}-{uuid.uuid4().hex[:6]}"
        )
        cgroup = Cgroup(self.cgroup_version, f"{self.cgroup_parent}/{name}")
        config = runtime_config(
            sandbox, args=args, rootfs=str(self.rootfs), cgroups_path=cgroup.path
        )
        return name, write_bundle(self.bundles / name, config).parent, cgroup

    def run(
        self,
        sandbox: Mapping[str, Any],
        args: Sequence[str],
        *,
        label: str = "run",
        timeout: float = TIMEOUT,
    ) -> Exit:
        """Run ``args`` in ``sandbox`` to the end; its stdin is empty."""
        name, bundle, _ = self._bundle(sandbox, args, label)
        started = time.monotonic()
        done = subprocess.run(
            self._command("run", "--bundle", str(bundle), name),
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Exit(
            done.returncode, done.stdout, done.stderr, time.monotonic() - started
        )

    @contextlib.contextmanager
    def start(
        self, sandbox: Mapping[str, Any], args: Sequence[str], *, label: str = "run"
    ) -> Iterator[Container]:
        """A running container whose stdin stays open until ``finish()``."""
        name, bundle, cgroup = self._bundle(sandbox, args, label)
        process = subprocess.Popen(
            self._command("run", "--bundle", str(bundle), name),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        delete = self._command("delete", "--force", name)
        container = Container(name, process, cgroup, delete)
        try:
            yield container
        finally:
            container.kill()

    def container_pid(self, name: str) -> int:
        done = subprocess.run(
            self._command("state", name), capture_output=True, text=True, check=True
        )
        pid: int = json.loads(done.stdout)["pid"]
        return pid

    def clean(self) -> None:
        """Delete leftover containers and the cgroup parent directories."""
        listed = subprocess.run(
            self._command("list", "--quiet"),
            check=False,
            capture_output=True,
            text=True,
        )
        for name in listed.stdout.split():
            subprocess.run(
                self._command("delete", "--force", name),
                check=False,
                capture_output=True,
            )
        parents = (
            [CGROUP_ROOT]
            if self.cgroup_version == 2
            else [path for path in CGROUP_ROOT.iterdir() if path.is_dir()]
        )
        for hierarchy in parents:
            with contextlib.suppress(FileNotFoundError):
                (hierarchy / self.cgroup_parent.lstrip("/")).rmdir()
