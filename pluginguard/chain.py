"""Certificate chains: the path from a signer's certificate to a trusted root, and
whether any certificate on it has been revoked.

Path building is cryptography's (``cryptography.x509.verification``), with its WebPKI
profile relaxed in two places only: code-signing certificates carry no subject
alternative name, and the extended key usage we require is code signing, not TLS.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from pluginguard import keys
from pluginguard.policy import TrustPolicy
from pluginguard.verdict import Reason

# The path validator limits how far it will search whatever we ask; a policy's own
# bound is applied first and this one only stops pathological inputs.
_SEARCH_DEPTH = 8
_CODE_SIGNING_USAGES = (ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE)


class ChainRefused(Exception):
    """The chain does not lead to trust; ``reason`` says which rule it broke."""

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class ValidatedChain:
    certificates: tuple[x509.Certificate, ...]  # leaf first, trusted root last


def validate(
    certificates: Sequence[x509.Certificate], policy: TrustPolicy, *, at: datetime
) -> ValidatedChain:
    """Build and check the path from ``certificates[0]`` (the leaf) to a policy root.

    Checks, in order: validity periods, key usage, path to a root within the policy's
    length bound, then revocation. Raises ChainRefused with the matching reason.
    """
    leaf, intermediates = certificates[0], list(certificates[1:])
    if not policy.trusted_roots:
        raise ChainRefused(Reason.UNTRUSTED_SIGNER, _no_roots_message(policy))

    _check_validity(certificates, at)
    if policy.require_code_signing_eku:
        _check_code_signing(leaf)

    path = _build_path(leaf, intermediates, policy, at=at)

    check_revocation(path, policy, at=at)
    return ValidatedChain(tuple(path))


def _check_validity(certificates: Sequence[x509.Certificate], at: datetime) -> None:
    for position, certificate in enumerate(certificates):
        if certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc:
            continue  # valid; naming it is left to the refusals below
        role = "leaf" if position == 0 else f"intermediate {position}"
        name = certificate.subject.rfc4514_string()
        if at > certificate.not_valid_after_utc:
            expired = certificate.not_valid_after_utc.date().isoformat()
            raise ChainRefused(
                Reason.CERTIFICATE_EXPIRED,
                f"certificate chain: {role} {name} expired on {expired}",
            )
        if at < certificate.not_valid_before_utc:
            starts = certificate.not_valid_before_utc.isoformat()
            raise ChainRefused(
                Reason.CERTIFICATE_EXPIRED,
                f"certificate chain: {role} {name} is not valid before {starts}",
            )


def _check_code_signing(leaf: x509.Certificate) -> None:
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise ChainRefused(
            Reason.KEY_USAGE_INVALID,
            f"certificate chain: leaf {leaf.subject.rfc4514_string()} has no extended key usage; the policy requires codeSigning",
        ) from None
    if not any(usage in usages for usage in _CODE_SIGNING_USAGES):
        raise ChainRefused(
            Reason.KEY_USAGE_INVALID,
            f"certificate chain: leaf {leaf.subject.rfc4514_string()} is not a code-signing certificate "
            f"(extended key usage {', '.join(u._name for u in usages)})",
        )
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.digital_signature:
        raise ChainRefused(
            Reason.KEY_USAGE_INVALID,
            f"certificate chain: leaf {leaf.subject.rfc4514_string()} key usage does not include digitalSignature",
        )


def _build_path(
    leaf: x509.Certificate, intermediates: list[x509.Certificate], policy: TrustPolicy,
    *, at: datetime,
) -> list[x509.Certificate]:
    # The policy counts leaf and root; the validator counts only intermediates.
    allowed_intermediates = max(policy.max_chain_length - 2, 0)
    try:
        return _verifier(policy, at, allowed_intermediates).verify(leaf, intermediates).chain
    except VerificationError as error:
        first_error = error
    try:
        longer = _verifier(policy, at, _SEARCH_DEPTH).verify(leaf, intermediates).chain
    except VerificationError:
        raise ChainRefused(
            Reason.UNTRUSTED_SIGNER,
            f"certificate chain: {leaf.subject.rfc4514_string()} does not chain to a root "
            f"trusted by policy {policy.name} ({_explain(first_error)})",
        ) from first_error
    raise ChainRefused(
        Reason.CHAIN_TOO_LONG,
        f"certificate chain: the path has {len(longer)} certificates, "
        f"policy {policy.name} allows {policy.max_chain_length}",
    )


def _code_signing_or_absent(_policy: object, _cert: object,
                            usages: x509.ExtendedKeyUsage | None) -> None:
    if usages is not None and not any(u in usages for u in _CODE_SIGNING_USAGES):
        raise ValueError("extended key usage does not allow code signing")


@functools.cache
def _extension_policies(
    require_code_signing_eku: bool,
) -> tuple[ExtensionPolicy, ExtensionPolicy]:
    """The CA and end-entity extension policies; built once each, as they never change."""
    eku_check = _code_signing_or_absent if require_code_signing_eku else None
    ca_policy = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, eku_check
    )
    ee_policy = (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, eku_check)
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    )
    return ca_policy, ee_policy


def _verifier(policy: TrustPolicy, at: datetime, depth: int):  # type: ignore[no-untyped-def]
    ca_policy, ee_policy = _extension_policies(policy.require_code_signing_eku)
    return (
        PolicyBuilder()
        .store(Store(list(policy.trusted_roots)))
        .time(at)
        .max_chain_depth(depth)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )


def _explain(error: VerificationError) -> str:
    text = str(error).removeprefix("validation failed: ")
    if "Forbidden public key algorithm" in text and "Ed25519" in text:
        return "Ed25519 certificates are outside the path validator's algorithms; use an Ed25519 trusted key instead"
    # The validator appends a debug rendering of the certificate; the subject is already named.
    return text.split(" (encountered processing")[0]


def check_revocation(
    path: Sequence[x509.Certificate], policy: TrustPolicy, *, at: datetime
) -> None:
    """Check every certificate of ``path`` but the root against the policy's CRLs.

    A certificate whose issuer publishes no CRL among the sources is not checked; a
    source that could not be read, does not verify or is stale counts as unavailable.
    Raises ChainRefused(CertificateRevoked | RevocationUnavailable).
    """
    unreadable = [source for source in policy.crl_sources if source.crl is None]
    if unreadable and not policy.crl_allow_unavailable:
        raise ChainRefused(
            Reason.REVOCATION_UNAVAILABLE,
            f"revocation: CRL source {unreadable[0].origin} is unavailable ({unreadable[0].problem})",
        )
    for certificate, issuer in zip(path, path[1:]):
        for source in policy.crl_sources:
            crl = source.crl
            if crl is None or crl.issuer != certificate.issuer:
                continue
            if not _signed_by(crl, issuer):
                if policy.crl_allow_unavailable:
                    continue
                raise ChainRefused(
                    Reason.REVOCATION_UNAVAILABLE,
                    f"revocation: CRL {source.origin} for {issuer.subject.rfc4514_string()} "
                    "is not signed by its issuer",
                )
            # A revocation stays true after the list goes stale: check it before staleness.
            revoked = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
            if revoked is not None:
                raise ChainRefused(
                    Reason.CERTIFICATE_REVOKED,
                    f"revocation: {keys.describe_certificate(certificate)} was revoked on "
                    f"{revoked.revocation_date_utc.date().isoformat()} (CRL {source.origin})",
                )
            stale = crl.next_update_utc is not None and at > crl.next_update_utc
            if stale and not policy.crl_allow_unavailable:
                raise ChainRefused(
                    Reason.REVOCATION_UNAVAILABLE,
                    f"revocation: CRL {source.origin} for {issuer.subject.rfc4514_string()} "
                    f"is stale (nextUpdate {crl.next_update_utc.isoformat()})",  # type: ignore[union-attr]
                )


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except TypeError:
        return False


def _no_roots_message(policy: TrustPolicy) -> str:
    message = f"certificate chain: policy {policy.name} trusts no root certificates"
    if policy.unavailable:
        message += f" ({'; '.join(policy.unavailable)})"
    return message
