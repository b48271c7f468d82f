"""Loading keys and certificates: what a message says when one cannot be used."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pluginguard import keys
from pluginguard.errors import InputError

KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC_PEM = KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
PRIVATE_PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)


def block(label: str, body: bytes) -> bytes:
    return f"-----BEGIN {label}-----\n{base64.b64encode(body).decode()}\n-----END {label}-----\n".encode()


def message(load, data: bytes) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError) as raised:
        load(data, where="f.pem")
    text = str(raised.value)
    # None of cryptography's own text: its FAQ link, its ASN.1 parser's debug output.
    assert "cryptography.io" not in text and "ParseError" not in text and "Tag {" not in text
    assert "\n" not in text
    return text


@pytest.mark.parametrize("data, problem", [
    (b"garbage", "no PEM block (-----BEGIN ...-----) found"),
    (block("PUBLIC KEY", b"\x02\x01\x00"), "its DER is not a valid public key"),
    (b"-----BEGIN PUBLIC KEY-----\nAA!A\n-----END PUBLIC KEY-----\n",
     "the PUBLIC KEY block is not valid base64"),
    (b"-----BEGIN PUBLIC KEY-----\nAAAA\n", "the PUBLIC KEY block has no -----END PUBLIC KEY----- line"),
    (PRIVATE_PEM, "holds a private key block, not a public key or certificate"),
])
def test_an_unusable_public_key_is_described_in_a_few_words(data: bytes, problem: str) -> None:
    assert message(keys.load_public_key, data) == f"f.pem: not a PEM public key: {problem}"


@pytest.mark.parametrize("data, problem", [
    (b"garbage", "no PEM block (-----BEGIN ...-----) found"),
    (block("PRIVATE KEY", b"\x02\x01\x00"), "its DER is not a valid private key"),
    (PUBLIC_PEM, "holds a public key block, not a private key"),
    (KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                       serialization.BestAvailableEncryption(b"secret")),
     "it is encrypted; decrypt it first"),
])
def test_an_unusable_private_key_is_described_in_a_few_words(data: bytes, problem: str) -> None:
    text = message(keys.load_private_key, data)
    assert text == f"f.pem: not a usable PEM private key: {problem}"


def test_the_certificate_that_is_not_x509_is_counted() -> None:
    from tests.test_hostile_input import leaf_of

    good = leaf_of(KEY).public_bytes(serialization.Encoding.PEM)
    text = message(keys.load_certificates, good + block("CERTIFICATE", b"\x30\x03\x02\x01\x01"))
    assert text == "f.pem: certificate 2 is not valid DER/X.509"
    text = message(keys.load_certificates, PUBLIC_PEM)
    assert text == "f.pem: not a PEM certificate list: holds a public key block, not certificates"
