"""Profiles delivered by the Security Profiles Operator: with ``--profile-delivery
security-profiles-operator`` the operator writes that project's SeccompProfile objects,
which the API server validates against the project's own CRD, and plugin pods wait
until the project reports the profile installed on every node.

No Security Profiles Operator runs here; the tests write the status its daemon would.
The module stops the session's operator and webhook and runs them in this mode, then
puts the session's back.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from pluginguard.names import SPO_GROUP, SPO_VERSION, spo_profile_name
from pluginguard.sandbox import seccomp_profile
from tests.controlplane.pluginguard_local import install_crds
from tests.controlplane.upstream import seccomp_profile_crd
from tests.e2e.plugins import (
    GROUP,
    VERSION,
    condition,
    create_plugin,
    eventually,
    plugin_pod,
    refusal,
    signed,
    wait_ready,
)

pytestmark = pytest.mark.e2e

DELIVERY = {"profileDelivery": "security-profiles-operator"}


def restart_webhook(pluginguard, arguments: list[str]) -> None:
    assert pluginguard.webhook is not None
    pluginguard.webhook.stop(grace=10.0)
    pluginguard.start_webhook(arguments=arguments)


@pytest.fixture(scope="module")
def spo_operator(pluginguard, trust_policy) -> Iterator[Any]:
    install_crds(pluginguard.api, files=[seccomp_profile_crd()])
    previous = list(pluginguard.operators)
    for replica in previous:
        replica.stop(grace=10.0)
        pluginguard.operators.remove(replica)
    pluginguard.install_rbac(values=DELIVERY)  # the chart's RBAC for this mode
    mode = ["--profile-delivery", "security-profiles-operator"]
    restart_webhook(pluginguard, mode)  # the webhook and the operator must agree
    operator = pluginguard.start_operator(name="operator-spo", arguments=mode)
    try:
        yield operator
    finally:
        operator.stop(grace=10.0)
        pluginguard.operators.remove(operator)
        restart_webhook(pluginguard, [])
        pluginguard.install_rbac()
        custom = client.CustomObjectsApi(pluginguard.api)
        for profile in custom.list_cluster_custom_object(
                SPO_GROUP, SPO_VERSION, "seccompprofiles")["items"]:
            custom.delete_cluster_custom_object(SPO_GROUP, SPO_VERSION, "seccompprofiles",
                                                profile["metadata"]["name"])
        # Its resume handlers reconcile every Plugin back to node-agent delivery.
        pluginguard.start_operator()


@pytest.fixture()
def spo_namespace(namespace: str, spo_operator) -> str:
    """The module's namespace (its trust policy selects it), with the operator in this mode."""
    return namespace


def stored_profile(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return custom.get_cluster_custom_object(SPO_GROUP, SPO_VERSION, "seccompprofiles",
                                            spo_profile_name(namespace, name))


def report_installed(custom: client.CustomObjectsApi, namespace: str, name: str,
                     state: str = "Installed") -> None:
    """What the project's daemon writes once every node holds the profile."""
    custom.patch_cluster_custom_object_status(
        SPO_GROUP, SPO_VERSION, "seccompprofiles", spo_profile_name(namespace, name),
        {"status": {"status": state}})


def spo_pod(pod_name: str, namespace: str, plugin: str) -> dict[str, Any]:
    pod = plugin_pod(pod_name, namespace, plugin)
    pod["spec"]["containers"][0]["securityContext"]["seccompProfile"]["localhostProfile"] = \
        f"operator/{spo_profile_name(namespace, plugin)}.json"
    return pod


def test_plugin_pods_wait_for_the_profile_on_every_node(pluginguard, custom, core,
                                                        spo_namespace) -> None:
    namespace = spo_namespace
    document = signed("ratelimit", namespace)
    create_plugin(custom, document)

    stored = eventually(lambda: stored_profile(custom, namespace, "ratelimit"),
                        what="the SeccompProfile")
    # Accepted under the project's schema, and stored as written: a field its schema did
    # not know would have been dropped (the API server prunes unknown fields).
    expected = json.loads(seccomp_profile(document["spec"]["sandbox"]).json_bytes)
    expected.pop("defaultErrnoRet", None)
    assert stored["spec"] == {**expected, "disabled": False}  # its schema defaults disabled
    assert not core.list_namespaced_config_map(
        namespace, label_selector="pluginguard.dev/seccomp-profile").items

    plugin = wait_ready(custom, namespace, "ratelimit", status="False")
    assert condition(plugin, "Verified")["status"] == "True"
    assert condition(plugin, "ProfileReady")["reason"] == "ProfileNotInstalled"
    seccomp = plugin["status"]["seccomp"]
    assert seccomp["localhostProfile"] == "operator/pluginguard.%s.ratelimit.json" % namespace
    assert seccomp["delivery"] == "security-profiles-operator" and seccomp["installed"] is False

    denied = refusal(lambda: core.create_namespaced_pod(
        namespace, spo_pod("early", namespace, "ratelimit"), dry_run="All"))
    assert denied.status == 403 and "is not installed on the nodes yet" in denied.body

    report_installed(custom, namespace, "ratelimit")
    plugin = wait_ready(custom, namespace, "ratelimit")
    assert plugin["status"]["seccomp"]["installed"] is True

    # The mutation fills in the project's profile path and adds no node affinity: that
    # project labels no nodes.
    bare = spo_pod("bare", namespace, "ratelimit")
    del bare["spec"]["containers"][0]["securityContext"]["seccompProfile"]
    created = eventually(lambda: core.create_namespaced_pod(namespace, bare, dry_run="All"),
                         what="the webhook sees the installed profile")
    assert created.spec.affinity is None
    assert created.spec.security_context.seccomp_profile.localhost_profile == \
        f"operator/{spo_profile_name(namespace, 'ratelimit')}.json"

    # Taken off a node again (the project reports it partial): pods wait again.
    report_installed(custom, namespace, "ratelimit", state="Partial")
    wait_ready(custom, namespace, "ratelimit", status="False")


@pytest.mark.parametrize("sandbox", [
    {"seccomp": {"defaultAction": "kill", "deny": ["ptrace"]}},
    {"seccomp": {"defaultAction": "log", "allow": ["ptrace"], "architectures": ["arm64"]}},
    {"seccomp": {"baseline": "none", "defaultAction": "errno",
                 "allow": ["read", "write", "exit_group", "execve", "brk", "mmap"]}},
], ids=["kill", "log-arm64", "no-baseline"])
def test_every_kind_of_profile_fits_the_projects_schema(custom, spo_namespace, request,
                                                        sandbox: dict[str, Any]) -> None:
    name = f"shape-{request.node.callspec.id}"
    create_plugin(custom, signed(name, spo_namespace, sandbox=sandbox))
    stored = eventually(lambda: stored_profile(custom, spo_namespace, name),
                        what="the SeccompProfile")
    expected = json.loads(seccomp_profile(sandbox).json_bytes)
    expected.pop("defaultErrnoRet", None)
    assert {k: v for k, v in stored["spec"].items() if k != "disabled"} == expected


def test_the_schema_is_enforced(custom) -> None:
    """The CRD is the project's real one: it refuses what the project would not run."""
    bogus = {"apiVersion": f"{SPO_GROUP}/{SPO_VERSION}", "kind": "SeccompProfile",
             "metadata": {"name": f"bogus-{uuid.uuid4().hex[:6]}"},
             "spec": {"defaultAction": "SCMP_ACT_MAYBE"}}
    denied = refusal(lambda: custom.create_cluster_custom_object(
        SPO_GROUP, SPO_VERSION, "seccompprofiles", bogus))
    assert denied.status == 422 and "SCMP_ACT_MAYBE" in denied.body


def test_the_profile_goes_when_the_plugin_goes(pluginguard, custom, spo_operator,
                                               spo_namespace) -> None:
    namespace = spo_namespace
    for name in ("gone-live", "gone-offline"):
        create_plugin(custom, signed(name, namespace))
        eventually(lambda name=name: stored_profile(custom, namespace, name),
                   what=f"the SeccompProfile of {name}")

    def absent(name: str) -> bool:
        try:
            stored_profile(custom, namespace, name)
        except client.ApiException as error:
            return error.status == 404
        return False

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "plugins", "gone-live")
    eventually(lambda: absent("gone-live"), what="the SeccompProfile deleted with its Plugin")

    # Deleted while no operator runs: no owner reference can help a cluster-scoped
    # object, so the operator finds the orphan when it is back.
    spo_operator.stop(grace=10.0)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "plugins", "gone-offline")
    assert not absent("gone-offline")
    spo_operator.start()
    eventually(lambda: absent("gone-offline"), timeout=40,
               what="the orphaned SeccompProfile deleted after a restart")
