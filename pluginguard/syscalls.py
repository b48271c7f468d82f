"""Syscall names as libseccomp knows them, and the runtimes' default allow list.

A plugin's sandbox names syscalls; this module decides which names are real (by asking
libseccomp, the library runc and crun compile seccomp filters with) and what the
``runtime-default`` baseline contains (shipped as ``data/runtime-default.json``).

What "known" means: a name is known for a set of architectures if libseccomp resolves it
on at least one architecture that the generated profile lists for them, that is the
native one *or one of its compat sub-architectures* (amd64 brings x86 and x32, arm64
brings 32-bit arm). The profile filters those sub-architectures too, so a name such as
``mmap2`` or ``_llseek``, which only 32-bit code calls, means something in it; judging
by the native architecture alone would make the container runtimes' own default list
fail validation for every plugin.

Resolution is cached per (architecture, name), so compiling thousands of profiles asks
libseccomp once per distinct name.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from functools import cache, lru_cache
from importlib import resources
from types import ModuleType
from typing import Any, Final

from pluginguard.errors import InputError, PluginGuardError

#: The architectures a sandbox may name, in the spelling Kubernetes nodes report.
ARCHITECTURES: Final = ("amd64", "arm64")

#: The libseccomp architectures a profile lists for each sandbox architecture: the
#: native one first, then the compat modes a process on such a node can switch to.
SCMP_ARCHITECTURES: Final[dict[str, tuple[str, ...]]] = {
    "amd64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "arm64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
}

#: What a syscall name may look like before libseccomp is asked about it.
SYSCALL_NAME_PATTERN: Final = r"^[a-z_][a-z0-9_]*$"
SYSCALL_NAME_MAX_LENGTH: Final = 64

_SYSCALL_NAME = re.compile(SYSCALL_NAME_PATTERN)

# libseccomp answers a name lookup with -1 for a name it has never heard of, and with
# a pseudo-number at or below -10000 for a name that exists elsewhere but not on this
# architecture. Numbers between -100 and -10000 are calls that this architecture only
# reaches through the socketcall(2) or ipc(2) multiplexers; libseccomp filters those by
# argument, so they count as present.
_ABSENT_BELOW: Final = -10000
_MULTIPLEXED_AT_OR_BELOW: Final = -100

_INSTALL_HINT: Final = (
    "install the libseccomp shared library (Debian/Ubuntu: apt-get install libseccomp2;"
    " Fedora/RHEL: dnf install libseccomp; Alpine: apk add libseccomp)"
    " and the pyseccomp Python package"
)


@cache
def _libseccomp() -> ModuleType:
    """The pyseccomp binding, loaded once; raises PluginGuardError if it cannot be."""
    try:
        import pyseccomp  # type: ignore[import-untyped]
    except (ImportError, OSError, RuntimeError) as error:
        # pyseccomp raises RuntimeError at import when find_library("seccomp") fails,
        # OSError when the library is found but cannot be loaded.
        raise PluginGuardError(
            f"syscall tables: libseccomp could not be loaded ({error}); {_INSTALL_HINT}"
        ) from error
    module: ModuleType = pyseccomp
    return module


@lru_cache(maxsize=16384)
def syscall_number(scmp_arch: str, name: str) -> int:
    """libseccomp's number for ``name`` on ``scmp_arch`` (e.g. ``SCMP_ARCH_X86_64``).

    Negative numbers are libseccomp's pseudo-numbers (see the module's notes). Raises
    PluginGuardError if libseccomp cannot be loaded, AttributeError for an unknown arch.
    """
    pyseccomp = _libseccomp()
    token = getattr(pyseccomp.Arch, scmp_arch.removeprefix("SCMP_ARCH_"))
    return int(pyseccomp.resolve_syscall(token, name))


def _present(number: int) -> bool:
    return number >= 0 or _ABSENT_BELOW < number <= _MULTIPLEXED_AT_OR_BELOW


@lru_cache(maxsize=16384)
def _known(name: str, architectures: tuple[str, ...]) -> bool:
    return any(
        _present(syscall_number(scmp_arch, name))
        for architecture in architectures
        for scmp_arch in SCMP_ARCHITECTURES[architecture]
    )


def is_known(name: str, *, architectures: Iterable[str]) -> bool:
    """Whether libseccomp resolves ``name`` on any architecture the profile would list.

    Raises PluginGuardError if libseccomp cannot be loaded, ValueError for an
    architecture outside :data:`ARCHITECTURES`.
    """
    return _known(name, _arch_key(architectures))


def validate_syscalls(
    names: Sequence[object], *, architectures: Iterable[str], where: str
) -> list[str]:
    """Check that every entry of ``names`` is a syscall known for ``architectures``.

    Returns the names unchanged. Raises InputError naming the entry
    (``{where}[index]``) that is not a string, not shaped like a syscall name, or not
    known to libseccomp; PluginGuardError if libseccomp cannot be loaded.
    """
    arch_key = _arch_key(architectures)
    checked: list[str] = []
    for index, name in enumerate(names):
        # The entry's place is spelt out only for an error: this runs on every
        # verification of a signed sandbox.
        if not isinstance(name, str):
            raise InputError(
                f"{where}[{index}]", f"must be a syscall name, not {type(name).__name__}"
            )
        if len(name) > SYSCALL_NAME_MAX_LENGTH or not _SYSCALL_NAME.match(name):
            raise InputError(
                f"{where}[{index}]", f"{name!r} is not shaped like a syscall name"
            )
        if not _known(name, arch_key):
            raise InputError(f"{where}[{index}]", _unknown_message(name, arch_key))
        checked.append(name)
    return checked


def _unknown_message(name: str, architectures: tuple[str, ...]) -> str:
    arches = ", ".join(architectures)
    message = f"unknown syscall {name!r}: libseccomp has no such call on {arches}"
    guesses = difflib.get_close_matches(name, _runtime_default_table()["allow"], n=1)
    return f"{message} (did you mean {guesses[0]!r}?)" if guesses else message


def runtime_default(architectures: Iterable[str]) -> frozenset[str]:
    """The ``runtime-default`` baseline's unconditionally allowed syscalls.

    That is the container runtimes' default list, restricted to names known for
    ``architectures``, plus the names the default allows only on those architecture
    families (``arch_prctl`` on amd64, ``set_tls`` on arm64, ...). The calls that the
    default allows only with certain arguments are in :func:`runtime_default_arg_rules`.
    Raises PluginGuardError if libseccomp cannot be loaded.
    """
    return _runtime_default(_arch_key(architectures))


@lru_cache(maxsize=8)
def _runtime_default(architectures: tuple[str, ...]) -> frozenset[str]:
    table = _runtime_default_table()
    names = {name for name in table["allow"] if _known(name, architectures)}
    for architecture in architectures:
        names.update(table["architectures"][architecture])
    return frozenset(names)


def runtime_default_arg_rules() -> list[dict[str, Any]]:
    """The baseline's argument-filtered rules, as OCI seccomp syscall entries.

    Each has ``names``, ``action`` and ``args`` or ``errnoRet``; callers get fresh
    copies they may change.
    """
    rules = _runtime_default_table()["conditional"]
    return [
        {key: value for key, value in rule.items() if key != "reason"}
        for rule in json.loads(json.dumps(rules))
    ]


def runtime_default_arg_names() -> frozenset[str]:
    """Names that the baseline allows only through :func:`runtime_default_arg_rules`."""
    rules = _runtime_default_table()["conditional"]
    return frozenset(name for rule in rules for name in rule["names"])


@cache
def _runtime_default_table() -> dict[str, Any]:
    text = resources.files("pluginguard").joinpath("data/runtime-default.json")
    table: dict[str, Any] = json.loads(text.read_text(encoding="utf-8"))
    return table


def _arch_key(architectures: Iterable[str]) -> tuple[str, ...]:
    key = tuple(sorted(set(architectures)))
    unknown = [arch for arch in key if arch not in SCMP_ARCHITECTURES]
    if unknown:
        raise ValueError(f"unsupported architecture {unknown[0]!r}")
    return key
