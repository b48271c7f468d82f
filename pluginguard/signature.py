"""The two signature formats a Plugin may carry, parsed into what a verifier needs.

``dsse``: a DSSE v1 envelope (https://github.com/secure-systems-lab/dsse) whose signatures
cover the pre-authentication encoding of an in-toto Statement. ``hkp``: the HKP plugin
system's ``.sig`` file, a PEM SIGNATURE block over the artifact's SHA-256 digest followed by
the signer's CERTIFICATE blocks.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from securesystemslib.dsse import Envelope

from pluginguard import keys
from pluginguard.errors import PluginGuardError

DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"
# Only the BEGIN line is a pattern; its END is then found with str.find. One regular
# expression spanning both (with a back-reference to the label) rescans the rest of the
# text for every unterminated BEGIN: quadratic, minutes for a text the API server admits.
_PEM_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*?\n")


class MalformedSignature(PluginGuardError):
    """A signature field that cannot be parsed; the message names the field."""


@dataclass(frozen=True)
class SignatureEntry:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class ParsedSignature:
    """What was signed, by which signatures, and the certificates that came along.

    ``message`` is the exact byte string the signatures cover; ``prehashed`` says that it
    is a SHA-256 digest rather than the data itself.
    """

    format: str
    message: bytes
    prehashed: bool
    signatures: tuple[SignatureEntry, ...]
    certificates: tuple[x509.Certificate, ...]
    payload: bytes | None = None


def is_present(signature: Mapping[str, Any]) -> bool:
    """Whether a Plugin's ``spec.signature`` carries any signature at all."""
    return bool(signature.get("dsse") or signature.get("hkp"))


def parse(signature: Mapping[str, Any], *, digest_hex: str) -> ParsedSignature:
    """Parse ``spec.signature``; raises MalformedSignature naming the field at fault."""
    form = signature.get("format") or ("hkp" if signature.get("hkp") else "dsse")
    if form == "dsse":
        chain = _certificates(signature.get("certificateChain"), "spec.signature.certificateChain")
        return _parse_dsse(signature.get("dsse"), chain)
    if form == "hkp":
        return _parse_hkp(signature.get("hkp"), digest_hex)
    raise MalformedSignature(f"spec.signature.format: {form!r} is not dsse or hkp")


def _parse_dsse(envelope: Any, chain: tuple[x509.Certificate, ...]) -> ParsedSignature:
    where = "spec.signature.dsse"
    if not isinstance(envelope, Mapping):
        raise MalformedSignature(f"{where}: a DSSE envelope (payloadType, payload, signatures) is required")
    payload_type = envelope.get("payloadType")
    if payload_type != DSSE_PAYLOAD_TYPE:
        raise MalformedSignature(f"{where}.payloadType must be {DSSE_PAYLOAD_TYPE}, not {payload_type!r}")
    payload = _base64(envelope.get("payload"), f"{where}.payload")
    entries = envelope.get("signatures")
    if not isinstance(entries, list) or not entries:
        raise MalformedSignature(f"{where}.signatures must be a non-empty list")
    signatures = []
    for index, entry in enumerate(entries):
        place = f"{where}.signatures[{index}]"
        if not isinstance(entry, Mapping):
            raise MalformedSignature(f"{place} must be a mapping with keyid and sig")
        keyid = entry.get("keyid") or ""
        if not isinstance(keyid, str):
            raise MalformedSignature(f"{place}.keyid must be a string")
        signatures.append(SignatureEntry(keyid, _base64(entry.get("sig"), f"{place}.sig")))
    message = Envelope(payload, payload_type, {}).pae()
    return ParsedSignature("dsse", message, False, tuple(signatures), chain, payload)


def _parse_hkp(text: Any, digest_hex: str) -> ParsedSignature:
    where = "spec.signature.hkp"
    if not isinstance(text, str) or not text.strip():
        raise MalformedSignature(f"{where}: the .sig file's PEM text is required")
    blocks = _pem_blocks(text, where)
    signature_blocks: list[bytes] = []
    certificate_blocks: list[bytes] = []
    for label, der in blocks:
        if label == "SIGNATURE":
            signature_blocks.append(der)
        elif label == "CERTIFICATE":
            certificate_blocks.append(der)
    if len(signature_blocks) != 1:
        raise MalformedSignature(f"{where}: expected one SIGNATURE block, found {len(signature_blocks)}")
    if len(signature_blocks) + len(certificate_blocks) != len(blocks):
        unknown = sorted({label for label, _ in blocks} - {"SIGNATURE", "CERTIFICATE"})
        raise MalformedSignature(f"{where}: unexpected PEM block {unknown[0]}")
    certificates = [
        _certificate(der, f"{where}: CERTIFICATE block {index + 1}")
        for index, der in enumerate(certificate_blocks)
    ]
    return ParsedSignature(
        "hkp",
        bytes.fromhex(digest_hex),
        True,
        (SignatureEntry("", signature_blocks[0]),),
        tuple(certificates),
    )


def _certificates(pem: Any, where: str) -> tuple[x509.Certificate, ...]:
    if pem is None or pem == "":
        return ()
    if not isinstance(pem, str):
        raise MalformedSignature(f"{where} must be PEM text")
    certificates = []
    for index, (label, der) in enumerate(_pem_blocks(pem, where)):
        if label != "CERTIFICATE":
            raise MalformedSignature(f"{where}: block {index + 1} is {label}, not CERTIFICATE")
        certificates.append(_certificate(der, f"{where}: certificate {index + 1}"))
    return tuple(certificates)


def _certificate(der: bytes, where: str) -> x509.Certificate:
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError as error:
        # cryptography's message is the parser's debug form; say what it means.
        raise MalformedSignature(f"{where} is not valid DER/X.509") from error
    problem = keys.certificate_problem(certificate)
    if problem:
        raise MalformedSignature(f"{where}: {problem}")
    return certificate


def _pem_blocks(text: str, where: str) -> list[tuple[str, bytes]]:
    blocks = []
    position = 0
    while (begin := _PEM_BEGIN.search(text, position)) is not None:
        label = begin[1]
        end_line = f"-----END {label}-----"
        end = text.find(end_line, begin.end())
        if end < 0:
            raise MalformedSignature(f"{where}: {label} block has no {end_line} line")
        body = "".join(text[begin.end():end].split())
        try:
            blocks.append((label, binascii.a2b_base64(body, strict_mode=True)))
        except ValueError as error:  # binascii.Error, or a character outside ASCII
            raise MalformedSignature(f"{where}: {label} block is not valid base64") from error
        position = end + len(end_line)
    if not blocks:
        raise MalformedSignature(f"{where}: no PEM block found")
    return blocks


def _base64(value: Any, where: str) -> bytes:
    """DSSE fields are standard base64; URL-safe base64 is accepted as the spec allows."""
    if not isinstance(value, str) or not value:
        raise MalformedSignature(f"{where} must be a non-empty base64 string")
    # Map the URL-safe alphabet onto the standard one, then decode strictly: a stray
    # character is an error, never silently dropped.
    standard = value.replace("-", "+").replace("_", "/")
    standard += "=" * (-len(standard) % 4)
    try:
        # What base64.b64decode(validate=True) does, without its wrapper.
        return binascii.a2b_base64(standard, strict_mode=True)
    except (binascii.Error, ValueError) as error:
        raise MalformedSignature(f"{where} is not valid base64") from error
