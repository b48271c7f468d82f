"""The webhook's built-in TLS on the real API server, installed as the chart installs it.

Two webhook replicas run with the chart's arguments, as the chart's webhook
ServiceAccount (under its RBAC), against the empty Secret the chart creates. The chart's
webhook configurations are registered with their clientConfig pointed at a replica on
loopback and their namespaceSelector narrowed to this module's namespaces; everything
else about them (rules, object selectors, failure policy) is as rendered.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client, watch
from pluginguard.webhooks.tls import CertificateSecret, WebhookCertificates, issue

from tests.controlplane.chart import RBAC_KINDS, apply, one, render, token_kubeconfig
from tests.controlplane.cluster import Component
from tests.controlplane.pluginguard_local import ensure_namespace, install_crds
from tests.e2e.plugins import KEY, create_plugin, public_pem, signed
from tests.plugin_factory import plugin, policy

pytestmark = pytest.mark.e2e

RELEASE = NAME = "pluginguard-tls"  # the chart's full name for this release
NAMESPACE = "pluginguard-tls-system"
SECRET = f"{NAME}-webhook-tls"
TEST_LABEL = "pluginguard.dev/chart-test"
SANS = ["127.0.0.1"]


@dataclass
class Installation:
    """The chart's objects for this release, applied, and the webhook replicas."""

    api: client.ApiClient
    directory: Path
    kubeconfig: Path
    arguments: list[str]
    ports: dict[str, int] = field(default_factory=dict)
    replicas: dict[str, Component] = field(default_factory=dict)
    secret_writes: list[dict[str, Any]] = field(default_factory=list)
    configurations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def start(
        self, name: str, port: int | None = None, *, refresh_seconds: float = 1.0
    ) -> Component:
        port = port or _free_port()
        component = Component(
            name,
            [
                sys.executable,
                "-m",
                "pluginguard.cli",
                *self.arguments,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--tls-refresh-seconds",
                str(refresh_seconds),
                "--kubeconfig",
                str(self.kubeconfig),
            ],
            directory=self.directory,
            detached=False,
        )
        component.start()
        self.ports[name], self.replicas[name] = port, component
        return component

    def secret(self) -> WebhookCertificates:
        data = self.core.read_namespaced_secret(SECRET, NAMESPACE).data
        return WebhookCertificates.from_secret_data(data)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def served_certificate(port: int) -> x509.Certificate:
    """The certificate a replica presents now (unverified: this only looks)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as wrapped,
    ):
        der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def wait_for(check: Any, *, timeout: float = 30.0, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (client.ApiException, OSError, AssertionError, ValueError) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(0.1)
    pytest.fail(f"{what} not reached in {timeout:.0f}s; last: {last!r}", pytrace=False)


def _configurations(objects: list[dict[str, Any]], url: str) -> list[dict[str, Any]]:
    """The rendered webhook configurations, sent to ``url`` and to this module's
    namespaces only."""
    narrowed = []
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        configuration = one(objects, kind)
        for hook in configuration["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"{url}{path}"}
            hook["namespaceSelector"]["matchExpressions"].append(
                {"key": TEST_LABEL, "operator": "In", "values": [RELEASE]}
            )
        narrowed.append(configuration)
    return narrowed


def _delete_configurations(api: client.ApiClient) -> None:
    registration = client.AdmissionregistrationV1Api(api)
    for delete in (
        registration.delete_validating_webhook_configuration,
        registration.delete_mutating_webhook_configuration,
    ):
        try:
            delete(NAME)
        except client.ApiException as error:
            if error.status != 404:
                raise


@contextlib.contextmanager
def _other_configurations_set_aside(api: client.ApiClient) -> Iterator[None]:
    """Take every other PluginGuard webhook configuration (the end-to-end tests' own)
    away while this module runs: what it shows is what this release's webhook answers,
    or fails to, and another webhook answering the same objects would decide first."""
    registration = client.AdmissionregistrationV1Api(api)
    kinds = (
        (registration.list_validating_webhook_configuration,
         registration.delete_validating_webhook_configuration,
         registration.create_validating_webhook_configuration),
        (registration.list_mutating_webhook_configuration,
         registration.delete_mutating_webhook_configuration,
         registration.create_mutating_webhook_configuration),
    )
    kept = []
    for listing, delete, create in kinds:
        for configuration in listing().items:
            hooks = configuration.webhooks or []
            if configuration.metadata.name != NAME and any(
                    h.name.endswith(".pluginguard.dev") for h in hooks):
                delete(configuration.metadata.name)
                configuration.metadata.resource_version = None
                configuration.metadata.uid = None
                kept.append((create, configuration))
    try:
        yield
    finally:
        for create, configuration in kept:
            create(configuration)


@pytest.fixture(scope="module")
def installation(
    api_client: client.ApiClient,
    kubeconfig: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Installation]:
    install_crds(api_client)
    ensure_namespace(api_client, NAMESPACE)
    objects = render(release=RELEASE, namespace=NAMESPACE)
    apply(api_client, [o for o in objects if o["kind"] in RBAC_KINDS | {"Secret"}])
    directory = tmp_path_factory.mktemp("builtin-tls")
    account = one(objects, "Deployment", f"{NAME}-webhook")["spec"]["template"]["spec"][
        "serviceAccountName"
    ]
    token = token_kubeconfig(
        api_client,
        kubeconfig,
        directory / "webhook.kubeconfig",
        namespace=NAMESPACE,
        service_account=account,
    )
    # The chart's own arguments, but for where the process listens and what names
    # its certificate holds (loopback instead of the Service).
    (container,) = one(objects, "Deployment", f"{NAME}-webhook")["spec"]["template"][
        "spec"
    ]["containers"]
    arguments = [
        a.replace("$(POD_NAMESPACE)", NAMESPACE)
        for a in container["args"]
        if not a.startswith(("--port=", "--tls-san=", "--log-format="))
    ]
    arguments += [f"--tls-san={name}" for name in SANS] + ["--log-format=text"]
    setup = Installation(api_client, directory, token, arguments)
    port = _free_port()
    setup.ports["api-server-target"] = port
    _delete_configurations(api_client)
    setup.configurations = _configurations(objects, f"https://127.0.0.1:{port}")
    with _other_configurations_set_aside(api_client):
        apply(api_client, setup.configurations)
        try:
            yield setup
        finally:
            for component in setup.replicas.values():
                component.stop(grace=5.0)
            _delete_configurations(api_client)


class SecretWrites:
    """Every write of one Secret from now on, as a watch on it sees them."""

    def __init__(self, core: client.CoreV1Api, name: str, *, seconds: int = 10) -> None:
        listed = core.list_namespaced_secret(
            NAMESPACE, field_selector=f"metadata.name={name}"
        )
        self.events: list[tuple[str, dict[str, str]]] = []
        self._thread = threading.Thread(
            target=self._record,
            args=(core, name, listed.metadata.resource_version, seconds),
            daemon=True,
        )
        self._thread.start()
        time.sleep(0.3)  # the watch is open before anyone writes

    def _record(
        self, core: client.CoreV1Api, name: str, version: str, seconds: int
    ) -> None:
        for event in watch.Watch().stream(
            core.list_namespaced_secret,
            NAMESPACE,
            field_selector=f"metadata.name={name}",
            resource_version=version,
            timeout_seconds=seconds,
        ):
            self.events.append((event["type"], event["object"].data or {}))

    def finish(self) -> list[tuple[str, dict[str, str]]]:
        """Wait for the watch to end; the writes that carried data."""
        self._thread.join(30)
        return [(kind, data) for kind, data in self.events if data]


@pytest.fixture(scope="module")
def replicas(installation: Installation) -> Installation:
    """Two replicas started at once against the empty Secret, "a" on the port the
    configurations name; every write of the Secret meanwhile is recorded."""
    writes = SecretWrites(installation.core, SECRET)
    installation.start("a", installation.ports.pop("api-server-target"))
    installation.start("b")
    for name, component in installation.replicas.items():
        wait_for(
            lambda c=component, n=name: _ready(c, installation.ports[n]),
            what=f"replica {name} ready",
        )
    installation.secret_writes = [data for _, data in writes.finish()]
    return installation


def _ready(component: Component, port: int) -> bool:
    if not component.running():
        pytest.fail(f"{component.name} exited:\n{component.log_tail()}", pytrace=False)
    served_certificate(port)
    return True


@pytest.fixture(scope="module")
def namespaces(api_client: client.ApiClient) -> Iterator[dict[str, str]]:
    """A plain namespace with a policy trusting the test key, and an enforced one."""
    suffix = uuid.uuid4().hex[:6]
    names = {"plain": f"tls-plain-{suffix}", "enforced": f"tls-enforced-{suffix}"}
    ensure_namespace(api_client, names["plain"], labels={TEST_LABEL: RELEASE})
    ensure_namespace(
        api_client,
        names["enforced"],
        labels={TEST_LABEL: RELEASE, "pluginguard.dev/enforce": "true"},
    )
    document = policy(
        f"tls-{suffix}",
        namespaceSelector={"matchLabels": {TEST_LABEL: RELEASE}},
        trustedKeys=[{"name": "release", "publicKey": public_pem(KEY)}],
    )
    custom = client.CustomObjectsApi(api_client)
    custom.create_cluster_custom_object(
        "pluginguard.dev", "v1alpha1", "plugintrustpolicies", document
    )
    yield names
    custom.delete_cluster_custom_object(
        "pluginguard.dev",
        "v1alpha1",
        "plugintrustpolicies",
        document["metadata"]["name"],
    )


def refusal(call: Any) -> str:
    with pytest.raises(client.ApiException) as caught:
        call()
    return str(caught.value.body)


def admits_signed_plugin(api: client.ApiClient, namespace: str) -> bool:
    """A signed Plugin passes a dry run; with failurePolicy Fail this means the API
    server reached the webhook over TLS it trusts (and the webhook has the policy)."""
    create_plugin(
        client.CustomObjectsApi(api),
        signed(f"p-{uuid.uuid4().hex[:6]}", namespace),
        dry_run=True,
    )
    return True


def test_racing_replicas_write_the_secret_once_and_serve_one_certificate(
    replicas: Installation,
) -> None:
    assert len(replicas.secret_writes) == 1, f"{len(replicas.secret_writes)} writes"
    stored = replicas.secret()
    assert (
        WebhookCertificates.from_secret_data(replicas.secret_writes[0]).cert
        == stored.cert
    )
    for name, port in replicas.ports.items():
        assert served_certificate(port) == stored.cert, name
    names = stored.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert [str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)] == SANS
    # The Secret is still the chart's: the webhook only filled its data.
    secret = replicas.core.read_namespaced_secret(SECRET, NAMESPACE)
    assert secret.metadata.labels["app.kubernetes.io/instance"] == RELEASE
    assert secret.type == "Opaque"


def test_both_configurations_trust_the_secrets_ca(replicas: Installation) -> None:
    registration = client.AdmissionregistrationV1Api(replicas.api)
    bundle = replicas.secret().ca_bundle_pem

    def published() -> bool:
        configurations = [
            registration.read_validating_webhook_configuration(NAME),
            registration.read_mutating_webhook_configuration(NAME),
        ]
        return all(
            base64.b64decode(hook.client_config.ca_bundle or "") == bundle
            for configuration in configurations
            for hook in configuration.webhooks
        )

    wait_for(published, what="caBundle of every webhook set to the Secret's CA")


def test_api_server_calls_the_webhook_over_the_published_ca(
    replicas: Installation, namespaces: dict[str, str]
) -> None:
    plain = namespaces["plain"]
    wait_for(
        lambda: admits_signed_plugin(replicas.api, plain), what="signed Plugin admitted"
    )

    unsigned = plugin("unsigned", namespace=plain)
    message = refusal(
        lambda: create_plugin(
            client.CustomObjectsApi(replicas.api), unsigned, dry_run=True
        )
    )
    assert "PluginGuard" in message and "x509" not in message


def test_certificate_due_for_renewal_is_replaced_without_restart_or_outage(
    replicas: Installation, namespaces: dict[str, str]
) -> None:
    """A serving certificate with less than a third of its life left is renewed by
    one replica under the same CA; every replica loads it in place, and the API
    server's calls keep succeeding throughout."""
    before = replicas.secret()
    pids = {name: c.pid for name, c in replicas.replicas.items()}
    # Issued 300 days ago for a year: 65 days left, under a third.
    aged = issue(
        SANS,
        previous=before,
        now=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=300),
    )
    assert aged.ca_cert == before.ca_cert
    replicas.core.patch_namespaced_secret(
        SECRET,
        NAMESPACE,
        {"data": aged.secret_data()},
        _content_type="application/merge-patch+json",
    )

    deadline = time.monotonic() + 30
    renewed = None
    while time.monotonic() < deadline:
        # Every call in the window goes through: the CA never changed.
        assert admits_signed_plugin(replicas.api, namespaces["plain"])
        current = replicas.secret()
        if current.cert not in (before.cert, aged.cert) and all(
            served_certificate(port) == current.cert for port in replicas.ports.values()
        ):
            renewed = current
            break
        time.sleep(0.2)
    assert renewed is not None, "the replicas did not converge on a renewed certificate"

    assert renewed.ca_cert == before.ca_cert
    assert renewed.cert.not_valid_after_utc > aged.cert.not_valid_after_utc
    assert {name: c.pid for name, c in replicas.replicas.items()} == pids
    assert all(c.running() for c in replicas.replicas.values())
    logs = "".join(c.log_tail(200) for c in replicas.replicas.values())
    assert "the serving certificate expires on" in logs


def test_creating_the_secret_races_to_one_winner(api_client: client.ApiClient) -> None:
    """Without a chart-made Secret: bootstrappers create it if absent, and the losers
    read what the winner created."""
    core = client.CoreV1Api(api_client)
    name = f"tls-race-{uuid.uuid4().hex[:6]}"
    barrier = threading.Barrier(3)
    results: list[WebhookCertificates] = []
    writes = SecretWrites(core, name, seconds=5)

    def bootstrap() -> None:
        store = CertificateSecret(
            api_client, namespace=NAMESPACE, name=name, names=SANS
        )
        barrier.wait()
        results.append(store.ensure())

    threads = [threading.Thread(target=bootstrap) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert [kind for kind, _ in writes.finish()] == ["ADDED"]
    stored = WebhookCertificates.from_secret_data(
        core.read_namespaced_secret(name, NAMESPACE).data
    )
    assert len(results) == 3 and all(r.cert == stored.cert for r in results)
    core.delete_namespaced_secret(name, NAMESPACE)


def test_while_the_webhook_is_down_only_plugin_objects_wait_and_break_glass_works(
    replicas: Installation, namespaces: dict[str, str]
) -> None:
    """Run last: it stops the replicas."""
    core = replicas.core
    custom = client.CustomObjectsApi(replicas.api)
    for component in replicas.replicas.values():
        component.stop(grace=5.0)

    def pod(name: str, namespace: str, **labels: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "containers": [{"name": "app", "image": "registry.example/app:1"}]
            },
        }

    plain, enforced = namespaces["plain"], namespaces["enforced"]
    # Not a plugin pod, in a namespace that does not enforce: never sent to PluginGuard.
    core.create_namespaced_pod(plain, pod("ordinary", plain), dry_run="All")
    # A plugin pod, a Plugin, and any pod of an enforcing namespace: refused (Fail).
    for call in (
        lambda: core.create_namespaced_pod(
            plain,
            pod("plugin", plain, **{"pluginguard.dev/plugin": "x"}),
            dry_run="All",
        ),
        lambda: core.create_namespaced_pod(
            enforced, pod("ordinary", enforced), dry_run="All"
        ),
        lambda: create_plugin(custom, signed("while-down", plain), dry_run=True),
    ):
        assert "failed calling webhook" in refusal(call)

    # Break glass, as the chart's notes say: delete the webhook configurations.
    _delete_configurations(replicas.api)
    wait_for(
        lambda: admits_signed_plugin(replicas.api, plain),
        what="admission without PluginGuard",
    )

    # Repair: a replica starts while the configurations are gone, with the default
    # refresh (a minute); they come back as an upgrade restores them, without caBundle.
    # It sets their caBundle within seconds, not at its next refresh.
    late = replicas.start("late", replicas.ports["a"], refresh_seconds=60)
    wait_for(lambda: _ready(late, replicas.ports["late"]), what="replica late ready")
    restored = time.monotonic()
    apply(replicas.api, replicas.configurations)
    wait_for(
        lambda: admits_signed_plugin(replicas.api, plain),
        timeout=20,
        what="admission through the restored configurations",
    )
    assert time.monotonic() - restored < 20
    assert "PluginGuard" in refusal(
        lambda: create_plugin(
            custom, plugin("unsigned-again", namespace=plain), dry_run=True
        )
    )
