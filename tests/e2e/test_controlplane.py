"""The test control plane is a real one: versioned, persistent, RBAC-enforcing.

Later end-to-end tests rely on each of these properties; if one breaks, these tests say
which before the others fail in confusing ways.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import kubernetes.client
import kubernetes.config
import pytest
from kubernetes.client import (
    ApiClient,
    CoreV1Api,
    RbacAuthorizationV1Api,
    V1ObjectMeta,
)
from kubernetes.client.exceptions import ApiException

from tests.controlplane.cluster import ControlPlane

pytestmark = pytest.mark.e2e

T = TypeVar("T")

UNPRIVILEGED_USER = "pluginguard-nobody"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


@pytest.fixture
def namespace(api_client: ApiClient) -> Iterator[str]:
    """A namespace of the test's own.

    No namespace controller runs, so a deleted namespace stays Terminating; names are
    unique so that this never matters.
    """
    name = f"pg-e2e-{uuid.uuid4().hex[:8]}"
    core = CoreV1Api(api_client)
    core.create_namespace(
        kubernetes.client.V1Namespace(metadata=V1ObjectMeta(name=name))
    )
    yield name
    core.delete_namespace(name)


def test_api_server_reports_the_pinned_kubernetes_version(
    api_client: ApiClient,
) -> None:
    version = kubernetes.client.VersionApi(api_client).get_code()
    assert version.git_version.startswith("v1.36."), version.git_version
    assert (version.major, version.minor) == ("1", "36")


def test_configmap_is_stored_and_read_back(
    api_client: ApiClient, namespace: str
) -> None:
    core = CoreV1Api(api_client)
    core.create_namespaced_config_map(
        namespace,
        kubernetes.client.V1ConfigMap(
            metadata=V1ObjectMeta(name="trust-policy"), data={"threshold": "2"}
        ),
    )

    stored = core.read_namespaced_config_map("trust-policy", namespace)

    assert stored.data == {"threshold": "2"}
    assert stored.metadata.uid and stored.metadata.resource_version


def test_pod_is_accepted_and_stays_pending_without_a_kubelet(
    api_client: ApiClient, namespace: str
) -> None:
    core = CoreV1Api(api_client)
    pod = kubernetes.client.V1Pod(
        metadata=V1ObjectMeta(name="plugin", labels={"app": "plugin"}),
        spec=kubernetes.client.V1PodSpec(
            containers=[kubernetes.client.V1Container(name="plugin", image=PAUSE_IMAGE)]
        ),
    )
    core.create_namespaced_pod(namespace, pod)

    stored = core.read_namespaced_pod("plugin", namespace)

    assert stored.spec.containers[0].image == PAUSE_IMAGE
    assert stored.metadata.labels == {"app": "plugin"}
    assert stored.status.phase == "Pending"
    assert stored.spec.node_name is None


def test_rbac_forbids_an_unprivileged_user_until_a_role_allows_it(
    api_client: ApiClient, kubeconfig: Path, namespace: str
) -> None:
    with _client_as(kubeconfig, UNPRIVILEGED_USER) as nobody:
        with pytest.raises(ApiException) as refused:
            CoreV1Api(nobody).list_namespaced_config_map(namespace)
        assert refused.value.status == 403

        _grant(api_client, namespace, user=UNPRIVILEGED_USER, resources=["configmaps"])

        # The authorizer learns of the binding through a watch, a moment later.
        listed = _eventually(
            lambda: CoreV1Api(nobody).list_namespaced_config_map(namespace)
        )
        with pytest.raises(ApiException) as still_refused:
            CoreV1Api(nobody).list_namespaced_pod(namespace)

    assert listed.items == []
    assert still_refused.value.status == 403


def test_service_account_token_authenticates_under_its_own_rbac(
    api_client: ApiClient, namespace: str
) -> None:
    core = CoreV1Api(api_client)
    core.create_namespaced_service_account(
        namespace,
        kubernetes.client.V1ServiceAccount(metadata=V1ObjectMeta(name="operator")),
    )
    request = kubernetes.client.AuthenticationV1TokenRequest(
        spec=kubernetes.client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    token = core.create_namespaced_service_account_token(
        "operator", namespace, request
    ).status.token

    configuration = kubernetes.client.Configuration()
    configuration.host = api_client.configuration.host
    configuration.ssl_ca_cert = api_client.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {token}"}
    with ApiClient(configuration) as operator:
        review = kubernetes.client.AuthenticationV1Api(
            operator
        ).create_self_subject_review(kubernetes.client.V1SelfSubjectReview())
        with pytest.raises(ApiException) as refused:
            CoreV1Api(operator).list_namespaced_pod(namespace)

    user = review.status.user_info
    assert user.username == f"system:serviceaccount:{namespace}:operator"
    assert "system:serviceaccounts" in user.groups
    assert refused.value.status == 403


def test_kubectl_reaches_the_server_with_the_kubeconfig(
    kubectl: Path, kubeconfig: Path
) -> None:
    version = json.loads(_run(kubectl, kubeconfig, "version", "--output=json"))
    allowed = _run(
        kubectl, kubeconfig, "auth", "can-i", "create", "pods", "--all-namespaces"
    )
    namespace = _run(
        kubectl, kubeconfig, "get", "namespace", "default", "--output=name"
    )

    assert version["serverVersion"]["gitVersion"].startswith("v1.36.")
    assert (
        version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"]
    )
    assert allowed.strip() == "yes"
    assert namespace.strip() == "namespace/default"


def test_objects_survive_a_restart_of_etcd_and_the_api_server(
    control_plane: ControlPlane, api_client: ApiClient, namespace: str
) -> None:
    core = CoreV1Api(api_client)
    core.create_namespaced_config_map(
        namespace,
        kubernetes.client.V1ConfigMap(
            metadata=V1ObjectMeta(name="kept"), data={"k": "v"}
        ),
    )
    before = (control_plane.etcd.pid, control_plane.apiserver.pid)

    control_plane.restart_etcd()
    control_plane.restart_apiserver()

    assert control_plane.etcd.pid not in before
    assert control_plane.apiserver.pid not in before
    assert core.read_namespaced_config_map("kept", namespace).data == {"k": "v"}


def _client_as(kubeconfig: Path, user: str) -> ApiClient:
    """An admin client that impersonates ``user`` on every request."""
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    client.set_default_header("Impersonate-User", user)
    return client


def _grant(
    api_client: ApiClient, namespace: str, *, user: str, resources: list[str]
) -> None:
    rbac = RbacAuthorizationV1Api(api_client)
    rbac.create_namespaced_role(
        namespace,
        kubernetes.client.V1Role(
            metadata=V1ObjectMeta(name="reader"),
            rules=[
                kubernetes.client.V1PolicyRule(
                    api_groups=[""], resources=resources, verbs=["get", "list"]
                )
            ],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        kubernetes.client.V1RoleBinding(
            metadata=V1ObjectMeta(name="reader"),
            role_ref=kubernetes.client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="reader"
            ),
            subjects=[
                kubernetes.client.RbacV1Subject(
                    api_group="rbac.authorization.k8s.io", kind="User", name=user
                )
            ],
        ),
    )


def _eventually(call: Callable[[], T], timeout: float = 10.0) -> T:
    """``call()``'s result once it stops being refused with 403, or its last refusal."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except ApiException as error:
            if error.status != 403 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _run(kubectl: Path, kubeconfig: Path, *args: str) -> str:
    result = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
