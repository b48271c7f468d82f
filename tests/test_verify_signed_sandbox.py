"""The signed sandbox against the cluster's: the exact normal form, equivalent forms and
look-alikes that are not equal as JSON."""

from __future__ import annotations

import base64
import copy
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from securesystemslib.dsse import Envelope

from pluginguard import keys
from pluginguard.manifest import parse_plugin
from pluginguard.policy import NoMaterial, compile_policy
from pluginguard.sandbox import normalize_sandbox
from pluginguard.signature import DSSE_PAYLOAD_TYPE
from pluginguard.verdict import Reason
from pluginguard.verify import (
    SANDBOX_PREDICATE,
    STATEMENT_TYPE,
    canonical,
    verify_plugin,
)
from tests.plugin_factory import DIGEST, plugin, policy

KEY = keys.generate_private_key("Ed25519")


def signed_with_predicate(document: dict[str, Any], predicate: Any) -> dict[str, Any]:
    """``document`` signed over a Statement whose predicate is ``predicate`` as given."""
    payload = canonical({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": "ratelimit", "digest": {"sha256": DIGEST.removeprefix("sha256:")}}],
        "predicateType": SANDBOX_PREDICATE,
        "predicate": predicate,
    })
    pae = Envelope(payload, DSSE_PAYLOAD_TYPE, {}).pae()
    signed = copy.deepcopy(document)
    signed["spec"]["signature"] = {"format": "dsse", "dsse": {
        "payloadType": DSSE_PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(keys.sign(KEY, pae)).decode()}],
    }}
    return signed


def verdict_of(document: dict[str, Any]) -> Any:
    public = KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    trusted = compile_policy(policy(trustedKeys=[{"name": "k", "publicKey": public.decode()}]),
                             material=NoMaterial())
    return verify_plugin(parse_plugin(document, where="test"), [trusted], namespace_labels={})


def test_the_normal_form_signed_verifies() -> None:
    document = plugin()
    verdict = verdict_of(signed_with_predicate(document, normalize_sandbox(document["spec"]["sandbox"])))
    assert verdict.reason is Reason.VERIFIED, verdict.message


def test_an_equivalent_signed_sandbox_not_in_normal_form_verifies() -> None:
    document = plugin()
    predicate = copy.deepcopy(document["spec"]["sandbox"])
    predicate["seccomp"]["allow"] = ["ptrace", "ptrace"]
    predicate["network"]["allowedCIDRs"] = []
    verdict = verdict_of(signed_with_predicate(document, predicate))
    assert verdict.reason is Reason.VERIFIED, verdict.message


def test_a_signed_integer_where_the_sandbox_has_a_boolean_is_malformed() -> None:
    document = plugin()
    predicate = normalize_sandbox(document["spec"]["sandbox"])
    predicate["filesystem"]["readOnlyRootFilesystem"] = 1  # equal to True in Python only
    verdict = verdict_of(signed_with_predicate(document, predicate))
    assert verdict.reason is Reason.MALFORMED_SIGNATURE


def test_a_malformed_cluster_sandbox_is_a_mismatch_even_when_signed_alike() -> None:
    document = plugin()
    document["spec"]["sandbox"]["resources"]["maxMemoryMB"] = 0
    verdict = verdict_of(signed_with_predicate(document, document["spec"]["sandbox"]))
    assert verdict.reason is Reason.MALFORMED_SIGNATURE  # the signed copy is checked first
    good = normalize_sandbox(plugin()["spec"]["sandbox"])
    verdict = verdict_of(signed_with_predicate(document, good))
    assert verdict.reason is Reason.SANDBOX_MISMATCH
