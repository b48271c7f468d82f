"""Profiles reach the nodes: the node agent writes them where the kubelet looks, labels
its Node, and the mutating webhook sends plugin pods only to nodes that hold them."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from pluginguard.names import node_label, node_label_value
from pluginguard.operator.node_agent import NodeAgent
from tests.e2e.plugins import (
    GROUP,
    VERSION,
    create_plugin,
    eventually,
    events_for,
    plugin_pod,
    signed,
    wait_ready,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def node(pluginguard) -> Iterator[str]:
    """A Node object as a kubelet would register it (no kubelet runs here)."""
    name = f"node-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(pluginguard.api)
    core.create_node({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})
    yield name
    core.delete_node(name)


@pytest.fixture(scope="module")
def seccomp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kubelet-seccomp")
    (root / "someone-elses.json").write_text("{}")  # the agent must never touch this
    return root


@pytest.fixture(scope="module")
def agent(pluginguard, node: str, seccomp_root: Path) -> Iterator[NodeAgent]:
    running = NodeAgent(pluginguard.api, root=seccomp_root, node_name=node)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    yield running
    running.stop()


def node_labels(core: client.CoreV1Api, node: str) -> dict[str, str]:
    return core.read_node(node).metadata.labels or {}


def test_profile_is_written_and_the_node_labelled(pluginguard, custom, core, namespace,
                                                    trust_policy, agent, node, seccomp_root) -> None:
    create_plugin(custom, signed("delivered", namespace))
    status = wait_ready(custom, namespace, "delivered")["status"]
    path = seccomp_root / "pluginguard" / namespace / "delivered.json"
    eventually(path.is_file, what=f"{path} written")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == status["seccomp"]["sha256"]
    config_map = core.read_namespaced_config_map("pluginguard-profile-delivered", namespace)
    assert path.read_text() == config_map.data["profile.json"]
    label = node_label(namespace, "delivered")
    eventually(lambda: node_labels(core, node).get(label) == node_label_value(status["seccomp"]["sha256"]),
               what="node labelled with the profile's sha256")
    eventually(lambda: any(e.reason == "ProfileInstalled" and node in e.message
                           for e in events_for(core, namespace, "delivered")),
               what="ProfileInstalled event naming the node")
    assert (seccomp_root / "someone-elses.json").read_text() == "{}"
    assert not list(seccomp_root.glob("pluginguard/**/.*.tmp"))


def test_mutation_fills_in_profile_limits_and_node_affinity(custom, core, namespace, trust_policy,
                                                              agent, node) -> None:
    create_plugin(custom, signed("mutated", namespace))
    status = wait_ready(custom, namespace, "mutated")["status"]
    pod = plugin_pod("bare", namespace, "mutated")
    container = pod["spec"]["containers"][0]
    del container["resources"]
    del container["securityContext"]["seccompProfile"]
    created = core.create_namespaced_pod(namespace, pod)
    assert created.spec.security_context.seccomp_profile.type == "Localhost"
    assert created.spec.security_context.seccomp_profile.localhost_profile == \
        f"pluginguard/{namespace}/mutated.json"
    assert created.spec.containers[0].resources.limits == {"memory": "256Mi", "cpu": "500m"}
    terms = created.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    expression = terms.node_selector_terms[0].match_expressions[0]
    assert expression.key == node_label(namespace, "mutated")
    assert expression.values == [node_label_value(status["seccomp"]["sha256"])]


def test_mutation_does_not_loosen_what_the_pod_asked_for(custom, core, namespace, trust_policy) -> None:
    create_plugin(custom, signed("strict", namespace))
    wait_ready(custom, namespace, "strict")
    pod = plugin_pod("smaller", namespace, "strict",
                     resources={"limits": {"memory": "64Mi", "cpu": "100m"}})
    created = core.create_namespaced_pod(namespace, pod)
    assert created.spec.containers[0].resources.limits == {"memory": "64Mi", "cpu": "100m"}


def test_profile_and_label_go_when_the_plugin_goes(custom, core, namespace, trust_policy, agent,
                                                     node, seccomp_root) -> None:
    create_plugin(custom, signed("ephemeral", namespace))
    wait_ready(custom, namespace, "ephemeral")
    path = seccomp_root / "pluginguard" / namespace / "ephemeral.json"
    eventually(path.is_file, what="profile written")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "plugins", "ephemeral")
    eventually(lambda: not path.exists(), what="profile removed")
    label = node_label(namespace, "ephemeral")
    eventually(lambda: label not in node_labels(core, node), what="node label removed")
    assert (seccomp_root / "someone-elses.json").read_text() == "{}"




def test_no_configmap_can_put_another_profile_on_the_node(custom, core, namespace, trust_policy,
                                                          agent, node, seccomp_root) -> None:
    """Whoever may write ConfigMaps in the namespace cannot choose the profile a node
    holds for a Plugin: only the one its sandbox compiles to is installed."""
    create_plugin(custom, signed("guarded", namespace))
    expected = wait_ready(custom, namespace, "guarded")["status"]["seccomp"]["sha256"]
    path = seccomp_root / "pluginguard" / namespace / "guarded.json"
    eventually(path.is_file, what="profile written")
    allow_all = '{"defaultAction":"SCMP_ACT_ALLOW"}'
    rogue_sha = hashlib.sha256(allow_all.encode()).hexdigest()
    rogue = {"metadata": {"name": "zz-rogue", "namespace": namespace,
                          "labels": {"pluginguard.dev/seccomp-profile": "true",
                                     "pluginguard.dev/plugin": "guarded"},
                          "annotations": {"pluginguard.dev/profile-sha256": rogue_sha}},
             "data": {"profile.json": allow_all}}
    core.create_namespaced_config_map(namespace, rogue)
    # The operator's own ConfigMap edited, content and annotation alike.
    core.patch_namespaced_config_map("pluginguard-profile-guarded", namespace, {
        "metadata": {"annotations": {"pluginguard.dev/profile-sha256": rogue_sha}},
        "data": {"profile.json": allow_all}})
    held = set()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        held.add(hashlib.sha256(path.read_bytes()).hexdigest())
        time.sleep(0.05)
    assert held == {expected}
    label = node_label(namespace, "guarded")
    assert node_labels(core, node).get(label) == node_label_value(expected)
    eventually(lambda: any(e.reason == "ProfileRejected" and "compiles to" in e.message
                           for e in events_for(core, namespace, "guarded")),
               what="ProfileRejected event")

    # A deleted ConfigMap does not take the profile off the node while the Plugin stays.
    core.delete_namespaced_config_map("pluginguard-profile-guarded", namespace)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert path.is_file()
        time.sleep(0.05)
    core.delete_namespaced_config_map("zz-rogue", namespace)
