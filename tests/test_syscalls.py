"""Tests for pluginguard.syscalls: names checked by libseccomp, the baseline's data."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pyseccomp  # type: ignore[import-untyped]
import pytest

from pluginguard import syscalls
from pluginguard.errors import InputError, PluginGuardError
from pluginguard.syscalls import (
    is_known,
    runtime_default,
    runtime_default_arg_names,
    runtime_default_arg_rules,
    validate_syscalls,
)

BOTH = ("amd64", "arm64")


def _table() -> dict[str, Any]:
    path = resources.files("pluginguard").joinpath("data/runtime-default.json")
    table: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return table


@pytest.fixture
def fresh_caches() -> Iterator[None]:
    """Empty every lookup cache before and after a test that swaps libseccomp out."""

    def clear() -> None:
        syscalls._libseccomp.cache_clear()
        syscalls.syscall_number.cache_clear()
        syscalls._known.cache_clear()
        syscalls._runtime_default.cache_clear()

    clear()
    yield
    clear()


# -- validate_syscalls ----------------------------------------------------------------


def test_validate_returns_known_names_unchanged() -> None:
    names = ["write", "read", "openat"]
    assert validate_syscalls(names, architectures=BOTH, where="allow") == names


def test_unknown_syscall_is_named_with_its_index() -> None:
    with pytest.raises(InputError) as caught:
        validate_syscalls(
            ["read", "write", "frobnicate"], architectures=BOTH, where="s.allow"
        )
    assert caught.value.where == "s.allow[2]"
    assert "frobnicate" in caught.value.problem


def test_unknown_syscall_message_suggests_a_close_name() -> None:
    with pytest.raises(InputError, match="did you mean 'openat'"):
        validate_syscalls(["opnat"], architectures=BOTH, where="allow")


@pytest.mark.parametrize("bad", [42, None, "Read", "read;", "", "x" * 65])
def test_entries_that_are_not_syscall_names_are_rejected(bad: object) -> None:
    with pytest.raises(InputError) as caught:
        validate_syscalls(["read", bad], architectures=BOTH, where="deny")
    assert caught.value.where == "deny[1]"


def test_a_name_must_exist_on_one_of_the_requested_architectures() -> None:
    # arch_prctl is x86-only; set_tls is 32-bit-arm-only.
    assert is_known("arch_prctl", architectures=["amd64"])
    assert not is_known("arch_prctl", architectures=["arm64"])
    assert is_known("set_tls", architectures=["arm64"])
    assert not is_known("set_tls", architectures=["amd64"])
    with pytest.raises(InputError, match="arch_prctl"):
        validate_syscalls(["arch_prctl"], architectures=["arm64"], where="allow")


def test_compat_sub_architectures_count_as_requested() -> None:
    # mmap2 exists only for 32-bit processes (x86 under amd64, arm under arm64);
    # open is absent from aarch64 but present in its 32-bit arm mode.
    assert pyseccomp.resolve_syscall(pyseccomp.Arch.X86_64, "mmap2") < 0
    assert is_known("mmap2", architectures=["amd64"])
    assert pyseccomp.resolve_syscall(pyseccomp.Arch.AARCH64, "open") < 0
    assert is_known("open", architectures=["arm64"])


def test_unsupported_architecture_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="riscv64"):
        is_known("read", architectures=["riscv64"])


def test_lookups_reach_libseccomp_once_per_name_and_architecture(
    fresh_caches: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, str]] = []
    real = pyseccomp.resolve_syscall

    def counting(arch: int, name: str) -> int:
        calls.append((arch, name))
        return int(real(arch, name))

    monkeypatch.setattr(pyseccomp, "resolve_syscall", counting)
    for _ in range(50):
        validate_syscalls(["read", "write"], architectures=["amd64"], where="allow")
    # read and write resolve on the native x86_64 already, so one lookup each.
    assert sorted(calls) == sorted(
        [(pyseccomp.Arch.X86_64, "read"), (pyseccomp.Arch.X86_64, "write")]
    )


def test_missing_libseccomp_says_how_to_install_it(
    fresh_caches: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyseccomp", None)
    with pytest.raises(PluginGuardError, match="libseccomp2") as caught:
        validate_syscalls(["read"], architectures=BOTH, where="allow")
    assert not isinstance(caught.value, InputError)


# -- the runtime-default data ---------------------------------------------------------


def test_every_baseline_name_resolves_in_libseccomp_on_amd64_or_arm64() -> None:
    table = _table()
    unknown = [
        name for name in table["allow"] if not is_known(name, architectures=BOTH)
    ]
    assert unknown == []
    for architecture, names in table["architectures"].items():
        assert [n for n in names if not is_known(n, architectures=[architecture])] == []
    for name in runtime_default_arg_names():
        assert is_known(name, architectures=BOTH)


def test_baseline_lists_are_sorted_and_free_of_duplicates() -> None:
    table = _table()
    assert table["allow"] == sorted(set(table["allow"]))
    for names in table["architectures"].values():
        assert names == sorted(set(names))


def test_argument_filtered_names_are_not_also_allowed_outright() -> None:
    assert runtime_default_arg_names() == {"clone", "clone3", "personality", "socket"}
    assert runtime_default_arg_names().isdisjoint(runtime_default(BOTH))


def test_baseline_keeps_what_every_process_needs() -> None:
    essentials = {"read", "write", "openat", "close", "mmap", "execve", "exit_group"}
    for architectures in (["amd64"], ["arm64"], list(BOTH)):
        assert essentials <= runtime_default(architectures)


def test_baseline_leaves_out_what_needs_capabilities_or_escapes() -> None:
    dangerous = {
        "mount",
        "umount2",
        "unshare",
        "setns",
        "bpf",
        "kexec_load",
        "init_module",
        "reboot",
        "chroot",
        "open_by_handle_at",
        "io_uring_setup",
        "keyctl",
        "add_key",
        "userfaultfd",
    }
    assert dangerous.isdisjoint(runtime_default(BOTH))


def test_baseline_per_architecture_entries_follow_the_architectures() -> None:
    assert "arch_prctl" in runtime_default(["amd64"])
    assert "arch_prctl" not in runtime_default(["arm64"])
    assert "set_tls" in runtime_default(["arm64"])
    assert "set_tls" not in runtime_default(["amd64"])
    assert runtime_default(BOTH) == runtime_default(["amd64"]) | runtime_default(
        ["arm64"]
    )


def test_arg_rules_are_copies_without_commentary() -> None:
    rules = runtime_default_arg_rules()
    assert all("reason" not in rule for rule in rules)
    rules[0]["names"].append("mount")
    assert "mount" not in runtime_default_arg_rules()[0]["names"]


def test_clone_rule_masks_exactly_the_namespace_flags() -> None:
    clone_newns, clone_newcgroup = 0x00020000, 0x02000000
    namespaces = clone_newns | clone_newcgroup | 0x7C000000  # UTS IPC USER PID NET
    (clone,) = [
        rule for rule in runtime_default_arg_rules() if rule["names"] == ["clone"]
    ]
    assert clone["args"] == [
        {"index": 0, "value": namespaces, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
