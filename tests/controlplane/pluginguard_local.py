"""PluginGuard installed on a control plane the way a cluster would run it, minus the
pods: CRDs applied, the webhook and the operator running as local processes, and a
ValidatingWebhookConfiguration pointing the API server at the webhook on loopback.
Each process authenticates as the chart's ServiceAccount for it, under the chart's own
RBAC, so a permission the chart forgot fails here as it would in a cluster.

Used by the end-to-end tests and by ``make demo``.
"""

from __future__ import annotations

import base64
import socket
import ssl
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trustme
import yaml
from kubernetes import client, config

from tests.controlplane.chart import RBAC_KINDS, apply, render, token_kubeconfig
from tests.controlplane.cluster import Component, ControlPlaneError

REPOSITORY = Path(__file__).resolve().parents[2]
WEBHOOK_NAME = "pluginguard"
PEERING = "pluginguard"
SYSTEM_NAMESPACE = "pluginguard-system"
# The chart installed as release "pluginguard" names its webhook configurations and its
# peering object as above, so the chart's RBAC fits what runs here.
RELEASE = "pluginguard"
# The chart's ServiceAccount for each entry point (the first word of its command line).
CHART_ACCOUNTS = {
    "webhook": "pluginguard-webhook",
    "operator": "pluginguard-operator",
    "node-agent": "pluginguard-node-agent",
}


def install_crds(api: client.ApiClient, *, timeout: float = 30.0,
                 files: Sequence[Path] | None = None) -> list[str]:
    """Create or replace every CRD in ``files`` (default: those in ``crds/``); wait until
    each is Established."""
    extensions = client.ApiextensionsV1Api(api)
    names = []
    for path in files if files is not None else sorted((REPOSITORY / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            name = crd["metadata"]["name"]
            try:
                extensions.create_custom_resource_definition(crd)
            except client.ApiException as error:
                if error.status != 409:
                    raise
                current = extensions.read_custom_resource_definition(name)
                crd["metadata"]["resourceVersion"] = current.metadata.resource_version
                extensions.replace_custom_resource_definition(name, crd)
            names.append(name)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            conditions = extensions.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"CRD {name} is not Established after {timeout:.0f}s")
            time.sleep(0.1)
    return names


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalPluginGuard:
    """The webhook and the operator as processes, wired into the API server."""

    def __init__(self, kubeconfig: Path, directory: Path, *, persistent: bool = False,
                 rbac: str = "chart", trust_material: Sequence[Mapping[str, str]] = ()) -> None:
        """``rbac="chart"`` runs each process as the chart's ServiceAccount for it, under
        the chart's RBAC, with ``trust_material`` as the chart's value of that name;
        ``rbac="admin"`` runs them with ``kubeconfig``'s credentials."""
        if rbac not in ("chart", "admin"):
            raise ValueError(f"rbac must be 'chart' or 'admin', not {rbac!r}")
        self.kubeconfig = Path(kubeconfig)
        self.rbac = rbac
        self.trust_material = [dict(entry) for entry in trust_material]
        self._credentials: dict[str, Path] = {}
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.persistent = persistent
        self.api = config.new_client_from_config(str(self.kubeconfig))
        self.port = _free_port()
        self.webhook: Component | None = None
        self.operators: list[Component] = []
        self.extra_webhooks: dict[str, Component] = {}
        self._priority = 2**31  # random priorities are below this
        self._ca = trustme.CA(organization_name="PluginGuard test webhook CA")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> LocalPluginGuard:
        install_crds(self.api)
        ensure_namespace(self.api, SYSTEM_NAMESPACE)
        self.start_webhook()
        self.start_operator()
        self.register_webhook()
        return self

    def start_webhook(self, *, arguments: Sequence[str] = ()) -> None:
        served = self._ca.issue_cert("127.0.0.1", "localhost")
        cert, key = self.directory / "webhook.crt", self.directory / "webhook.key"
        served.cert_chain_pems[0].write_to_path(str(cert))
        for extra in served.cert_chain_pems[1:]:
            extra.write_to_path(str(cert), append=True)
        served.private_key_pem.write_to_path(str(key))
        self.webhook = self._component("webhook", [
            "webhook", "serve", "--tls-cert", str(cert), "--tls-key", str(key),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--namespace", SYSTEM_NAMESPACE, "--log-format", "text", *arguments])
        self.wait_webhook_ready()

    def outranking_priority(self) -> int:
        """A peering priority above every replica started so far (random ones included)."""
        self._priority += 1
        return self._priority

    def start_operator(self, *, name: str = "operator", priority: int | None = None,
                       arguments: Sequence[str] = ()) -> Component:
        """One operator replica; several share the peering and only one is active."""
        ensure_peering(self.api, PEERING)
        component = self._component(name, [
            "operator", "run", "--peering", PEERING, "--peering-lifetime", "10",
            *(["--priority", str(priority)] if priority is not None else []),
            "--log-format", "text", *arguments])
        self.operators.append(component)
        return component

    def start_extra_webhook(self, name: str) -> str:
        """Another webhook replica on its own port, with the same certificate; its URL."""
        port = _free_port()
        component = self._component(name, [
            "webhook", "serve", "--tls-cert", str(self.directory / "webhook.crt"),
            "--tls-key", str(self.directory / "webhook.key"), "--host", "127.0.0.1",
            "--port", str(port), "--namespace", SYSTEM_NAMESPACE, "--log-format", "text"])
        self.extra_webhooks[name] = component
        self.wait_webhook_ready(url=f"https://127.0.0.1:{port}", component=component)
        return f"https://127.0.0.1:{port}"

    def stop_extra_webhook(self, name: str) -> None:
        self.extra_webhooks.pop(name).stop(grace=5.0)

    def wait_webhook_ready(self, timeout: float = 60.0, *, url: str | None = None,
                           component: Component | None = None) -> None:
        url, component = url or self.url, component or self.webhook
        assert component is not None
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not component.running():
                raise ControlPlaneError(f"webhook exited:\n{component.log_tail()}")
            try:
                with urllib.request.urlopen(f"{url}/readyz", context=context, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise ControlPlaneError(f"webhook not ready after {timeout:.0f}s:\n{component.log_tail()}")

    @property
    def ca_pem(self) -> bytes:
        return self._ca.cert_pem.bytes()

    def register_webhook(self) -> None:
        """The chart's own Validating- and MutatingWebhookConfiguration, pointed at the
        webhook on loopback: the same rules and selectors a cluster gets."""
        bundle = base64.b64encode(self.ca_pem).decode()
        registration = client.AdmissionregistrationV1Api(self.api)
        rendered = render(release=RELEASE, namespace=SYSTEM_NAMESPACE)
        for kind, delete, create in (
            ("ValidatingWebhookConfiguration", registration.delete_validating_webhook_configuration,
             registration.create_validating_webhook_configuration),
            ("MutatingWebhookConfiguration", registration.delete_mutating_webhook_configuration,
             registration.create_mutating_webhook_configuration),
        ):
            configuration = next(o for o in rendered if o["kind"] == kind)
            for hook in configuration["webhooks"]:
                path = hook["clientConfig"]["service"]["path"]
                hook["clientConfig"] = {"url": f"{self.url}{path}", "caBundle": bundle}
            try:
                delete(WEBHOOK_NAME)
            except client.ApiException as error:
                if error.status != 404:
                    raise
            create(configuration)

    def unregister_webhook(self) -> None:
        """Remove both webhook configurations: the break-glass step of an outage."""
        registration = client.AdmissionregistrationV1Api(self.api)
        for delete in (registration.delete_validating_webhook_configuration,
                       registration.delete_mutating_webhook_configuration):
            try:
                delete(WEBHOOK_NAME)
            except client.ApiException as error:
                if error.status != 404:
                    raise

    def stop(self) -> None:
        for component in (*self.operators, *self.extra_webhooks.values(), self.webhook):
            if component is not None:
                component.stop(grace=5.0)

    def _component(self, name: str, arguments: list[str]) -> Component:
        component = Component(
            name, [sys.executable, "-m", "pluginguard.cli", *arguments],
            directory=self.directory, detached=self.persistent)
        component.argv += ["--kubeconfig", str(self.credentials(arguments[0]))]
        component.start()
        return component

    def install_rbac(self, values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Apply the chart's ServiceAccounts, roles and bindings, rendered for release
        "pluginguard" with this instance's trust material and ``values``; return what was
        applied."""
        ensure_namespace(self.api, SYSTEM_NAMESPACE)
        for entry in self.trust_material:
            ensure_namespace(self.api, entry["namespace"])
        objects = render(release=RELEASE, namespace=SYSTEM_NAMESPACE,
                         values={**(values or {}), "trustMaterial": self.trust_material})
        return apply(self.api, [o for o in objects if o["kind"] in RBAC_KINDS])

    def credentials(self, entry_point: str) -> Path:
        """The kubeconfig a process of ``entry_point`` runs with: a token of the chart's
        ServiceAccount for it (RBAC installed on first use), or the admin's."""
        if self.rbac == "admin":
            return self.kubeconfig
        if entry_point not in self._credentials:
            if not self._credentials:
                self.install_rbac()
            account = CHART_ACCOUNTS[entry_point]
            self._credentials[entry_point] = token_kubeconfig(
                self.api, self.kubeconfig, self.directory / f"{account}.kubeconfig",
                namespace=SYSTEM_NAMESPACE, service_account=account, seconds=7 * 24 * 3600)
        return self._credentials[entry_point]


def ensure_namespace(api: client.ApiClient, name: str, labels: dict[str, str] | None = None) -> None:
    core = client.CoreV1Api(api)
    body = {"metadata": {"name": name, "labels": labels or {}}}
    try:
        core.create_namespace(body)
    except client.ApiException as error:
        if error.status != 409:
            raise
        core.patch_namespace(name, body)
    # No controller manager runs here: create the service account it would have made.
    try:
        core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
    except client.ApiException as error:
        if error.status != 409:
            raise



def ensure_peering(api: client.ApiClient, name: str) -> None:
    """The ClusterKopfPeering object operator replicas meet in (kopf does not create it)."""
    try:
        client.CustomObjectsApi(api).create_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings",
            {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}})
    except client.ApiException as error:
        if error.status != 409:
            raise
