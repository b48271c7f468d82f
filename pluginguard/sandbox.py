"""A plugin's sandbox, and what PluginGuard generates from it.

``spec.sandbox`` is read in one place, :func:`normalize_sandbox`. It fills in the same
defaults as the CRD schema, so a sandbox means the same before and after the API server
has defaulted it, and it sorts and deduplicates every list, so that two sandboxes that
mean the same thing are equal dicts. That dict is what a publisher signs and what the
operator compares with the cluster's copy; the seccomp profile, the resource limits,
the NetworkPolicy and the rules the admission webhook applies to pods are all derived
from it.

Network decisions worth knowing:

* ``egress: none`` means no traffic at all, DNS included, except to ``allowedCIDRs``.
  A plugin that resolves names needs ``cluster`` (or a CIDR holding its resolver).
* ``egress: cluster`` and ``any`` always include DNS (port 53, UDP and TCP) to the
  same destinations, even when ``ports`` narrows everything else to, say, 443.
* Ingress is closed unless the sandbox opens it to ``cluster`` or ``any``.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import ipaddress
import json
import posixpath
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from math import ceil
from typing import Any, Final

from pluginguard.errors import InputError
from pluginguard.syscalls import (
    ARCHITECTURES,
    SCMP_ARCHITECTURES,
    runtime_default,
    runtime_default_arg_rules,
    validate_syscalls,
)

# -- The sandbox's vocabulary; the CRD's enums, bounds and patterns must equal these. --

BASELINES: Final = ("runtime-default", "none")
DEFAULT_ACTIONS: Final = ("errno", "kill", "log")
EGRESS_MODES: Final = ("none", "cluster", "any")
INGRESS_MODES: Final = ("none", "cluster", "any")
PROTOCOLS: Final = ("TCP", "UDP", "SCTP")

#: Inclusive bounds of the integer fields.
BOUNDS: Final[dict[str, tuple[int, int]]] = {
    "maxMemoryMB": (1, 1_048_576),
    "maxCPUPercent": (1, 6_400),
    "maxProcesses": (1, 65_536),
    "port": (1, 65_535),
}

#: Longest list each list field accepts.
MAX_ITEMS: Final[dict[str, int]] = {
    "allow": 512,
    "deny": 512,
    "architectures": len(ARCHITECTURES),
    "allowedCIDRs": 64,
    "ports": 64,
    "ingressPorts": 64,
    "writablePaths": 16,
}

#: An absolute path of non-empty components, none of them "." or "..", no trailing
#: slash. Written for RE2 (no look-ahead) so that the CRD can carry the same pattern.
WRITABLE_PATH_PATTERN: Final = r"^(/([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+))+$"
WRITABLE_PATH_MAX_LENGTH: Final = 1024

#: The shape of a CIDR; :mod:`ipaddress` then decides whether it is one.
CIDR_PATTERN: Final = r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"
CIDR_MAX_LENGTH: Final = 43

_WRITABLE_PATH = re.compile(WRITABLE_PATH_PATTERN)
_CIDR = re.compile(CIDR_PATTERN)

_DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    "seccomp": {
        "baseline": "runtime-default",
        "defaultAction": "errno",
        "allow": [],
        "deny": [],
        "architectures": list(ARCHITECTURES),
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
_PORT_DEFAULTS: Final[dict[str, Any]] = {"port": None, "protocol": "TCP"}


def sandbox_defaults() -> dict[str, Any]:
    """The sandbox every omitted field falls back to (a fresh copy)."""
    return copy.deepcopy(_DEFAULTS)


# ------------------------------------------------------------------ normalisation --


def normalize_sandbox(
    raw: Mapping[str, Any] | None, *, where: str = "spec.sandbox"
) -> dict[str, Any]:
    """Validate ``spec.sandbox`` and return it complete and in canonical order.

    Omitted and null fields get the CRD's defaults; syscall, architecture, CIDR, port
    and path lists come back sorted and without duplicates; a syscall both allowed and
    denied is only denied. Normalising a normalised sandbox returns it unchanged.
    Raises InputError naming the field (``spec.sandbox.seccomp.allow[2]``) for unknown
    fields, wrong types, values outside an enum or range, unknown syscalls, bad CIDRs
    and paths; PluginGuardError if libseccomp cannot be loaded.
    """
    fields = _Fields.read(raw, where, _DEFAULTS)
    return {
        "seccomp": _seccomp(fields.body.get("seccomp"), fields.at("seccomp")),
        "resources": _resources(fields.body.get("resources"), fields.at("resources")),
        "network": _network(fields.body.get("network"), fields.at("network")),
        "filesystem": _filesystem(
            fields.body.get("filesystem"), fields.at("filesystem")
        ),
    }


@dataclass(slots=True)
class _Fields:
    """One object of the sandbox, read against the defaults of its fields.

    Not frozen: verification normalises a sandbox every time, and a frozen dataclass
    pays for its protection on every construction. Nothing changes one once read.
    """

    body: dict[str, Any]
    where: str
    defaults: Mapping[str, Any]

    @classmethod
    def read(cls, raw: object, where: str, defaults: Mapping[str, Any]) -> _Fields:
        if raw is None:
            return cls({}, where, defaults)
        if type(raw) is not dict and not isinstance(raw, Mapping):
            raise InputError(where, f"must be an object, not {_json_type(raw)}")
        if not raw.keys() <= defaults.keys():
            for key in raw:
                if key not in defaults:
                    raise InputError(f"{where}.{key}", _unknown_field(key, defaults))
        # The API server prunes nulls before defaulting; doing the same here keeps
        # "field: null" and an omitted field equal.
        body = {key: value for key, value in raw.items() if value is not None}
        return cls(body, where, defaults)

    def at(self, key: str) -> str:
        return f"{self.where}.{key}"

    def value(self, key: str) -> Any:
        """The field's value, else its default. A default is shared, not copied: every
        caller builds its result afresh (sorted lists, new dicts) and changes neither."""
        value = self.body.get(key)  # the body holds no nulls: None means absent
        if value is not None:
            return value
        default = self.defaults[key]
        if default is None:
            raise InputError(self.at(key), "is required")
        return default

    def choice(self, key: str, choices: Sequence[str]) -> str:
        value = self.value(key)
        if not isinstance(value, str) or value not in choices:
            raise InputError(
                self.at(key), f"must be one of {', '.join(choices)}, not {value!r}"
            )
        return value

    def integer(self, key: str) -> int:
        value = self.value(key)
        low, high = BOUNDS[key]
        # bool is an int in Python but not in JSON.
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(
                self.at(key), f"must be an integer, not {_json_type(value)}"
            )
        if not low <= value <= high:
            raise InputError(
                self.at(key), f"must be between {low} and {high}, not {value}"
            )
        return value

    def boolean(self, key: str) -> bool:
        value = self.value(key)
        if not isinstance(value, bool):
            raise InputError(self.at(key), f"must be true or false, not {value!r}")
        return value

    def items(self, key: str) -> list[Any]:
        value = self.value(key)
        if not isinstance(value, list):
            raise InputError(self.at(key), f"must be a list, not {_json_type(value)}")
        if len(value) > MAX_ITEMS[key]:
            raise InputError(
                self.at(key), f"has {len(value)} entries; at most {MAX_ITEMS[key]}"
            )
        return value

    def entry(self, key: str, index: int) -> str:
        """Where entry ``index`` of list ``key`` is, for an error message."""
        return f"{self.where}.{key}[{index}]"

    def strings(self, key: str) -> Iterator[tuple[int, str]]:
        """Each entry of list ``key`` and its index; InputError for a non-string."""
        for index, item in enumerate(self.items(key)):
            if not isinstance(item, str):
                raise InputError(
                    self.entry(key, index), f"must be a string, not {_json_type(item)}"
                )
            yield index, item


def _seccomp(raw: object, where: str) -> dict[str, Any]:
    fields = _Fields.read(raw, where, _DEFAULTS["seccomp"])
    architectures = _architectures(fields)
    allow = validate_syscalls(
        fields.items("allow"), architectures=architectures, where=fields.at("allow")
    )
    deny = validate_syscalls(
        fields.items("deny"), architectures=architectures, where=fields.at("deny")
    )
    return {
        "baseline": fields.choice("baseline", BASELINES),
        "defaultAction": fields.choice("defaultAction", DEFAULT_ACTIONS),
        # Deny wins; dropping the overlap makes "allow x, deny x" equal "deny x".
        "allow": sorted(set(allow) - set(deny)),
        "deny": sorted(set(deny)),
        "architectures": architectures,
    }


def _architectures(fields: _Fields) -> list[str]:
    found = set()
    for index, name in fields.strings("architectures"):
        if name not in ARCHITECTURES:
            raise InputError(
                fields.entry("architectures", index),
                f"must be one of {', '.join(ARCHITECTURES)}, not {name!r}",
            )
        found.add(name)
    if not found:
        raise InputError(fields.at("architectures"), "must name at least one")
    return sorted(found)


def _resources(raw: object, where: str) -> dict[str, Any]:
    fields = _Fields.read(raw, where, _DEFAULTS["resources"])
    return {key: fields.integer(key) for key in _DEFAULTS["resources"]}


def _network(raw: object, where: str) -> dict[str, Any]:
    fields = _Fields.read(raw, where, _DEFAULTS["network"])
    network = {
        "egress": fields.choice("egress", EGRESS_MODES),
        "allowedCIDRs": _cidrs(fields),
        "ports": _ports(fields, "ports"),
        "ingress": fields.choice("ingress", INGRESS_MODES),
        "ingressPorts": _ports(fields, "ingressPorts"),
    }
    # A port list that applies to nothing is a mistake worth reporting, not ignoring.
    if network["ports"] and network["egress"] == "none" and not network["allowedCIDRs"]:
        raise InputError(
            fields.at("ports"),
            "limits no destination: egress is none and allowedCIDRs is empty",
        )
    if network["ingressPorts"] and network["ingress"] == "none":
        raise InputError(
            fields.at("ingressPorts"),
            "opens nothing while ingress is none; set ingress to cluster or any",
        )
    return network


def _cidrs(fields: _Fields) -> list[str]:
    networks: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for index, text in fields.strings("allowedCIDRs"):
        place = fields.entry("allowedCIDRs", index)
        if len(text) > CIDR_MAX_LENGTH or not _CIDR.match(text):
            raise InputError(place, f"{text!r} is not a CIDR such as 10.0.0.0/8")
        try:
            networks.add(ipaddress.ip_network(text, strict=True))
        except ValueError as error:
            raise InputError(place, f"{text!r} is not a CIDR: {error}") from error
    ordered = sorted(
        networks, key=lambda net: (net.version, net.network_address, net.prefixlen)
    )
    return [str(net) for net in ordered]


def _ports(fields: _Fields, key: str) -> list[dict[str, Any]]:
    found: set[tuple[int, str]] = set()
    for index, item in enumerate(fields.items(key)):
        port = _Fields.read(item, fields.entry(key, index), _PORT_DEFAULTS)
        found.add((port.integer("port"), port.choice("protocol", PROTOCOLS)))
    return [
        {"port": number, "protocol": protocol} for number, protocol in sorted(found)
    ]


def _filesystem(raw: object, where: str) -> dict[str, Any]:
    fields = _Fields.read(raw, where, _DEFAULTS["filesystem"])
    paths = set()
    for index, path in fields.strings("writablePaths"):
        if len(path) > WRITABLE_PATH_MAX_LENGTH or not _WRITABLE_PATH.match(path):
            raise InputError(
                fields.entry("writablePaths", index),
                f"{path!r} must be an absolute path without '.', '..', '//' or a"
                " trailing '/'",
            )
        paths.add(path)
    return {
        "readOnlyRootFilesystem": fields.boolean("readOnlyRootFilesystem"),
        "writablePaths": sorted(paths),
    }


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _unknown_field(key: object, known: Collection[str]) -> str:
    message = f"unknown field; expected one of {', '.join(sorted(known))}"
    guesses = difflib.get_close_matches(str(key), list(known), n=1)
    return f"{message} (did you mean {guesses[0]!r}?)" if guesses else message


# ---------------------------------------------------------------- seccomp profile --

_ACTIONS: Final = {
    "errno": "SCMP_ACT_ERRNO",
    "kill": "SCMP_ACT_KILL_PROCESS",
    "log": "SCMP_ACT_LOG",
}
_EPERM: Final = 1


@dataclass(frozen=True)
class SeccompProfile:
    """A seccomp profile as kubelet hands ``Localhost`` profiles to the runtime.

    ``json_bytes`` is the file to install on nodes (sorted keys, two-space indent,
    ASCII, trailing newline), so equal sandboxes give byte-equal files and ``sha256``
    (hex of ``json_bytes``) names a profile. ``profile`` is the same, parsed; do not
    change it. Equality compares the bytes.
    """

    profile: dict[str, Any] = field(compare=False, repr=False)
    json_bytes: bytes = field(repr=False)
    sha256: str


def seccomp_profile(sandbox: Mapping[str, Any]) -> SeccompProfile:
    """The OCI seccomp profile for ``sandbox`` (normalised or not).

    Rules, in order: one SCMP_ACT_ALLOW rule naming baseline + allow - deny; under
    the runtime-default baseline, its argument-filtered rules (clone without namespace
    flags, clone3 failing with ENOSYS so libc falls back to clone, personality, socket
    without AF_VSOCK) for names the sandbox neither allows nor denies outright; then
    the denied names with EPERM, or kill under ``defaultAction: kill``, so that a
    denial holds even under ``log``. Every other call gets ``defaultAction``.

    With ``baseline: none`` the allow list is all there is: runc still needs
    ``execve`` and a few more calls after it installs the filter, so a profile too
    small fails at container start, which is the publisher's responsibility.
    Raises InputError for an invalid sandbox.
    """
    seccomp = normalize_sandbox(sandbox)["seccomp"]
    denied = set(seccomp["deny"])
    allowed = set(seccomp["allow"])
    arg_rules: list[dict[str, Any]] = []
    if seccomp["baseline"] == "runtime-default":
        arg_rules = [
            rule
            for rule in runtime_default_arg_rules()
            if (allowed | denied).isdisjoint(rule["names"])
        ]
        allowed |= runtime_default(seccomp["architectures"])
    allowed -= denied

    rules: list[dict[str, Any]] = []
    if allowed:
        rules.append({"names": sorted(allowed), "action": "SCMP_ACT_ALLOW"})
    rules.extend(arg_rules)
    if denied:
        rules.append({"names": sorted(denied), **_deny_action(seccomp)})

    profile: dict[str, Any] = {
        "defaultAction": _ACTIONS[seccomp["defaultAction"]],
        "architectures": [
            scmp
            for architecture in seccomp["architectures"]
            for scmp in SCMP_ARCHITECTURES[architecture]
        ],
        "syscalls": rules,
    }
    if seccomp["defaultAction"] == "errno":
        profile["defaultErrnoRet"] = _EPERM
    text = json.dumps(profile, indent=2, sort_keys=True, ensure_ascii=True) + "\n"
    json_bytes = text.encode("ascii")
    return SeccompProfile(profile, json_bytes, hashlib.sha256(json_bytes).hexdigest())


def _deny_action(seccomp: Mapping[str, Any]) -> dict[str, Any]:
    if seccomp["defaultAction"] == "kill":
        return {"action": "SCMP_ACT_KILL_PROCESS"}
    return {"action": "SCMP_ACT_ERRNO", "errnoRet": _EPERM}


# ------------------------------------------------------------------------ limits --

_MIB: Final = 1 << 20
# The CFS period the kernel and the kubelet use unless told otherwise.
_CPU_PERIOD_US: Final = 100_000


@dataclass(frozen=True)
class Limits:
    """A plugin's resource ceiling, in Kubernetes' terms and in cgroup v2's."""

    memory_bytes: int
    cpu_millicores: int
    pids_max: int

    # Cached: pod checks name the ceiling in every container's rules.
    @functools.cached_property
    def memory(self) -> str:
        """The memory limit as a Kubernetes quantity, e.g. ``256Mi``."""
        return format_bytes(self.memory_bytes)

    @functools.cached_property
    def cpu(self) -> str:
        """The CPU limit as a Kubernetes quantity, e.g. ``500m``."""
        return format_millicores(self.cpu_millicores)

    @property
    def memory_max(self) -> int:
        """cgroup v2 ``memory.max``, in bytes."""
        return self.memory_bytes

    @property
    def cpu_max(self) -> str:
        """cgroup v2 ``cpu.max``: "quota period" in microseconds: "50000 100000"."""
        return f"{self.cpu_millicores * _CPU_PERIOD_US // 1000} {_CPU_PERIOD_US}"

    def kubernetes(self) -> dict[str, str]:
        """``resources.limits`` for a container: ``{"memory": ..., "cpu": ...}``."""
        return {"memory": self.memory, "cpu": self.cpu}

    def cgroup(self) -> dict[str, int | str]:
        """The cgroup v2 files a node writes, by file name."""
        return {
            "memory.max": self.memory_max,
            "cpu.max": self.cpu_max,
            "pids.max": self.pids_max,
        }

    def status(self) -> dict[str, Any]:
        """The shape of a Plugin's ``status.limits``."""
        return {
            "memory": self.memory,
            "cpu": self.cpu,
            "cgroup": {
                "memoryMax": self.memory_max,
                "cpuMax": self.cpu_max,
                "pidsMax": self.pids_max,
            },
        }


def limits(sandbox: Mapping[str, Any]) -> Limits:
    """The limits ``sandbox`` declares (MB are MiB; a CPU percent is of one CPU).

    Raises InputError for an invalid sandbox.
    """
    resources = normalize_sandbox(sandbox)["resources"]
    return Limits(
        memory_bytes=resources["maxMemoryMB"] * _MIB,
        cpu_millicores=resources["maxCPUPercent"] * 10,
        pids_max=resources["maxProcesses"],
    )


# ---------------------------------------------------------- Kubernetes quantities --

_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>[KMGTPE]i|[eE][+-]?[0-9]+|[numkMGTPE])?"
)
_SUFFIXES: Final[dict[str, Fraction]] = {
    **{
        s: Fraction(1024**i)
        for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)
    },
    **{s: Fraction(1000**i) for i, s in enumerate("kMGTPE", 1)},
    "m": Fraction(1, 1000),
    "u": Fraction(1, 1000**2),
    "n": Fraction(1, 1000**3),
}
# Far beyond any real quantity, and it keeps "1e999999999" from costing seconds.
_MAX_EXPONENT: Final = 40
_MAX_QUANTITY_LENGTH: Final = 64


def parse_quantity(quantity: str | int | float, *, where: str) -> Fraction:
    """The exact value of a Kubernetes quantity: "512Mi", "1G", "0.5", "500m", "1e3".

    Raises InputError (at ``where``) for anything the Kubernetes grammar rejects.
    """
    if isinstance(quantity, bool) or not isinstance(quantity, str | int | float):
        raise InputError(where, f"must be a quantity, not {_json_type(quantity)}")
    text = str(quantity)
    match = _QUANTITY.fullmatch(text) if len(text) <= _MAX_QUANTITY_LENGTH else None
    if match is None:
        raise InputError(
            where, f"{text!r} is not a Kubernetes quantity such as 512Mi, 0.5 or 500m"
        )
    try:
        number = Fraction(Decimal(match["number"]))
    except InvalidOperation as error:  # pragma: no cover - the pattern rules it out
        raise InputError(where, f"{text!r} is not a number") from error
    suffix = match["suffix"] or ""
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        exponent = int(suffix[1:])
        if abs(exponent) > _MAX_EXPONENT:
            raise InputError(where, f"{text!r} is out of range")
        return number * Fraction(10) ** exponent
    return number * _SUFFIXES.get(suffix, Fraction(1))


_REMEMBERED_QUANTITIES: Final = 4096


def _remembered(convert: Callable[..., int]) -> Callable[..., int]:
    """``convert`` remembering each quantity it converted: the pods of a plugin repeat a
    few quantities on every request, and exact parsing costs more than the rest of a
    container's checks. Refusals are not remembered; they name the place at fault."""
    known: dict[tuple[type, object], int] = {}

    @functools.wraps(convert)
    def cached(quantity: str | int | float, *, where: str) -> int:
        key = (type(quantity), quantity)
        try:
            return known[key]
        except (KeyError, TypeError):  # TypeError: unhashable, which convert refuses
            pass
        value = convert(quantity, where=where)
        if len(known) < _REMEMBERED_QUANTITIES:
            known[key] = value
        return value

    return cached


@_remembered
def memory_bytes(quantity: str | int | float, *, where: str) -> int:
    """A memory quantity in bytes, rounded up as Kubernetes does.

    Raises InputError for a malformed or negative quantity.
    """
    return ceil(_non_negative(parse_quantity(quantity, where=where), where))


@_remembered
def cpu_millicores(quantity: str | int | float, *, where: str) -> int:
    """A CPU quantity in millicores, rounded up as Kubernetes does ("0.5" is 500).

    Raises InputError for a malformed or negative quantity.
    """
    return ceil(_non_negative(parse_quantity(quantity, where=where), where) * 1000)


def _non_negative(value: Fraction, where: str) -> Fraction:
    if value < 0:
        raise InputError(where, "must not be negative")
    return value


def format_bytes(amount: int) -> str:
    """``amount`` bytes in Kubernetes' canonical form: 268435456 is "256Mi"."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIXES[suffix])
        if amount and amount % unit == 0:
            return f"{amount // unit}{suffix}"
    return str(amount)


def format_millicores(amount: int) -> str:
    """``amount`` millicores in Kubernetes' canonical form: 500 is "500m", 2000 "2"."""
    return str(amount // 1000) if amount % 1000 == 0 else f"{amount}m"


# ------------------------------------------------------------------ NetworkPolicy --

_ANY_POD: Final[dict[str, Any]] = {"namespaceSelector": {}}
_MODE_PEERS: Final[dict[str, list[dict[str, Any]]]] = {
    "none": [],
    "cluster": [_ANY_POD],
    # Pod IPs may escape ipBlock matching (that is up to the network plugin), so
    # "any" names every pod as well as every address.
    "any": [
        _ANY_POD,
        {"ipBlock": {"cidr": "0.0.0.0/0"}},
        {"ipBlock": {"cidr": "::/0"}},
    ],
}
_DNS_PORTS: Final = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def network_policy(
    sandbox: Mapping[str, Any],
    *,
    namespace: str,
    name: str,
    pod_selector: Mapping[str, str],
) -> dict[str, Any]:
    """A networking.k8s.io/v1 NetworkPolicy named ``name`` confining the plugin's pods.

    It selects pods by ``pod_selector`` (labels, which must not be empty: an empty
    selector would confine every pod in the namespace) and governs both directions;
    see the module's notes for DNS. Raises InputError for an invalid sandbox, name,
    namespace or selector.
    """
    network = normalize_sandbox(sandbox)["network"]
    if not _DNS_LABEL.match(namespace):
        raise InputError("namespace", f"{namespace!r} is not a namespace name")
    if not _DNS_SUBDOMAIN.match(name):
        raise InputError("name", f"{name!r} is not a valid object name")
    if not pod_selector:
        raise InputError(
            "pod_selector", "must name labels; an empty selector selects every pod"
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "pluginguard"},
        },
        "spec": {
            "podSelector": {"matchLabels": dict(sorted(pod_selector.items()))},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": _ingress_rules(network),
            "egress": _egress_rules(network),
        },
    }


def _ingress_rules(network: Mapping[str, Any]) -> list[dict[str, Any]]:
    peers = copy.deepcopy(_MODE_PEERS[network["ingress"]])
    if not peers:
        return []
    return [_rule("from", peers, network["ingressPorts"])]


def _egress_rules(network: Mapping[str, Any]) -> list[dict[str, Any]]:
    peers = copy.deepcopy(_MODE_PEERS[network["egress"]])
    peers += [{"ipBlock": {"cidr": cidr}} for cidr in network["allowedCIDRs"]]
    rules = [_rule("to", peers, network["ports"])] if peers else []
    if network["egress"] != "none":
        dns = copy.deepcopy(_MODE_PEERS[network["egress"]])
        rules.append(_rule("to", dns, _DNS_PORTS))
    return rules


def _rule(
    direction: str, peers: list[dict[str, Any]], ports: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    rule: dict[str, Any] = {direction: peers}
    if ports:
        rule["ports"] = [
            {"protocol": port["protocol"], "port": port["port"]} for port in ports
        ]
    return rule


# ---------------------------------------------------------------------- pod rules --

_PROFILE_PATH = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


@dataclass(frozen=True)
class PodRules:
    """What every container of a plugin's pod must satisfy.

    ``profile_path`` is the ``localhostProfile`` (relative to the kubelet's seccomp
    directory), ``profile_sha256`` the digest of the profile generated from the sandbox
    (what a node must hold at that path), ``writable_paths`` the only places an emptyDir
    may be mounted read-write, ``limits`` the ceiling for memory and CPU limits.
    """

    profile_path: str
    profile_sha256: str
    read_only_root_filesystem: bool
    writable_paths: tuple[str, ...]
    limits: Limits


def pod_rules(sandbox: Mapping[str, Any], *, profile_path: str) -> PodRules:
    """The rules for pods of a plugin with ``sandbox`` and its installed profile.

    Raises InputError for an invalid sandbox or a ``profile_path`` that is not a
    relative path without '.' or '..' components.
    """
    parts = profile_path.split("/")
    if not _PROFILE_PATH.match(profile_path) or {".", ".."} & set(parts):
        raise InputError(
            "profile_path",
            f"{profile_path!r} must be a relative path inside the"
            " kubelet's seccomp directory",
        )
    normal = normalize_sandbox(sandbox)
    filesystem = normal["filesystem"]
    return PodRules(
        profile_path=profile_path,
        profile_sha256=seccomp_profile(normal).sha256,
        read_only_root_filesystem=filesystem["readOnlyRootFilesystem"],
        writable_paths=tuple(filesystem["writablePaths"]),
        limits=limits(normal),
    )


_CONTAINER_KINDS: Final = (
    ("initContainers", "init container"),
    ("containers", "container"),
    ("ephemeralContainers", "ephemeral container"),
)
# The kubelet mounts these read-only whatever the volumeMount says.
_READ_ONLY_SOURCES: Final = frozenset(
    {"configMap", "secret", "downwardAPI", "projected"}
)
_HOST_NAMESPACES: Final = ("hostNetwork", "hostPID", "hostIPC")


def check_pod(pod_spec: Mapping[str, Any], rules: PodRules) -> list[str]:
    """Every way ``pod_spec`` (a PodSpec) breaks ``rules``; empty when it complies.

    Each violation is a sentence naming its subject, such as
    ``container "app": seccompProfile must be Localhost "pluginguard/ns/name.json"``.
    Init, regular and ephemeral containers are checked alike, except that ephemeral
    containers cannot declare resources and are bounded by the pod's cgroup instead.
    A container's securityContext overrides the pod's seccompProfile and runAsNonRoot.
    """
    volumes = {
        str(volume.get("name")): volume for volume in _objects(pod_spec.get("volumes"))
    }
    violations = [
        f"pod: {flag} must not be true"
        for flag in _HOST_NAMESPACES
        if pod_spec.get(flag) is True
    ]
    violations += [
        f'pod: volume "{name}" is a hostPath volume; plugins may not mount node paths'
        for name, volume in volumes.items()
        if "hostPath" in volume
    ]
    pod_context = _object(pod_spec.get("securityContext"))
    violations += _privilege_violations(pod_context, "pod: securityContext")
    if pod_spec.get("shareProcessNamespace") is True:
        violations.append("pod: shareProcessNamespace must not be true")
    if pod_context.get("sysctls"):
        violations.append("pod: securityContext.sysctls must not be set")
    containers = {key: _objects(pod_spec.get(key)) for key, _ in _CONTAINER_KINDS}
    for key, label in _CONTAINER_KINDS:
        for container in containers[key]:
            subject = f'{label} "{container.get("name", "")}"'
            problems = _container_violations(
                container, key, pod_context, volumes, rules
            )
            violations += [f"{subject}: {problem}" for problem in problems]
    violations += _pod_total_violations(
        containers["initContainers"], containers["containers"], rules
    )
    violations += _pod_resource_violations(pod_spec, rules)
    return violations


def _container_violations(
    container: Mapping[str, Any],
    kind: str,
    pod_context: Mapping[str, Any],
    volumes: Mapping[str, Mapping[str, Any]],
    rules: PodRules,
) -> list[str]:
    context = _object(container.get("securityContext"))
    problems = _seccomp_violations(
        _object(context.get("seccompProfile"))
        or _object(pod_context.get("seccompProfile")),
        rules,
    )
    # An image's default user is often root; only runAsNonRoot makes the kubelet
    # refuse to start it as root. The container's setting overrides the pod's.
    if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
        problems.append("securityContext.runAsNonRoot must be true (here or in the pod)")
    if context.get("privileged") is True:
        problems.append("must not be privileged")
    problems += _privilege_violations(context, "securityContext")
    if _object(context.get("capabilities")).get("add"):
        problems.append("securityContext.capabilities.add must be empty")
    if any(_object(port).get("hostPort") for port in _objects(container.get("ports"))):
        problems.append("ports must not use hostPort")
    # Kubernetes lets a process gain privileges unless this is set to false.
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append("securityContext.allowPrivilegeEscalation must be false")
    if (
        rules.read_only_root_filesystem
        and context.get("readOnlyRootFilesystem") is not True
    ):
        problems.append("securityContext.readOnlyRootFilesystem must be true")
    if kind != "ephemeralContainers":
        problems += _limit_violations(container, rules)
    problems += _mount_violations(container, volumes, rules)
    return problems


# The SELinux types the Pod Security Standards' baseline level allows; any other, such
# as spc_t (super-privileged container), lifts the runtime's confinement.
# https://kubernetes.io/docs/concepts/security/pod-security-standards/#baseline
_SELINUX_TYPES: Final = (
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
)


def _privilege_violations(context: Mapping[str, Any], where: str) -> list[str]:
    """What a pod or container securityContext may not ask for, whatever the sandbox."""
    problems = []
    if context.get("runAsUser") == 0:
        problems.append(f"{where}.runAsUser must not be 0 (root)")
    if _object(context.get("appArmorProfile")).get("type") == "Unconfined":
        problems.append(f"{where}.appArmorProfile must not be Unconfined")
    if context.get("procMount") == "Unmasked":
        problems.append(f"{where}.procMount must not be Unmasked")
    if "seLinuxOptions" in context:
        problems += _selinux_violations(
            _object(context["seLinuxOptions"]), f"{where}.seLinuxOptions"
        )
    # A Windows host process runs on the node, outside any container.
    if _object(context.get("windowsOptions")).get("hostProcess") is True:
        problems.append(f"{where}.windowsOptions.hostProcess must not be true")
    return problems


def _selinux_violations(options: Mapping[str, Any], where: str) -> list[str]:
    """The baseline's SELinux rule: a container type or none; no user, no role."""
    problems = []
    kind = options.get("type")
    if kind not in (None, "") and kind not in _SELINUX_TYPES:
        problems.append(
            f"{where}.type must be empty or one of {', '.join(_SELINUX_TYPES)},"
            f" not {_shown_value(kind)}"
        )
    problems += [
        f"{where}.{part} must not be set"
        for part in ("user", "role")
        if options.get(part) not in (None, "")
    ]
    return problems


def _shown_value(value: object) -> str:
    """``value`` of a pod spec in a violation: a string quoted and cut short (a pod may
    carry any length), anything else by its JSON type."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 80 else f"{value[:80]!r}..."
    return _json_type(value)


def _seccomp_violations(profile: Mapping[str, Any], rules: PodRules) -> list[str]:
    kind, path = profile.get("type"), profile.get("localhostProfile")
    if kind == "Localhost" and path == rules.profile_path:
        return []
    found = "unset" if kind is None else str(kind)
    if kind == "Localhost":
        found = f'Localhost "{path}"'
    return [f'seccompProfile must be Localhost "{rules.profile_path}", not {found}']


_LimitParser = Callable[..., int]


def _limit_kinds(rules: PodRules) -> list[tuple[str, int, str, _LimitParser]]:
    ceiling = rules.limits
    return [
        ("memory", ceiling.memory_bytes, ceiling.memory, memory_bytes),
        ("cpu", ceiling.cpu_millicores, ceiling.cpu, cpu_millicores),
    ]


def _limit_violations(container: Mapping[str, Any], rules: PodRules) -> list[str]:
    declared = _object(_object(container.get("resources")).get("limits"))
    problems = []
    for resource, ceiling, shown, parse in _limit_kinds(rules):
        place = f"resources.limits.{resource}"
        value = declared.get(resource)
        if value is None:
            problems.append(f"{place} must be set, to at most {shown}")
            continue
        problems += _ceiling_violations(
            value, place=place, ceiling=ceiling, shown=shown, parse=parse
        )
    return problems


def _pod_resource_violations(
    pod_spec: Mapping[str, Any], rules: PodRules
) -> list[str]:
    """Pod-level resources (the PodLevelResources feature) size the pod's cgroup, the
    only bound of an ephemeral container: they may be left out, never above the
    plugin's ceiling. A request above it is refused too, whatever the limits say."""
    resources = _object(pod_spec.get("resources"))
    if not resources:
        return []
    problems = []
    for kind in ("limits", "requests"):
        declared = _object(resources.get(kind))
        for resource, ceiling, shown, parse in _limit_kinds(rules):
            value = declared.get(resource)
            if value is not None:
                problems += _ceiling_violations(
                    value,
                    place=f"resources.{kind}.{resource}",
                    ceiling=ceiling,
                    shown=shown,
                    parse=parse,
                )
    return [f"pod: {problem}" for problem in problems]


def _ceiling_violations(
    value: object, *, place: str, ceiling: int, shown: str, parse: _LimitParser
) -> list[str]:
    """What is wrong with ``value`` at ``place``: no quantity, or above ``ceiling``."""
    try:
        amount = parse(value, where=place)
    except InputError as error:
        return [str(error)]
    if amount > ceiling:
        return [f"{place} {value} is above the plugin's {shown}"]
    return []


def _pod_total_violations(
    inits: list[Mapping[str, Any]],
    regulars: list[Mapping[str, Any]],
    rules: PodRules,
) -> list[str]:
    """Containers within their own limits may still exceed the plugin's together."""
    problems = []
    for resource, ceiling, shown, parse in _limit_kinds(rules):
        init_amounts = [_limit_or_zero(c, resource, parse) for c in inits]
        regular_amounts = [_limit_or_zero(c, resource, parse) for c in regulars]
        if max(init_amounts + regular_amounts, default=0) > ceiling:
            continue  # already reported against the container itself
        sidecars = [c.get("restartPolicy") == "Always" for c in inits]
        peak = _peak_usage(init_amounts, sidecars, regular_amounts)
        if peak > ceiling:
            total = (
                format_bytes(peak) if resource == "memory" else format_millicores(peak)
            )
            problems.append(
                f"pod: {resource} limits of containers running together add up to"
                f" {total}, above the plugin's {shown}"
            )
    return problems


def _peak_usage(
    init_amounts: list[int], sidecars: list[bool], regular_amounts: list[int]
) -> int:
    """The most that runs at once, as the kubelet sizes a pod with sidecars.

    Init containers with ``restartPolicy: Always`` are sidecars: they keep running
    beside every later init container and all regular containers.
    """
    running, peak = 0, 0
    for amount, sidecar in zip(init_amounts, sidecars):
        if sidecar:
            running += amount
        else:
            peak = max(peak, running + amount)
    return max(peak, running + sum(regular_amounts))


def _limit_or_zero(
    container: Mapping[str, Any], resource: str, parse: _LimitParser
) -> int:
    value = _object(_object(container.get("resources")).get("limits")).get(resource)
    try:
        return 0 if value is None else parse(value, where=resource)
    except InputError:
        return 0  # reported against the container


def _mount_violations(
    container: Mapping[str, Any],
    volumes: Mapping[str, Mapping[str, Any]],
    rules: PodRules,
) -> list[str]:
    allowed = ", ".join(rules.writable_paths) or "no path"
    problems = []
    for mount in _objects(container.get("volumeMounts")):
        volume = volumes.get(str(mount.get("name")), {})
        if mount.get("readOnly") is True or _READ_ONLY_SOURCES.intersection(volume):
            continue
        path = posixpath.normpath(str(mount.get("mountPath", "")))
        if "emptyDir" in volume and path in rules.writable_paths:
            continue
        problems.append(
            f'volumeMount "{mount.get("name")}" at {mount.get("mountPath")} is'
            f" writable; only emptyDir volumes at {allowed} may be"
        )
    if _objects(container.get("volumeDevices")):
        problems.append(
            "volumeDevices are not allowed: a raw device is writable storage"
        )
    return problems


# Pod specs arrive as JSON: dicts, checked first because an ABC check costs more and
# runs several times per container.
def _object(value: object) -> Mapping[str, Any]:
    return value if type(value) is dict or isinstance(value, Mapping) else {}


def _objects(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if type(item) is dict or isinstance(item, Mapping)]
