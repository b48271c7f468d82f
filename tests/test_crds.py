"""Static checks of the CRDs: documented, structural, and in step with the code."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pluginguard import policy, sandbox, syscalls

CRDS = Path(__file__).resolve().parent.parent / "crds"


def _load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((CRDS / name).read_text(encoding="utf-8"))
    return document


PLUGIN = _load("plugins.yaml")
POLICY = _load("plugintrustpolicies.yaml")


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version  # type: ignore[no-any-return]


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    return _version(crd)["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def _at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    """The sub-schema at a dotted path; "[]" steps into array items."""
    for step in path.split("."):
        schema = schema["items"] if step == "[]" else schema["properties"][step]
    return schema


def _walk(
    schema: dict[str, Any], path: str = ""
) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


BOTH = [pytest.param(PLUGIN, id="Plugin"), pytest.param(POLICY, id="PluginTrustPolicy")]


# -- shape -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("crd", "plural", "kind", "short", "scope"),
    [
        (PLUGIN, "plugins", "Plugin", ["plg"], "Namespaced"),
        (POLICY, "plugintrustpolicies", "PluginTrustPolicy", ["ptp"], "Cluster"),
    ],
)
def test_names_scope_and_version(
    crd: dict[str, Any], plural: str, kind: str, short: list[str], scope: str
) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{plural}.pluginguard.dev"
    assert crd["spec"]["group"] == "pluginguard.dev"
    assert crd["spec"]["scope"] == scope
    names = crd["spec"]["names"]
    assert (names["plural"], names["kind"], names["shortNames"]) == (
        plural,
        kind,
        short,
    )
    version = _version(crd)
    assert (version["name"], version["served"], version["storage"]) == (
        "v1alpha1",
        True,
        True,
    )
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("crd", BOTH)
def test_every_field_is_described(crd: dict[str, Any]) -> None:
    # The API server forbids a description on metadata; it documents metadata itself.
    missing = [
        path or "<root>"
        for path, node in _walk(_schema(crd))
        if path != ".metadata" and not node.get("description", "").strip()
    ]
    assert missing == []


@pytest.mark.parametrize("crd", BOTH)
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    for path, node in _walk(_schema(crd)):
        assert "type" in node, f"{path} has no type"
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        if "properties" in node or "additionalProperties" in node:
            assert node["type"] == "object", path
        if "items" in node:
            assert node["type"] == "array", path
        if "default" in node:
            assert not node.get("nullable"), path


@pytest.mark.parametrize("crd", BOTH)
def test_status_has_a_schema(crd: dict[str, Any]) -> None:
    status = _schema(crd)["properties"]["status"]
    assert status["properties"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
    }
    assert "observedGeneration" in status["properties"]


# The two kinds of step the CRDs' printer columns take: .field and [?(@.key=="value")].
_JSON_PATH_STEP = re.compile(
    r'\.(?P<field>\w+)|\[\?\(@\.(?P<key>\w+)=="(?P<value>[^"]*)"\)\]'
)


def _steps(path: str) -> list[re.Match[str]]:
    steps, position = [], 0
    while position < len(path):
        step = _JSON_PATH_STEP.match(path, position)
        assert step, f"{path}: no step this test knows at {path[position:]}"
        steps.append(step)
        position = step.end()
    return steps


def _column_schema(schema: dict[str, Any], path: str) -> dict[str, Any]:
    """The sub-schema a printer column's jsonPath reaches."""
    for step in _steps(path):
        if step["field"]:
            schema = schema["properties"][step["field"]]
        else:
            assert schema["type"] == "array", path
            schema = schema["items"]
            assert step["key"] in schema["properties"], path
    return schema


def _printed(obj: dict[str, Any], path: str) -> list[Any]:
    """The values a printer column's jsonPath finds in ``obj``, as kubectl finds them."""
    found: list[Any] = [obj]
    for step in _steps(path):
        if step["field"]:
            found = [v[step["field"]] for v in found if isinstance(v, dict)
                     and step["field"] in v]
        else:
            found = [item for v in found if isinstance(v, list) for item in v
                     if isinstance(item, dict)
                     and item.get(step["key"]) == step["value"]]
    return found


@pytest.mark.parametrize(
    ("crd", "columns"),
    [
        (PLUGIN, ["Ready", "Reason", "Verified", "Signer", "Algorithm", "Age"]),
        (POLICY, ["Enforcement", "Age"]),
    ],
)
def test_printer_columns_point_at_real_fields(
    crd: dict[str, Any], columns: list[str]
) -> None:
    printed = _version(crd)["additionalPrinterColumns"]
    assert [column["name"] for column in printed] == columns
    for column in printed:
        path = column["jsonPath"]
        assert column.get("description") or path == ".metadata.creationTimestamp"
        if path == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        assert column["type"] == _column_schema(_schema(crd), path)["type"], path


def _plugin_columns(obj: dict[str, Any]) -> dict[str, list[Any]]:
    return {
        column["name"]: _printed(obj, column["jsonPath"])
        for column in _version(PLUGIN)["additionalPrinterColumns"]
        if column["name"] in ("Ready", "Reason", "Verified")
    }


def test_plugin_columns_say_why_a_plugin_is_not_ready() -> None:
    """Ready and Reason come from the Ready condition: a Plugin that verifies may still
    wait for its profile, and its verdict alone would not say so."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
    )

    from pluginguard.operator.reconcile import (
        SECURITY_PROFILES_OPERATOR,
        desired_state,
    )
    from pluginguard.policy import NoMaterial, compile_policy
    from pluginguard.signing import sign_manifest

    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    trust = compile_policy(
        {"apiVersion": "pluginguard.dev/v1alpha1", "kind": "PluginTrustPolicy",
         "metadata": {"name": "p"},
         "spec": {"trustedKeys": [{"name": "release", "publicKey": pem.decode()}]}},
        material=NoMaterial(),
    )
    obj = {"apiVersion": "pluginguard.dev/v1alpha1", "kind": "Plugin",
           "metadata": {"name": "p", "namespace": "ns", "uid": "u", "generation": 1},
           "spec": {"artifact": {"digest": "sha256:" + "ab" * 32}, "sandbox": {}}}
    signed = sign_manifest(obj, key=key)

    def columns(document: dict[str, Any], **options: Any) -> dict[str, list[Any]]:
        status = desired_state(document, [trust], namespace_labels={}, **options).status
        return _plugin_columns({**document, "status": status})

    assert columns(signed) == {
        "Ready": ["True"], "Reason": ["Ready"], "Verified": [True]
    }
    assert columns(obj) == {
        "Ready": ["False"], "Reason": ["SignatureMissing"], "Verified": [False]
    }
    assert columns(signed, delivery=SECURITY_PROFILES_OPERATOR) == {
        "Ready": ["False"], "Reason": ["ProfileNotInstalled"], "Verified": [True]
    }


# -- the sandbox, in step with pluginguard.sandbox -------------------------------------

SANDBOX = _at(_schema(PLUGIN), "spec.sandbox")


def _defaulted(schema: dict[str, Any], value: Any) -> Any:
    """``value`` after structural defaulting, as the API server applies it."""
    if value is None:
        if "default" not in schema:
            return None
        value = copy.deepcopy(schema["default"])
    if isinstance(value, dict) and "properties" in schema:
        for name, child in schema["properties"].items():
            filled = _defaulted(child, value.get(name))
            if filled is not None:
                value[name] = filled
    if isinstance(value, list) and "items" in schema:
        value = [_defaulted(schema["items"], item) for item in value]
    return value


def test_crd_defaults_equal_the_code_defaults() -> None:
    assert _defaulted(SANDBOX, None) == sandbox.normalize_sandbox(None)


def test_defaulting_a_partial_sandbox_matches_normalisation() -> None:
    partial = {
        "seccomp": {"defaultAction": "log", "allow": ["ptrace"]},
        "network": {"egress": "cluster", "ports": [{"port": 443}]},
        "filesystem": {"writablePaths": ["/work"]},
    }
    defaulted = _defaulted(SANDBOX, copy.deepcopy(partial))
    assert defaulted == sandbox.normalize_sandbox(partial)


@pytest.mark.parametrize(
    ("path", "values"),
    [
        ("seccomp.baseline", sandbox.BASELINES),
        ("seccomp.defaultAction", sandbox.DEFAULT_ACTIONS),
        ("seccomp.architectures.[]", syscalls.ARCHITECTURES),
        ("network.egress", sandbox.EGRESS_MODES),
        ("network.ingress", sandbox.INGRESS_MODES),
        ("network.ports.[].protocol", sandbox.PROTOCOLS),
        ("network.ingressPorts.[].protocol", sandbox.PROTOCOLS),
    ],
)
def test_enums_match_the_code(path: str, values: tuple[str, ...]) -> None:
    assert _at(SANDBOX, path)["enum"] == list(values)


@pytest.mark.parametrize(
    ("path", "bound"),
    [
        ("resources.maxMemoryMB", "maxMemoryMB"),
        ("resources.maxCPUPercent", "maxCPUPercent"),
        ("resources.maxProcesses", "maxProcesses"),
        ("network.ports.[].port", "port"),
        ("network.ingressPorts.[].port", "port"),
    ],
)
def test_integer_bounds_match_the_code(path: str, bound: str) -> None:
    node = _at(SANDBOX, path)
    assert node["type"] == "integer"
    assert (node["minimum"], node["maximum"]) == sandbox.BOUNDS[bound]


@pytest.mark.parametrize(
    "path",
    [
        "seccomp.allow",
        "seccomp.deny",
        "seccomp.architectures",
        "network.allowedCIDRs",
        "network.ports",
        "network.ingressPorts",
        "filesystem.writablePaths",
    ],
)
def test_list_limits_match_the_code(path: str) -> None:
    assert _at(SANDBOX, path)["maxItems"] == sandbox.MAX_ITEMS[path.split(".")[-1]]


@pytest.mark.parametrize(
    ("path", "pattern", "max_length"),
    [
        (
            "seccomp.allow.[]",
            syscalls.SYSCALL_NAME_PATTERN,
            syscalls.SYSCALL_NAME_MAX_LENGTH,
        ),
        (
            "seccomp.deny.[]",
            syscalls.SYSCALL_NAME_PATTERN,
            syscalls.SYSCALL_NAME_MAX_LENGTH,
        ),
        ("network.allowedCIDRs.[]", sandbox.CIDR_PATTERN, sandbox.CIDR_MAX_LENGTH),
        (
            "filesystem.writablePaths.[]",
            sandbox.WRITABLE_PATH_PATTERN,
            sandbox.WRITABLE_PATH_MAX_LENGTH,
        ),
    ],
)
def test_string_patterns_match_the_code(
    path: str, pattern: str, max_length: int
) -> None:
    node = _at(SANDBOX, path)
    assert (node["pattern"], node["maxLength"]) == (pattern, max_length)


# -- the rest of the Plugin ------------------------------------------------------------


def test_artifact_digest_is_required_and_shaped() -> None:
    artifact = _at(_schema(PLUGIN), "spec.artifact")
    assert artifact["required"] == ["digest"]
    digest = re.compile(artifact["properties"]["digest"]["pattern"])
    assert digest.match("sha256:" + "0" * 64)
    assert not digest.match("sha256:" + "A" * 64)
    assert not digest.match("sha512:" + "0" * 64)


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        ("registry.example.com/team/plugin", True),
        ("localhost:5000/plugin", True),
        ("plugin", True),
        ("docker.io/library/alpine", True),
        ("registry.example.com/team/plugin:1.0", False),
        ("registry.example.com/team/plugin@sha256:" + "0" * 64, False),
        ("Team/Plugin", False),
    ],
)
def test_artifact_image_is_a_repository_without_tag_or_digest(
    image: str, ok: bool
) -> None:
    pattern = _at(_schema(PLUGIN), "spec.artifact.image")["pattern"]
    assert bool(re.match(pattern, image)) is ok


def test_signature_formats() -> None:
    signature = _at(_schema(PLUGIN), "spec.signature")
    assert signature["properties"]["format"]["enum"] == ["dsse", "hkp"]
    rules = [rule["rule"] for rule in signature["x-kubernetes-validations"]]
    assert "self.format != 'dsse' || has(self.dsse)" in rules
    assert "self.format != 'hkp' || has(self.hkp)" in rules


def test_plugin_status_schema_keeps_everything_the_operator_writes() -> None:
    """The API server prunes status fields its schema does not know: every field the
    operator writes must be declared, or it is silently lost."""
    from pluginguard.operator.reconcile import desired_state

    obj = {"apiVersion": "pluginguard.dev/v1alpha1", "kind": "Plugin",
           "metadata": {"name": "p", "namespace": "ns", "uid": "u", "generation": 1},
           "spec": {"artifact": {"digest": "sha256:" + "ab" * 32}, "sandbox": {}}}
    written = desired_state(obj, [], namespace_labels={}).status
    status = _at(_schema(PLUGIN), "status")["properties"]
    assert set(written) <= set(status)
    assert set(written["seccomp"]) <= set(status["seccomp"]["properties"])
    delivered = desired_state(obj, [], namespace_labels={},
                              delivery="security-profiles-operator").status
    assert set(delivered["seccomp"]) <= set(status["seccomp"]["properties"])
    assert delivered["seccomp"]["delivery"] in status["seccomp"]["properties"]["delivery"]["enum"]
    assert set(written["limits"]) <= set(status["limits"]["properties"])
    cgroup = status["limits"]["properties"]["cgroup"]["properties"]
    assert set(written["limits"]["cgroup"]) <= set(cgroup)
    condition = status["conditions"]["items"]["properties"]
    assert all(set(c) <= set(condition) for c in written["conditions"])


def test_plugin_status_limits_fit_what_the_code_writes() -> None:
    limits_schema = _at(_schema(PLUGIN), "status.limits")
    written = sandbox.limits({}).status()

    def conforms(schema: dict[str, Any], value: Any) -> bool:
        kinds = {"object": dict, "string": str, "integer": int}
        if not isinstance(value, kinds[schema["type"]]):
            return False
        if isinstance(value, dict):
            return set(value) <= set(schema["properties"]) and all(
                conforms(schema["properties"][k], v) for k, v in value.items()
            )
        return True

    assert conforms(limits_schema, written)


# -- PluginTrustPolicy -----------------------------------------------------------------

POLICY_SPEC = _at(_schema(POLICY), "spec")


def test_policy_defaults() -> None:
    defaulted = _defaulted(POLICY_SPEC, {})
    assert defaulted == {
        "namespaceSelector": {},
        "enforcement": "enforce",
        "requireSignature": True,
        "requireCertificate": False,
        "requireSignedSandbox": True,
        "requireCodeSigningEKU": True,
        "allowedAlgorithms": [
            "RSA-2048",
            "RSA-4096",
            "Ed25519",
            "ECDSA-P256",
            "ECDSA-P384",
        ],
        "maxCertChainLength": 3,
        "verificationTimeout": "2s",
    }
    assert (
        _at(POLICY_SPEC, "allowedAlgorithms.[]")["enum"]
        == defaulted["allowedAlgorithms"]
    )
    assert _at(POLICY_SPEC, "maxCertChainLength")["minimum"] == 1
    assert _at(POLICY_SPEC, "enforcement")["enum"] == ["enforce", "warn", "audit"]
    assert _at(POLICY_SPEC, "crl.onUnavailable")["default"] == "deny"


@pytest.mark.parametrize(
    ("path", "choices"),
    [
        ("trustedKeys.[]", ["publicKey", "secretRef", "configMapRef"]),
        ("trustedRoots.[]", ["certificates", "secretRef", "configMapRef"]),
        ("crl.sources.[]", ["inline", "secretRef", "configMapRef", "url"]),
    ],
)
def test_anchor_sources_need_exactly_one_of_their_forms(
    path: str, choices: list[str]
) -> None:
    node = _at(POLICY_SPEC, path)
    (rule,) = node["x-kubernetes-validations"]
    for choice in choices:
        assert f"has(self.{choice})" in rule["rule"]
    assert rule["rule"].endswith(".filter(x, x).size() == 1")
    for ref in ("secretRef", "configMapRef"):
        assert node["properties"][ref]["required"] == ["name", "namespace", "key"]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("500ms", True),
        ("2s", True),
        ("1m", True),
        ("2h", False),
        ("1.5s", False),
        ("s", False),
    ],
)
def test_verification_timeout_pattern(value: str, ok: bool) -> None:
    pattern = _at(POLICY_SPEC, "verificationTimeout")["pattern"]
    assert bool(re.match(pattern, value)) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("ab" * 32, True),
        ("sha256:" + "ab" * 32, True),
        ("AB" * 32, False),
        ("ab" * 31, False),
        ("sha256:" + "ab" * 8, False),
        ("SHA256:" + "ab" * 32, False),
        ("sha512:" + "ab" * 32, False),
    ],
)
def test_revoked_key_fingerprint_pattern(value: str, ok: bool) -> None:
    item = _at(POLICY_SPEC, "revokedKeys.[]")
    # RE2's "$" ends the text, as fullmatch does; re.match's "$" would allow a "\n".
    assert bool(re.fullmatch(item["pattern"], value)) is ok
    if ok:
        assert len(value) <= item["maxLength"]


def test_revoked_key_pattern_matches_the_code() -> None:
    item = _at(POLICY_SPEC, "revokedKeys.[]")
    assert item["pattern"] == policy.REVOKED_KEY_PATTERN
    assert item["maxLength"] == len("sha256:") + 64  # bounds the cost of the CEL rule


@pytest.mark.parametrize(
    ("value", "shortened"),
    [
        ("824adc927a5835eb", True),
        ("sha256:824adc927a5835eb", True),
        ("sha256:" + "AB" * 31, True),
        ("ab" * 32, False),
        ("sha256:" + "ab" * 32, False),
        ("not-a-fingerprint", False),
    ],
)
def test_a_shortened_revoked_key_is_told_to_give_all_digits(
    value: str, shortened: bool
) -> None:
    (rule,) = _at(POLICY_SPEC, "revokedKeys.[]")["x-kubernetes-validations"]
    found = re.fullmatch(r"!self\.matches\('(?P<regex>[^']+)'\)", rule["rule"])
    assert found, rule["rule"]
    assert bool(re.fullmatch(found["regex"], value)) is shortened
    assert "all 64 hex digits" in rule["message"] and "keyid" in rule["message"]
