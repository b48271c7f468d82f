"""Tests for pluginguard.sandbox: normalisation and everything generated from it."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pyseccomp  # type: ignore[import-untyped]
import pytest

from pluginguard.errors import InputError
from pluginguard.sandbox import (
    Limits,
    PodRules,
    check_pod,
    cpu_millicores,
    limits,
    memory_bytes,
    network_policy,
    normalize_sandbox,
    parse_quantity,
    pod_rules,
    sandbox_defaults,
    seccomp_profile,
)
from pluginguard.syscalls import runtime_default

PROFILE_PATH = "pluginguard/ns/name.json"

# -- normalisation ---------------------------------------------------------------------


def test_omitted_sandbox_gets_every_default() -> None:
    expected = {
        "seccomp": {
            "baseline": "runtime-default",
            "defaultAction": "errno",
            "allow": [],
            "deny": [],
            "architectures": ["amd64", "arm64"],
        },
        "resources": {"maxMemoryMB": 256, "maxCPUPercent": 50, "maxProcesses": 64},
        "network": {
            "egress": "none",
            "allowedCIDRs": [],
            "ports": [],
            "ingress": "none",
            "ingressPorts": [],
        },
        "filesystem": {"readOnlyRootFilesystem": True, "writablePaths": ["/tmp"]},
    }
    assert normalize_sandbox(None) == expected
    assert normalize_sandbox({}) == expected
    assert sandbox_defaults() == expected


def test_nulls_mean_omitted_as_on_the_api_server() -> None:
    raw = {"seccomp": {"allow": None, "baseline": None}, "network": None}
    assert normalize_sandbox(raw) == normalize_sandbox(None)


def test_defaults_are_copies_that_callers_may_change() -> None:
    first = normalize_sandbox(None)
    first["filesystem"]["writablePaths"].append("/var")
    sandbox_defaults()["seccomp"]["architectures"].clear()
    assert normalize_sandbox(None)["filesystem"]["writablePaths"] == ["/tmp"]
    assert normalize_sandbox(None)["seccomp"]["architectures"] == ["amd64", "arm64"]


FULL: dict[str, Any] = {
    "seccomp": {
        "baseline": "none",
        "defaultAction": "kill",
        "allow": ["write", "read", "execve", "read", "exit_group", "mkdir"],
        "deny": ["ptrace", "mkdir", "ptrace"],
        "architectures": ["arm64", "amd64"],
    },
    "resources": {"maxMemoryMB": 512, "maxCPUPercent": 150, "maxProcesses": 10},
    "network": {
        "egress": "cluster",
        "allowedCIDRs": ["2001:DB8::/32", "192.168.0.0/16", "10.0.0.0/8", "10.0.0.0/8"],
        "ports": [{"port": 443}, {"port": 53, "protocol": "UDP"}, {"port": 443}],
        "ingress": "cluster",
        "ingressPorts": [{"port": 8080, "protocol": "TCP"}],
    },
    "filesystem": {
        "readOnlyRootFilesystem": False,
        "writablePaths": ["/var/cache", "/tmp", "/var/cache"],
    },
}


def test_lists_are_sorted_deduplicated_and_canonical() -> None:
    normal = normalize_sandbox(FULL)
    assert normal["seccomp"]["allow"] == ["execve", "exit_group", "read", "write"]
    assert normal["seccomp"]["deny"] == ["mkdir", "ptrace"]
    assert normal["seccomp"]["architectures"] == ["amd64", "arm64"]
    assert normal["network"]["allowedCIDRs"] == [
        "10.0.0.0/8",
        "192.168.0.0/16",
        "2001:db8::/32",
    ]
    assert normal["network"]["ports"] == [
        {"port": 53, "protocol": "UDP"},
        {"port": 443, "protocol": "TCP"},
    ]
    assert normal["filesystem"]["writablePaths"] == ["/tmp", "/var/cache"]
    twice = normalize_sandbox({"seccomp": {"architectures": ["arm64", "arm64"]}})
    assert twice["seccomp"]["architectures"] == ["arm64"]


def test_normalising_twice_changes_nothing() -> None:
    once = normalize_sandbox(FULL)
    assert normalize_sandbox(once) == once


def test_sandboxes_that_mean_the_same_normalise_equal() -> None:
    shuffled = copy.deepcopy(FULL)
    shuffled["seccomp"]["allow"] = ["exit_group", "read", "execve", "write"]
    shuffled["seccomp"]["deny"] = ["ptrace", "mkdir"]
    shuffled["network"]["allowedCIDRs"].reverse()
    shuffled["network"]["ports"].reverse()
    shuffled["filesystem"]["writablePaths"].reverse()
    assert normalize_sandbox(shuffled) == normalize_sandbox(FULL)


@pytest.mark.parametrize(
    "loosen",
    [
        lambda s: s["seccomp"]["allow"].append("getpid"),
        lambda s: s["seccomp"].update(deny=["mkdir"]),
        lambda s: s["resources"].update(maxMemoryMB=513),
        lambda s: s["resources"].update(maxCPUPercent=151),
        lambda s: s["network"]["allowedCIDRs"].append("172.16.0.0/12"),
        lambda s: s["filesystem"]["writablePaths"].append("/home"),
    ],
)
def test_any_loosening_changes_the_normalised_sandbox(
    loosen: Callable[[dict[str, Any]], None],
) -> None:
    looser = copy.deepcopy(FULL)
    loosen(looser)
    assert normalize_sandbox(looser) != normalize_sandbox(FULL)


@pytest.mark.parametrize(
    ("raw", "where", "fragment"),
    [
        ("strict", "spec.sandbox", "must be an object"),
        ({"sandbx": {}}, "spec.sandbox.sandbx", "unknown field"),
        ({"seccomp": {"alow": []}}, "spec.sandbox.seccomp.alow", "unknown field"),
        (
            {"seccomp": {"baseline": "strict"}},
            "spec.sandbox.seccomp.baseline",
            "one of",
        ),
        (
            {"seccomp": {"defaultAction": "trap"}},
            "spec.sandbox.seccomp.defaultAction",
            "one of",
        ),
        (
            {"seccomp": {"allow": "read"}},
            "spec.sandbox.seccomp.allow",
            "must be a list",
        ),
        (
            {"seccomp": {"allow": ["read", "write", "frob"]}},
            "spec.sandbox.seccomp.allow[2]",
            "frob",
        ),
        ({"seccomp": {"deny": [7]}}, "spec.sandbox.seccomp.deny[0]", "syscall name"),
        (
            {"seccomp": {"allow": ["read"] * 513}},
            "spec.sandbox.seccomp.allow",
            "at most 512",
        ),
        (
            {"seccomp": {"architectures": ["s390x"]}},
            "spec.sandbox.seccomp.architectures[0]",
            "amd64",
        ),
        (
            {"seccomp": {"architectures": []}},
            "spec.sandbox.seccomp.architectures",
            "at least one",
        ),
        (
            {"resources": {"maxMemoryMB": -1}},
            "spec.sandbox.resources.maxMemoryMB",
            "between",
        ),
        (
            {"resources": {"maxMemoryMB": 0}},
            "spec.sandbox.resources.maxMemoryMB",
            "between",
        ),
        (
            {"resources": {"maxMemoryMB": "256Mi"}},
            "spec.sandbox.resources.maxMemoryMB",
            "integer",
        ),
        (
            {"resources": {"maxCPUPercent": 50.5}},
            "spec.sandbox.resources.maxCPUPercent",
            "integer",
        ),
        (
            {"resources": {"maxProcesses": True}},
            "spec.sandbox.resources.maxProcesses",
            "integer",
        ),
        ({"network": {"egress": "internet"}}, "spec.sandbox.network.egress", "one of"),
        (
            {"network": {"allowedCIDRs": ["10.0.0.1/8"]}},
            "spec.sandbox.network.allowedCIDRs[0]",
            "host bits",
        ),
        (
            {"network": {"allowedCIDRs": ["10.0.0.1"]}},
            "spec.sandbox.network.allowedCIDRs[0]",
            "CIDR",
        ),
        (
            {"network": {"allowedCIDRs": ["10.0.0.0/33"]}},
            "spec.sandbox.network.allowedCIDRs[0]",
            "CIDR",
        ),
        (
            {"network": {"allowedCIDRs": ["example.com/8"]}},
            "spec.sandbox.network.allowedCIDRs[0]",
            "CIDR",
        ),
        (
            {"network": {"egress": "any", "ports": [{"port": 0}]}},
            "spec.sandbox.network.ports[0].port",
            "between",
        ),
        (
            {"network": {"egress": "any", "ports": [{}]}},
            "spec.sandbox.network.ports[0].port",
            "required",
        ),
        (
            {"network": {"egress": "any", "ports": [{"port": 1, "protocol": "tcp"}]}},
            "spec.sandbox.network.ports[0].protocol",
            "one of",
        ),
        (
            {"network": {"egress": "any", "ports": [443]}},
            "spec.sandbox.network.ports[0]",
            "object",
        ),
        (
            {"network": {"ports": [{"port": 443}]}},
            "spec.sandbox.network.ports",
            "no destination",
        ),
        (
            {"network": {"ingressPorts": [{"port": 80}]}},
            "spec.sandbox.network.ingressPorts",
            "ingress is none",
        ),
        (
            {"filesystem": {"writablePaths": ["tmp"]}},
            "spec.sandbox.filesystem.writablePaths[0]",
            "absolute",
        ),
        (
            {"filesystem": {"writablePaths": ["/tmp", "/var/../etc"]}},
            "spec.sandbox.filesystem.writablePaths[1]",
            "absolute",
        ),
        (
            {"filesystem": {"writablePaths": ["/tmp/"]}},
            "spec.sandbox.filesystem.writablePaths[0]",
            "absolute",
        ),
        (
            {"filesystem": {"writablePaths": ["/"]}},
            "spec.sandbox.filesystem.writablePaths[0]",
            "absolute",
        ),
        (
            {"filesystem": {"writablePaths": ["//tmp"]}},
            "spec.sandbox.filesystem.writablePaths[0]",
            "absolute",
        ),
        (
            {"filesystem": {"readOnlyRootFilesystem": "yes"}},
            "spec.sandbox.filesystem.readOnlyRootFilesystem",
            "true or false",
        ),
    ],
)
def test_bad_input_is_reported_at_its_field(
    raw: Any, where: str, fragment: str
) -> None:
    with pytest.raises(InputError) as caught:
        normalize_sandbox(raw)
    assert caught.value.where == where
    assert fragment in caught.value.problem


def test_unknown_field_suggests_the_field_meant() -> None:
    with pytest.raises(InputError, match="did you mean 'writablePaths'"):
        normalize_sandbox({"filesystem": {"writeablePaths": ["/tmp"]}})


def test_error_places_start_at_the_given_root() -> None:
    with pytest.raises(InputError) as caught:
        normalize_sandbox({"resources": {"maxProcesses": -3}}, where="payload.sandbox")
    assert caught.value.where == "payload.sandbox.resources.maxProcesses"


def test_dotted_names_that_are_not_dot_components_are_paths() -> None:
    paths = ["/.cache", "/var/..data", "/srv/v1.2"]
    normal = normalize_sandbox({"filesystem": {"writablePaths": paths}})
    assert normal["filesystem"]["writablePaths"] == sorted(paths)


def test_allowed_and_denied_syscall_is_only_denied() -> None:
    both = normalize_sandbox({"seccomp": {"allow": ["ptrace"], "deny": ["ptrace"]}})
    only_denied = normalize_sandbox({"seccomp": {"deny": ["ptrace"]}})
    assert both == only_denied
    assert both["seccomp"]["allow"] == []


# -- seccomp profile -------------------------------------------------------------------


def _rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [rule for rule in profile["syscalls"] if name in rule["names"]]


def _allowed(profile: dict[str, Any]) -> set[str]:
    return {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
        for name in rule["names"]
    }


def test_profile_bytes_are_deterministic_and_hashed() -> None:
    shuffled = copy.deepcopy(FULL)
    shuffled["seccomp"]["allow"].reverse()
    shuffled["seccomp"]["architectures"].reverse()
    first, second = seccomp_profile(FULL), seccomp_profile(shuffled)
    assert first.json_bytes == second.json_bytes
    assert first == second
    assert first.json_bytes.endswith(b"\n")
    assert first.sha256 == hashlib.sha256(first.json_bytes).hexdigest()
    assert json.loads(first.json_bytes) == first.profile
    assert list(json.loads(first.json_bytes)) == sorted(first.profile)


def test_profile_of_raw_and_normalised_sandbox_agree() -> None:
    assert seccomp_profile(FULL) == seccomp_profile(normalize_sandbox(FULL))


def test_one_more_syscall_changes_the_profile_hash() -> None:
    looser = copy.deepcopy(FULL)
    looser["seccomp"]["allow"].append("getpid")
    assert seccomp_profile(looser).sha256 != seccomp_profile(FULL).sha256


def test_runtime_default_profile_allows_the_baseline() -> None:
    profile = seccomp_profile({}).profile
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == 1
    assert _allowed(profile) == runtime_default(["amd64", "arm64"])
    assert profile["syscalls"][0]["names"] == sorted(profile["syscalls"][0]["names"])


def test_deny_wins_over_allow_and_baseline() -> None:
    sandbox = {"seccomp": {"allow": ["ptrace", "setns"], "deny": ["setns", "mkdir"]}}
    profile = seccomp_profile(sandbox).profile
    allowed = _allowed(profile)
    assert "ptrace" in allowed
    assert "setns" not in allowed
    assert "mkdir" not in allowed
    deny_rule = profile["syscalls"][-1]
    assert deny_rule == {
        "names": ["mkdir", "setns"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": 1,
    }


@pytest.mark.parametrize(
    ("default_action", "profile_action", "deny_action"),
    [
        ("errno", "SCMP_ACT_ERRNO", "SCMP_ACT_ERRNO"),
        ("kill", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_PROCESS"),
        ("log", "SCMP_ACT_LOG", "SCMP_ACT_ERRNO"),
    ],
)
def test_default_action_and_explicit_denial(
    default_action: str, profile_action: str, deny_action: str
) -> None:
    sandbox = {"seccomp": {"defaultAction": default_action, "deny": ["mkdir"]}}
    profile = seccomp_profile(sandbox).profile
    assert profile["defaultAction"] == profile_action
    assert ("defaultErrnoRet" in profile) == (default_action == "errno")
    assert _rules_for(profile, "mkdir")[0]["action"] == deny_action


@pytest.mark.parametrize(
    ("architectures", "expected"),
    [
        (["amd64"], ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        (["arm64"], ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
        (
            ["arm64", "amd64"],
            [
                "SCMP_ARCH_X86_64",
                "SCMP_ARCH_X86",
                "SCMP_ARCH_X32",
                "SCMP_ARCH_AARCH64",
                "SCMP_ARCH_ARM",
            ],
        ),
    ],
)
def test_architectures_expand_to_their_compat_modes(
    architectures: list[str], expected: list[str]
) -> None:
    profile = seccomp_profile({"seccomp": {"architectures": architectures}}).profile
    assert profile["architectures"] == expected


def test_architecture_specific_baseline_entries_follow_the_architectures() -> None:
    amd64 = _allowed(seccomp_profile({"seccomp": {"architectures": ["amd64"]}}).profile)
    arm64 = _allowed(seccomp_profile({"seccomp": {"architectures": ["arm64"]}}).profile)
    assert "arch_prctl" in amd64
    assert "arch_prctl" not in arm64
    assert "set_tls" in arm64
    assert "set_tls" not in amd64


def test_baseline_none_allows_only_the_allow_list() -> None:
    sandbox = {"seccomp": {"baseline": "none", "allow": ["read", "write", "execve"]}}
    profile = seccomp_profile(sandbox).profile
    assert profile["syscalls"] == [
        {"names": ["execve", "read", "write"], "action": "SCMP_ACT_ALLOW"}
    ]


def test_argument_rules_yield_to_an_outright_allow_or_deny() -> None:
    plain = seccomp_profile({}).profile
    assert _rules_for(plain, "clone")[0]["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
    assert _rules_for(plain, "clone3")[0]["errnoRet"] == 38
    sandbox = {"seccomp": {"allow": ["clone"], "deny": ["socket"]}}
    profile = seccomp_profile(sandbox).profile
    assert _rules_for(profile, "clone") == [profile["syscalls"][0]]
    assert _rules_for(profile, "socket") == [profile["syscalls"][-1]]


_OPS = {
    "SCMP_CMP_NE": pyseccomp.NE,
    "SCMP_CMP_EQ": pyseccomp.EQ,
    "SCMP_CMP_MASKED_EQ": pyseccomp.MASKED_EQ,
}


def _action(name: str, errno: int | None) -> int:
    actions = {
        "SCMP_ACT_ALLOW": pyseccomp.ALLOW,
        "SCMP_ACT_LOG": pyseccomp.LOG,
        "SCMP_ACT_KILL_PROCESS": pyseccomp.KILL_PROCESS,
    }
    if name == "SCMP_ACT_ERRNO":
        return int(pyseccomp.ERRNO(errno or 1))
    return int(actions[name])


def _compile(profile: dict[str, Any]) -> pyseccomp.SyscallFilter:
    """Build the filter the way runc does from a profile, without loading it."""
    default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    scmp_filter = pyseccomp.SyscallFilter(default)
    native = pyseccomp.system_arch()
    tokens = [
        getattr(pyseccomp.Arch, a[len("SCMP_ARCH_") :])
        for a in profile["architectures"]
    ]
    for token in tokens:
        if not scmp_filter.exist_arch(token):
            scmp_filter.add_arch(token)
    if native not in tokens:
        scmp_filter.remove_arch(native)
    for rule in profile["syscalls"]:
        action = _action(rule["action"], rule.get("errnoRet"))
        if action == default:
            continue  # runc drops rules that repeat the default, as libseccomp must
        args = [
            pyseccomp.Arg(a["index"], _OPS[a["op"]], a["value"], a.get("valueTwo", 0))
            for a in rule.get("args", [])
        ]
        for name in rule["names"]:
            scmp_filter.add_rule(action, name, *args)
    return scmp_filter


@pytest.mark.parametrize("architectures", [["amd64"], ["arm64"], ["amd64", "arm64"]])
@pytest.mark.parametrize("default_action", ["errno", "kill", "log"])
def test_profile_compiles_with_libseccomp(
    architectures: list[str], default_action: str, tmp_path: Path
) -> None:
    sandbox = {
        "seccomp": {
            "architectures": architectures,
            "defaultAction": default_action,
            "allow": ["ptrace"],
            "deny": ["mkdir", "socket"],
        }
    }
    compiled = _compile(seccomp_profile(sandbox).profile)
    with open(tmp_path / "filter.bpf", "wb") as out:
        compiled.export_bpf(out)
    assert (tmp_path / "filter.bpf").stat().st_size > 0


def _seccomp_available() -> bool:
    try:
        return "Seccomp:" in Path("/proc/self/status").read_text()
    except OSError:
        return False


def _run_confined(
    sandbox: dict[str, Any], command: list[str]
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` under the sandbox's filter, loaded just before exec like runc."""
    profile = seccomp_profile(sandbox).profile

    def confine() -> None:
        _compile(profile).load()

    return subprocess.run(
        command,
        preexec_fn=confine,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


needs_seccomp = pytest.mark.skipif(
    not _seccomp_available() or sys.platform != "linux", reason="kernel without seccomp"
)


@needs_seccomp
def test_baseline_runs_a_threaded_program_under_the_kernel_filter() -> None:
    # Threads exercise clone3 (answered ENOSYS) and the fallback to clone.
    program = (
        "import threading, socket, os\n"
        "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
        "socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()\n"
        "print(os.getpid() > 0)\n"
    )
    result = _run_confined({}, [sys.executable, "-c", program])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["thread", "True"]


@needs_seccomp
def test_denied_syscall_fails_with_eperm_under_the_kernel_filter(
    tmp_path: Path,
) -> None:
    target = tmp_path / "made"
    program = (
        "import os, sys\n"
        "try:\n"
        f"    os.mkdir({str(target)!r})\n"
        "except PermissionError:\n"
        "    sys.exit(3)\n"
    )
    sandbox = {"seccomp": {"deny": ["mkdir", "mkdirat"]}}
    assert _run_confined(sandbox, [sys.executable, "-c", program]).returncode == 3
    assert not target.exists()
    assert _run_confined({}, [sys.executable, "-c", program]).returncode == 0
    assert target.is_dir()


@needs_seccomp
def test_new_namespaces_are_refused_under_the_kernel_filter() -> None:
    # Unprivileged user namespaces are the usual first step of a kernel exploit.
    program = (
        "import ctypes, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.unshare(0x10000000) != 0 and ctypes.get_errno() == 1:\n"
        "    sys.exit(3)\n"
    )
    unconfined = subprocess.run([sys.executable, "-c", program], check=False)
    if unconfined.returncode != 0:
        pytest.skip("this machine refuses user namespaces even without a filter")
    assert _run_confined({}, [sys.executable, "-c", program]).returncode == 3


# -- limits and quantities -------------------------------------------------------------


def test_limits_in_kubernetes_and_cgroup_terms() -> None:
    declared = limits({"resources": {"maxMemoryMB": 256, "maxCPUPercent": 50}})
    assert declared == Limits(memory_bytes=268435456, cpu_millicores=500, pids_max=64)
    assert declared.kubernetes() == {"memory": "256Mi", "cpu": "500m"}
    assert declared.cgroup() == {
        "memory.max": 268435456,
        "cpu.max": "50000 100000",
        "pids.max": 64,
    }
    assert declared.status() == {
        "memory": "256Mi",
        "cpu": "500m",
        "cgroup": {"memoryMax": 268435456, "cpuMax": "50000 100000", "pidsMax": 64},
    }


@pytest.mark.parametrize(
    ("memory_mb", "cpu_percent", "memory", "cpu", "cpu_max"),
    [
        (1024, 100, "1Gi", "1", "100000 100000"),
        (1536, 150, "1536Mi", "1500m", "150000 100000"),
        (1, 1, "1Mi", "10m", "1000 100000"),
        (2048, 400, "2Gi", "4", "400000 100000"),
    ],
)
def test_limits_use_canonical_quantities(
    memory_mb: int, cpu_percent: int, memory: str, cpu: str, cpu_max: str
) -> None:
    sandbox = {"resources": {"maxMemoryMB": memory_mb, "maxCPUPercent": cpu_percent}}
    declared = limits(sandbox)
    assert (declared.memory, declared.cpu, declared.cpu_max) == (memory, cpu, cpu_max)
    assert memory_bytes(declared.memory, where="m") == declared.memory_max
    assert cpu_millicores(declared.cpu, where="c") == declared.cpu_millicores


@pytest.mark.parametrize(
    ("quantity", "value"),
    [
        ("512Mi", Fraction(512 * 2**20)),
        ("1G", Fraction(10**9)),
        ("0.5", Fraction(1, 2)),
        ("500m", Fraction(1, 2)),
        ("1.5Gi", Fraction(3 * 2**29)),
        ("100k", Fraction(100_000)),
        (".5", Fraction(1, 2)),
        ("2.", Fraction(2)),
        ("1e3", Fraction(1000)),
        ("1E-3", Fraction(1, 1000)),
        ("1E", Fraction(10**18)),
        ("+4Ki", Fraction(4096)),
        ("250u", Fraction(1, 4000)),
        ("-1", Fraction(-1)),
        (2, Fraction(2)),
        (0.25, Fraction(1, 4)),
    ],
)
def test_quantities_parse_exactly(quantity: str | int | float, value: Fraction) -> None:
    assert parse_quantity(quantity, where="q") == value


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "abc",
        "1.2.3",
        "12 Mi",
        "1e",
        "Mi",
        "1KiB",
        "1ki",
        "0x10",
        "1e99999",
        None,
        True,
    ],
)
def test_garbage_quantities_are_input_errors(garbage: Any) -> None:
    with pytest.raises(InputError) as caught:
        parse_quantity(garbage, where="resources.limits.memory")
    assert caught.value.where == "resources.limits.memory"


def test_memory_and_cpu_round_up_like_kubernetes() -> None:
    assert memory_bytes("1m", where="m") == 1
    assert memory_bytes("1.5Ki", where="m") == 1536
    assert cpu_millicores("0.5", where="c") == 500
    assert cpu_millicores("0.0001", where="c") == 1
    assert cpu_millicores(2, where="c") == 2000
    with pytest.raises(InputError, match="negative"):
        memory_bytes("-1Mi", where="m")


# -- NetworkPolicy ---------------------------------------------------------------------

SELECTOR = {"pluginguard.dev/plugin": "thumbnailer"}


def _policy(network: dict[str, Any]) -> dict[str, Any]:
    return network_policy(
        {"network": network}, namespace="ns", name="thumbnailer", pod_selector=SELECTOR
    )


def test_policy_frame_selects_the_plugin_and_governs_both_ways() -> None:
    policy = _policy({})
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["kind"] == "NetworkPolicy"
    assert policy["metadata"]["name"] == "thumbnailer"
    assert policy["metadata"]["namespace"] == "ns"
    assert policy["spec"]["podSelector"] == {"matchLabels": SELECTOR}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_egress_none_allows_nothing_not_even_dns() -> None:
    spec = _policy({})["spec"]
    assert spec["egress"] == []
    assert spec["ingress"] == []


def test_egress_none_with_cidrs_reaches_only_those_on_the_ports() -> None:
    network = {"allowedCIDRs": ["10.1.0.0/16"], "ports": [{"port": 5432}]}
    assert _policy(network)["spec"]["egress"] == [
        {
            "to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}],
            "ports": [{"protocol": "TCP", "port": 5432}],
        }
    ]


def test_egress_cluster_reaches_every_pod_and_dns() -> None:
    egress = _policy({"egress": "cluster", "ports": [{"port": 443}]})["spec"]["egress"]
    assert egress == [
        {
            "to": [{"namespaceSelector": {}}],
            "ports": [{"protocol": "TCP", "port": 443}],
        },
        {
            "to": [{"namespaceSelector": {}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
    ]


def test_egress_any_reaches_every_address_of_both_families() -> None:
    egress = _policy({"egress": "any", "allowedCIDRs": ["192.0.2.0/24"]})["spec"][
        "egress"
    ]
    assert egress[0] == {
        "to": [
            {"namespaceSelector": {}},
            {"ipBlock": {"cidr": "0.0.0.0/0"}},
            {"ipBlock": {"cidr": "::/0"}},
            {"ipBlock": {"cidr": "192.0.2.0/24"}},
        ]
    }
    assert egress[1]["ports"][0] == {"protocol": "UDP", "port": 53}


def test_ingress_opens_only_when_declared() -> None:
    cluster = _policy({"ingress": "cluster", "ingressPorts": [{"port": 8080}]})
    assert cluster["spec"]["ingress"] == [
        {
            "from": [{"namespaceSelector": {}}],
            "ports": [{"protocol": "TCP", "port": 8080}],
        }
    ]
    anyone = _policy({"ingress": "any"})["spec"]["ingress"]
    assert anyone == [
        {
            "from": [
                {"namespaceSelector": {}},
                {"ipBlock": {"cidr": "0.0.0.0/0"}},
                {"ipBlock": {"cidr": "::/0"}},
            ]
        }
    ]


def test_policies_do_not_share_mutable_parts() -> None:
    first = _policy({"egress": "cluster"})
    first["spec"]["egress"][0]["to"][0]["namespaceSelector"]["matchLabels"] = {"x": "y"}
    assert _policy({"egress": "cluster"})["spec"]["egress"][0]["to"][0] == {
        "namespaceSelector": {}
    }


@pytest.mark.parametrize(
    ("namespace", "name", "selector", "where"),
    [
        ("ns", "thumbnailer", {}, "pod_selector"),
        ("Bad_NS", "thumbnailer", SELECTOR, "namespace"),
        ("ns", "Not A Name", SELECTOR, "name"),
    ],
)
def test_policy_refuses_bad_identity(
    namespace: str, name: str, selector: dict[str, str], where: str
) -> None:
    with pytest.raises(InputError) as caught:
        network_policy({}, namespace=namespace, name=name, pod_selector=selector)
    assert caught.value.where == where


# -- pod rules and check_pod -----------------------------------------------------------


def _rules(**filesystem: Any) -> PodRules:
    sandbox = {"filesystem": filesystem} if filesystem else {}
    return pod_rules(sandbox, profile_path=PROFILE_PATH)


def _container(name: str = "app") -> dict[str, Any]:
    return {
        "name": name,
        "image": "registry.example.com/plugin@sha256:" + "a" * 64,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "resources": {"limits": {"memory": "256Mi", "cpu": "500m"}},
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/tmp"},
            {"name": "settings", "mountPath": "/etc/plugin"},
            {"name": "token", "mountPath": "/var/run/secrets/x", "readOnly": True},
        ],
    }


def _pod() -> dict[str, Any]:
    return {
        "securityContext": {
            "seccompProfile": {"type": "Localhost", "localhostProfile": PROFILE_PATH}
        },
        "containers": [_container()],
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "settings", "configMap": {"name": "plugin-settings"}},
            {"name": "token", "persistentVolumeClaim": {"claimName": "t"}},
        ],
    }


def test_pod_rules_carry_the_sandbox() -> None:
    rules = pod_rules(
        {
            "filesystem": {"writablePaths": ["/work", "/tmp"]},
            "resources": {"maxMemoryMB": 64},
        },
        profile_path=PROFILE_PATH,
    )
    assert rules.profile_path == PROFILE_PATH
    assert rules.read_only_root_filesystem is True
    assert rules.writable_paths == ("/tmp", "/work")
    assert rules.limits.memory == "64Mi"
    # What a node must hold at the profile path: the profile the sandbox compiles to.
    assert rules.profile_sha256 == seccomp_profile(
        {"filesystem": {"writablePaths": ["/work", "/tmp"]}, "resources": {"maxMemoryMB": 64}}
    ).sha256


@pytest.mark.parametrize(
    "bad", ["", "/abs/p.json", "../p.json", "a/../p.json", "a//b", "a b"]
)
def test_pod_rules_refuse_a_profile_path_outside_the_seccomp_directory(
    bad: str,
) -> None:
    with pytest.raises(InputError) as caught:
        pod_rules({}, profile_path=bad)
    assert caught.value.where == "profile_path"


def test_compliant_pod_has_no_violations() -> None:
    assert check_pod(_pod(), _rules()) == []


def test_container_level_seccomp_profile_also_complies() -> None:
    pod = _pod()
    del pod["securityContext"]
    pod["containers"][0]["securityContext"]["seccompProfile"] = {
        "type": "Localhost",
        "localhostProfile": PROFILE_PATH,
    }
    assert check_pod(pod, _rules()) == []


def test_run_as_non_root_may_be_set_once_for_the_whole_pod() -> None:
    pod = _pod()
    del _app_context(pod)["runAsNonRoot"]
    pod["securityContext"]["runAsNonRoot"] = True
    assert check_pod(pod, _rules()) == []


def _with(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    pod = _pod()
    change(pod)
    return pod


def _app_context(pod: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = pod["containers"][0]["securityContext"]
    return context


@pytest.mark.parametrize(
    ("change", "violation"),
    [
        (
            lambda p: p.pop("securityContext"),
            f'container "app": seccompProfile must be Localhost "{PROFILE_PATH}", not unset',
        ),
        (
            lambda p: _app_context(p).update(seccompProfile={"type": "Unconfined"}),
            f'container "app": seccompProfile must be Localhost "{PROFILE_PATH}", not Unconfined',
        ),
        (
            lambda p: _app_context(p).update(
                seccompProfile={"type": "Localhost", "localhostProfile": "other.json"}
            ),
            f'container "app": seccompProfile must be Localhost "{PROFILE_PATH}", not Localhost "other.json"',
        ),
        (
            lambda p: p["securityContext"].update(
                seccompProfile={"type": "RuntimeDefault"}
            ),
            f'container "app": seccompProfile must be Localhost "{PROFILE_PATH}", not RuntimeDefault',
        ),
        (
            lambda p: _app_context(p).update(privileged=True),
            'container "app": must not be privileged',
        ),
        (
            lambda p: _app_context(p).pop("allowPrivilegeEscalation"),
            'container "app": securityContext.allowPrivilegeEscalation must be false',
        ),
        (
            lambda p: _app_context(p).update(allowPrivilegeEscalation=True),
            'container "app": securityContext.allowPrivilegeEscalation must be false',
        ),
        (
            lambda p: _app_context(p).pop("readOnlyRootFilesystem"),
            'container "app": securityContext.readOnlyRootFilesystem must be true',
        ),
        (
            lambda p: _app_context(p).pop("runAsNonRoot"),
            'container "app": securityContext.runAsNonRoot must be true (here or in the pod)',
        ),
        (
            lambda p: (
                p["securityContext"].update(runAsNonRoot=True),
                _app_context(p).update(runAsNonRoot=False),
            ),
            'container "app": securityContext.runAsNonRoot must be true (here or in the pod)',
        ),
        (lambda p: p.update(hostNetwork=True), "pod: hostNetwork must not be true"),
        (lambda p: p.update(hostPID=True), "pod: hostPID must not be true"),
        (lambda p: p.update(hostIPC=True), "pod: hostIPC must not be true"),
        (
            lambda p: p["containers"][0]["resources"]["limits"].pop("memory"),
            'container "app": resources.limits.memory must be set, to at most 256Mi',
        ),
        (
            lambda p: p["containers"][0].pop("resources"),
            'container "app": resources.limits.memory must be set, to at most 256Mi',
        ),
        (
            lambda p: p["containers"][0]["resources"]["limits"].update(memory="257Mi"),
            'container "app": resources.limits.memory 257Mi is above the plugin\'s 256Mi',
        ),
        (
            lambda p: p["containers"][0]["resources"]["limits"].update(cpu="0.6"),
            'container "app": resources.limits.cpu 0.6 is above the plugin\'s 500m',
        ),
        (
            lambda p: p["containers"][0]["resources"]["limits"].update(cpu="lots"),
            "container \"app\": resources.limits.cpu: 'lots' is not a Kubernetes quantity such as 512Mi, 0.5 or 500m",
        ),
        (
            lambda p: p["containers"][0]["volumeMounts"].append(
                {"name": "scratch", "mountPath": "/data"}
            ),
            'container "app": volumeMount "scratch" at /data is writable; only emptyDir volumes at /tmp may be',
        ),
        (
            lambda p: p["containers"][0]["volumeMounts"][2].pop("readOnly"),
            'container "app": volumeMount "token" at /var/run/secrets/x is writable; only emptyDir volumes at /tmp may be',
        ),
        (
            lambda p: p["volumes"].__setitem__(
                0, {"name": "scratch", "hostPath": {"path": "/tmp"}}
            ),
            'pod: volume "scratch" is a hostPath volume; plugins may not mount node paths',
        ),
        (
            lambda p: p["containers"][0].update(
                volumeDevices=[{"name": "token", "devicePath": "/dev/xvda"}]
            ),
            'container "app": volumeDevices are not allowed: a raw device is writable storage',
        ),
    ],
)
def test_each_violation_is_reported(
    change: Callable[[dict[str, Any]], None], violation: str
) -> None:
    assert violation in check_pod(_with(change), _rules())


def test_container_seccomp_overrides_the_pods_in_both_directions() -> None:
    pod = _pod()
    _app_context(pod)["seccompProfile"] = {"type": "Unconfined"}
    assert len(check_pod(pod, _rules())) == 1
    pod["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    _app_context(pod)["seccompProfile"] = {
        "type": "Localhost",
        "localhostProfile": PROFILE_PATH,
    }
    assert check_pod(pod, _rules()) == []


def test_writable_root_is_allowed_when_the_sandbox_says_so() -> None:
    pod = _with(lambda p: _app_context(p).pop("readOnlyRootFilesystem"))
    assert check_pod(pod, _rules(readOnlyRootFilesystem=False)) == []


def test_emptydir_needs_a_declared_path_to_be_writable() -> None:
    pod = _pod()
    assert check_pod(pod, _rules(writablePaths=[])) == [
        'container "app": volumeMount "scratch" at /tmp is writable; only emptyDir'
        " volumes at no path may be"
    ]
    pod["containers"][0]["volumeMounts"][0]["mountPath"] = "/tmp/"
    assert check_pod(pod, _rules()) == []


def test_init_and_ephemeral_containers_are_checked_too() -> None:
    pod = _pod()
    setup = _container("setup")
    setup["securityContext"]["privileged"] = True
    debug = {"name": "debug", "image": "busybox", "securityContext": {}}
    pod["initContainers"] = [setup]
    pod["ephemeralContainers"] = [debug]
    violations = check_pod(pod, _rules())
    assert 'init container "setup": must not be privileged' in violations
    assert (
        'ephemeral container "debug": securityContext.allowPrivilegeEscalation must be false'
        in violations
    )
    # Ephemeral containers cannot declare resources; the pod's cgroup bounds them.
    assert not any("debug" in v and "resources" in v for v in violations)


def test_containers_that_run_together_must_fit_the_plugin_together() -> None:
    pod = _pod()
    second = _container("second")
    for container in (pod["containers"][0], second):
        container["resources"]["limits"] = {"memory": "200Mi", "cpu": "200m"}
    pod["containers"].append(second)
    assert check_pod(pod, _rules()) == [
        "pod: memory limits of containers running together add up to 400Mi, above"
        " the plugin's 256Mi"
    ]


def test_sidecars_count_against_the_plugin_but_plain_init_containers_do_not() -> None:
    pod = _pod()
    pod["containers"][0]["resources"]["limits"] = {"memory": "128Mi", "cpu": "250m"}
    init = _container("init")
    init["resources"]["limits"] = {"memory": "256Mi", "cpu": "500m"}
    pod["initContainers"] = [init]
    assert check_pod(pod, _rules()) == []
    init["restartPolicy"] = "Always"
    assert check_pod(pod, _rules()) == [
        "pod: memory limits of containers running together add up to 384Mi, above"
        " the plugin's 256Mi",
        "pod: cpu limits of containers running together add up to 750m, above"
        " the plugin's 500m",
    ]


def test_malformed_pod_parts_are_skipped_not_fatal() -> None:
    pod = {
        "containers": ["oops", {"name": "app", "securityContext": "bad"}],
        "volumes": 3,
    }
    violations = check_pod(pod, _rules())
    assert any(v.startswith('container "app": seccompProfile') for v in violations)


def test_pod_sized_from_the_sandbox_limits_complies() -> None:
    rules = _rules()
    pod = _pod()
    pod["containers"][0]["resources"]["limits"] = rules.limits.kubernetes()
    assert check_pod(pod, rules) == []


@pytest.mark.parametrize(
    ("resources", "violation"),
    [
        (
            {"limits": {"memory": "8Gi"}},
            "pod: resources.limits.memory 8Gi is above the plugin's 256Mi",
        ),
        (
            {"limits": {"cpu": "4"}},
            "pod: resources.limits.cpu 4 is above the plugin's 500m",
        ),
        (
            {"requests": {"memory": "257Mi"}},
            "pod: resources.requests.memory 257Mi is above the plugin's 256Mi",
        ),
        (
            {"requests": {"cpu": "501m"}},
            "pod: resources.requests.cpu 501m is above the plugin's 500m",
        ),
        (
            {"limits": {"memory": "lots"}},
            "pod: resources.limits.memory: 'lots' is not a Kubernetes quantity such as"
            " 512Mi, 0.5 or 500m",
        ),
        (
            {"requests": {"cpu": "-1"}},
            "pod: resources.requests.cpu: must not be negative",
        ),
        (
            {"limits": {"memory": ["8Gi"]}},
            "pod: resources.limits.memory: must be a quantity, not a list",
        ),
    ],
)
def test_pod_level_resources_may_not_exceed_the_plugin(
    resources: dict[str, Any], violation: str
) -> None:
    # An ephemeral container declares no limits: the pod's cgroup is all that bounds
    # it, and pod-level resources size that cgroup.
    pod = _with(lambda p: p.update(resources=resources))
    assert check_pod(pod, _rules()) == [violation]


def test_pod_level_resources_within_the_plugin_comply() -> None:
    pod = _pod()
    pod["resources"] = {
        "limits": {"memory": "256Mi", "cpu": "0.5"},
        "requests": {"memory": "128Mi", "cpu": "100m"},
    }
    assert check_pod(pod, _rules()) == []
    pod["resources"] = {"limits": {"memory": "8Gi", "cpu": "4"}}
    assert check_pod(pod, _rules()) == [
        "pod: resources.limits.memory 8Gi is above the plugin's 256Mi",
        "pod: resources.limits.cpu 4 is above the plugin's 500m",
    ]


def _context_at(pod: dict[str, Any], subject: str) -> dict[str, Any]:
    """The securityContext that ``subject`` (as violations name it) reads."""
    if subject == "pod":
        context: dict[str, Any] = pod["securityContext"]
        return context
    kind, name = subject.split(' "')
    name = name.rstrip('"')
    key = {"container": "containers", "init container": "initContainers",
           "ephemeral container": "ephemeralContainers"}[kind]
    if key not in pod:
        pod[key] = [_container(name)]
    context = pod[key][0]["securityContext"]
    return context


CONTEXT_SUBJECTS = [
    ("pod", "pod: securityContext"),
    ('container "app"', 'container "app": securityContext'),
    ('init container "setup"', 'init container "setup": securityContext'),
    ('ephemeral container "debug"', 'ephemeral container "debug": securityContext'),
]


@pytest.mark.parametrize(("subject", "where"), CONTEXT_SUBJECTS)
@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (
            {"type": "spc_t"},
            "seLinuxOptions.type must be empty or one of container_t,"
            " container_init_t, container_kvm_t, container_engine_t, not 'spc_t'",
        ),
        (
            {"type": "unconfined_t", "level": "s0:c1,c2"},
            "seLinuxOptions.type must be empty or one of container_t,"
            " container_init_t, container_kvm_t, container_engine_t, not 'unconfined_t'",
        ),
        ({"user": "system_u"}, "seLinuxOptions.user must not be set"),
        ({"role": "system_r"}, "seLinuxOptions.role must not be set"),
    ],
)
def test_selinux_options_are_held_to_the_baseline_pod_security_standard(
    subject: str, where: str, options: dict[str, Any], problem: str
) -> None:
    pod = _pod()
    _context_at(pod, subject)["seLinuxOptions"] = options
    assert f"{where}.{problem}" in check_pod(pod, _rules())


@pytest.mark.parametrize(("subject", "where"), CONTEXT_SUBJECTS)
def test_windows_host_process_is_refused(subject: str, where: str) -> None:
    pod = _pod()
    _context_at(pod, subject)["windowsOptions"] = {"hostProcess": True}
    assert f"{where}.windowsOptions.hostProcess must not be true" in check_pod(
        pod, _rules()
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"type": ""},
        {"type": "container_t", "level": "s0:c123,c456"},
        {"type": "container_init_t"},
        {"type": "container_kvm_t"},
        {"type": "container_engine_t"},
        {"user": "", "role": "", "level": "s0"},
    ],
)
def test_selinux_options_the_baseline_allows_comply(options: dict[str, Any]) -> None:
    pod = _pod()
    pod["securityContext"]["seLinuxOptions"] = options
    _app_context(pod)["seLinuxOptions"] = options
    _app_context(pod)["windowsOptions"] = {"hostProcess": False, "runAsUserName": "u"}
    assert check_pod(pod, _rules()) == []


@pytest.mark.parametrize("odd", [["spc_t"], {"t": 1}, 7, True])
def test_selinux_options_of_the_wrong_shape_are_refused_not_fatal(odd: Any) -> None:
    pod = _pod()
    _app_context(pod)["seLinuxOptions"] = {"type": odd, "user": odd}
    violations = check_pod(pod, _rules())
    assert any("seLinuxOptions.type must be empty" in v for v in violations)
    assert 'container "app": securityContext.seLinuxOptions.user must not be set' in (
        violations
    )


def test_a_long_selinux_type_is_cut_short_in_the_violation() -> None:
    pod = _pod()
    _app_context(pod)["seLinuxOptions"] = {"type": "x" * 10_000}
    (violation,) = check_pod(pod, _rules())
    assert violation.endswith("not '" + "x" * 80 + "'...")
