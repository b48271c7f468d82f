"""The webhook's own TLS: certificates made, renewed, stored and served in place."""

from __future__ import annotations

import asyncio
import base64
import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import trustme
from aiohttp import web
from cryptography import x509
from kubernetes import client
from pluginguard.webhooks import tls
from pluginguard.webhooks.tls import (
    CertificateFiles,
    CertificateSecret,
    ServingCertificate,
    TlsError,
    WebhookCertificates,
    issue,
    keep_current,
    renewal_reason,
)
from prometheus_client import CollectorRegistry, generate_latest

NAMES = ["pluginguard-webhook.pluginguard-system.svc", "127.0.0.1"]
NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


def test_issued_certificate_is_for_the_names_and_signed_by_the_ca() -> None:
    made = issue(NAMES, now=NOW)

    made.cert.verify_directly_issued_by(made.ca_cert)
    names = made.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert names.value.get_values_for_type(x509.DNSName) == [NAMES[0]]
    assert [str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)] == [
        NAMES[1]
    ]
    usage = made.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage.value
    assert made.ca_cert.extensions.get_extension_for_class(
        x509.BasicConstraints
    ).value.ca
    assert made.cert.not_valid_after_utc <= made.ca_cert.not_valid_after_utc
    assert renewal_reason(made, NAMES, now=NOW) is None


def test_serving_certificate_renewed_by_the_same_ca_when_a_third_is_left() -> None:
    made = issue(NAMES, now=NOW)
    lifetime = made.cert.not_valid_after_utc - made.cert.not_valid_before_utc
    early = made.cert.not_valid_before_utc + lifetime * 0.6
    late = made.cert.not_valid_before_utc + lifetime * 0.7

    assert renewal_reason(made, NAMES, now=early) is None
    reason = renewal_reason(made, NAMES, now=late)
    assert reason and "serving certificate expires" in reason

    renewed = issue(NAMES, previous=made, now=late)
    assert renewed.ca_cert == made.ca_cert
    assert renewed.cert.serial_number != made.cert.serial_number
    assert renewed.ca_bundle_pem == made.ca_bundle_pem
    assert renewal_reason(renewed, NAMES, now=late) is None


def test_new_ca_keeps_the_old_one_in_the_bundle_until_it_expires() -> None:
    made = issue(NAMES, now=NOW)
    ca_lifetime = made.ca_cert.not_valid_after_utc - made.ca_cert.not_valid_before_utc
    late = made.ca_cert.not_valid_before_utc + ca_lifetime * 0.7

    reason = renewal_reason(made, NAMES, now=late)
    assert reason and "the CA expires" in reason
    renewed = issue(NAMES, previous=made, now=late)

    assert renewed.ca_cert != made.ca_cert
    assert renewed.retired_cas == (made.ca_cert,)
    bundle = x509.load_pem_x509_certificates(renewed.ca_bundle_pem)
    assert bundle == [renewed.ca_cert, made.ca_cert]
    renewed.cert.verify_directly_issued_by(renewed.ca_cert)

    # Once the old CA has expired, the next renewal leaves it out.
    after = made.ca_cert.not_valid_after_utc + datetime.timedelta(days=1)
    again = issue(NAMES, previous=renewed, now=after)
    assert made.ca_cert not in again.retired_cas


def test_changed_names_call_for_a_new_certificate() -> None:
    made = issue(NAMES, now=NOW)
    reason = renewal_reason(made, [*NAMES, "extra.example"], now=NOW)
    assert reason and "is for" in reason


def test_a_certificate_from_another_ca_is_renewed() -> None:
    made = issue(NAMES, now=NOW)
    stranger = issue(NAMES, now=NOW)
    mixed = WebhookCertificates(made.ca_cert, made.ca_key, stranger.cert, stranger.key)
    reason = renewal_reason(mixed, NAMES, now=NOW)
    assert reason and "not signed by the CA" in reason


def _same(a: WebhookCertificates, b: WebhookCertificates) -> bool:
    """Equal certificates and keys (key objects compare by identity)."""
    return a.secret_data() == b.secret_data()


def test_secret_data_round_trips() -> None:
    made = issue(NAMES, now=NOW)
    made = issue(NAMES, previous=made, now=NOW + datetime.timedelta(days=4 * 365))
    assert made.retired_cas
    assert _same(WebhookCertificates.from_secret_data(made.secret_data()), made)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tls.key": None}, "has no tls.key"),
        ({"ca.crt": "!!!"}, "not base64"),
        ({"tls.crt": base64.b64encode(b"not a pem").decode()}, "does not parse"),
    ],
)
def test_unusable_secret_data_says_which_key(
    change: dict[str, Any], message: str
) -> None:
    data = {**issue(NAMES, now=NOW).secret_data(), **change}
    with pytest.raises(TlsError, match=message):
        WebhookCertificates.from_secret_data({k: v for k, v in data.items() if v})


def test_issue_needs_a_name() -> None:
    with pytest.raises(TlsError, match="at least one"):
        issue([])


# --- serving -----------------------------------------------------------------------


def _served_serial(
    context: ssl.SSLContext, trusted: bytes, host: str = "127.0.0.1"
) -> int:
    """The serial of the certificate a TLS server on ``context`` presents."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            with context.wrap_socket(connection, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_context = ssl.create_default_context(cadata=trusted.decode())
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_context.wrap_socket(raw, server_hostname=host) as wrapped,
        ):
            der = wrapped.getpeercert(binary_form=True)
    finally:
        thread.join(5)
        listener.close()
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_serving_certificate_reloads_in_place() -> None:
    first = issue(NAMES)
    serving = ServingCertificate()
    context = serving.context
    assert serving.load(first.cert_pem, first.key_pem)
    assert _served_serial(context, first.ca_bundle_pem) == first.cert.serial_number
    assert not serving.load(first.cert_pem, first.key_pem)

    second = issue(NAMES, previous=first)
    assert serving.load(second.cert_pem, second.key_pem)
    assert serving.context is context
    assert _served_serial(context, first.ca_bundle_pem) == second.cert.serial_number
    assert serving.not_after == second.cert.not_valid_after_utc


def test_a_bad_pair_leaves_the_served_certificate_alone() -> None:
    good, other = issue(NAMES), issue(NAMES)
    serving = ServingCertificate()
    serving.load(good.cert_pem, good.key_pem)

    with pytest.raises(TlsError, match="cannot load"):
        serving.load(good.cert_pem, other.key_pem)

    assert (
        _served_serial(serving.context, good.ca_bundle_pem) == good.cert.serial_number
    )


def test_expiry_is_a_metric() -> None:
    made = issue(NAMES)
    serving = ServingCertificate()
    registry = CollectorRegistry()
    registry.register(serving.collector())
    assert b"\npluginguard_webhook_certificate_expiry_timestamp_seconds " not in (
        generate_latest(registry)
    )
    serving.load(made.cert_pem, made.key_pem)
    expected = made.cert.not_valid_after_utc.timestamp()
    assert registry.get_sample_value(
        "pluginguard_webhook_certificate_expiry_timestamp_seconds"
    ) == pytest.approx(expected)


def test_certificate_files_are_read_again(tmp_path: Any) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    files = CertificateFiles(cert, key)
    assert files.read() == (
        issued.cert_chain_pems[0].bytes(),
        issued.private_key_pem.bytes(),
    )
    key.unlink()
    with pytest.raises(tls.InputError, match="cannot read"):
        files.read()


def test_refresh_loop_serves_what_refresh_returns() -> None:
    first, second = issue(NAMES), issue(NAMES)
    serving = ServingCertificate()
    serving.load(first.cert_pem, first.key_pem)
    answers = iter([TlsError("API server away"), (second.cert_pem, second.key_pem)])

    def refresh() -> tuple[bytes, bytes]:
        answer = next(answers, (second.cert_pem, second.key_pem))
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def run() -> None:
        app = web.Application()
        context = keep_current(serving, refresh, interval=0.01)(app)
        await context.__anext__()
        for _ in range(200):
            if serving.not_after == second.cert.not_valid_after_utc:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(StopAsyncIteration):
            await context.__anext__()

    asyncio.run(run())
    assert serving.not_after == second.cert.not_valid_after_utc


# --- the Secret, with the API server's concurrency rules in a fake -------------------


class FakeSecrets:
    """Secrets with resourceVersions, creation conflicts and replace preconditions."""

    def __init__(self) -> None:
        self.stored: dict[str, Any] | None = None
        self.version = 0
        self.writes = 0
        self.lock = threading.Lock()

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        with self.lock:
            if self.stored is None:
                raise client.ApiException(status=404, reason="Not Found")
            metadata = self.stored["metadata"]
            return SimpleNamespace(
                data=self.stored.get("data"),
                type=self.stored.get("type"),
                metadata=SimpleNamespace(
                    resource_version=str(self.version),
                    labels=metadata.get("labels"),
                    annotations=metadata.get("annotations"),
                ),
            )

    def create_namespaced_secret(self, namespace: str, body: Any, **_: Any) -> None:
        with self.lock:
            if self.stored is not None:
                raise client.ApiException(status=409, reason="AlreadyExists")
            self._store(body)

    def patch_namespaced_secret(
        self, name: str, namespace: str, body: Any, **_: Any
    ) -> None:
        with self.lock:
            if body["metadata"]["resourceVersion"] != str(self.version):
                raise client.ApiException(status=409, reason="Conflict")
            assert self.stored is not None
            self._store({**self.stored, "data": body["data"]})

    def _store(self, body: dict[str, Any]) -> None:
        self.stored = body
        self.version += 1
        self.writes += 1


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSecrets]:
    fake = FakeSecrets()
    monkeypatch.setattr(tls.client, "CoreV1Api", lambda api: fake)
    monkeypatch.setattr(tls.client, "AdmissionregistrationV1Api", lambda api: None)
    yield fake


def _store(**kwargs: Any) -> CertificateSecret:
    return CertificateSecret(
        None, namespace="pluginguard-system", name="webhook-tls", names=NAMES, **kwargs
    )


def test_racing_replicas_agree_on_one_secret(secrets: FakeSecrets) -> None:
    barrier = threading.Barrier(4)
    results: list[WebhookCertificates] = []

    def bootstrap() -> None:
        barrier.wait()
        results.append(_store().ensure())

    threads = [threading.Thread(target=bootstrap) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert secrets.writes == 1
    assert len({r.cert.serial_number for r in results}) == 1
    assert len(results) == 4


def test_empty_secret_from_the_chart_is_filled_keeping_its_labels(
    secrets: FakeSecrets,
) -> None:
    secrets.stored = {
        "metadata": {"labels": {"app.kubernetes.io/name": "pluginguard"}},
        "type": "Opaque",
    }
    made = _store().ensure()
    assert secrets.writes == 1
    assert secrets.stored["metadata"]["labels"] == {
        "app.kubernetes.io/name": "pluginguard"
    }
    assert _same(WebhookCertificates.from_secret_data(secrets.stored["data"]), made)
    assert _same(_store().ensure(), made)
    assert secrets.writes == 1


def test_due_secret_is_renewed_once(secrets: FakeSecrets) -> None:
    made = _store().ensure(now=NOW)
    lifetime = made.cert.not_valid_after_utc - made.cert.not_valid_before_utc
    late = made.cert.not_valid_before_utc + lifetime * 0.8
    renewed = _store().ensure(now=late)
    assert renewed.cert != made.cert and renewed.ca_cert == made.ca_cert
    assert _same(_store().ensure(now=late), renewed)
    assert secrets.writes == 2


def test_bundle_patch_is_guarded_by_the_webhook_names() -> None:
    def webhook(name: str, bundle: str | None) -> Any:
        return SimpleNamespace(
            name=name, client_config=SimpleNamespace(ca_bundle=bundle)
        )

    configuration = SimpleNamespace(
        webhooks=[
            webhook("plugins.pluginguard.dev", "Y3VycmVudA=="),
            webhook("pods", None),
        ]
    )
    assert list(tls._bundle_patch(configuration, "Y3VycmVudA==")) == [
        {"op": "test", "path": "/webhooks/1/name", "value": "pods"},
        {
            "op": "add",
            "path": "/webhooks/1/clientConfig/caBundle",
            "value": "Y3VycmVudA==",
        },
    ]


class FakeRegistration:
    """Webhook configurations by kind and name; patches recorded."""

    def __init__(self, **present: list[str]) -> None:
        self.present = present  # kind ("validating"/"mutating") -> webhook names
        self.patches: list[tuple[str, str, list[dict[str, Any]]]] = []
        for kind in ("validating", "mutating"):
            setattr(self, f"read_{kind}_webhook_configuration", self._reader(kind))
            setattr(self, f"patch_{kind}_webhook_configuration", self._patcher(kind))

    def _reader(self, kind: str) -> Any:
        def read(name: str) -> Any:
            if kind not in self.present:
                raise client.ApiException(status=404, reason="Not Found")
            hooks = [
                SimpleNamespace(name=n, client_config=SimpleNamespace(ca_bundle=None))
                for n in self.present[kind]
            ]
            return SimpleNamespace(webhooks=hooks)

        return read

    def _patcher(self, kind: str) -> Any:
        def patch(name: str, body: list[dict[str, Any]], **_: Any) -> None:
            self.patches.append((kind, name, body))

        return patch


@pytest.mark.parametrize(
    ("present", "published"),
    [
        ({"validating": ["plugins", "pods"], "mutating": ["mutate"]}, True),
        ({"validating": ["plugins", "pods"]}, True),  # the mutating one is optional
        ({}, False),  # not created yet: helm creates them after the Deployment
    ],
)
def test_publish_sets_every_bundle_and_knows_when_it_found_nothing(
    monkeypatch: pytest.MonkeyPatch, present: dict[str, list[str]], published: bool
) -> None:
    registration = FakeRegistration(**present)
    monkeypatch.setattr(tls.client, "CoreV1Api", lambda api: None)
    monkeypatch.setattr(
        tls.client, "AdmissionregistrationV1Api", lambda api: registration
    )
    store = _store(configurations=["pluginguard"])
    made = issue(NAMES)

    store.publish(made)

    assert store.published is published
    bundle = base64.b64encode(made.ca_bundle_pem).decode()
    set_paths = [
        (kind, op["path"])
        for kind, _, body in registration.patches
        for op in body
        if op["op"] == "add" and op["value"] == bundle
    ]
    assert set_paths == [
        (kind, f"/webhooks/{i}/clientConfig/caBundle")
        for kind in ("validating", "mutating")
        for i in range(len(present.get(kind, [])))
    ]


def test_refresh_loop_looks_again_soon_while_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tls, "RETRY_INTERVAL", 0.01)
    made = issue(NAMES)
    serving = ServingCertificate()
    calls: list[float] = []

    def refresh() -> tuple[bytes, bytes]:
        calls.append(1.0)
        return made.cert_pem, made.key_pem

    async def run() -> None:
        context = keep_current(
            serving, refresh, interval=3600, pending=lambda: len(calls) < 3
        )(web.Application())
        await context.__anext__()
        await asyncio.sleep(0.5)
        with pytest.raises(StopAsyncIteration):
            await context.__anext__()

    asyncio.run(run())
    # Three quick looks while pending, then none: the hour-long interval applies.
    assert len(calls) == 3
