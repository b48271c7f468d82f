"""Tests for pluginguard.oci: a sandbox rendered as the OCI configuration runc reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pluginguard.errors import InputError, PluginGuardError
from pluginguard.oci import (
    DEFAULT_CAPABILITIES,
    OCI_VERSION,
    linux_config,
    linux_resources,
    linux_seccomp,
    runtime_config,
    write_bundle,
)
from pluginguard.sandbox import BOUNDS, Limits, limits, seccomp_profile

SANDBOX: dict[str, Any] = {
    "seccomp": {"defaultAction": "kill", "deny": ["mkdir"]},
    "resources": {"maxMemoryMB": 64, "maxCPUPercent": 25, "maxProcesses": 16},
    "filesystem": {"writablePaths": ["/var/cache", "/tmp"]},
}
# The fields of the runtime spec's LinuxSeccomp object.
OCI_SECCOMP_FIELDS = {
    "defaultAction",
    "defaultErrnoRet",
    "architectures",
    "flags",
    "listenerPath",
    "listenerMetadata",
    "syscalls",
}


# -- linux.seccomp -------------------------------------------------------------------


@pytest.mark.parametrize("action", ["errno", "kill", "log"])
def test_seccomp_section_is_the_installed_profile(action: str) -> None:
    profile = seccomp_profile({"seccomp": {"defaultAction": action, "deny": ["mkdir"]}})
    section = linux_seccomp(profile)

    assert section == json.loads(profile.json_bytes)
    assert set(section) <= OCI_SECCOMP_FIELDS


def test_seccomp_section_is_a_copy() -> None:
    profile = seccomp_profile({})
    linux_seccomp(profile)["syscalls"][0]["names"].append("mount")

    assert linux_seccomp(profile) == json.loads(profile.json_bytes)


# -- linux.resources -----------------------------------------------------------------


def test_resources_of_the_default_sandbox() -> None:
    assert linux_resources(limits({})) == {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": 256 << 20, "swap": 256 << 20},
        "cpu": {"shares": 512, "quota": 50_000, "period": 100_000},
        "pids": {"limit": 64},
    }


def test_resources_without_swap_accounting_set_no_swap() -> None:
    assert linux_resources(limits({}), swap=False)["memory"] == {"limit": 256 << 20}


@given(
    memory=st.integers(*BOUNDS["maxMemoryMB"]),
    cpu=st.integers(*BOUNDS["maxCPUPercent"]),
    pids=st.integers(*BOUNDS["maxProcesses"]),
)
def test_resources_say_what_the_cgroup_files_say(
    memory: int, cpu: int, pids: int
) -> None:
    ceiling = limits(
        {
            "resources": {
                "maxMemoryMB": memory,
                "maxCPUPercent": cpu,
                "maxProcesses": pids,
            }
        }
    )
    resources = linux_resources(ceiling)
    cgroup = ceiling.cgroup()

    assert resources["memory"]["limit"] == cgroup["memory.max"]
    quota, period = resources["cpu"]["quota"], resources["cpu"]["period"]
    assert f"{quota} {period}" == cgroup["cpu.max"]
    assert quota * 1000 // period == ceiling.cpu_millicores
    assert resources["pids"]["limit"] == cgroup["pids.max"]
    assert 2 <= resources["cpu"]["shares"] <= 262_144


@pytest.mark.parametrize(("millicores", "shares"), [(1, 2), (10, 10), (1000, 1024)])
def test_cpu_shares_follow_the_kubelet(millicores: int, shares: int) -> None:
    ceiling = Limits(memory_bytes=1 << 20, cpu_millicores=millicores, pids_max=1)
    assert linux_resources(ceiling)["cpu"]["shares"] == shares


# -- linux ---------------------------------------------------------------------------


def test_linux_section_confines_with_profile_and_limits() -> None:
    profile, ceiling = seccomp_profile(SANDBOX), limits(SANDBOX)
    linux = linux_config(profile, ceiling, cgroups_path="/kubepods/pod1/plugin")

    assert linux["seccomp"] == profile.profile
    assert linux["resources"] == linux_resources(ceiling)
    assert linux["cgroupsPath"] == "/kubepods/pod1/plugin"
    assert {ns["type"] for ns in linux["namespaces"]} == {
        "pid",
        "ipc",
        "uts",
        "mount",
        "network",
    }
    assert "/proc/kcore" in linux["maskedPaths"]
    assert "/proc/sys" in linux["readonlyPaths"]


def test_linux_section_leaves_the_cgroup_to_runc_unless_told() -> None:
    assert "cgroupsPath" not in linux_config(seccomp_profile({}), limits({}))


# -- config.json ---------------------------------------------------------------------


def test_config_runs_the_process_without_privilege_gain() -> None:
    config = runtime_config(SANDBOX, args=["/plugin", "--serve"], user=(1000, 2000))
    process = config["process"]

    assert config["ociVersion"] == OCI_VERSION
    assert process["args"] == ["/plugin", "--serve"]
    assert process["user"] == {"uid": 1000, "gid": 2000}
    assert process["noNewPrivileges"] is True
    assert process["terminal"] is False
    assert process["capabilities"]["bounding"] == list(DEFAULT_CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in DEFAULT_CAPABILITIES


def test_config_carries_the_sandbox_seccomp_and_limits() -> None:
    config = runtime_config(SANDBOX, args=["sh"], cgroups_path="/pg/plugin")

    assert config["linux"] == linux_config(
        seccomp_profile(SANDBOX), limits(SANDBOX), cgroups_path="/pg/plugin"
    )


@pytest.mark.parametrize("read_only", [True, False])
def test_root_is_read_only_as_the_sandbox_says(read_only: bool) -> None:
    sandbox = {"filesystem": {"readOnlyRootFilesystem": read_only}}
    config = runtime_config(sandbox, args=["sh"], rootfs="/bundles/root")

    assert config["root"] == {"path": "/bundles/root", "readonly": read_only}


def test_writable_paths_are_tmpfs_mounts_after_the_standard_ones() -> None:
    sandbox = {"filesystem": {"writablePaths": ["/var/cache", "/dev/shm", "/tmp"]}}
    mounts = runtime_config(sandbox, args=["sh"])["mounts"]
    destinations = [mount["destination"] for mount in mounts]

    assert destinations[:2] == ["/proc", "/dev"]
    assert destinations[-2:] == ["/tmp", "/var/cache"]
    assert destinations.count("/dev/shm") == 1
    for mount in mounts[-2:]:
        assert mount["type"] == "tmpfs"
        assert "ro" not in mount["options"]
    sysfs = next(mount for mount in mounts if mount["destination"] == "/sys")
    assert "ro" in sysfs["options"]


def test_no_writable_paths_means_no_extra_mounts() -> None:
    sandbox: dict[str, Any] = {"filesystem": {"writablePaths": []}}
    mounts = runtime_config(sandbox, args=["sh"])["mounts"]

    assert "/tmp" not in [mount["destination"] for mount in mounts]


def test_mount_options_are_not_shared_between_configs() -> None:
    first = runtime_config({}, args=["sh"])
    first["mounts"][0]["options"].append("rw")

    assert "rw" not in runtime_config({}, args=["sh"])["mounts"][0]["options"]


@pytest.mark.parametrize(
    ("arguments", "where"),
    [
        ({"args": []}, "args"),
        ({"args": ["sh"], "cwd": "tmp"}, "cwd"),
    ],
)
def test_config_refuses_what_runc_could_not_start(
    arguments: dict[str, Any], where: str
) -> None:
    with pytest.raises(InputError) as caught:
        runtime_config({}, **arguments)
    assert caught.value.where == where


def test_config_refuses_an_invalid_sandbox() -> None:
    with pytest.raises(InputError, match=r"spec\.sandbox\.resources\.maxMemoryMB"):
        runtime_config({"resources": {"maxMemoryMB": 0}}, args=["sh"])


# -- write_bundle --------------------------------------------------------------------


def test_bundle_holds_the_config_as_json(tmp_path: Path) -> None:
    config = runtime_config(SANDBOX, args=["sh"])
    written = write_bundle(tmp_path / "bundle", config)

    assert written == tmp_path / "bundle" / "config.json"
    assert json.loads(written.read_text()) == config


def test_bundle_that_cannot_be_written_says_where(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    with pytest.raises(
        PluginGuardError, match="OCI bundle: cannot write .*config.json"
    ):
        write_bundle(blocker, runtime_config({}, args=["sh"]))
