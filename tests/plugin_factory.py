"""Plugin manifests and trust policies for tests, signed by OpenSSL."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

from securesystemslib.dsse import Envelope

from pluginguard import signing
from pluginguard.signature import DSSE_PAYLOAD_TYPE
from tests.openssl_pki import sign_bytes

DIGEST = "sha256:" + "ab" * 32
SANDBOX: dict[str, Any] = {
    "seccomp": {"defaultAction": "errno", "allow": ["ptrace"], "deny": ["mount"]},
    "resources": {"maxMemoryMB": 256, "maxCPUPercent": 50, "maxProcesses": 64},
    "network": {"egress": "none"},
    "filesystem": {"readOnlyRootFilesystem": True, "writablePaths": ["/tmp"]},
}


def plugin(name: str = "ratelimit", *, namespace: str = "hkp", digest: str = DIGEST,
           sandbox: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "pluginguard.dev/v1alpha1",
        "kind": "Plugin",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "artifact": {"digest": digest, "image": "registry.example/hkp/ratelimit"},
            "sandbox": copy.deepcopy(SANDBOX if sandbox is None else sandbox),
        },
    }


def dsse_sign(document: dict[str, Any], key: Path, algorithm: str, *, keyid: str,
              chain_pem: str = "") -> dict[str, Any]:
    """Sign with OpenSSL over the DSSE pre-authentication encoding of our Statement."""
    signed = copy.deepcopy(document)
    spec = signed["spec"]
    payload = signing.statement(digest=spec["artifact"]["digest"], subject="ratelimit",
                                sandbox=spec["sandbox"])
    pae = Envelope(payload, DSSE_PAYLOAD_TYPE, {}).pae()
    spec["signature"] = {
        "format": "dsse",
        "dsse": {
            "payloadType": DSSE_PAYLOAD_TYPE,
            "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": keyid,
                            "sig": base64.b64encode(sign_bytes(key, algorithm, pae)).decode()}],
        },
    }
    if chain_pem:
        spec["signature"]["certificateChain"] = chain_pem
    return signed


def hkp_sign(document: dict[str, Any], key: Path, algorithm: str, *, chain_pem: str = "") -> dict[str, Any]:
    """An HKP .sig made by OpenSSL over the artifact's digest."""
    signed = copy.deepcopy(document)
    digest = bytes.fromhex(signed["spec"]["artifact"]["digest"].removeprefix("sha256:"))
    raw = sign_bytes(key, algorithm, digest, prehashed=True)
    sig = base64.encodebytes(raw).decode()
    signed["spec"]["signature"] = {
        "format": "hkp",
        "hkp": f"-----BEGIN SIGNATURE-----\n{sig}-----END SIGNATURE-----\n{chain_pem}",
    }
    return signed


def policy(name: str = "hkp-plugins", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "pluginguard.dev/v1alpha1",
        "kind": "PluginTrustPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def key_entry(name: str, public_pem_path: Path) -> dict[str, str]:
    return {"name": name, "publicKey": public_pem_path.read_text()}
