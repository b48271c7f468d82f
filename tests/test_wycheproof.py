"""The signature primitive against Project Wycheproof's test vectors.

The vectors are not part of this repository: they are read from
``../shared/testdata/wycheproof/`` beside it (CI puts a copy of ``shared/`` next to its
clone), or from ``$PLUGINGUARD_TESTDATA/wycheproof/``. A missing file fails the run; it is
never a reason to skip.

Each vector is one test, named by file and Wycheproof test case (``ecdsa-p256-tc42``), so
the summary line counts them. ``valid`` vectors must verify and ``invalid`` ones must
not. ``acceptable`` vectors are legal to accept or refuse; ACCEPTABLE records, per
Wycheproof flag, the decision PluginGuard takes, and a flag without a decision fails.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from pluginguard import keys

TESTDATA_ENV = "PLUGINGUARD_TESTDATA"
WYCHEPROOF = (
    Path(os.environ.get(TESTDATA_ENV)
         or Path(__file__).resolve().parents[1].parent / "shared" / "testdata")
    / "wycheproof"
)


@dataclass(frozen=True)
class Source:
    """One vector file and the algorithm name algorithm_of gives its keys."""

    prefix: str
    file: str
    algorithm: str

    @property
    def path(self) -> Path:
        return WYCHEPROOF / self.file


SOURCES = (
    Source("ed25519", "ed25519_test.json", "Ed25519"),
    Source("ecdsa-p256", "ecdsa_secp256r1_sha256_test.json", "ECDSA-P256"),
    Source("ecdsa-p384", "ecdsa_secp384r1_sha384_test.json", "ECDSA-P384"),
    Source("rsa-2048", "rsa_signature_2048_sha256_test.json", "RSA-2048"),
    Source("rsa-4096", "rsa_signature_4096_sha256_test.json", "RSA-4096"),
)

# Wycheproof marks a vector "acceptable" when a verifier may go either way. The only
# flag that carries it in these files is MissingNull (one vector in each RSA file): a
# PKCS#1 v1.5 DigestInfo whose AlgorithmIdentifier omits the NULL parameters. Old
# signers produced it, and accepting it is not known to be exploitable, but it is still
# a second encoding of one signature, and every signer PluginGuard supports writes the
# NULL. We refuse it: OpenSSL, under cryptography, compares the whole encoded DigestInfo.
ACCEPTABLE: dict[str, bool] = {"MissingNull": False}


@dataclass(frozen=True)
class Vector:
    source: Source
    group: int
    tc_id: int
    comment: str
    flags: tuple[str, ...]
    result: str
    public_key_pem: str
    message: bytes
    signature: bytes


def _document(source: Source) -> dict[str, Any]:
    if not source.path.is_file():
        pytest.fail(
            f"Wycheproof vectors not found: {source.path} is missing. The tests read them "
            "from ../shared/testdata/wycheproof/ beside the repository; copy shared/ there, "
            f"or set {TESTDATA_ENV} to the folder that holds wycheproof/.",
            pytrace=False,
        )
    document: dict[str, Any] = json.loads(source.path.read_text())
    return document


def _vectors(source: Source) -> list[Vector]:
    document = _document(source)
    return [
        Vector(
            source=source,
            group=index,
            tc_id=test["tcId"],
            comment=test["comment"],
            flags=tuple(test["flags"]),
            result=test["result"],
            public_key_pem=group["publicKeyPem"],
            message=bytes.fromhex(test["msg"]),
            signature=bytes.fromhex(test["sig"]),
        )
        for index, group in enumerate(document["testGroups"])
        for test in group["tests"]
    ]


def _cases() -> list[Any]:
    """One case per vector; a file that is missing becomes one case that fails."""
    cases = []
    for source in SOURCES:
        if not source.path.is_file():
            cases.append(pytest.param(source, None, id=f"{source.prefix}-missing"))
            continue
        cases += [
            pytest.param(source, vector, id=f"{source.prefix}-tc{vector.tc_id}")
            for vector in _vectors(source)
        ]
    return cases


def _groups() -> list[Any]:
    cases = []
    for source in SOURCES:
        if not source.path.is_file():
            cases.append(pytest.param(source, None, id=f"{source.prefix}-missing"))
            continue
        groups = _document(source)["testGroups"]
        cases += [
            pytest.param(
                source, group["publicKeyPem"], id=f"{source.prefix}-group{index}"
            )
            for index, group in enumerate(groups)
        ]
    return cases


@cache
def _key(pem: str) -> keys.PublicKey:
    return keys.load_public_key(pem, where="Wycheproof publicKeyPem")


@pytest.mark.parametrize("source, vector", _cases())
def test_vector(source: Source, vector: Vector | None) -> None:
    if vector is None:
        _document(source)  # fails, naming the missing file
        return
    accepted = keys.verify_signature(
        _key(vector.public_key_pem), vector.signature, vector.message
    )
    case = f"tc{vector.tc_id} ({vector.comment}; flags {', '.join(vector.flags)})"
    if vector.result == "valid":
        assert accepted, f"valid vector refused: {case}"
    elif vector.result == "invalid":
        assert not accepted, f"invalid vector accepted: {case}"
    else:
        undecided = [flag for flag in vector.flags if flag not in ACCEPTABLE]
        assert not undecided, (
            f"acceptable vector {case} has flags with no decision: {undecided}"
        )
        expected = all(ACCEPTABLE[flag] for flag in vector.flags)
        assert accepted is expected, (
            f"acceptable vector {case}: expected accepted={expected}"
        )


@pytest.mark.parametrize("source, public_key_pem", _groups())
def test_group_key_is_named_or_refused_by_algorithm_of(
    source: Source, public_key_pem: str | None
) -> None:
    """Keys get the algorithm name their file is about, except RSA keys with a small
    public exponent: rsa_signature_2048_sha256 has two groups with e=3 (its
    SmallPublicKey and EdgeCaseSignature vectors). Their signatures are mathematically
    valid, and test_vector checks that the primitive says so; algorithm_of refuses the
    keys, so no policy can ever reach that primitive with them."""
    if public_key_pem is None:
        _document(source)
        return
    key = _key(public_key_pem)
    if isinstance(key, rsa.RSAPublicKey) and key.public_numbers().e < 65537:
        with pytest.raises(keys.UnsupportedKey, match="exponent"):
            keys.algorithm_of(key)
    else:
        assert keys.algorithm_of(key) == source.algorithm


@pytest.mark.parametrize("source", SOURCES, ids=[s.prefix for s in SOURCES])
def test_every_vector_of_the_file_is_run(source: Source) -> None:
    """The file's own count matches what was collected; the split is printed (-s)."""
    document = _document(source)
    vectors = _vectors(source)
    assert len(vectors) == document["numberOfTests"]
    counts = {
        result: sum(v.result == result for v in vectors)
        for result in ("valid", "invalid", "acceptable")
    }
    print(
        f"{source.file}: {len(vectors)} vectors, "
        + ", ".join(f"{count} {result}" for result, count in counts.items())
    )
    assert counts["valid"] and counts["invalid"]


def test_small_exponent_groups_are_present() -> None:
    """The e=3 refusal above is exercised: the RSA-2048 file has such keys."""
    source = next(s for s in SOURCES if s.prefix == "rsa-2048")
    exponents = {
        _key(group["publicKeyPem"]).public_numbers().e  # type: ignore[union-attr]
        for group in _document(source)["testGroups"]
    }
    assert 3 in exponents and 65537 in exponents
