"""The chart's RBAC on the real API server: each identity may do its work, and is
refused the rest; trust material is readable by name, and only the listed names.

The roles are rendered for a release of their own ("pluginguard-rbac"), applied for
real, and asked through SubjectAccessReviews and through requests made with the
ServiceAccounts' own tokens.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from pluginguard.operator.cluster import ClusterState
from pluginguard.operator.node_agent import NodeAgent
from pluginguard.sandbox import seccomp_profile
from pluginguard.webhooks.server import WebhookCluster

from pluginguard.names import (
    PLUGIN_LABEL,
    PROFILE_LABEL,
    PROFILE_SHA_ANNOTATION,
    node_label,
    node_label_value,
    profile_config_map,
)
from tests.controlplane.chart import RBAC_KINDS, apply, render, token_kubeconfig
from tests.controlplane.pluginguard_local import ensure_namespace, install_crds
from tests.e2e.plugins import KEY, public_pem, signed
from tests.plugin_factory import policy

pytestmark = pytest.mark.e2e

RELEASE = "pluginguard-rbac"
NAMESPACE = "pluginguard-rbac-system"
MATERIAL = "rbac-material"
LISTED_SECRET, LISTED_CONFIG_MAP = "release-key", "vendor-keys"
UNLISTED_SECRET = "database-password"
OPERATOR, WEBHOOK, NODE_AGENT = (
    f"{RELEASE}-operator",
    f"{RELEASE}-webhook",
    f"{RELEASE}-node-agent",
)
TRUST_MATERIAL = [
    {"kind": "Secret", "namespace": MATERIAL, "name": LISTED_SECRET},
    {"kind": "ConfigMap", "namespace": MATERIAL, "name": LISTED_CONFIG_MAP},
]


@pytest.fixture(scope="module")
def release(api_client: client.ApiClient) -> list[dict[str, Any]]:
    install_crds(api_client)
    for namespace in (NAMESPACE, MATERIAL):
        ensure_namespace(api_client, namespace)
    objects = render(
        release=RELEASE, namespace=NAMESPACE, values={"trustMaterial": TRUST_MATERIAL}
    )
    applied = apply(api_client, [o for o in objects if o["kind"] in RBAC_KINDS])
    core = client.CoreV1Api(api_client)
    key = public_pem(KEY)
    for name in (LISTED_SECRET, UNLISTED_SECRET):
        body = {"metadata": {"name": name}, "stringData": {"key.pem": key}}
        _create_or_keep(lambda b=body: core.create_namespaced_secret(MATERIAL, b))
    _create_or_keep(
        lambda: core.create_namespaced_config_map(
            MATERIAL,
            {"metadata": {"name": LISTED_CONFIG_MAP}, "data": {"key.pem": key}},
        )
    )
    return applied


def _create_or_keep(create: Any) -> None:
    try:
        create()
    except client.ApiException as error:
        if error.status != 409:
            raise


def allowed(
    api: client.ApiClient,
    account: str,
    verb: str,
    resource: str,
    *,
    group: str = "",
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> bool:
    """What the authorizer answers for ``account`` (a ServiceAccount of the release)."""
    attributes = {
        "verb": verb,
        "resource": resource,
        "group": group,
        "namespace": namespace,
        "name": name,
        "subresource": subresource,
    }
    review = client.AuthorizationV1Api(api).create_subject_access_review(
        {
            "spec": {
                "user": f"system:serviceaccount:{NAMESPACE}:{account}",
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{NAMESPACE}",
                    "system:authenticated",
                ],
                "resourceAttributes": {k: v for k, v in attributes.items() if v},
            }
        }
    )
    return bool(review.status.allowed)


# (account, verb, resource, keyword arguments of allowed())
NEEDED = [
    (OPERATOR, "watch", "plugins", {"group": "pluginguard.dev"}),
    (
        OPERATOR,
        "patch",
        "plugins",
        {"group": "pluginguard.dev", "namespace": "team-a", "subresource": "status"},
    ),
    (OPERATOR, "list", "plugintrustpolicies", {"group": "pluginguard.dev"}),
    (OPERATOR, "watch", "namespaces", {}),
    (
        OPERATOR,
        "patch",
        "configmaps",
        {"namespace": "team-a", "name": "pluginguard-profile-x"},
    ),
    (
        OPERATOR,
        "create",
        "networkpolicies",
        {"group": "networking.k8s.io", "namespace": "team-a"},
    ),
    (OPERATOR, "create", "events", {"namespace": "team-a"}),
    (OPERATOR, "patch", "clusterkopfpeerings", {"group": "kopf.dev", "name": RELEASE}),
    (OPERATOR, "get", "secrets", {"namespace": MATERIAL, "name": LISTED_SECRET}),
    (
        OPERATOR,
        "watch",
        "configmaps",
        {"namespace": MATERIAL, "name": LISTED_CONFIG_MAP},
    ),
    (WEBHOOK, "watch", "plugins", {"group": "pluginguard.dev"}),
    (WEBHOOK, "list", "secrets", {"namespace": MATERIAL, "name": LISTED_SECRET}),
    (
        WEBHOOK,
        "patch",
        "secrets",
        {"namespace": NAMESPACE, "name": f"{RELEASE}-webhook-tls"},
    ),
    (
        WEBHOOK,
        "patch",
        "validatingwebhookconfigurations",
        {"group": "admissionregistration.k8s.io", "name": RELEASE},
    ),
    (
        WEBHOOK,
        "patch",
        "mutatingwebhookconfigurations",
        {"group": "admissionregistration.k8s.io", "name": RELEASE},
    ),
    (NODE_AGENT, "watch", "configmaps", {}),
    (NODE_AGENT, "patch", "nodes", {"name": "node-1"}),
    (
        NODE_AGENT,
        "patch",
        "plugins",
        {"group": "pluginguard.dev", "namespace": "team-a", "subresource": "status"},
    ),
]

REFUSED = [
    # The operator: no Secret but the listed ones, no pods, no writes beyond its own.
    (OPERATOR, "get", "secrets", {"namespace": MATERIAL, "name": UNLISTED_SECRET}),
    (OPERATOR, "list", "secrets", {"namespace": MATERIAL}),
    (OPERATOR, "list", "secrets", {}),
    (OPERATOR, "get", "secrets", {"namespace": "kube-system", "name": LISTED_SECRET}),
    (OPERATOR, "get", "configmaps", {"namespace": "team-a", "name": "app-settings"}),
    (OPERATOR, "delete", "pods", {"namespace": "team-a", "name": "anything"}),
    (OPERATOR, "create", "pods", {"namespace": "team-a"}),
    (
        OPERATOR,
        "delete",
        "plugins",
        {"group": "pluginguard.dev", "namespace": "team-a"},
    ),
    (OPERATOR, "delete", "plugintrustpolicies", {"group": "pluginguard.dev"}),
    (
        OPERATOR,
        "update",
        "plugins",
        {"group": "pluginguard.dev", "namespace": "team-a"},
    ),
    (
        OPERATOR,
        "delete",
        "networkpolicies",
        {"group": "networking.k8s.io", "namespace": "team-a"},
    ),
    (
        OPERATOR,
        "delete",
        "configmaps",
        {"namespace": "team-a", "name": "pluginguard-profile-x"},
    ),
    (
        OPERATOR,
        "patch",
        "clusterkopfpeerings",
        {"group": "kopf.dev", "name": "someone-else"},
    ),
    (OPERATOR, "patch", "nodes", {"name": "node-1"}),
    (OPERATOR, "create", "clusterrolebindings", {"group": "rbac.authorization.k8s.io"}),
    (
        OPERATOR,
        "create",
        "serviceaccounts",
        {"namespace": NAMESPACE, "name": OPERATOR, "subresource": "token"},
    ),
    (OPERATOR, "impersonate", "users", {}),
    (
        OPERATOR,
        "patch",
        "validatingwebhookconfigurations",
        {"group": "admissionregistration.k8s.io", "name": RELEASE},
    ),
    # The webhook: its own Secret and configurations only, and no creating Secrets.
    (WEBHOOK, "create", "secrets", {"namespace": NAMESPACE}),
    (WEBHOOK, "get", "secrets", {"namespace": NAMESPACE, "name": "other-tls"}),
    (WEBHOOK, "list", "secrets", {"namespace": NAMESPACE}),
    (WEBHOOK, "get", "secrets", {"namespace": MATERIAL, "name": UNLISTED_SECRET}),
    (
        WEBHOOK,
        "patch",
        "validatingwebhookconfigurations",
        {"group": "admissionregistration.k8s.io", "name": "another-vendor"},
    ),
    (
        WEBHOOK,
        "delete",
        "validatingwebhookconfigurations",
        {"group": "admissionregistration.k8s.io", "name": RELEASE},
    ),
    (
        WEBHOOK,
        "create",
        "mutatingwebhookconfigurations",
        {"group": "admissionregistration.k8s.io"},
    ),
    (WEBHOOK, "patch", "plugins", {"group": "pluginguard.dev", "namespace": "team-a"}),
    (WEBHOOK, "create", "configmaps", {"namespace": "team-a"}),
    # The node agent: reads profiles, never Secrets; labels nodes, never removes them.
    (NODE_AGENT, "get", "secrets", {"namespace": MATERIAL, "name": LISTED_SECRET}),
    (NODE_AGENT, "delete", "nodes", {"name": "node-1"}),
    (NODE_AGENT, "create", "configmaps", {"namespace": "team-a"}),
    (
        NODE_AGENT,
        "update",
        "plugins",
        {"group": "pluginguard.dev", "namespace": "team-a"},
    ),
]


def _id(case: tuple[str, str, str, dict[str, Any]]) -> str:
    account, verb, resource, where = case
    detail = "/".join(str(v) for k, v in sorted(where.items()) if k != "group")
    return f"{account.removeprefix(RELEASE + '-')}-{verb}-{resource}-{detail}"


@pytest.mark.parametrize("case", NEEDED, ids=[_id(c) for c in NEEDED])
def test_identity_may_do_its_work(
    case: tuple[str, str, str, dict[str, Any]],
    api_client: client.ApiClient,
    release: list[dict[str, Any]],
) -> None:
    account, verb, resource, where = case
    assert allowed(api_client, account, verb, resource, **where)


@pytest.mark.parametrize("case", REFUSED, ids=[_id(c) for c in REFUSED])
def test_identity_is_refused_the_rest(
    case: tuple[str, str, str, dict[str, Any]],
    api_client: client.ApiClient,
    release: list[dict[str, Any]],
) -> None:
    account, verb, resource, where = case
    assert not allowed(api_client, account, verb, resource, **where)


@pytest.fixture(scope="module")
def operator_api(
    api_client: client.ApiClient,
    kubeconfig: Path,
    release: list[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[client.ApiClient]:
    path = token_kubeconfig(
        api_client,
        kubeconfig,
        tmp_path_factory.mktemp("rbac") / "operator.kubeconfig",
        namespace=NAMESPACE,
        service_account=OPERATOR,
    )
    api = config.new_client_from_config(str(path))
    yield api
    api.close()


def _status(call: Any) -> int:
    try:
        call()
    except client.ApiException as error:
        return int(error.status)
    return 200


def test_operator_token_reads_listed_material_by_name_and_nothing_else(
    operator_api: client.ApiClient,
) -> None:
    core = client.CoreV1Api(operator_api)
    by_name = f"metadata.name={LISTED_SECRET}"

    assert (
        core.read_namespaced_secret(LISTED_SECRET, MATERIAL).metadata.name
        == LISTED_SECRET
    )
    # The watch ClusterState keeps on each referenced object: list and watch with a
    # metadata.name field selector, which RBAC checks against resourceNames.
    listed = core.list_namespaced_secret(MATERIAL, field_selector=by_name)
    assert [s.metadata.name for s in listed.items] == [LISTED_SECRET]
    assert (
        _status(
            lambda: core.list_namespaced_secret(
                MATERIAL,
                field_selector=by_name,
                watch=True,
                timeout_seconds=1,
                _preload_content=False,
            ).read()
        )
        == 200
    )

    assert _status(lambda: core.list_namespaced_secret(MATERIAL)) == 403
    assert (
        _status(lambda: core.read_namespaced_secret(UNLISTED_SECRET, MATERIAL)) == 403
    )
    assert (
        _status(
            lambda: core.list_namespaced_secret(
                MATERIAL, field_selector=f"metadata.name={UNLISTED_SECRET}"
            )
        )
        == 403
    )
    assert _status(lambda: core.list_secret_for_all_namespaces()) == 403
    assert _status(lambda: core.delete_namespaced_pod("anything", MATERIAL)) == 403
    assert (
        _status(lambda: core.read_namespaced_config_map("kube-root-ca.crt", MATERIAL))
        == 403
    )


@pytest.mark.parametrize("reference", ["secretRef", "configMapRef"])
def test_policy_compiles_from_listed_material_under_the_operators_identity(
    reference: str,
    operator_api: client.ApiClient,
    api_client: client.ApiClient,
) -> None:
    """The operator's and the webhook's cluster copy, as the operator's ServiceAccount:
    a policy whose key sits in a listed Secret or ConfigMap verifies a Plugin; one whose
    key sits in an unlisted Secret is left without it, and its Plugins are refused."""
    namespace = f"rbac-plugins-{uuid.uuid4().hex[:6]}"
    elsewhere = f"{namespace}-unlisted"
    for name in (namespace, elsewhere):
        ensure_namespace(api_client, name)
    listed = LISTED_SECRET if reference == "secretRef" else LISTED_CONFIG_MAP

    def selecting(name: str) -> dict[str, Any]:
        return {"matchLabels": {"kubernetes.io/metadata.name": name}}

    good = policy(
        f"{namespace}-listed",
        namespaceSelector=selecting(namespace),
        trustedKeys=[
            {
                "name": "release",
                reference: {"namespace": MATERIAL, "name": listed, "key": "key.pem"},
            }
        ],
    )
    bad = policy(
        f"{namespace}-unlisted",
        namespaceSelector=selecting(elsewhere),
        trustedKeys=[
            {
                "name": "release",
                "secretRef": {
                    "namespace": MATERIAL,
                    "name": UNLISTED_SECRET,
                    "key": "key.pem",
                },
            }
        ],
    )
    custom = client.CustomObjectsApi(api_client)
    state = ClusterState(operator_api).start()
    try:
        for document in (good, bad):
            custom.create_cluster_custom_object(
                "pluginguard.dev", "v1alpha1", "plugintrustpolicies", document
            )

        # Material that cannot be read leaves its policy compiled without that key,
        # with the reason in ``unavailable``.
        deadline = time.monotonic() + 20
        compiled: dict[str, Any] = {}
        while time.monotonic() < deadline:
            compiled = {p.name: p for p in state.trust_policies()[0]}
            listed_policy = compiled.get(good["metadata"]["name"])
            unlisted_policy = compiled.get(bad["metadata"]["name"])
            if listed_policy and not listed_policy.unavailable and unlisted_policy:
                break
            time.sleep(0.1)
        assert listed_policy is not None and not listed_policy.unavailable, compiled
        assert listed_policy.trusted_keys
        assert unlisted_policy is not None and not unlisted_policy.trusted_keys
        assert any(UNLISTED_SECRET in reason for reason in unlisted_policy.unavailable)

        cluster = WebhookCluster(state)
        for where, trusted in ((namespace, True), (elsewhere, False)):
            plugin = signed("keyed", where)
            plugin["metadata"].update(uid=str(uuid.uuid4()), resourceVersion="1")
            verdict = cluster.verdict(plugin)
            assert verdict.verified is trusted, verdict.message
        assert UNLISTED_SECRET in verdict.message
    finally:
        state.stop()
        for document in (good, bad):
            try:
                custom.delete_cluster_custom_object(
                    "pluginguard.dev",
                    "v1alpha1",
                    "plugintrustpolicies",
                    document["metadata"]["name"],
                )
            except client.ApiException:
                pass


def test_node_agent_installs_a_profile_as_its_service_account(
    api_client: client.ApiClient,
    kubeconfig: Path,
    release: list[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The agent's whole loop under the chart's node-agent role: it reads the profile
    ConfigMap and the Plugin, writes the file, labels its Node and records an Event."""
    directory = tmp_path_factory.mktemp("rbac-node-agent")
    agent_api = config.new_client_from_config(
        str(
            token_kubeconfig(
                api_client,
                kubeconfig,
                directory / "node-agent.kubeconfig",
                namespace=NAMESPACE,
                service_account=NODE_AGENT,
            )
        )
    )
    core = client.CoreV1Api(api_client)
    namespace, node = (
        f"rbac-agent-{uuid.uuid4().hex[:6]}",
        f"node-{uuid.uuid4().hex[:6]}",
    )
    ensure_namespace(api_client, namespace)
    core.create_node({"metadata": {"name": node}})
    custom = client.CustomObjectsApi(api_client)
    document = policy(
        namespace,
        namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        trustedKeys=[{"name": "release", "publicKey": public_pem(KEY)}],
    )
    custom.create_cluster_custom_object(
        "pluginguard.dev", "v1alpha1", "plugintrustpolicies", document
    )
    # A webhook registered by another test of this session admits the Plugin once
    # its copy holds the policy.
    deadline = time.monotonic() + 20
    document = signed("agent", namespace)
    while True:
        try:
            created = custom.create_namespaced_custom_object(
                "pluginguard.dev", "v1alpha1", namespace, "plugins", document
            )
            break
        except client.ApiException as error:
            if error.status not in (400, 403) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    # What the operator writes: the profile the Plugin's sandbox compiles to, in a
    # ConfigMap the Plugin controls (no operator runs in this module).
    generated = seccomp_profile(document["spec"]["sandbox"])
    profile, sha256 = generated.json_bytes, generated.sha256
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": profile_config_map("agent"),
                "labels": {PROFILE_LABEL: "true", PLUGIN_LABEL: "agent"},
                "annotations": {PROFILE_SHA_ANNOTATION: sha256},
                "ownerReferences": [{
                    "apiVersion": "pluginguard.dev/v1alpha1", "kind": "Plugin",
                    "name": "agent", "uid": created["metadata"]["uid"], "controller": True,
                }],
            },
            "data": {"profile.json": profile.decode()},
        },
    )

    agent = NodeAgent(agent_api, root=directory / "seccomp", node_name=node)
    threading.Thread(target=agent.run, daemon=True).start()
    try:
        path = directory / "seccomp" / "pluginguard" / namespace / "agent.json"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            path.is_file()
            and (core.read_node(node).metadata.labels or {}).get(
                node_label(namespace, "agent")
            )
        ):
            time.sleep(0.1)
        assert path.read_bytes() == profile
        labels = core.read_node(node).metadata.labels or {}
        assert labels[node_label(namespace, "agent")] == node_label_value(sha256)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            e.reason == "ProfileInstalled"
            for e in core.list_namespaced_event(namespace).items
        ):
            time.sleep(0.1)
        reasons = [e.reason for e in core.list_namespaced_event(namespace).items]
        assert "ProfileInstalled" in reasons, reasons
    finally:
        agent.stop()
        core.delete_node(node)
        custom.delete_cluster_custom_object(
            "pluginguard.dev", "v1alpha1", "plugintrustpolicies", namespace
        )
