"""Signing a Plugin manifest: what a plugin's publisher runs, and what tests sign with.

``dsse`` signs an in-toto Statement naming the artifact digest, with the normalised
sandbox as its predicate; ``hkp`` signs the artifact digest alone, as the HKP plugin
system's ``.sig`` files do.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope

from pluginguard import keys
from pluginguard.errors import InputError, shown
from pluginguard.manifest import DIGEST, optional
from pluginguard.sandbox import normalize_sandbox
from pluginguard.signature import DSSE_PAYLOAD_TYPE
from pluginguard.verify import SANDBOX_PREDICATE, STATEMENT_TYPE, canonical

PLACEHOLDER_DIGEST = "sha256:" + "0" * 64


def file_digest(stream: BinaryIO) -> str:
    """``sha256:<hex>`` of a file's bytes, read in chunks."""
    return "sha256:" + hashlib.file_digest(stream, "sha256").hexdigest()


def statement(*, digest: str, subject: str, sandbox: Mapping[str, Any]) -> bytes:
    """The canonical in-toto Statement that a dsse signature covers."""
    return canonical({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject, "digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicateType": SANDBOX_PREDICATE,
        "predicate": normalize_sandbox(sandbox),
    })


def sign_manifest(
    document: Mapping[str, Any],
    *,
    key: keys.PrivateKey,
    certificates: Sequence[x509.Certificate] = (),
    form: str = "dsse",
    digest: str | None = None,
) -> dict[str, Any]:
    """A copy of the Plugin ``document`` with ``spec.signature`` set.

    ``digest`` (``sha256:<hex>``), when given, replaces ``spec.artifact.digest`` first.
    Raises InputError when the manifest lacks what signing needs, or when its digest
    or sandbox is one that verification would refuse. The certificates are taken as
    they are (tests sign with broken ones); check_certificate is the publisher's check.
    """
    signed = copy.deepcopy(dict(document))
    spec = signed.setdefault("spec", {})
    if not isinstance(spec, dict):
        raise InputError("spec", "must be a mapping")
    artifact = spec.setdefault("artifact", {})
    if not isinstance(artifact, dict):
        raise InputError("spec.artifact", "must be a mapping")
    if digest:
        artifact["digest"] = digest
    if not isinstance(artifact.get("digest"), str):
        raise InputError("spec.artifact.digest", "is required to sign (or pass --artifact FILE)")
    if not DIGEST.fullmatch(artifact["digest"]):
        # Verification and the CRD accept nothing else: signing it would only make a
        # signature that nothing can check.
        raise InputError("spec.artifact.digest", f"{shown(artifact['digest'])} is not sha256: "
                                                 "and 64 lowercase hex digits")
    if artifact["digest"] == PLACEHOLDER_DIGEST:
        raise InputError("spec.artifact.digest", "is the all-zero placeholder; sign the real "
                                                 "artifact (--artifact FILE) or set its digest")
    # The hkp format does not sign the sandbox, yet a sandbox that does not compile
    # makes the Plugin unusable all the same.
    normalize_sandbox(spec.get("sandbox") or {})
    if form == "dsse":
        spec["signature"] = _dsse(signed, key=key, certificates=certificates)
    elif form == "hkp":
        spec["signature"] = {"format": "hkp", "hkp": hkp_signature(artifact["digest"], key=key, certificates=certificates)}
    else:
        raise InputError("--format", f"{form!r} is not dsse or hkp")
    return signed


def check_certificate(key: keys.PrivateKey, certificates: Sequence[x509.Certificate], *,
                      where: str = "certificate chain") -> None:
    """Raise InputError unless the first of ``certificates`` (the signer's, when there
    are any) holds the public key of ``key``: a signature by one key beside another
    key's certificate can never verify."""
    if not certificates:
        return
    signing_key = keys.fingerprint(key.public_key())
    try:
        certified = keys.fingerprint(certificates[0].public_key())  # type: ignore[arg-type]
    except ValueError as error:
        raise InputError(where, f"certificate 1: {error}") from error
    if certified != signing_key:
        raise InputError(
            where,
            f"certificate 1 ({certificates[0].subject.rfc4514_string()}) is for key "
            f"sha256:{certified[:16]}, not the signing key sha256:{signing_key[:16]}; "
            "give the signer's certificate first",
        )


def _dsse(document: Mapping[str, Any], *, key: keys.PrivateKey,
          certificates: Sequence[x509.Certificate]) -> dict[str, Any]:
    spec = document["spec"]
    subject = (optional(spec, "artifact.image", str, None, where="", prefix="spec")
               or optional(document, "metadata.name", str, "plugin", where=""))
    payload = statement(digest=spec["artifact"]["digest"], subject=subject,
                        sandbox=spec.get("sandbox") or {})
    pae = Envelope(payload, DSSE_PAYLOAD_TYPE, {}).pae()
    signature = {
        "format": "dsse",
        "dsse": {
            "payloadType": DSSE_PAYLOAD_TYPE,
            "payload": base64.b64encode(payload).decode(),
            "signatures": [{
                "keyid": keys.fingerprint(key.public_key()),
                "sig": base64.b64encode(keys.sign(key, pae)).decode(),
            }],
        },
    }
    if certificates:
        signature["certificateChain"] = pem_chain(certificates)
    return signature


def hkp_signature(digest: str, *, key: keys.PrivateKey,
                  certificates: Sequence[x509.Certificate] = ()) -> str:
    """An HKP ``.sig`` text: the SIGNATURE block, then the certificates, leaf first."""
    raw = keys.sign(key, bytes.fromhex(digest.removeprefix("sha256:")), prehashed=True)
    body = base64.encodebytes(raw).decode()
    return f"-----BEGIN SIGNATURE-----\n{body}-----END SIGNATURE-----\n" + pem_chain(certificates)


def pem_chain(certificates: Sequence[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


def write_keypair(key: keys.PrivateKey, prefix: str) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (mode 0600) and ``PREFIX.pub``; refuses to overwrite.

    Raises InputError for a prefix that names no file (empty, or ending in a
    directory), a file that exists already or one that cannot be written; nothing is
    left behind then.
    """
    if os.path.basename(prefix) in ("", ".", ".."):
        raise InputError("--out", f"{prefix!r} has no file name; give a prefix such as "
                                  "keys/release (for keys/release.key and keys/release.pub)")
    private, public = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (private, public):
        if path.exists() or path.is_symlink():
            raise InputError(str(path), "exists already; choose another --out prefix")
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    created: list[Path] = []
    path = private
    try:
        for path, pem, mode in ((private, private_pem, 0o600), (public, public_pem, 0o666)):
            _create(path, pem, mode=mode)
            created.append(path)
    except BaseException as error:
        # Only what this call created goes: a file that appeared at one of the names
        # since the check above is someone else's.
        for done in created:
            done.unlink(missing_ok=True)
        if isinstance(error, FileExistsError):
            raise InputError(str(path), "exists already; choose another --out prefix") from error
        if isinstance(error, OSError):
            raise InputError(str(path), f"cannot write: {error.strerror}") from error
        raise
    return private, public


def _create(path: Path, content: bytes, *, mode: int) -> None:
    """Create ``path`` holding ``content``; O_EXCL, so nothing there is followed or
    overwritten. A file left incomplete by a failed write is removed."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(content)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
