"""The webhook's serving certificate: read from files (cert-manager's, or an admin's),
or built in, kept in a Secret by the webhook itself.

In the built-in mode the webhook makes a CA and a serving certificate, stores both in
one Secret, publishes the CA as the ``caBundle`` of its webhook configurations and
renews the certificate when a third of its lifetime is left. Replicas coordinate
through the API server alone: the Secret is created only if absent and replaced only
at the resourceVersion it was read at, so the loser of any race reads the winner's
Secret, and every replica ends up serving a certificate from the one CA.

Either way, a new certificate is loaded into the listening SSLContext in place: new
connections get it, open ones keep theirs, nothing restarts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pluginguard.errors import InputError, PluginGuardError

log = logging.getLogger(__name__)

CA_LIFETIME = datetime.timedelta(days=5 * 365)
SERVING_LIFETIME = datetime.timedelta(days=365)
#: Renew a certificate once less than this share of its lifetime is left.
RENEW_WHEN_LEFT = 1 / 3
#: How often the webhook looks at its certificate (files or Secret) for a newer one,
#: and sets its caBundle again (a configuration may have been replaced meanwhile).
CHECK_INTERVAL = 60.0
#: How soon to look again while a webhook configuration is not there yet (helm creates
#: them after the Deployment) or the last look failed.
RETRY_INTERVAL = 2.0
FIELD_MANAGER = "pluginguard-webhook"
# Certificates start a little in the past, so that a node whose clock lags still
# accepts them.
_BACKDATE = datetime.timedelta(minutes=5)
_WRITE_ATTEMPTS = 5

# The Secret's keys: tls.crt and tls.key as a kubernetes.io/tls Secret names them,
# ca.crt as cert-manager does, and the CA's key so that any replica can renew.
CERT_KEY, KEY_KEY, CA_KEY, CA_PRIVATE_KEY = "tls.crt", "tls.key", "ca.crt", "ca.key"


class TlsError(PluginGuardError):
    """The serving certificate could not be made, stored, published or loaded."""


# --- certificates -----------------------------------------------------------------


@dataclass(frozen=True)
class WebhookCertificates:
    """A CA, the serving certificate it signed, and the CAs the API server should trust.

    ``retired_cas`` are earlier CAs, still in the bundle until they expire, so that a
    replica that still serves a certificate they signed is trusted during a CA change.
    """

    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    retired_cas: tuple[x509.Certificate, ...] = field(default=())

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _private_pem(self.key)

    @property
    def ca_bundle_pem(self) -> bytes:
        """The current CA, then the retired ones: what ``caBundle`` holds."""
        return b"".join(
            ca.public_bytes(serialization.Encoding.PEM)
            for ca in (self.ca_cert, *self.retired_cas)
        )

    def secret_data(self) -> dict[str, str]:
        """The Secret's ``data``: each key's PEM, base64-encoded."""
        return {
            key: base64.b64encode(value).decode()
            for key, value in (
                (CERT_KEY, self.cert_pem),
                (KEY_KEY, self.key_pem),
                (CA_KEY, self.ca_bundle_pem),
                (CA_PRIVATE_KEY, _private_pem(self.ca_key)),
            )
        }

    @classmethod
    def from_secret_data(cls, data: dict[str, str] | None) -> WebhookCertificates:
        """Read what ``secret_data`` wrote.

        Raises TlsError naming the key that is missing or does not parse.
        """
        data = data or {}
        pems: dict[str, bytes] = {}
        for key in (CERT_KEY, KEY_KEY, CA_KEY, CA_PRIVATE_KEY):
            if not data.get(key):
                raise TlsError(f"the Secret has no {key}")
            try:
                pems[key] = base64.b64decode(data[key], validate=True)
            except ValueError as error:
                raise TlsError(f"the Secret's {key} is not base64: {error}") from error
        try:
            cas = x509.load_pem_x509_certificates(pems[CA_KEY])
            cert = x509.load_pem_x509_certificate(pems[CERT_KEY])
            key = serialization.load_pem_private_key(pems[KEY_KEY], None)
            ca_key = serialization.load_pem_private_key(pems[CA_PRIVATE_KEY], None)
        except ValueError as error:
            raise TlsError(
                f"the Secret holds a PEM that does not parse: {error}"
            ) from error
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            ca_key, ec.EllipticCurvePrivateKey
        ):
            raise TlsError("the Secret's keys are not ECDSA keys")
        return cls(cas[0], ca_key, cert, key, tuple(cas[1:]))


def issue(
    names: Sequence[str],
    *,
    previous: WebhookCertificates | None = None,
    now: datetime.datetime | None = None,
) -> WebhookCertificates:
    """A new serving certificate for ``names`` (DNS names or IP addresses).

    It is signed by ``previous``'s CA while that CA has more than a third of its
    lifetime left; otherwise by a new CA, and ``previous``'s CA stays in the bundle.

    Raises TlsError if ``names`` is empty.
    """
    if not names:
        raise TlsError(
            "a serving certificate needs at least one DNS name or IP address"
        )
    now = now or _now()
    retired: tuple[x509.Certificate, ...] = ()
    if previous is not None and not _due(previous.ca_cert, now):
        ca_cert, ca_key = previous.ca_cert, previous.ca_key
        retired = previous.retired_cas
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key, now)
        if previous is not None:
            retired = (previous.ca_cert, *previous.retired_cas)
    retired = tuple(ca for ca in retired if _not_after(ca) > now)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _serving_certificate(names, key, ca_cert=ca_cert, ca_key=ca_key, now=now)
    return WebhookCertificates(ca_cert, ca_key, cert, key, retired)


def renewal_reason(
    certificates: WebhookCertificates,
    names: Sequence[str],
    *,
    now: datetime.datetime | None = None,
) -> str | None:
    """Why ``certificates`` must be renewed, or None while they are good."""
    now = now or _now()
    if _due(certificates.ca_cert, now):
        return f"the CA expires on {_not_after(certificates.ca_cert):%Y-%m-%d}"
    if _due(certificates.cert, now):
        return f"the serving certificate expires on {_not_after(certificates.cert):%Y-%m-%d}"
    if _san(certificates.cert) != {str(name) for name in names}:
        return f"the serving certificate is for {sorted(_san(certificates.cert))}"
    try:
        certificates.cert.verify_directly_issued_by(certificates.ca_cert)
    except (ValueError, TypeError, InvalidSignature) as error:
        return f"the serving certificate was not signed by the CA: {error or 'bad signature'}"
    if certificates.cert.public_key() != certificates.key.public_key():
        return "the serving key does not match the serving certificate"
    return None


def _due(certificate: x509.Certificate, now: datetime.datetime) -> bool:
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return end - now < (end - start) * RENEW_WHEN_LEFT


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey, now: datetime.datetime
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PluginGuard"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"PluginGuard webhook CA {now:%Y-%m-%d %H:%M:%S}"
            ),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def _serving_certificate(
    names: Sequence[str],
    key: ec.EllipticCurvePrivateKey,
    *,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
) -> x509.Certificate:
    # Never outlive the CA: a chain is only as valid as its shortest link.
    not_after = min(now + SERVING_LIFETIME, _not_after(ca_cert))
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _san(certificate: x509.Certificate) -> set[str]:
    try:
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n) for n in names.get_values_for_type(x509.DNSName)} | {
        str(n) for n in names.get_values_for_type(x509.IPAddress)
    }


def _not_after(certificate: x509.Certificate) -> datetime.datetime:
    return certificate.not_valid_after_utc


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# --- the Secret and the webhook configurations --------------------------------------


class CertificateSecret:
    """The built-in mode's Secret, and the webhook configurations that trust its CA.

    ``configurations`` names the ValidatingWebhookConfiguration and the
    MutatingWebhookConfiguration to keep the ``caBundle`` of (the chart gives both the
    same name); a kind with no configuration of that name is left alone.
    """

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        name: str,
        names: Sequence[str],
        configurations: Sequence[str] = (),
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.names = list(names)
        self.configurations = list(configurations)
        #: Whether the last publish found every configuration (under either kind).
        self.published = not self.configurations
        self._core = client.CoreV1Api(api)
        self._registration = client.AdmissionregistrationV1Api(api)

    def refresh(self) -> tuple[bytes, bytes]:
        """Make sure the Secret holds good certificates and the configurations trust
        their CA; return the serving certificate and key (PEM) to load.

        The bundle is published before the certificate is returned, so no replica
        serves a certificate from a CA the API server does not trust yet.

        Raises TlsError when the Secret cannot be read or written, or a configuration
        cannot be patched.
        """
        certificates = self.ensure()
        self.publish(certificates)
        return certificates.cert_pem, certificates.key_pem

    def ensure(self, *, now: datetime.datetime | None = None) -> WebhookCertificates:
        """The Secret's certificates; created if the Secret is absent or holds none,
        renewed if due. Of replicas racing to write it, one wins and the others read
        what it wrote.

        Raises TlsError when the Secret cannot be read or written.
        """
        where = f"Secret {self.namespace}/{self.name}"
        for _ in range(_WRITE_ATTEMPTS):
            current, secret = self._read()
            reason = "it holds no certificate yet"
            if current is not None:
                reason = renewal_reason(current, self.names, now=now) or ""
                if not reason:
                    return current
            fresh = issue(self.names, previous=current, now=now)
            if self._write(fresh, secret):
                log.info(
                    "wrote a new webhook certificate to %s (%s); valid until %s",
                    where,
                    reason,
                    f"{_not_after(fresh.cert):%Y-%m-%d}",
                )
                return fresh
        raise TlsError(
            f"{where}: kept changing under {_WRITE_ATTEMPTS} attempts to write it"
        )

    def publish(self, certificates: WebhookCertificates) -> None:
        """Set every webhook's ``caBundle`` in the configurations to the Secret's CAs.

        Raises TlsError when a configuration cannot be read or patched.
        """
        bundle = base64.b64encode(certificates.ca_bundle_pem).decode()
        kinds = (
            (
                "ValidatingWebhookConfiguration",
                self._registration.read_validating_webhook_configuration,
                self._registration.patch_validating_webhook_configuration,
            ),
            (
                "MutatingWebhookConfiguration",
                self._registration.read_mutating_webhook_configuration,
                self._registration.patch_mutating_webhook_configuration,
            ),
        )
        found = set()
        for name in self.configurations:
            for kind, read, patch in kinds:
                try:
                    configuration = read(name)
                    found.add(name)
                    operations = list(_bundle_patch(configuration, bundle))
                    if operations:
                        patch(name, operations, field_manager=FIELD_MANAGER)
                        log.info("set the caBundle of %s %s", kind, name)
                except client.ApiException as error:
                    if error.status == 404:
                        continue
                    raise TlsError(
                        f"{kind} {name}: cannot set its caBundle: "
                        f"{error.status} {error.reason}"
                    ) from error
        missing = [name for name in self.configurations if name not in found]
        if missing and self.published:
            log.warning("webhook configuration %s not found", ", ".join(missing))
        self.published = not missing

    def _read(self) -> tuple[WebhookCertificates | None, client.V1Secret | None]:
        """The certificates and the Secret they came from; (None, None) when there is
        no Secret, and (None, secret) when it holds nothing usable, to be overwritten."""
        try:
            secret = self._core.read_namespaced_secret(self.name, self.namespace)
        except client.ApiException as error:
            if error.status == 404:
                return None, None
            raise TlsError(
                f"Secret {self.namespace}/{self.name}: cannot read it: "
                f"{error.status} {error.reason}"
            ) from error
        if not secret.data:
            return None, secret
        try:
            return WebhookCertificates.from_secret_data(secret.data), secret
        except TlsError as error:
            log.warning(
                "Secret %s/%s: %s; replacing it", self.namespace, self.name, error
            )
            return None, secret

    def _write(
        self, certificates: WebhookCertificates, current: client.V1Secret | None
    ) -> bool:
        """Create the Secret (``current`` None) or rewrite ``current``'s data at its
        resourceVersion; False if another writer got there first.

        An existing Secret is patched, not replaced: the webhook then owns only its
        data, and the chart that made the Secret keeps owning the rest (a server-side
        apply by ``helm upgrade`` finds no conflict).
        """
        data = certificates.secret_data()
        try:
            if current is None:
                body = {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "type": "Opaque",
                    "data": data,
                }
                self._core.create_namespaced_secret(
                    self.namespace, body, field_manager=FIELD_MANAGER
                )
            else:
                # The resourceVersion makes the patch conditional: 409 if it moved.
                patch = {
                    "metadata": {"resourceVersion": current.metadata.resource_version},
                    "data": data,
                }
                self._core.patch_namespaced_secret(
                    self.name,
                    self.namespace,
                    patch,
                    field_manager=FIELD_MANAGER,
                    _content_type="application/merge-patch+json",
                )
        except client.ApiException as error:
            if error.status == 409:
                return False
            raise TlsError(
                f"Secret {self.namespace}/{self.name}: cannot write it: "
                f"{error.status} {error.reason}"
            ) from error
        return True


def _bundle_patch(configuration: Any, bundle: str) -> Iterator[dict[str, Any]]:
    """JSON Patch operations setting each webhook's caBundle; none if all are set.

    Each write is guarded by a test of the webhook's name at that index, so a
    configuration reordered meanwhile is refused rather than patched at random.
    """
    for index, webhook in enumerate(configuration.webhooks or []):
        if webhook.client_config.ca_bundle == bundle:
            continue
        yield {"op": "test", "path": f"/webhooks/{index}/name", "value": webhook.name}
        yield {
            "op": "add",
            "path": f"/webhooks/{index}/clientConfig/caBundle",
            "value": bundle,
        }


# --- serving ----------------------------------------------------------------------


class CertificateFiles:
    """A certificate and key in files, as a mounted Secret provides them; the kubelet
    replaces the files when cert-manager renews the Secret."""

    def __init__(
        self, cert: str | os.PathLike[str], key: str | os.PathLike[str]
    ) -> None:
        self.cert = Path(cert)
        self.key = Path(key)

    def read(self) -> tuple[bytes, bytes]:
        """Raises InputError if either file cannot be read."""
        try:
            return self.cert.read_bytes(), self.key.read_bytes()
        except OSError as error:
            raise InputError(
                f"{self.cert}, {self.key}",
                f"cannot read the TLS certificate and key: {error}",
            ) from error


class ServingCertificate:
    """The SSLContext the webhook listens with, and what it knows of the certificate
    loaded into it."""

    def __init__(self) -> None:
        self.context = _server_context()
        self.not_after: datetime.datetime | None = None
        self._loaded: tuple[bytes, bytes] | None = None

    def load(self, cert_pem: bytes, key_pem: bytes) -> bool:
        """Serve this certificate (PEM, leaf first) and key from the next connection on;
        False if it is the one already served.

        The pair is tried on a scratch context first, so a bad pair leaves the served
        one in place. Raises TlsError if the pair does not load.
        """
        if self._loaded == (cert_pem, key_pem):
            return False
        try:
            leaf = x509.load_pem_x509_certificate(cert_pem)
            with _pem_paths(cert_pem, key_pem) as (cert_path, key_path):
                _server_context().load_cert_chain(cert_path, key_path)
                self.context.load_cert_chain(cert_path, key_path)
        except (ValueError, OSError, ssl.SSLError) as error:
            raise TlsError(
                f"cannot load the serving certificate and key: {error}"
            ) from error
        self._loaded = (cert_pem, key_pem)
        self.not_after = leaf.not_valid_after_utc
        return True

    def collector(self) -> Collector:
        """A Prometheus collector of the served certificate's expiry time."""
        return _ExpiryCollector(self)


class _ExpiryCollector(Collector):
    def __init__(self, serving: ServingCertificate) -> None:
        self.serving = serving

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "pluginguard_webhook_certificate_expiry_timestamp_seconds",
            "When the certificate the webhook serves expires (Unix time)",
        )
        if self.serving.not_after is not None:
            gauge.add_metric([], self.serving.not_after.timestamp())
        yield gauge


def _server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@contextlib.contextmanager
def _pem_paths(cert_pem: bytes, key_pem: bytes) -> Iterator[tuple[str, str]]:
    """Paths OpenSSL can open for the PEMs: anonymous memory files where Linux has them,
    so the key never touches a disk (the root filesystem is read-only anyway)."""
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        descriptors = []
        try:
            for label, content in (
                ("webhook-cert", cert_pem),
                ("webhook-key", key_pem),
            ):
                descriptor = os.memfd_create(label, os.MFD_CLOEXEC)
                descriptors.append(descriptor)
                os.write(descriptor, content)
            yield f"/proc/self/fd/{descriptors[0]}", f"/proc/self/fd/{descriptors[1]}"
        finally:
            for descriptor in descriptors:
                os.close(descriptor)
        return
    with tempfile.TemporaryDirectory(prefix="pluginguard-tls-") as directory:
        cert_path, key_path = Path(directory, "tls.crt"), Path(directory, "tls.key")
        cert_path.write_bytes(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        yield str(cert_path), str(key_path)


def keep_current(
    serving: ServingCertificate,
    refresh: Callable[[], tuple[bytes, bytes]],
    *,
    interval: float = CHECK_INTERVAL,
    pending: Callable[[], bool] = lambda: False,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context that calls ``refresh`` every ``interval`` seconds
    and serves what it returns; every RETRY_INTERVAL instead while ``pending()`` is
    true or after a failed refresh.

    ``refresh`` (blocking: it may call the API server) runs on a worker thread; the
    certificate is loaded on the event loop's thread, between handshakes. A failed
    refresh is logged and the current certificate kept.
    """

    async def renew() -> None:
        failed = False
        while True:
            soon = failed or pending()
            await asyncio.sleep(min(interval, RETRY_INTERVAL) if soon else interval)
            failed = False
            try:
                cert_pem, key_pem = await asyncio.to_thread(refresh)
                if serving.load(cert_pem, key_pem):
                    log.info(
                        "serving a new certificate, valid until %s",
                        f"{serving.not_after:%Y-%m-%d %H:%M}",
                    )
            except PluginGuardError as error:
                failed = True
                log.warning(
                    "certificate refresh failed, still serving the one valid until "
                    "%s: %s",
                    f"{serving.not_after:%Y-%m-%d}" if serving.not_after else "?",
                    error,
                )

    async def context(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(renew(), name="certificate-refresh")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context
