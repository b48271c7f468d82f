"""Public keys and certificates: loading them, naming their algorithm, checking a signature.

The five algorithms PluginGuard accepts are named by the key, never by the signature:
a signature cannot talk a verifier into another algorithm.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from pluginguard.errors import InputError

ALGORITHMS = ("RSA-2048", "RSA-4096", "Ed25519", "ECDSA-P256", "ECDSA-P384")

PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

# RSA public exponents below this invite well-known attacks (e=3 and friends); every
# mainstream tool has generated 65537 for decades.
_MIN_RSA_EXPONENT = 65537
_EC_HASH = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384}
# The verification schemes, built once: these objects only name an algorithm and hold
# no state, so every verification may share them.
_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()
_PREHASHED_SHA256 = Prehashed(_SHA256)
_ECDSA = {curve: ec.ECDSA(digest()) for curve, digest in _EC_HASH.items()}
_ECDSA_PREHASHED = ec.ECDSA(_PREHASHED_SHA256)


class UnsupportedKey(ValueError):
    """A key of a type or parameter PluginGuard never verifies with."""


def algorithm_of(key: object) -> str:
    """The algorithm name of ``key``, e.g. ``RSA-2048`` or ``ECDSA-P256``.

    Raises UnsupportedKey for a key that no policy could allow (DSA, a tiny RSA exponent).
    The name may still fall outside ALGORITHMS (``RSA-3072``); policies decide on that.
    """
    if isinstance(key, rsa.RSAPublicKey):
        exponent = key.public_numbers().e
        if exponent < _MIN_RSA_EXPONENT or exponent % 2 == 0:
            raise UnsupportedKey(f"RSA public exponent {exponent} is not acceptable")
        return f"RSA-{key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = key.curve.name
        return {"secp256r1": "ECDSA-P256", "secp384r1": "ECDSA-P384"}.get(
            curve, f"ECDSA-{curve}"
        )
    raise UnsupportedKey(f"{type(key).__name__.removeprefix('_')} keys are not supported")


def fingerprint(key: PublicKey) -> str:
    """Hex SHA-256 of the key's DER SubjectPublicKeyInfo: its keyid and revocation handle."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


# cryptography's messages for unloadable input are its parsers' (a FAQ link, a Rust debug
# rendering of the ASN.1 error); the loaders below say instead which part is wrong,
# from a PEM scan of their own. Only the BEGIN line is a pattern (see signature.py).
_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_PUBLIC_LABELS = ("PUBLIC KEY", "RSA PUBLIC KEY", "CERTIFICATE")
_PRIVATE_LABELS = ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY")


def pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    """The label and decoded body of every PEM block in ``data``, text between them
    ignored. Raises ValueError saying which block is malformed."""
    blocks = []
    position = 0
    while (begin := _PEM_BEGIN.search(data, position)) is not None:
        label = begin[1].decode()
        end_line = f"-----END {label}-----".encode()
        end = data.find(end_line, begin.end())
        if end < 0:
            raise ValueError(f"the {label} block has no -----END {label}----- line")
        lines = data[begin.end():end].strip().splitlines()
        if lines and b":" in lines[0]:
            # RFC 1421 headers (Proc-Type, DEK-Info) run up to a blank line.
            blank = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
            lines = lines[blank:]
        try:
            body = binascii.a2b_base64(b"".join(b"".join(lines).split()), strict_mode=True)
        except binascii.Error as error:
            raise ValueError(f"the {label} block is not valid base64") from error
        blocks.append((label, body))
        position = end + len(end_line)
    return blocks


def pem_problem(data: bytes, labels: Sequence[str], *, what: str) -> str | None:
    """What is wrong with the PEM framing of ``data``, which should hold ``what`` (a
    block of one of ``labels``); None when the framing is sound and the problem lies
    inside a block."""
    try:
        blocks = pem_blocks(data)
    except ValueError as error:
        return str(error)
    if not blocks:
        return "no PEM block (-----BEGIN ...-----) found"
    if not any(label in labels for label, _ in blocks):
        # The label in lower case: a message is no place for a PEM armour line.
        return f"holds a {blocks[0][0].lower()} block, not {what}"
    return None


def load_public_key(pem: str | bytes, *, where: str) -> PublicKey:
    """Parse one PEM public key (or the key of a PEM certificate).

    Raises InputError naming ``where`` when the PEM is not a usable public key.
    """
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except UnsupportedAlgorithm as error:
        raise InputError(where, "not a PEM public key: its key type is not supported") from error
    except ValueError as error:
        problem = pem_problem(data, _PUBLIC_LABELS, what="a public key or certificate")
        problem = problem or "its DER is not a valid public key"
        raise InputError(where, f"not a PEM public key: {problem}") from error
    if not isinstance(key, PublicKey):
        raise InputError(where, f"{type(key).__name__.removeprefix('_')} keys are not supported")
    return key


def load_certificates(pem: str | bytes, *, where: str) -> list[x509.Certificate]:
    """Parse every CERTIFICATE block of a PEM text; raises InputError if there is none,
    or naming the first certificate that cannot be used."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise InputError(where, _certificates_problem(data)) from error
    for index, certificate in enumerate(certificates):
        problem = certificate_problem(certificate)
        if problem:
            raise InputError(where, f"certificate {index + 1}: {problem}")
    return certificates


def _certificates_problem(data: bytes) -> str:
    problem = pem_problem(data, ("CERTIFICATE",), what="certificates")
    if problem:
        return f"not a PEM certificate list: {problem}"
    blocks = [der for label, der in pem_blocks(data) if label == "CERTIFICATE"]
    for index, der in enumerate(blocks):
        try:
            x509.load_der_x509_certificate(der)
        except ValueError:
            return f"certificate {index + 1} is not valid DER/X.509"
    return "not a PEM certificate list"


def certificate_problem(certificate: x509.Certificate) -> str | None:
    """Why ``certificate`` cannot be used, or None when it can.

    cryptography parses names, extensions and the key on first use. Reading them where a
    certificate enters PluginGuard turns a malformed one into a refusal there, instead
    of an exception halfway through chain validation.
    """
    try:
        _ = certificate.subject, certificate.issuer
    except ValueError:
        return "its subject or issuer name is not valid DER"
    try:
        _ = certificate.extensions
    except x509.DuplicateExtension as error:
        return f"extension {error.oid.dotted_string} appears twice"
    except ValueError:
        return "its extensions are not valid DER"
    try:
        certificate.public_key()
    except UnsupportedAlgorithm:
        return "its public key is of an unsupported type"
    except ValueError:
        return "its public key is not valid"
    return None


def verify_signature(
    key: PublicKey, signature: bytes, message: bytes, *, prehashed: bool = False
) -> bool:
    """Check ``signature`` over ``message`` with the scheme the key's algorithm implies.

    RSA: PKCS#1 v1.5 with SHA-256. ECDSA: DER signature, SHA-256 on P-256, SHA-384 on
    P-384. Ed25519: pure. With ``prehashed``, ``message`` is already a SHA-256 digest
    (the HKP format signs the artifact's digest); Ed25519 then signs those 32 bytes.
    Returns False for any signature that does not verify, whatever its shape.
    """
    try:
        if isinstance(key, rsa.RSAPublicKey):
            algorithm = _PREHASHED_SHA256 if prehashed else _SHA256
            key.verify(signature, message, _PKCS1V15, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            scheme = _ECDSA[key.curve.name]  # KeyError: a curve we never verify on
            if prehashed:
                scheme = _ECDSA_PREHASHED
            key.verify(signature, message, scheme)
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            return False
    except (InvalidSignature, ValueError, KeyError):
        return False
    return True


def sign(key: PrivateKey, message: bytes, *, prehashed: bool = False) -> bytes:
    """Sign ``message`` with the scheme verify_signature expects for this key."""
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = Prehashed(hashes.SHA256()) if prehashed else hashes.SHA256()
        return key.sign(message, padding.PKCS1v15(), algorithm)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        digest: hashes.HashAlgorithm = _EC_HASH[key.curve.name]()
        if prehashed:
            digest = Prehashed(hashes.SHA256())
        return key.sign(message, ec.ECDSA(digest))
    return key.sign(message)


def generate_private_key(algorithm: str) -> PrivateKey:
    """A new private key for one of ALGORITHMS (case-insensitive)."""
    name = algorithm.upper()
    if name.startswith("RSA-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(name[4:]))
    if name == "ED25519":
        return ed25519.Ed25519PrivateKey.generate()
    curves = {"ECDSA-P256": ec.SECP256R1(), "ECDSA-P384": ec.SECP384R1()}
    return ec.generate_private_key(curves[name])


def load_private_key(pem: bytes, *, where: str, password: bytes | None = None) -> PrivateKey:
    """Parse a PEM private key; raises InputError naming ``where`` when unusable."""
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except TypeError as error:
        # cryptography says TypeError for a missing (or needless) password.
        problem = "it is encrypted; decrypt it first" if password is None else str(error)
        raise InputError(where, f"not a usable PEM private key: {problem}") from error
    except UnsupportedAlgorithm as error:
        raise InputError(
            where, "not a usable PEM private key: its key type is not supported"
        ) from error
    except ValueError as error:
        problem = pem_problem(pem, _PRIVATE_LABELS, what="a private key")
        problem = problem or "its DER is not a valid private key"
        raise InputError(where, f"not a usable PEM private key: {problem}") from error
    if not isinstance(key, PrivateKey):
        raise InputError(where, f"{type(key).__name__.removeprefix('_')} keys are not supported")
    try:
        algorithm = algorithm_of(key.public_key())
    except UnsupportedKey as error:
        raise InputError(where, str(error)) from error
    if algorithm not in ALGORITHMS:
        # Signing with it would only produce signatures that no policy can accept.
        raise InputError(where, f"{algorithm} keys cannot sign plugins; use one of "
                                + ", ".join(ALGORITHMS))
    return key


def describe_certificate(certificate: x509.Certificate) -> str:
    """``CN=...,O=... serial 0x1f``: how a certificate signer is named in messages."""
    return f"{certificate.subject.rfc4514_string()} serial {certificate.serial_number:#x}"


def describe_chain(chain: Sequence[x509.Certificate]) -> tuple[str, ...]:
    return tuple(certificate.subject.rfc4514_string() for certificate in chain)
