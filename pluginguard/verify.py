"""The verification engine: does a Plugin satisfy every trust policy that covers it?

One plugin, one policy:
  1. a signature must be present (unless the policy does without);
  2. it must parse;
  3. the signer must be trusted: a certificate chaining to a policy root, or a trusted,
     unrevoked key, of an allowed algorithm;
  4. the signature must verify over what the format says is signed;
  5. what was signed must be this plugin: its artifact digest and, when the policy asks,
     its sandbox.
Every policy whose namespaceSelector matches must be satisfied; no policy means no trust.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import rfc8785

from pluginguard import chain, keys, signature
from pluginguard.errors import InputError
from pluginguard.manifest import Plugin
from pluginguard.policy import TrustPolicy, selector_matches
from pluginguard.sandbox import normalize_sandbox
from pluginguard.verdict import Reason, Verdict

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SANDBOX_PREDICATE = "https://pluginguard.dev/sandbox/v1"


class Refused(Exception):
    """One step refused the plugin under one policy."""

    def __init__(self, reason: Reason, message: str, **facts: Any) -> None:
        self.reason = reason
        self.facts = facts
        super().__init__(message)


@dataclass(frozen=True)
class _Signer:
    name: str
    algorithm: str
    key: keys.PublicKey
    fingerprint: str  # keys.fingerprint(key)
    chain: tuple[str, ...] = ()
    expires: datetime | None = None


def verify_plugin(
    plugin: Plugin,
    policies: Sequence[TrustPolicy],
    *,
    namespace_labels: Mapping[str, str],
    at: datetime | None = None,
) -> Verdict:
    """Verify ``plugin`` against the ``policies`` whose selector matches its namespace.

    Returns the verdict of the strictest failing policy, or a verified verdict naming
    the signer. Never raises for anything a Plugin or policy may contain.
    """
    at = at or datetime.now(UTC)
    matching = [p for p in policies if selector_matches(p.namespace_selector, namespace_labels)]
    if not matching:
        return Verdict(
            False,
            Reason.NO_MATCHING_POLICY,
            f"no PluginTrustPolicy selects namespace {plugin.namespace}; nothing vouches for plugin {plugin.name}",
            digest=plugin.digest,
        )
    names = tuple(p.name for p in matching)
    verdicts = [verify_under(plugin, p, at=at, policies=names) for p in matching]
    failed = [v for v in verdicts if not v.verified]
    if failed:
        return max(failed, key=lambda v: v.enforcement.strictness)
    return verdicts[0]


def verify_under(plugin: Plugin, policy: TrustPolicy, *, at: datetime,
                 policies: tuple[str, ...] = ()) -> Verdict:
    """The verdict of one policy on one plugin; ``policies`` names every policy that
    applied, for the verdict to record."""
    facts: dict[str, Any] = {}
    try:
        if policy.problem:
            raise Refused(Reason.UNTRUSTED_SIGNER,
                          f"the policy cannot be used, so it trusts nothing ({policy.problem})")
        signer = _verify_steps(plugin, policy, at=at, facts=facts)
    except Refused as refusal:
        facts.update(refusal.facts)
        return Verdict(
            False,
            refusal.reason,
            f"policy {policy.name}: {refusal}",
            algorithm=facts.get("algorithm"),
            signer=facts.get("signer"),
            signer_key=facts.get("signer_key"),
            chain=facts.get("chain", ()),
            policy=policy.name,
            enforcement=policy.enforcement,
            digest=plugin.digest,
            policies=policies,
        )
    if signer is None:
        return Verdict(True, Reason.VERIFIED,
                       f"policy {policy.name} does not require a signature",
                       policy=policy.name, enforcement=policy.enforcement, digest=plugin.digest,
                       policies=policies)
    return Verdict(
        True,
        Reason.VERIFIED,
        f"signed by {signer.name} ({signer.algorithm}), trusted by policy {policy.name}",
        algorithm=signer.algorithm,
        signer=signer.name,
        signer_key=f"sha256:{signer.fingerprint}",
        chain=signer.chain,
        policy=policy.name,
        enforcement=policy.enforcement,
        digest=plugin.digest,
        signer_expires=signer.expires,
        policies=policies,
    )


def _verify_steps(plugin: Plugin, policy: TrustPolicy, *, at: datetime,
                  facts: dict[str, Any]) -> _Signer | None:
    # 1. Presence.
    if not signature.is_present(plugin.signature):
        if policy.require_signature:
            raise Refused(Reason.SIGNATURE_MISSING, f"plugin {plugin.name} carries no signature")
        return None

    # 2. Parsing.
    try:
        parsed = signature.parse(plugin.signature, digest_hex=plugin.digest_hex)
    except signature.MalformedSignature as error:
        raise Refused(Reason.MALFORMED_SIGNATURE, str(error)) from error

    # 3 and 4. Signer and signature.
    if parsed.certificates:
        signer = _certificate_signer(parsed, policy, at=at, facts=facts)
    elif policy.require_certificate:
        raise Refused(Reason.UNTRUSTED_SIGNER,
                      "the policy requires a certificate and the signature carries none")
    else:
        signer = _key_signer(parsed, policy, facts=facts)

    # 5. Content.
    if parsed.format == "hkp":
        if policy.require_signed_sandbox:
            raise Refused(Reason.SANDBOX_NOT_SIGNED,
                          "the hkp format signs only the artifact; the policy requires a signed sandbox")
    else:
        _check_statement(plugin, parsed.payload or b"", policy)
    return signer


def _certificate_signer(parsed: signature.ParsedSignature, policy: TrustPolicy, *,
                        at: datetime, facts: dict[str, Any]) -> _Signer:
    leaf = parsed.certificates[0]
    facts["signer"] = keys.describe_certificate(leaf)
    key = leaf.public_key()
    fingerprint = keys.fingerprint(key)  # type: ignore[arg-type]
    facts["signer_key"] = f"sha256:{fingerprint}"
    try:
        algorithm = _allowed_algorithm(key, policy, facts)
        if fingerprint in policy.revoked_keys:
            raise Refused(Reason.KEY_REVOKED,
                          f"the key of {facts['signer']} is revoked by the policy")
        try:
            validated = chain.validate(parsed.certificates, policy, at=at)
        except chain.ChainRefused as refusal:
            raise Refused(refusal.reason, str(refusal)) from refusal
    except Refused:
        # A refusal names the chain as presented. Naming certificates costs more than
        # checking them, so a chain that validates is named once, as validated.
        facts["chain"] = keys.describe_chain(parsed.certificates)
        raise
    facts["chain"] = keys.describe_chain(validated.certificates)
    bad = [i for i, entry in enumerate(parsed.signatures)
           if not keys.verify_signature(key, entry.sig, parsed.message, prehashed=parsed.prehashed)]  # type: ignore[arg-type]
    if bad:
        raise Refused(Reason.SIGNATURE_INVALID,
                      f"signature {bad[0] + 1} of {len(parsed.signatures)} does not verify "
                      f"with the key of {facts['signer']}{_over(parsed)}")
    return _Signer(facts["signer"], algorithm, key, fingerprint, facts["chain"],  # type: ignore[arg-type]
                   leaf.not_valid_after_utc)


def _key_signer(parsed: signature.ParsedSignature, policy: TrustPolicy, *,
                facts: dict[str, Any]) -> _Signer:
    """Every signature naming a trusted key must verify; at least one must come from one."""
    signer: _Signer | None = None
    keyless_failures: list[int] = []
    for index, entry in enumerate(parsed.signatures):
        candidates = [k for k in policy.trusted_keys
                      if not entry.keyid or entry.keyid.removeprefix("sha256:") == k.fingerprint]
        if entry.keyid and not candidates:
            continue  # a co-signer this policy does not know; it neither helps nor hurts
        verified = None
        for trusted in candidates:
            facts["signer"] = f"key {trusted.name} (sha256:{trusted.fingerprint[:16]})"
            facts["signer_key"] = f"sha256:{trusted.fingerprint}"
            algorithm = _allowed_algorithm(trusted.key, policy, facts)
            if trusted.fingerprint in policy.revoked_keys:
                raise Refused(Reason.KEY_REVOKED, f"{facts['signer']} is revoked by the policy")
            if keys.verify_signature(trusted.key, entry.sig, parsed.message, prehashed=parsed.prehashed):
                verified = _Signer(facts["signer"], algorithm, trusted.key, trusted.fingerprint)
                break
        if verified is None and entry.keyid:
            raise Refused(Reason.SIGNATURE_INVALID,
                          f"signature {index + 1} of {len(parsed.signatures)} ({facts['signer']}) "
                          f"does not verify{_over(parsed)}")
        if verified is None:
            keyless_failures.append(index)
        signer = signer or verified
    if signer is not None and keyless_failures:
        # Beside a good signature, one that names no key and verifies with none is not a
        # harmless co-signer: nothing tells it apart from a forgery.
        raise Refused(Reason.SIGNATURE_INVALID,
                      f"signature {keyless_failures[0] + 1} of {len(parsed.signatures)} names no "
                      f"key and verifies with no trusted key{_over(parsed)}")
    if signer is None:
        facts.pop("signer", None)
        facts.pop("signer_key", None)
        keyids = ", ".join(e.keyid[:16] or "(no keyid)" for e in parsed.signatures)
        message = f"no key trusted by the policy made this signature (keyid {keyids})"
        if policy.unavailable:
            message += f"; unavailable trust material: {'; '.join(policy.unavailable)}"
        raise Refused(Reason.UNTRUSTED_SIGNER, message)
    return signer


def _allowed_algorithm(key: object, policy: TrustPolicy, facts: dict[str, Any]) -> str:
    try:
        algorithm = keys.algorithm_of(key)
    except keys.UnsupportedKey as error:
        raise Refused(Reason.ALGORITHM_NOT_ALLOWED, f"{facts.get('signer', 'signer')}: {error}") from error
    facts["algorithm"] = algorithm
    if algorithm not in policy.allowed_algorithms:
        allowed = ", ".join(sorted(policy.allowed_algorithms))
        raise Refused(Reason.ALGORITHM_NOT_ALLOWED,
                      f"{facts.get('signer', 'signer')} uses {algorithm}; the policy allows {allowed}")
    return algorithm


def _over(parsed: signature.ParsedSignature) -> str:
    return " over the artifact digest" if parsed.format == "hkp" else " over the DSSE envelope"


def _check_statement(plugin: Plugin, payload: bytes, policy: TrustPolicy) -> None:
    """The signed in-toto Statement must name this artifact and, if asked, this sandbox."""
    try:
        statement = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise Refused(Reason.MALFORMED_SIGNATURE, f"DSSE payload is not JSON ({error})") from error
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise Refused(Reason.MALFORMED_SIGNATURE, f"DSSE payload is not an in-toto Statement v1 ({STATEMENT_TYPE})")
    subjects = statement.get("subject")
    digests = [s.get("digest", {}).get("sha256") for s in subjects or [] if isinstance(s, dict)
               and isinstance(s.get("digest"), dict)]
    if not digests:
        raise Refused(Reason.MALFORMED_SIGNATURE, "the signed Statement has no subject with a sha256 digest")
    if plugin.digest_hex not in digests:
        raise Refused(Reason.DIGEST_MISMATCH,
                      f"spec.artifact.digest is {plugin.digest}; the signature covers sha256:{digests[0]}")
    if not policy.require_signed_sandbox:
        return
    if statement.get("predicateType") != SANDBOX_PREDICATE:
        raise Refused(Reason.SANDBOX_NOT_SIGNED,
                      f"the signed Statement's predicateType is not {SANDBOX_PREDICATE}; the policy requires a signed sandbox")
    _check_sandbox(plugin.sandbox, statement.get("predicate"))


def _check_sandbox(cluster: Mapping[str, Any], signed: Any) -> None:
    try:
        cluster_sandbox: dict[str, Any] | None = normalize_sandbox(cluster)
    except InputError as error:
        cluster_sandbox, cluster_error = None, error
    if cluster_sandbox is not None and _same_json(signed, cluster_sandbox):
        return
    try:
        signed_sandbox = normalize_sandbox(signed if isinstance(signed, Mapping) else None,
                                           where="signed sandbox")
    except InputError as error:
        raise Refused(Reason.MALFORMED_SIGNATURE, str(error)) from error
    if cluster_sandbox is None:
        raise Refused(Reason.SANDBOX_MISMATCH, str(cluster_error)) from cluster_error
    if canonical(signed_sandbox) != canonical(cluster_sandbox):
        difference = _first_difference(signed_sandbox, cluster_sandbox, "spec.sandbox")
        raise Refused(Reason.SANDBOX_MISMATCH, f"{difference}: the plugin's sandbox differs from the signed one")


def _same_json(signed: Any, normal: Any) -> bool:
    """Whether ``signed`` is, as JSON, exactly the normalised sandbox ``normal``.

    Signers sign the normalised sandbox, so this is the usual case, and it proves the
    two equal without normalising and canonicalising both. The test is stricter than
    RFC 8785 (true is not 1, 1.0 is not 1); anything else takes the full comparison.
    """
    # Python's == already tells strings, lists and objects apart; it only confuses
    # numbers with each other and with booleans, which _same_types then rules out.
    return bool(signed == normal) and _same_types(signed, normal)


def _same_types(signed: Any, normal: Any) -> bool:
    """Whether every value of ``signed`` has the JSON type of its peer in ``normal``;
    the two must already be equal as Python values."""
    kind = type(normal)
    if kind is str:
        return True  # a value equal to a str is a str
    if type(signed) is not kind:
        return False
    # Loops rather than all(...): this runs on every verification, and a generator
    # per list costs more here than the comparisons themselves.
    if kind is dict:
        for key, value in normal.items():
            if type(value) is not str and not _same_types(signed[key], value):
                return False
    elif kind is list:
        for other, value in zip(signed, normal):
            if type(value) is not str and not _same_types(other, value):
                return False
    return True


def canonical(value: Any) -> bytes:
    """RFC 8785 canonical JSON: the bytes two equal sandboxes share."""
    return rfc8785.dumps(value)


def _first_difference(signed: Any, cluster: Any, path: str) -> str:
    if isinstance(signed, Mapping) and isinstance(cluster, Mapping):
        for key in sorted(set(signed) | set(cluster)):
            if signed.get(key) != cluster.get(key):
                return _first_difference(signed.get(key), cluster.get(key), f"{path}.{key}")
    return f"{path} is {json.dumps(cluster)}, signed {json.dumps(signed)}"

