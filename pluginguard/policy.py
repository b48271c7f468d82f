"""PluginTrustPolicy: whom to trust and how strictly, compiled into ready-to-use keys,
roots and revocation lists.

Compiling does no Kubernetes I/O: material that a policy references (Secrets, ConfigMaps,
CRL URLs) comes through a MaterialSource that the caller provides — the operator and the
webhook read it from their caches, the CLI from manifests given on its command line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from cryptography import x509

from pluginguard import keys
from pluginguard.errors import InputError, PluginGuardError, shown
from pluginguard.manifest import API_VERSION, optional
from pluginguard.verdict import Enforcement

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)$")
# A revoked key: its fingerprint as keys.fingerprint computes it, bare or spelt as
# PluginGuard shows keys (sha256:...). The CRD's revokedKeys items carry this pattern.
REVOKED_KEY_PATTERN = "^(sha256:)?[a-f0-9]{64}$"
_FINGERPRINT = re.compile(REVOKED_KEY_PATTERN)
# What messages show of a key (sha256: and 16 hex digits) names it but cannot revoke it.
_SHORTENED_FINGERPRINT = re.compile(r"(sha256:)?[0-9a-fA-F]{1,63}")
_SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
# The CRD's bound; the path validator counts intermediates in a byte.
_MAX_CHAIN_LENGTH = 10


class MaterialUnavailable(PluginGuardError):
    """Trust material that a policy references could not be read."""


class MaterialSource(Protocol):
    """Where referenced trust material comes from."""

    def reference(self, kind: str, namespace: str, name: str, key: str) -> bytes:
        """The value of ``key`` in Secret or ConfigMap ``namespace/name``.

        Raises MaterialUnavailable when it does not exist or cannot be read.
        """

    def url(self, url: str) -> bytes:
        """The body at ``url``; raises MaterialUnavailable when it cannot be fetched."""


class NoMaterial:
    """A MaterialSource that has nothing: every reference is unavailable."""

    def reference(self, kind: str, namespace: str, name: str, key: str) -> bytes:
        raise MaterialUnavailable(f"{kind} {namespace}/{name} is not available here")

    def url(self, url: str) -> bytes:
        raise MaterialUnavailable(f"{url} is not fetched here")


@dataclass(frozen=True)
class TrustedKey:
    name: str
    key: keys.PublicKey
    fingerprint: str


@dataclass(frozen=True)
class CrlSource:
    """One configured CRL source: its list when it could be read, else why not."""

    origin: str
    crl: x509.CertificateRevocationList | None
    problem: str | None = None


@dataclass(frozen=True)
class TrustPolicy:
    """A compiled PluginTrustPolicy. ``unavailable`` lists material that could not be
    loaded, so that a refusal can say why a signer that should be trusted was not."""

    name: str
    namespace_selector: Mapping[str, Any]
    enforcement: Enforcement
    require_signature: bool
    require_certificate: bool
    require_signed_sandbox: bool
    require_code_signing_eku: bool
    allowed_algorithms: frozenset[str]
    trusted_keys: tuple[TrustedKey, ...]
    trusted_roots: tuple[x509.Certificate, ...]
    revoked_keys: frozenset[str]
    max_chain_length: int
    crl_sources: tuple[CrlSource, ...]
    crl_allow_unavailable: bool
    verification_timeout: timedelta
    unavailable: tuple[str, ...] = field(default=())
    references: frozenset[tuple[str, str, str]] = field(default=frozenset())
    problem: str | None = None  # set on a policy that does not compile: it trusts nothing


def compile_policy(
    document: Mapping[str, Any], *, material: MaterialSource, where: str = ""
) -> TrustPolicy:
    """Compile a PluginTrustPolicy manifest.

    Raises InputError when the document is not a policy or a field is malformed.
    Material that cannot be read does not raise: it is recorded in ``unavailable``.
    """
    if document.get("kind") != "PluginTrustPolicy" or document.get("apiVersion") != API_VERSION:
        found = f"{document.get('apiVersion')}/{document.get('kind')}"
        raise InputError(where, f"expected a {API_VERSION} PluginTrustPolicy, found {found}")
    name = optional(document, "metadata.name", str, "", where=where)
    where = where or f"PluginTrustPolicy {name}"
    spec = optional(document, "spec", dict, {}, where=where)
    loader = _MaterialLoader(material, where=where)

    trusted_keys = tuple(loader.trusted_keys(_entries(spec, "trustedKeys", where)))
    trusted_roots = tuple(loader.trusted_roots(_entries(spec, "trustedRoots", where)))
    crl = optional(spec, "crl", dict, {}, where=where, prefix="spec")
    crl_sources = tuple(loader.crl_sources(_entries(crl, "sources", where, "spec.crl")))
    return TrustPolicy(
        name=name,
        namespace_selector=_selector(spec, where),
        enforcement=_enum(spec, "enforcement", Enforcement, Enforcement.ENFORCE, where, "spec"),
        require_signature=_flag(spec, "requireSignature", True, where),
        require_certificate=_flag(spec, "requireCertificate", False, where),
        require_signed_sandbox=_flag(spec, "requireSignedSandbox", True, where),
        require_code_signing_eku=_flag(spec, "requireCodeSigningEKU", True, where),
        allowed_algorithms=_algorithms(spec, where),
        trusted_keys=trusted_keys,
        trusted_roots=trusted_roots,
        revoked_keys=_revoked(spec, where),
        max_chain_length=_positive(spec, "maxCertChainLength", 3, where,
                                   maximum=_MAX_CHAIN_LENGTH),
        crl_sources=crl_sources,
        crl_allow_unavailable=(
            _enum(crl, "onUnavailable", str, "deny", where, "spec.crl") == "allow"
        ),
        verification_timeout=_duration(spec, where),
        unavailable=tuple(loader.unavailable),
        references=frozenset(loader.references),
    )


def unusable_policy(document: Mapping[str, Any], problem: str) -> TrustPolicy:
    """A stand-in for a policy that does not compile: it covers what it seems to cover
    (every namespace when even its selector is unreadable) and trusts nothing there.

    Dropping a broken policy would quietly lift whatever it required; this fails closed.
    """
    spec = document.get("spec") if isinstance(document.get("spec"), Mapping) else {}
    selector = spec.get("namespaceSelector")
    metadata = document.get("metadata") if isinstance(document.get("metadata"), Mapping) else {}
    return TrustPolicy(
        name=str(metadata.get("name", "")),
        namespace_selector=selector if _selector_shape_ok(selector) else {},
        enforcement=Enforcement.ENFORCE,
        require_signature=True, require_certificate=False, require_signed_sandbox=True,
        require_code_signing_eku=True, allowed_algorithms=frozenset(), trusted_keys=(),
        trusted_roots=(), revoked_keys=frozenset(), max_chain_length=1, crl_sources=(),
        crl_allow_unavailable=False, verification_timeout=timedelta(seconds=2),
        problem=problem,
    )


def _selector_shape_ok(selector: Any) -> bool:
    try:
        _selector({"namespaceSelector": selector}, "")
    except InputError:
        return False
    return isinstance(selector, Mapping)


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; an empty selector matches everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


class _MaterialLoader:
    """Turns trustedKeys/trustedRoots/crl.sources entries into loaded material."""

    def __init__(self, material: MaterialSource, *, where: str) -> None:
        self.material = material
        self.where = where
        self.unavailable: list[str] = []
        self.references: set[tuple[str, str, str]] = set()

    def trusted_keys(self, entries: Iterable[tuple[str, Mapping[str, Any]]]) -> Iterable[TrustedKey]:
        for place, entry in entries:
            name = str(entry.get("name") or place)
            found = self._read(place, entry, inline="publicKey")
            if found is None:
                continue
            pem, source = found
            named = f"{name}, from {source}" if source else name
            key = keys.load_public_key(pem, where=f"{self.where}: {place} ({named})")
            yield TrustedKey(name=name, key=key, fingerprint=keys.fingerprint(key))

    def trusted_roots(self, entries: Iterable[tuple[str, Mapping[str, Any]]]) -> Iterable[x509.Certificate]:
        for place, entry in entries:
            found = self._read(place, entry, inline="certificates")
            if found is not None:
                pem, source = found
                named = f"{place} (from {source})" if source else place
                yield from keys.load_certificates(pem, where=f"{self.where}: {named}")

    def crl_sources(self, entries: Iterable[tuple[str, Mapping[str, Any]]]) -> Iterable[CrlSource]:
        for place, entry in entries:
            origin = str(entry.get("url") or place)
            try:
                if "url" in entry:
                    found: tuple[bytes, str] | None = (self.material.url(str(entry["url"])), "")
                else:
                    found = self._read(place, entry, inline="inline", record=False)
            except MaterialUnavailable as error:
                yield CrlSource(origin, None, str(error))
                continue
            if found is None:
                yield CrlSource(origin, None, f"{place} names no source")
                continue
            body, source = found
            yield _parse_crl(f"{origin} (from {source})" if source else origin, body)

    def _read(self, place: str, entry: Mapping[str, Any], *, inline: str,
              record: bool = True) -> tuple[bytes, str] | None:
        """The entry's material and, when it came from a Secret or ConfigMap, that
        object's name for messages (``Secret ns/name key k``), else ""."""
        if entry.get(inline) is not None:
            return str(entry[inline]).encode(), ""
        for kind, ref_field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            ref = entry.get(ref_field)
            if ref is None:
                continue
            if not isinstance(ref, Mapping) or not all(
                isinstance(ref.get(part), str) for part in ("name", "namespace", "key")
            ):
                raise InputError(self.where, f"{place}.{ref_field} needs name, namespace and key")
            self.references.add((kind, ref["namespace"], ref["name"]))
            try:
                body = self.material.reference(kind, ref["namespace"], ref["name"], ref["key"])
            except MaterialUnavailable as error:
                if not record:
                    raise
                self.unavailable.append(f"{place}: {error}")
                return None
            return body, f"{kind} {ref['namespace']}/{ref['name']} key {ref['key']}"
        raise InputError(self.where, f"{place} needs {inline}, secretRef or configMapRef")


def _parse_crl(origin: str, body: bytes) -> CrlSource:
    """A source's CRL, PEM or DER; a body that is neither is recorded as unreadable."""
    try:
        if b"-----BEGIN" in body:
            crl = x509.load_pem_x509_crl(body)
        else:
            crl = x509.load_der_x509_crl(body)
    except ValueError:
        # cryptography's text here is its ASN.1 parser's debug output: say what it means.
        pem = b"-----BEGIN" in body
        problem = keys.pem_problem(body, ("X509 CRL",), what="a CRL") if pem else None
        return CrlSource(origin, None, f"not a CRL: {problem or 'not valid DER/X.509'}")
    return CrlSource(origin, crl)


def _entries(spec: Mapping[str, Any], key: str, where: str,
             prefix: str = "spec") -> list[tuple[str, Mapping[str, Any]]]:
    entries = optional(spec, key, list, [], where=where, prefix=prefix)
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise InputError(where, f"{prefix}.{key}[{index}] must be a mapping")
    return [(f"{prefix}.{key}[{index}]", entry) for index, entry in enumerate(entries)]


def _enum(spec: Mapping[str, Any], key: str, kind: Any, default: Any, where: str,
          prefix: str) -> Any:
    value = optional(spec, key, str, None, where=where, prefix=prefix)
    if value is None:
        return default
    choices = [e.value for e in kind] if kind is not str else ["deny", "allow"]
    if value not in choices:
        raise InputError(where, f"{prefix}.{key} must be one of {', '.join(choices)}, "
                                f"not {shown(value)}")
    return kind(value)


def _flag(spec: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    return bool(optional(spec, key, bool, default, where=where, prefix="spec"))


_EVERY_ALGORITHM = frozenset(keys.ALGORITHMS)


def _algorithms(spec: Mapping[str, Any], where: str) -> frozenset[str]:
    names = optional(spec, "allowedAlgorithms", list, None, where=where, prefix="spec")
    if names is None:
        return _EVERY_ALGORITHM
    for index, name in enumerate(names):
        if name not in keys.ALGORITHMS:
            raise InputError(
                where,
                f"spec.allowedAlgorithms[{index}]: {name!r} is not one of "
                + ", ".join(keys.ALGORITHMS),
            )
    return frozenset(names)


def _revoked(spec: Mapping[str, Any], where: str) -> frozenset[str]:
    """``spec.revokedKeys`` as keys.fingerprint spells them, so that either spelling of
    a key revokes it."""
    revoked = optional(spec, "revokedKeys", list, [], where=where, prefix="spec")
    for index, value in enumerate(revoked):
        place = f"spec.revokedKeys[{index}]"
        if not isinstance(value, str):
            raise InputError(where, f"{place} must be a string, a key's SHA-256 fingerprint")
        # fullmatch: "$" alone lets a trailing line break through, and a fingerprint
        # that matches no key would revoke nothing.
        if _FINGERPRINT.fullmatch(value):
            continue
        if _SHORTENED_FINGERPRINT.fullmatch(value):
            raise InputError(
                where,
                f"{place}: {shown(value)} is a shortened fingerprint; revoking a key takes "
                "all 64 hex digits of its SHA-256 fingerprint: the keyid of its DSSE "
                "signatures (spec.signature.dsse.signatures[].keyid of a Plugin it signed) "
                "or the keyid pluginguard keygen printed",
            )
        raise InputError(
            where,
            f"{place}: {shown(value)} is not a key fingerprint: 64 lowercase hex digits, "
            "bare or after sha256:",
        )
    return frozenset(value.removeprefix("sha256:") for value in revoked)


def _positive(spec: Mapping[str, Any], key: str, default: int, where: str, *,
              maximum: int) -> int:
    value = optional(spec, key, int, default, where=where, prefix="spec")
    if not 1 <= value <= maximum:
        raise InputError(where, f"spec.{key} must be between 1 and {maximum}, not {value}")
    return value


def _selector(spec: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """``spec.namespaceSelector``, checked here so that matching it later cannot fail."""
    place = "spec.namespaceSelector"
    selector = optional(spec, "namespaceSelector", dict, {}, where=where, prefix="spec")
    if not selector:
        return selector  # every namespace, as an empty selector means in Kubernetes
    unknown = sorted(set(selector) - {"matchLabels", "matchExpressions"})
    if unknown:
        # A misspelt key would otherwise leave an empty selector: every namespace.
        raise InputError(where, f"{place}.{unknown[0]} is not a selector field "
                                "(matchLabels, matchExpressions)")
    labels = selector.get("matchLabels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
        raise InputError(where, f"{place}.matchLabels must map label keys to string values")
    expressions = selector.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise InputError(where, f"{place}.matchExpressions must be a list")
    for index, expression in enumerate(expressions):
        values = expression.get("values") or [] if isinstance(expression, Mapping) else None
        if not (isinstance(expression, Mapping) and isinstance(expression.get("key"), str)
                and expression.get("operator") in _SELECTOR_OPERATORS
                and isinstance(values, list) and all(isinstance(v, str) for v in values)):
            raise InputError(
                where,
                f"{place}.matchExpressions[{index}] needs a key, an operator "
                f"({', '.join(_SELECTOR_OPERATORS)}) and a list of string values",
            )
    return selector


_DEFAULT_TIMEOUT = timedelta(seconds=2)


def _duration(spec: Mapping[str, Any], where: str) -> timedelta:
    text = optional(spec, "verificationTimeout", str, None, where=where, prefix="spec")
    if text is None:
        return _DEFAULT_TIMEOUT
    match = _DURATION.match(text)
    if not match:
        raise InputError(where, f"spec.verificationTimeout {text!r} is not a duration like 500ms, 2s or 1m")
    amount, unit = float(match[1]), match[2]
    try:
        return timedelta(milliseconds=amount) if unit == "ms" else (
            timedelta(seconds=amount) if unit == "s" else timedelta(minutes=amount))
    except OverflowError as error:
        raise InputError(where, f"spec.verificationTimeout {text!r} is too long") from error
