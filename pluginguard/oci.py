"""A plugin's sandbox as an OCI runtime configuration, the form runc receives.

On a node the kubelet asks containerd (or CRI-O) for a container, and the runtime hands
runc a bundle: a root filesystem and a ``config.json``. The seccomp profile PluginGuard
installs arrives there unchanged as ``linux.seccomp``, and the limits as
``linux.resources`` in the OCI spec's units, which runc writes to cgroup v1 or v2
files. Rendering that configuration here lets PluginGuard run a sandbox under runc
itself and watch the kernel enforce it, with no cluster involved.

Everything here is pure except :func:`write_bundle`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pluginguard.errors import InputError, PluginGuardError
from pluginguard.sandbox import (
    Limits,
    SeccompProfile,
    limits,
    normalize_sandbox,
    seccomp_profile,
)

#: The runtime-spec version the rendered configuration follows.
OCI_VERSION: Final = "1.0.2"

#: The capabilities containerd gives a container whose securityContext neither adds
#: nor drops any; the runtime-default seccomp baseline assumes no more than these.
DEFAULT_CAPABILITIES: Final = (
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
)

DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# A container gets its own namespaces of these kinds; on a node the network one is the
# pod's, shared with its sandbox container.
_NAMESPACES: Final = ("pid", "ipc", "uts", "mount", "network")

# Kernel interfaces the container runtimes hide (masked) or freeze (read-only).
_MASKED_PATHS: Final = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)
_READONLY_PATHS: Final = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

_DEVPTS_OPTIONS: Final = (
    "nosuid",
    "noexec",
    "newinstance",
    "ptmxmode=0666",
    "mode=0620",
    "gid=5",
)

# The kubelet turns a CPU request into CFS shares as millicores * 1024 / 1000, bounded.
_MIN_SHARES: Final = 2
_MAX_SHARES: Final = 262_144


def linux_seccomp(profile: SeccompProfile) -> dict[str, Any]:
    """``linux.seccomp``: the profile exactly as installed on nodes (a fresh copy).

    A Localhost profile file has the shape of the runtime spec's LinuxSeccomp, so the
    runtime passes it through without changing a field.
    """
    return copy.deepcopy(profile.profile)


def linux_resources(ceiling: Limits, *, swap: bool = True) -> dict[str, Any]:
    """``linux.resources`` for a container whose limits equal the plugin's ceiling.

    ``memory.limit`` is in bytes; ``cpu.quota`` and ``cpu.period`` are microseconds,
    taken from :attr:`Limits.cpu_max` so they cannot drift from the cgroup v2 value;
    ``cpu.shares`` is what the kubelet derives from a CPU request equal to the limit;
    ``pids.limit`` caps processes and threads. With ``swap`` the memory+swap total
    equals the memory limit, so the container cannot swap, as containerd configures
    it on nodes that account swap; pass ``swap=False`` where the kernel does not.
    Devices are all denied; runc adds back the standard ones (null, zero, urandom...).
    """
    quota, period = (int(part) for part in ceiling.cpu_max.split())
    shares = ceiling.cpu_millicores * 1024 // 1000
    memory: dict[str, int] = {"limit": ceiling.memory_max}
    if swap:
        memory["swap"] = ceiling.memory_max
    return {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": memory,
        "cpu": {
            "shares": min(max(shares, _MIN_SHARES), _MAX_SHARES),
            "quota": quota,
            "period": period,
        },
        "pids": {"limit": ceiling.pids_max},
    }


def linux_config(
    profile: SeccompProfile,
    ceiling: Limits,
    *,
    cgroups_path: str | None = None,
    swap: bool = True,
) -> dict[str, Any]:
    """The ``linux`` object of a config.json confining a container to a sandbox.

    ``cgroups_path`` places the container's cgroup (``/kubepods/pod<uid>/<id>`` for
    the kubelet's cgroupfs driver); without it runc picks one. See
    :func:`linux_resources` for ``swap``.
    """
    linux: dict[str, Any] = {
        "namespaces": [{"type": kind} for kind in _NAMESPACES],
        "maskedPaths": list(_MASKED_PATHS),
        "readonlyPaths": list(_READONLY_PATHS),
        "resources": linux_resources(ceiling, swap=swap),
        "seccomp": linux_seccomp(profile),
    }
    if cgroups_path is not None:
        linux["cgroupsPath"] = cgroups_path
    return linux


def runtime_config(
    sandbox: Mapping[str, Any],
    *,
    args: Sequence[str],
    rootfs: str = "rootfs",
    env: Sequence[str] = (f"PATH={DEFAULT_PATH}",),
    cwd: str = "/",
    user: tuple[int, int] = (0, 0),
    hostname: str = "plugin",
    cgroups_path: str | None = None,
    swap: bool = True,
) -> dict[str, Any]:
    """A whole minimal config.json running ``args`` inside ``sandbox``.

    The process cannot gain privileges (``allowPrivilegeEscalation: false``, which
    PluginGuard requires of plugin pods) and has containerd's default capabilities.
    The root filesystem (``rootfs``, relative to the bundle or absolute) is read-only
    when the sandbox says so, and each ``writablePaths`` entry is a tmpfs of its own,
    as a memory-backed emptyDir would be; like one, it is charged to the container's
    memory limit. ``user`` is (uid, gid).

    Raises InputError for an invalid sandbox, empty ``args`` or a relative ``cwd``.
    """
    normal = normalize_sandbox(sandbox)
    if not args:
        raise InputError("args", "must name the program to run")
    if not cwd.startswith("/"):
        raise InputError("cwd", f"{cwd!r} must be an absolute path")
    filesystem = normal["filesystem"]
    uid, gid = user
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": list(args),
            "env": list(env),
            "cwd": cwd,
            "capabilities": {
                kind: list(DEFAULT_CAPABILITIES)
                for kind in ("bounding", "effective", "permitted")
            },
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": filesystem["readOnlyRootFilesystem"]},
        "hostname": hostname,
        "mounts": _mounts(filesystem["writablePaths"]),
        "linux": linux_config(
            seccomp_profile(normal),
            limits(normal),
            cgroups_path=cgroups_path,
            swap=swap,
        ),
    }


def _mounts(writable_paths: Sequence[str]) -> list[dict[str, Any]]:
    """The runtime's standard mounts, then a tmpfs at each writable path.

    A writable path the runtime mounts already keeps that mount: /dev/shm is a tmpfs
    anyway, and /proc or /sys stay what they are.
    """
    hardened = ("nosuid", "noexec", "nodev")
    mounts = [
        _mount("/proc", "proc", "proc", *hardened),
        _mount(
            "/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"
        ),
        _mount("/dev/pts", "devpts", "devpts", *_DEVPTS_OPTIONS),
        _mount("/dev/mqueue", "mqueue", "mqueue", *hardened),
        _mount("/dev/shm", "tmpfs", "shm", *hardened, "mode=1777", "size=65536k"),
        _mount("/sys", "sysfs", "sysfs", *hardened, "ro"),
        _mount("/sys/fs/cgroup", "cgroup", "cgroup", *hardened, "relatime", "ro"),
    ]
    standard = {mount["destination"] for mount in mounts}
    # Sorted, a parent directory is mounted before its children and hides none.
    mounts += [
        _mount(path, "tmpfs", "tmpfs", "nosuid", "nodev", "mode=1777")
        for path in sorted(writable_paths)
        if path not in standard
    ]
    return mounts


def _mount(destination: str, kind: str, source: str, *options: str) -> dict[str, Any]:
    return {
        "destination": destination,
        "type": kind,
        "source": source,
        "options": list(options),
    }


def write_bundle(directory: str | os.PathLike[str], config: Mapping[str, Any]) -> Path:
    """Write ``config`` as ``config.json`` in ``directory`` (created if missing).

    The root filesystem is the caller's to provide at ``config["root"]["path"]``.
    Returns the path of config.json; raises PluginGuardError if it cannot be written.
    """
    target = Path(directory) / "config.json"
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as error:
        raise PluginGuardError(
            f"OCI bundle: cannot write {target}: {error.strerror or error}"
        ) from error
    return target
