"""The verification engine against signatures and chains made by OpenSSL."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pluginguard import keys
from pluginguard.manifest import parse_plugin
from pluginguard.policy import NoMaterial, compile_policy
from pluginguard.verdict import Enforcement, Reason
from pluginguard.verify import verify_plugin
from tests import openssl_pki
from tests.plugin_factory import dsse_sign, hkp_sign, key_entry, plugin, policy

ALGORITHMS = ["RSA-2048", "RSA-4096", "Ed25519", "ECDSA-P256", "ECDSA-P384"]


@pytest.fixture(scope="session")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    for algorithm in [*ALGORITHMS, "RSA-3072"]:
        openssl_pki.generate_key(directory / f"{algorithm}.key", algorithm)
    return directory


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """root -> intermediate -> leaves, all ECDSA-P256 unless named otherwise."""
    directory = tmp_path_factory.mktemp("pki")
    root = openssl_pki.root_authority(directory, "Plugin Root", "ECDSA-P256")
    intermediate = root.subordinate("Plugin Intermediate", "ECDSA-P256")
    made: dict[str, Any] = {"root": root, "intermediate": intermediate}
    for name, algorithm, profile in [
        ("signer", "ECDSA-P256", "code_signing"),
        ("rsa-signer", "RSA-2048", "code_signing"),
        ("tls-server", "ECDSA-P256", "server_auth"),
        ("revoked-signer", "ECDSA-P256", "code_signing"),
    ]:
        made[name] = intermediate.issue(name, algorithm, profile=profile)
    intermediate.revoke(made["revoked-signer"][1])
    made["crl"] = intermediate.crl()
    return made


def keyid(public: Path) -> str:
    return keys.fingerprint(keys.load_public_key(public.read_bytes(), where=str(public)))


def verdict_for(document: dict[str, Any], *policy_documents: dict[str, Any],
                at: datetime | None = None, labels: dict[str, str] | None = None):
    policies = [compile_policy(p, material=NoMaterial()) for p in policy_documents]
    return verify_plugin(parse_plugin(document, where="test"), policies,
                         namespace_labels=labels or {}, at=at)


def chain_pem(pki: dict[str, Any], leaf: str) -> str:
    return pki[leaf][1].read_text() + pki["intermediate"].cert.read_text()


def roots(pki: dict[str, Any]) -> list[dict[str, str]]:
    return [{"name": "plugin-root", "certificates": pki["root"].cert.read_text()}]


def signed_by(keydir: Path, algorithm: str, document: dict[str, Any] | None = None) -> dict[str, Any]:
    key = keydir / f"{algorithm}.key"
    return dsse_sign(document or plugin(), key, algorithm, keyid=keyid(key.with_suffix(".pub")))


def trusting(keydir: Path, *algorithms: str, **spec: Any) -> dict[str, Any]:
    entries = [key_entry(a, keydir / f"{a}.pub") for a in algorithms]
    return policy(trustedKeys=entries, **spec)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_dsse_signed_by_openssl_verifies(keydir: Path, algorithm: str) -> None:
    verdict = verdict_for(signed_by(keydir, algorithm), trusting(keydir, algorithm))
    assert verdict.reason is Reason.VERIFIED, verdict.message
    assert verdict.verified and verdict.algorithm == algorithm
    assert verdict.signer is not None and algorithm in verdict.signer


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hkp_signed_by_openssl_verifies(keydir: Path, algorithm: str) -> None:
    document = hkp_sign(plugin(), keydir / f"{algorithm}.key", algorithm)
    verdict = verdict_for(document, trusting(keydir, algorithm, requireSignedSandbox=False))
    assert verdict.reason is Reason.VERIFIED, verdict.message
    assert verdict.algorithm == algorithm


@pytest.mark.parametrize("leaf", ["signer", "rsa-signer"])
def test_certificate_chain_verifies_for_both_formats(pki: dict[str, Any], leaf: str) -> None:
    algorithm = "ECDSA-P256" if leaf == "signer" else "RSA-2048"
    key = pki[leaf][0]
    trust = policy(trustedRoots=roots(pki), requireCertificate=True, requireSignedSandbox=False)
    for document in (dsse_sign(plugin(), key, algorithm, keyid="", chain_pem=chain_pem(pki, leaf)),
                     hkp_sign(plugin(), key, algorithm, chain_pem=chain_pem(pki, leaf))):
        verdict = verdict_for(document, trust)
        assert verdict.reason is Reason.VERIFIED, verdict.message
        assert verdict.chain == (f"CN={leaf}", "CN=Plugin Intermediate", "CN=Plugin Root")
        assert f"CN={leaf}" in (verdict.signer or "")


def test_signature_missing(keydir: Path) -> None:
    verdict = verdict_for(plugin(), trusting(keydir, "Ed25519"))
    assert verdict.reason is Reason.SIGNATURE_MISSING and not verdict.verified


def test_unsigned_plugin_passes_a_policy_that_requires_no_signature(keydir: Path) -> None:
    verdict = verdict_for(plugin(), trusting(keydir, "Ed25519", requireSignature=False))
    assert verdict.verified


@pytest.mark.parametrize("mutate, field", [
    (lambda s: s["dsse"].update(payload="not base64!"), "dsse.payload"),
    (lambda s: s["dsse"].update(payloadType="text/plain"), "payloadType"),
    (lambda s: s["dsse"].update(signatures=[]), "signatures"),
    (lambda s: s["dsse"]["signatures"][0].update(sig="%%%"), "signatures[0].sig"),
    (lambda s: s.update(format="pgp"), "format"),
    (lambda s: s.update(certificateChain="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"),
     "certificateChain"),
])
def test_malformed_signature_names_the_field(keydir: Path, mutate: Any, field: str) -> None:
    document = signed_by(keydir, "Ed25519")
    mutate(document["spec"]["signature"])
    verdict = verdict_for(document, trusting(keydir, "Ed25519"))
    assert verdict.reason is Reason.MALFORMED_SIGNATURE
    assert field in verdict.message


def test_payload_that_is_not_a_statement_is_malformed(keydir: Path) -> None:
    document = signed_by(keydir, "Ed25519")
    # Re-sign a payload that is valid JSON but no in-toto Statement.
    from tests.openssl_pki import sign_bytes
    from securesystemslib.dsse import Envelope
    payload = b'{"hello": "world"}'
    pae = Envelope(payload, "application/vnd.in-toto+json", {}).pae()
    envelope = document["spec"]["signature"]["dsse"]
    envelope["payload"] = base64.b64encode(payload).decode()
    envelope["signatures"][0]["sig"] = base64.b64encode(
        sign_bytes(keydir / "Ed25519.key", "Ed25519", pae)).decode()
    verdict = verdict_for(document, trusting(keydir, "Ed25519"))
    assert verdict.reason is Reason.MALFORMED_SIGNATURE
    assert "in-toto Statement" in verdict.message


def test_tampered_payload_is_signature_invalid(keydir: Path) -> None:
    document = signed_by(keydir, "ECDSA-P256")
    envelope = document["spec"]["signature"]["dsse"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["resources"]["maxMemoryMB"] = 4096
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    verdict = verdict_for(document, trusting(keydir, "ECDSA-P256"))
    assert verdict.reason is Reason.SIGNATURE_INVALID
    assert "ECDSA-P256" in (verdict.signer or "")


def test_second_bad_signature_is_signature_invalid(keydir: Path) -> None:
    document = signed_by(keydir, "Ed25519")
    other = signed_by(keydir, "ECDSA-P256")
    bad = other["spec"]["signature"]["dsse"]["signatures"][0]
    bad["sig"] = base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode()
    document["spec"]["signature"]["dsse"]["signatures"].append(bad)
    verdict = verdict_for(document, trusting(keydir, "Ed25519", "ECDSA-P256"))
    assert verdict.reason is Reason.SIGNATURE_INVALID
    assert "signature 2 of 2" in verdict.message


def test_signature_of_a_key_the_policy_does_not_trust(keydir: Path) -> None:
    verdict = verdict_for(signed_by(keydir, "Ed25519"), trusting(keydir, "ECDSA-P256"))
    assert verdict.reason is Reason.UNTRUSTED_SIGNER


def test_rsa_3072_is_never_in_the_allowed_set(keydir: Path) -> None:
    verdict = verdict_for(signed_by(keydir, "RSA-3072"), trusting(keydir, "RSA-3072"))
    assert verdict.reason is Reason.ALGORITHM_NOT_ALLOWED
    assert "RSA-3072" in verdict.message


def test_algorithm_outside_the_policy_list(keydir: Path) -> None:
    verdict = verdict_for(signed_by(keydir, "Ed25519"),
                          trusting(keydir, "Ed25519", allowedAlgorithms=["ECDSA-P256"]))
    assert verdict.reason is Reason.ALGORITHM_NOT_ALLOWED
    assert verdict.algorithm == "Ed25519"


def test_revoked_key(keydir: Path) -> None:
    revoked = keyid(keydir / "ECDSA-P384.pub")
    verdict = verdict_for(signed_by(keydir, "ECDSA-P384"),
                          trusting(keydir, "ECDSA-P384", revokedKeys=[revoked]))
    assert verdict.reason is Reason.KEY_REVOKED


@pytest.mark.parametrize("spelling", ["{}", "sha256:{}"], ids=["bare", "as-shown"])
def test_a_revoked_key_is_matched_in_either_spelling(keydir: Path, spelling: str) -> None:
    # PluginGuard shows keys as sha256:<hex>; a fingerprint copied from there revokes too.
    revoked = spelling.format(keyid(keydir / "ECDSA-P384.pub"))
    verdict = verdict_for(signed_by(keydir, "ECDSA-P384"),
                          trusting(keydir, "ECDSA-P384", revokedKeys=[revoked]))
    assert verdict.reason is Reason.KEY_REVOKED
    assert "is revoked by the policy" in verdict.message


@pytest.mark.parametrize("spelling", ["{}", "sha256:{}"], ids=["bare", "as-shown"])
def test_a_revoked_certificate_key_is_matched_in_either_spelling(
    pki: dict[str, Any], spelling: str
) -> None:
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(pki["signer"][1].read_bytes())
    revoked = spelling.format(keys.fingerprint(leaf.public_key()))  # type: ignore[arg-type]
    document = dsse_sign(plugin(), pki["signer"][0], "ECDSA-P256", keyid="",
                         chain_pem=chain_pem(pki, "signer"))
    verdict = verdict_for(document, policy(trustedRoots=roots(pki), revokedKeys=[revoked]))
    assert verdict.reason is Reason.KEY_REVOKED
    assert "CN=signer" in verdict.message


def test_the_verdict_names_the_signers_key_as_revoked_keys_takes_it(
    keydir: Path, pki: dict[str, Any]
) -> None:
    fingerprint = keyid(keydir / "ECDSA-P256.pub")
    signed = signed_by(keydir, "ECDSA-P256")
    verdict = verdict_for(signed, trusting(keydir, "ECDSA-P256"))
    assert verdict.signer_key == f"sha256:{fingerprint}"
    assert verdict.as_dict()["signerKey"] == f"sha256:{fingerprint}"
    # What the verdict shows, pasted into revokedKeys, revokes the key.
    revoked = verdict_for(signed, trusting(keydir, "ECDSA-P256", revokedKeys=[verdict.signer_key]))
    assert revoked.reason is Reason.KEY_REVOKED and revoked.signer_key == verdict.signer_key
    # A certificate signer is named by its leaf's key.
    key = pki["signer"][0]
    document = dsse_sign(plugin(), key, "ECDSA-P256", keyid="", chain_pem=chain_pem(pki, "signer"))
    by_certificate = verdict_for(document, policy(trustedRoots=roots(pki)))
    leaf = keys.load_certificates(pki["signer"][1].read_bytes(), where="leaf")[0]
    assert by_certificate.signer_key == f"sha256:{keys.fingerprint(leaf.public_key())}"


def test_revoked_keys_are_compiled_to_one_spelling(keydir: Path) -> None:
    fingerprint = keyid(keydir / "Ed25519.pub")
    compiled = compile_policy(
        trusting(keydir, "Ed25519", revokedKeys=[fingerprint, f"sha256:{fingerprint}"]),
        material=NoMaterial())
    assert compiled.revoked_keys == frozenset({fingerprint})


@pytest.mark.parametrize("short", ["824adc927a5835eb", "sha256:824adc927a5835eb",
                                   "sha256:" + "ab" * 31])
def test_a_shortened_revoked_key_asks_for_the_full_fingerprint(short: str) -> None:
    from pluginguard.errors import InputError

    with pytest.raises(InputError) as caught:
        compile_policy(policy(revokedKeys=["ab" * 32, short]), material=NoMaterial())
    message = str(caught.value)
    assert message.startswith(f"PluginTrustPolicy hkp-plugins: spec.revokedKeys[1]: {short!r} is "
                              "a shortened fingerprint")
    assert "all 64 hex digits" in message
    assert "keyid" in message  # where the full one is found


@pytest.mark.parametrize("bad, problem", [
    ("AB" * 32, "is not a key fingerprint"),
    ("SHA256:" + "ab" * 32, "is not a key fingerprint"),
    ("sha512:" + "ab" * 32, "is not a key fingerprint"),
    ("ab" * 32 + "\n", "is not a key fingerprint"),
    ("ab" * 33, "is not a key fingerprint"),
    ("", "is not a key fingerprint"),
    (7, "must be a string"),
])
def test_a_revoked_key_that_is_no_fingerprint_is_refused(bad: Any, problem: str) -> None:
    from pluginguard.errors import InputError

    with pytest.raises(InputError) as caught:
        compile_policy(policy(revokedKeys=[bad]), material=NoMaterial())
    assert f"spec.revokedKeys[0]{':' if isinstance(bad, str) else ''} " in str(caught.value)
    assert problem in str(caught.value)


def test_changed_digest_is_digest_mismatch(keydir: Path) -> None:
    document = signed_by(keydir, "Ed25519")
    document["spec"]["artifact"]["digest"] = "sha256:" + "cd" * 32
    verdict = verdict_for(document, trusting(keydir, "Ed25519"))
    assert verdict.reason is Reason.DIGEST_MISMATCH
    assert "cd" * 32 in verdict.message


def test_hkp_is_refused_when_the_policy_requires_a_signed_sandbox(keydir: Path) -> None:
    document = hkp_sign(plugin(), keydir / "Ed25519.key", "Ed25519")
    verdict = verdict_for(document, trusting(keydir, "Ed25519"))
    assert verdict.reason is Reason.SANDBOX_NOT_SIGNED


@pytest.mark.parametrize("loosen, field", [
    (lambda s: s["seccomp"]["allow"].append("bpf"), "spec.sandbox.seccomp.allow"),
    (lambda s: s["resources"].update(maxMemoryMB=257), "spec.sandbox.resources.maxMemoryMB"),
    (lambda s: s["network"].update(egress="any"), "spec.sandbox.network.egress"),
    (lambda s: s["seccomp"]["deny"].remove("mount"), "spec.sandbox.seccomp.deny"),
])
def test_loosened_sandbox_is_sandbox_mismatch(keydir: Path, loosen: Any, field: str) -> None:
    document = signed_by(keydir, "Ed25519")
    loosen(document["spec"]["sandbox"])
    verdict = verdict_for(document, trusting(keydir, "Ed25519"))
    assert verdict.reason is Reason.SANDBOX_MISMATCH
    assert field in verdict.message


def test_api_server_defaults_do_not_break_the_signature(keydir: Path) -> None:
    document = signed_by(keydir, "Ed25519")
    sandbox = document["spec"]["sandbox"]
    sandbox["seccomp"].update(baseline="runtime-default", architectures=["arm64", "amd64"])
    sandbox["seccomp"]["allow"] = ["ptrace", "ptrace"]
    verdict = verdict_for(document, trusting(keydir, "Ed25519"))
    assert verdict.reason is Reason.VERIFIED, verdict.message


def test_expired_certificate(pki: dict[str, Any]) -> None:
    document = dsse_sign(plugin(), pki["signer"][0], "ECDSA-P256", keyid="",
                         chain_pem=chain_pem(pki, "signer"))
    later = datetime.now(UTC) + timedelta(days=60)
    verdict = verdict_for(document, policy(trustedRoots=roots(pki)), at=later)
    assert verdict.reason is Reason.CERTIFICATE_EXPIRED
    assert "leaf CN=signer expired on" in verdict.message


def test_revoked_certificate(pki: dict[str, Any]) -> None:
    document = dsse_sign(plugin(), pki["revoked-signer"][0], "ECDSA-P256", keyid="",
                         chain_pem=chain_pem(pki, "revoked-signer"))
    trust = policy(trustedRoots=roots(pki), crl={"sources": [{"inline": pki["crl"].decode()}]})
    verdict = verdict_for(document, trust)
    assert verdict.reason is Reason.CERTIFICATE_REVOKED
    assert "CN=revoked-signer" in verdict.message


def test_unrevoked_certificate_passes_the_crl(pki: dict[str, Any]) -> None:
    document = dsse_sign(plugin(), pki["signer"][0], "ECDSA-P256", keyid="",
                         chain_pem=chain_pem(pki, "signer"))
    trust = policy(trustedRoots=roots(pki), crl={"sources": [{"inline": pki["crl"].decode()}]})
    assert verdict_for(document, trust).verified


@pytest.mark.parametrize("on_unavailable, reason", [
    ("deny", Reason.REVOCATION_UNAVAILABLE), ("allow", Reason.VERIFIED)])
def test_stale_crl_is_revocation_unavailable(pki: dict[str, Any], on_unavailable: str,
                                              reason: Reason) -> None:
    document = dsse_sign(plugin(), pki["signer"][0], "ECDSA-P256", keyid="",
                         chain_pem=chain_pem(pki, "signer"))
    short_lived = pki["intermediate"].crl(days=1)
    trust = policy(trustedRoots=roots(pki), crl={
        "sources": [{"inline": short_lived.decode()}], "onUnavailable": on_unavailable})
    verdict = verdict_for(document, trust, at=datetime.now(UTC) + timedelta(days=2))
    assert verdict.reason is reason, verdict.message


def test_unreachable_crl_url_is_revocation_unavailable(pki: dict[str, Any]) -> None:
    document = dsse_sign(plugin(), pki["signer"][0], "ECDSA-P256", keyid="",
                         chain_pem=chain_pem(pki, "signer"))
    trust = policy(trustedRoots=roots(pki), crl={"sources": [{"url": "http://127.0.0.1:9/crl"}]})
    verdict = verdict_for(document, trust)
    assert verdict.reason is Reason.REVOCATION_UNAVAILABLE
    assert "127.0.0.1:9" in verdict.message


def test_chain_longer_than_the_policy_allows(pki: dict[str, Any]) -> None:
    document = dsse_sign(plugin(), pki["signer"][0], "ECDSA-P256", keyid="",
                         chain_pem=chain_pem(pki, "signer"))
    verdict = verdict_for(document, policy(trustedRoots=roots(pki), maxCertChainLength=2))
    assert verdict.reason is Reason.CHAIN_TOO_LONG
    assert "3 certificates" in verdict.message


def test_certificate_without_code_signing_usage(pki: dict[str, Any]) -> None:
    document = dsse_sign(plugin(), pki["tls-server"][0], "ECDSA-P256", keyid="",
                         chain_pem=chain_pem(pki, "tls-server"))
    verdict = verdict_for(document, policy(trustedRoots=roots(pki)))
    assert verdict.reason is Reason.KEY_USAGE_INVALID
    relaxed = verdict_for(document, policy(trustedRoots=roots(pki), requireCodeSigningEKU=False))
    assert relaxed.verified, relaxed.message


def test_certificate_from_another_root_is_untrusted(pki: dict[str, Any], tmp_path: Path) -> None:
    stranger = openssl_pki.root_authority(tmp_path, "Stranger Root", "ECDSA-P256")
    key, cert = stranger.issue("stranger", "ECDSA-P256")
    document = dsse_sign(plugin(), key, "ECDSA-P256", keyid="", chain_pem=cert.read_text())
    verdict = verdict_for(document, policy(trustedRoots=roots(pki)))
    assert verdict.reason is Reason.UNTRUSTED_SIGNER


def test_certificate_required_but_absent(keydir: Path) -> None:
    verdict = verdict_for(signed_by(keydir, "Ed25519"),
                          trusting(keydir, "Ed25519", requireCertificate=True))
    assert verdict.reason is Reason.UNTRUSTED_SIGNER
    assert "requires a certificate" in verdict.message


def test_no_matching_policy(keydir: Path) -> None:
    selective = trusting(keydir, "Ed25519", namespaceSelector={"matchLabels": {"team": "keys"}})
    assert verdict_for(signed_by(keydir, "Ed25519"), selective).reason is Reason.NO_MATCHING_POLICY
    matched = verdict_for(signed_by(keydir, "Ed25519"), selective, labels={"team": "keys"})
    assert matched.verified


def test_every_matching_policy_must_agree_and_the_strictest_failure_decides(keydir: Path) -> None:
    document = signed_by(keydir, "Ed25519")
    lenient = trusting(keydir, "Ed25519")
    warn = policy("warn-only", enforcement="warn", trustedKeys=[key_entry("x", keydir / "RSA-2048.pub")])
    enforce = policy("strict", trustedKeys=[key_entry("y", keydir / "ECDSA-P256.pub")])
    verdict = verdict_for(document, lenient, warn, enforce)
    assert not verdict.verified
    assert verdict.policy == "strict" and verdict.enforcement is Enforcement.ENFORCE
    only_warn = verdict_for(document, lenient, warn)
    assert only_warn.policy == "warn-only" and only_warn.enforcement is Enforcement.WARN


def test_unavailable_trust_material_is_named_in_the_refusal(keydir: Path) -> None:
    trust = policy(trustedKeys=[{"name": "release", "secretRef": {
        "name": "signing-keys", "namespace": "pluginguard", "key": "release.pub"}}])
    verdict = verdict_for(signed_by(keydir, "Ed25519"), trust)
    assert verdict.reason is Reason.UNTRUSTED_SIGNER
    assert "Secret pluginguard/signing-keys" in verdict.message


def test_verdict_does_not_depend_on_input_order(keydir: Path) -> None:
    document = signed_by(keydir, "Ed25519")
    shuffled = copy.deepcopy(document)
    shuffled["spec"]["sandbox"] = dict(reversed(list(shuffled["spec"]["sandbox"].items())))
    trust = trusting(keydir, "Ed25519")
    assert verdict_for(document, trust) == verdict_for(shuffled, trust)


def test_a_keyless_signature_that_verifies_with_no_trusted_key_spoils_a_good_one(keydir: Path) -> None:
    document = signed_by(keydir, "Ed25519")
    other = signed_by(keydir, "ECDSA-P256")["spec"]["signature"]["dsse"]["signatures"][0]
    document["spec"]["signature"]["dsse"]["signatures"].append({"keyid": "", "sig": other["sig"]})
    verdict = verdict_for(document, trusting(keydir, "Ed25519"))
    assert verdict.reason is Reason.SIGNATURE_INVALID
    assert "names no key" in verdict.message


def test_a_policy_that_does_not_compile_trusts_nothing_it_covers(keydir: Path) -> None:
    from pluginguard.policy import unusable_policy

    good = compile_policy(trusting(keydir, "Ed25519"), material=NoMaterial())
    broken = unusable_policy(policy("strict", namespaceSelector={"matchLabels": {"team": "keys"}},
                                    revokedKeys=["not-a-fingerprint"]), "spec.revokedKeys[0] ...")
    plugin_document = parse_plugin(signed_by(keydir, "Ed25519"), where="test")
    covered = verify_plugin(plugin_document, [good, broken], namespace_labels={"team": "keys"})
    assert covered.reason is Reason.UNTRUSTED_SIGNER and "cannot be used" in covered.message
    elsewhere = verify_plugin(plugin_document, [good, broken], namespace_labels={"team": "web"})
    assert elsewhere.verified
    unreadable = unusable_policy(policy("odd", namespaceSelector={"matchLabel": {"x": "y"}}), "bad")
    assert not verify_plugin(plugin_document, [good, unreadable], namespace_labels={}).verified


def test_a_misspelt_selector_field_is_an_error_not_every_namespace(keydir: Path) -> None:
    from pluginguard.errors import InputError

    with pytest.raises(InputError, match="matchLabel is not a selector field"):
        compile_policy(trusting(keydir, "Ed25519", namespaceSelector={"matchLabel": {"a": "b"}}),
                       material=NoMaterial())


def test_a_stale_crl_still_revokes_what_it_lists(pki: dict[str, Any]) -> None:
    document = dsse_sign(plugin(), pki["revoked-signer"][0], "ECDSA-P256", keyid="",
                         chain_pem=chain_pem(pki, "revoked-signer"))
    short_lived = pki["intermediate"].crl(days=1)
    trust = policy(trustedRoots=roots(pki), crl={
        "sources": [{"inline": short_lived.decode()}], "onUnavailable": "allow"})
    verdict = verdict_for(document, trust, at=datetime.now(UTC) + timedelta(days=2))
    assert verdict.reason is Reason.CERTIFICATE_REVOKED


def test_crl_urls_other_than_http_are_not_read(pki: dict[str, Any], tmp_path: Path) -> None:
    from pluginguard.cli import ManifestMaterial
    from pluginguard.policy import MaterialUnavailable

    (tmp_path / "crl.pem").write_bytes(pki["crl"])
    with pytest.raises(MaterialUnavailable, match="only http and https"):
        ManifestMaterial([]).url(f"file://{tmp_path}/crl.pem")


@pytest.mark.parametrize("inline, problem", [
    ("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "not a CRL: not valid DER/X.509"),
    ("-----BEGIN X509 CRL-----\nAA!A\n-----END X509 CRL-----\n",
     "not a CRL: the X509 CRL block is not valid base64"),
    ("garbage", "not a CRL: not valid DER/X.509"),
])
def test_an_inline_crl_that_does_not_parse_is_named_in_a_few_words(
    pki: dict[str, Any], inline: str, problem: str
) -> None:
    document = dsse_sign(plugin(), pki["signer"][0], "ECDSA-P256", keyid="",
                         chain_pem=chain_pem(pki, "signer"))
    trust = policy(trustedRoots=roots(pki), crl={"sources": [{"inline": inline}]})
    verdict = verdict_for(document, trust)
    assert verdict.reason is Reason.REVOCATION_UNAVAILABLE
    assert f"CRL source spec.crl.sources[0] is unavailable ({problem})" in verdict.message
    assert "ParseError" not in verdict.message and "cryptography.io" not in verdict.message


def test_a_certificate_that_does_not_parse_is_named_in_a_few_words(pki: dict[str, Any]) -> None:
    document = dsse_sign(plugin(), pki["signer"][0], "ECDSA-P256", keyid="",
                         chain_pem="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    verdict = verdict_for(document, policy(trustedRoots=roots(pki)))
    assert verdict.reason is Reason.MALFORMED_SIGNATURE
    assert "spec.signature.certificateChain: certificate 1 is not valid DER/X.509" in verdict.message
    assert "ParseError" not in verdict.message and "Tag {" not in verdict.message
