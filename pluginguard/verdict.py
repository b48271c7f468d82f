"""The outcome of verifying a plugin: one result type for the CLI, operator and webhook."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Reason(enum.StrEnum):
    """Why a plugin was, or was not, trusted. The set is closed: tooling matches on it."""

    VERIFIED = "Verified"
    SIGNATURE_MISSING = "SignatureMissing"
    MALFORMED_SIGNATURE = "MalformedSignature"
    SIGNATURE_INVALID = "SignatureInvalid"
    ALGORITHM_NOT_ALLOWED = "AlgorithmNotAllowed"
    UNTRUSTED_SIGNER = "UntrustedSigner"
    KEY_REVOKED = "KeyRevoked"
    DIGEST_MISMATCH = "DigestMismatch"
    SANDBOX_NOT_SIGNED = "SandboxNotSigned"
    SANDBOX_MISMATCH = "SandboxMismatch"
    CERTIFICATE_EXPIRED = "CertificateExpired"
    CERTIFICATE_REVOKED = "CertificateRevoked"
    REVOCATION_UNAVAILABLE = "RevocationUnavailable"
    CHAIN_TOO_LONG = "ChainTooLong"
    KEY_USAGE_INVALID = "KeyUsageInvalid"
    NO_MATCHING_POLICY = "NoMatchingPolicy"


class Enforcement(enum.StrEnum):
    """What a failed verification under a policy leads to, strictest first."""

    ENFORCE = "enforce"
    WARN = "warn"
    AUDIT = "audit"

    @property
    def strictness(self) -> int:
        return {"enforce": 2, "warn": 1, "audit": 0}[self.value]


@dataclass(frozen=True)
class Verdict:
    """Whether a plugin verified, why, and who signed it.

    ``message`` names the failing part ("certificate chain: leaf expired on ...").
    ``signer`` names the signer for a person; ``signer_key`` is the full fingerprint of
    its public key (``sha256:<64 hex>``), as ``revokedKeys`` takes it.
    ``policy`` and ``enforcement`` are those of the policy that decided the verdict.
    """

    verified: bool
    reason: Reason
    message: str
    algorithm: str | None = None
    signer: str | None = None
    chain: tuple[str, ...] = ()
    policy: str | None = None
    enforcement: Enforcement = Enforcement.ENFORCE
    digest: str | None = None
    signer_expires: datetime | None = None
    policies: tuple[str, ...] = field(default=())
    signer_key: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The JSON form the CLI prints and the operator publishes."""
        return {
            "verified": self.verified,
            "reason": self.reason.value,
            "message": self.message,
            "algorithm": self.algorithm,
            "signer": self.signer,
            "signerKey": self.signer_key,
            "chain": list(self.chain),
            "policy": self.policy,
            "enforcement": self.enforcement.value,
            "digest": self.digest,
            "signerExpires": (
                self.signer_expires.isoformat() if self.signer_expires else None
            ),
            "policies": list(self.policies),
        }
