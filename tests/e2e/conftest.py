"""PluginGuard running against the session's real API server: CRDs, webhook, operator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests import openssl_pki
from tests.controlplane.cluster import ControlPlaneError
from tests.controlplane.pluginguard_local import LocalPluginGuard, ensure_namespace
from tests.e2e.plugins import GROUP, KEY, VERSION, create_plugin, eventually, public_pem, signed
from tests.plugin_factory import policy



@pytest.fixture(scope="session")
def pluginguard(
    kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalPluginGuard]:
    local = LocalPluginGuard(kubeconfig, tmp_path_factory.mktemp("pluginguard"))
    try:
        local.start()
    except ControlPlaneError as error:
        local.stop()
        pytest.fail(f"cannot start PluginGuard: {error}", pytrace=False)
    try:
        yield local
    finally:
        local.unregister_webhook()
        local.stop()


@pytest.fixture(scope="module")
def namespace(pluginguard: LocalPluginGuard) -> str:
    name = f"hkp-{uuid.uuid4().hex[:6]}"
    ensure_namespace(pluginguard.api, name, labels={"team": "keyserver"})
    return name


@pytest.fixture(scope="module")
def custom(pluginguard: LocalPluginGuard) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(pluginguard.api)


@pytest.fixture(scope="module")
def core(pluginguard: LocalPluginGuard) -> client.CoreV1Api:
    return client.CoreV1Api(pluginguard.api)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("e2e-pki")
    root = openssl_pki.root_authority(directory, "E2E Root", "ECDSA-P256")
    return {
        "root": root,
        "good": root.issue("publisher", "ECDSA-P256"),
        "expired": root.issue("old-publisher", "ECDSA-P256",
                              window=("20200101000000Z", "20210101000000Z")),
    }


@pytest.fixture(scope="module")
def trust_policy(custom: client.CustomObjectsApi, pluginguard: LocalPluginGuard,
                 namespace: str, pki: dict[str, Any]) -> dict[str, Any]:
    document = policy(
        f"e2e-{namespace}",
        namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        trustedKeys=[{"name": "release", "publicKey": public_pem(KEY)}],
        trustedRoots=[{"name": "e2e-root", "certificates": pki["root"].cert.read_text()}],
    )
    created = custom.create_cluster_custom_object(GROUP, VERSION, "plugintrustpolicies", document)
    # The webhook decides from its watch-fed copy; wait until a signed Plugin passes a dry run.
    probe = signed("probe", namespace)
    eventually(lambda: create_plugin(custom, probe, dry_run=True), what="webhook sees the policy")
    return created
