"""Admission decisions for Plugins and plugin pods, without a server around them."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pluginguard.keys import generate_private_key
from pluginguard.errors import InputError
from pluginguard.manifest import parse_plugin
from pluginguard.names import NODE_AGENT_DELIVERY, SPO_DELIVERY
from pluginguard.policy import NoMaterial, TrustPolicy, compile_policy
from pluginguard.signing import sign_manifest
from pluginguard.verdict import Verdict
from pluginguard.verify import verify_plugin
from pluginguard.sandbox import PodRules, seccomp_profile
from pluginguard.webhooks.admission import plugin_pod_rules, review
from tests.plugin_factory import DIGEST, plugin, policy

KEY = generate_private_key("ECDSA-P256")
PUBLIC_PEM = (
    KEY.public_key()
    .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
IMAGE = "registry.example/hkp/ratelimit"


class FakeCluster:
    """The admission logic's view of a cluster, held in plain dicts."""

    def __init__(self, *policy_docs: dict[str, Any], enforce: bool = False,
                 delivery: str = NODE_AGENT_DELIVERY) -> None:
        self.delivery = delivery
        self._policies = [compile_policy(p, material=NoMaterial()) for p in policy_docs]
        self.plugins: dict[tuple[str, str], dict[str, Any]] = {}
        self.labels = {"hkp": {"pluginguard.dev/enforce": "true"} if enforce else {}}

    def add(self, document: dict[str, Any]) -> dict[str, Any]:
        document = copy.deepcopy(document)
        document["metadata"].setdefault("namespace", "hkp")
        self.plugins[
            (document["metadata"]["namespace"], document["metadata"]["name"])
        ] = document
        return document

    def plugin(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.plugins.get((namespace, name))

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return self.labels.get(namespace, {})

    def policies(self) -> list[TrustPolicy]:
        return self._policies

    def verdict(self, document: dict[str, Any]) -> Verdict:
        return verify_plugin(
            parse_plugin(document, where="test"),
            self._policies,
            namespace_labels=self.namespace_labels("hkp"),
        )

    def pod_rules(self, document: dict[str, Any]) -> PodRules | InputError:
        return plugin_pod_rules(document, delivery=self.delivery)


def trusted(**spec: Any) -> dict[str, Any]:
    return policy(trustedKeys=[{"name": "release", "publicKey": PUBLIC_PEM}], **spec)


def signed_plugin(**changes: Any) -> dict[str, Any]:
    return sign_manifest(plugin(**changes), key=KEY)


def good_pod(name: str = "ratelimit", **overrides: Any) -> dict[str, Any]:
    container = {
        "name": "app",
        "image": f"{IMAGE}@{DIGEST}",
        "resources": {"limits": {"memory": "256Mi", "cpu": "500m"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "seccompProfile": {
                "type": "Localhost",
                "localhostProfile": f"pluginguard/hkp/{name}.json",
            },
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    container.update(overrides)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "rl-1",
            "namespace": "hkp",
            "labels": {"pluginguard.dev/plugin": name},
        },
        "spec": {
            "containers": [container],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def admission(
    obj: dict[str, Any],
    *,
    kind: str = "Pod",
    namespace: str = "hkp",
    dry_run: bool = False,
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3a1c-uid",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "namespace": namespace,
            "name": obj["metadata"].get("name"),
            "operation": "CREATE",
            "object": obj,
            "dryRun": dry_run,
        },
    }


def decide(
    cluster: FakeCluster, obj: dict[str, Any], endpoint: str = "pods", **kw: Any
):
    uid, decision = review(admission(obj, **kw), cluster, kind=endpoint)
    assert uid == "3a1c-uid"
    return decision


def test_signed_plugin_is_admitted_and_tampered_one_refused() -> None:
    cluster = FakeCluster(trusted())
    assert decide(cluster, signed_plugin(), "plugins", kind="Plugin").allowed
    tampered = signed_plugin()
    tampered["spec"]["sandbox"]["resources"]["maxMemoryMB"] = 1024
    decision = decide(cluster, tampered, "plugins", kind="Plugin")
    assert not decision.allowed and decision.reason == "SandboxMismatch"
    assert "maxMemoryMB" in decision.message


def test_plugin_with_uncompilable_sandbox_is_refused() -> None:
    broken = signed_plugin()
    broken["spec"]["sandbox"]["seccomp"]["allow"] = ["definitely_not_a_syscall"]
    decision = decide(FakeCluster(trusted()), broken, "plugins", kind="Plugin")
    assert not decision.allowed and "definitely_not_a_syscall" in decision.message
    assert decision.reason == "SeccompProfileInvalid"
    assert decision.message.startswith(
        "PluginGuard refused Plugin hkp/ratelimit: SeccompProfileInvalid: ")


def test_good_plugin_pod_is_allowed() -> None:
    cluster = FakeCluster(trusted())
    cluster.add(signed_plugin())
    decision = decide(cluster, good_pod())
    assert decision.allowed, decision.message


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"image": f"{IMAGE}@sha256:{'00' * 32}"}, "is not the signed artifact"),
        ({"image": f"{IMAGE}:v1.2"}, "must be pinned by digest"),
        (
            {
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                }
            },
            "seccompProfile must be Localhost",
        ),
        ({"resources": {"limits": {"memory": "1Gi", "cpu": "500m"}}}, "memory"),
        (
            {
                "securityContext": {
                    "privileged": True,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "seccompProfile": {
                        "type": "Localhost",
                        "localhostProfile": "pluginguard/hkp/ratelimit.json",
                    },
                }
            },
            "privileged",
        ),
    ],
)
def test_bad_plugin_pod_is_denied_naming_container_and_rule(
    overrides: dict[str, Any], fragment: str
) -> None:
    cluster = FakeCluster(trusted())
    cluster.add(signed_plugin())
    decision = decide(cluster, good_pod(**overrides))
    assert not decision.allowed
    assert 'container "app"' in decision.message and fragment in decision.message


def test_pod_of_an_unverified_plugin_is_denied() -> None:
    cluster = FakeCluster(trusted())
    unsigned = plugin()
    cluster.add(unsigned)
    decision = decide(cluster, good_pod())
    assert not decision.allowed and decision.reason == "SignatureMissing"


def test_pod_of_a_missing_plugin_is_denied() -> None:
    decision = decide(FakeCluster(trusted()), good_pod("nonexistent"))
    assert not decision.allowed and "does not exist" in decision.message


@pytest.mark.parametrize("enforcement, warned", [("warn", True), ("audit", False)])
def test_warn_and_audit_allow_an_unverified_plugin(
    enforcement: str, warned: bool
) -> None:
    cluster = FakeCluster(trusted(enforcement=enforcement))
    cluster.add(plugin())
    decision = decide(cluster, good_pod())
    assert decision.allowed and decision.audit
    assert bool(decision.warnings) is warned
    # What the Event on the Plugin says: which pod was let through, and why it was not trusted.
    assert decision.message.startswith("PluginGuard: Pod hkp/rl-1: Plugin hkp/ratelimit is not "
                                       "trusted: SignatureMissing")
    response = decision.response("u")["response"]
    assert ("warnings" in response) is warned


def test_enforced_namespace_refuses_pods_that_are_not_plugin_pods() -> None:
    pod = good_pod()
    del pod["metadata"]["labels"]
    assert decide(FakeCluster(trusted()), pod).allowed
    decision = decide(FakeCluster(trusted(), enforce=True), pod)
    assert not decision.allowed and decision.reason == "NotAPluginPod"


@pytest.mark.parametrize(
    "kind, wrap",
    [
        ("Deployment", lambda pod: {"spec": {"template": pod}}),
        ("Job", lambda pod: {"spec": {"template": pod}}),
        ("CronJob", lambda pod: {"spec": {"jobTemplate": {"spec": {"template": pod}}}}),
    ],
)
def test_workload_templates_are_checked(kind: str, wrap: Any) -> None:
    cluster = FakeCluster(trusted())
    cluster.add(signed_plugin())
    template = good_pod(image=f"{IMAGE}:latest")
    workload = {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": "w", "namespace": "hkp"},
        **wrap({"metadata": template["metadata"], "spec": template["spec"]}),
    }
    decision = decide(cluster, workload, kind=kind)
    assert not decision.allowed and "pinned by digest" in decision.message
    template_ok = good_pod()
    workload_ok = {
        **workload,
        **wrap({"metadata": template_ok["metadata"], "spec": template_ok["spec"]}),
    }
    assert decide(cluster, workload_ok, kind=kind).allowed


def test_kube_system_is_exempt() -> None:
    decision = decide(
        FakeCluster(trusted(), enforce=True),
        good_pod("missing"),
        namespace="kube-system",
    )
    assert decision.allowed


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"kind": "AdmissionReview"},
        {"kind": "AdmissionReview", "request": {"uid": 7}},
        [],
        "x",
    ],
)
def test_a_body_that_is_not_an_admission_review_raises(body: Any) -> None:
    with pytest.raises(InputError):
        review(body, FakeCluster(trusted()), kind="pods")


def test_a_malformed_pod_is_denied_not_crashed() -> None:
    cluster = FakeCluster(trusted())
    cluster.add(signed_plugin())
    pod = good_pod()
    pod["spec"]["containers"] = "not a list"
    decision = decide(cluster, pod)
    assert not decision.allowed


def ready_plugin(cluster: FakeCluster) -> dict[str, Any]:
    document = cluster.add(signed_plugin())
    document["status"] = {"seccomp": {"sha256": profile_sha256(document),
                                      "localhostProfile": "pluginguard/hkp/ratelimit.json"},
                          "limits": {"memory": "256Mi", "cpu": "500m"}}
    return document


def profile_sha256(document: dict[str, Any]) -> str:
    return seccomp_profile(document["spec"]["sandbox"]).sha256


def apply_patch(obj: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """A minimal RFC 6902 'add' for the paths the mutating endpoint emits."""
    result = copy.deepcopy(obj)
    for operation in patch:
        assert operation["op"] == "add"
        *parents, last = operation["path"].strip("/").split("/")
        target: Any = result
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if last == "-":
            target.append(operation["value"])
        else:
            target[last] = operation["value"]
    return result


def test_mutation_completes_a_bare_plugin_pod_and_the_result_validates() -> None:
    cluster = FakeCluster(trusted())
    ready_plugin(cluster)
    pod = good_pod()
    container = pod["spec"]["containers"][0]
    del container["resources"], container["securityContext"]["seccompProfile"]
    del container["securityContext"]["runAsNonRoot"]
    assert not decide(cluster, pod).allowed
    mutation = decide(cluster, pod, "mutate-pods")
    assert mutation.allowed and mutation.patch
    mutated = apply_patch(pod, mutation.patch)
    assert mutated["spec"]["securityContext"]["seccompProfile"]["localhostProfile"] == \
        "pluginguard/hkp/ratelimit.json"
    assert mutated["spec"]["securityContext"]["runAsNonRoot"] is True
    assert mutated["spec"]["containers"][0]["resources"]["limits"] == {"memory": "256Mi", "cpu": "500m"}
    term = mutated["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == [
        profile_sha256(cluster.plugin("hkp", "ratelimit") or {})[:63]]
    assert decide(cluster, mutated).allowed


def test_a_forged_status_changes_nothing_a_pod_must_do() -> None:
    """The status subresource may be writable by people who cannot change the spec:
    the profile path, the node label and the limits follow from the spec alone."""
    cluster = FakeCluster(trusted())
    document = ready_plugin(cluster)
    honest = decide(cluster, good_pod(), "mutate-pods").patch
    document["status"] = {"seccomp": {"sha256": "0" * 64,
                                      "localhostProfile": "profiles/unconfined.json"},
                          "limits": {"memory": "8Gi", "cpu": "8"}}
    assert decide(cluster, good_pod(), "mutate-pods").patch == honest
    assert decide(cluster, good_pod()).allowed  # the honest profile path is still the rule
    weak = good_pod()
    weak["spec"]["containers"][0]["securityContext"]["seccompProfile"]["localhostProfile"] = \
        "profiles/unconfined.json"
    refused = decide(cluster, weak)
    assert not refused.allowed and 'must be Localhost "pluginguard/hkp/ratelimit.json"' in \
        refused.message
    bare = good_pod()
    del bare["spec"]["containers"][0]["resources"]
    mutated = apply_patch(bare, decide(cluster, bare, "mutate-pods").patch or [])
    assert mutated["spec"]["containers"][0]["resources"]["limits"] == {"memory": "256Mi",
                                                                       "cpu": "500m"}


def test_mutation_keeps_a_pods_own_run_as_non_root_and_validation_refuses_false() -> None:
    cluster = FakeCluster(trusted())
    ready_plugin(cluster)
    pod = good_pod()
    del pod["spec"]["containers"][0]["securityContext"]["runAsNonRoot"]
    pod["spec"]["securityContext"] = {"runAsNonRoot": False}
    mutated = apply_patch(pod, decide(cluster, pod, "mutate-pods").patch or [])
    assert mutated["spec"]["securityContext"]["runAsNonRoot"] is False
    refused = decide(cluster, mutated)
    assert not refused.allowed and "runAsNonRoot must be true" in refused.message


def test_mutation_joins_every_existing_affinity_term() -> None:
    cluster = FakeCluster(trusted())
    ready_plugin(cluster)
    pod = good_pod()
    pod["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                              {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]}]}}}
    mutated = apply_patch(pod, decide(cluster, pod, "mutate-pods").patch or [])
    terms = mutated["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert all(any(e["key"].startswith("seccomp.pluginguard.dev/") for e in t["matchExpressions"])
               for t in terms)


def test_mutation_leaves_other_pods_and_uncompilable_plugins_alone() -> None:
    cluster = FakeCluster(trusted())
    broken = signed_plugin()
    broken["spec"]["sandbox"]["seccomp"]["allow"] = ["definitely_not_a_syscall"]
    cluster.add(broken)
    bare = good_pod()
    del bare["spec"]["containers"][0]["securityContext"]["seccompProfile"]
    assert decide(cluster, bare, "mutate-pods").patch is None  # the validation says why
    assert not decide(cluster, bare).allowed
    other = good_pod()
    del other["metadata"]["labels"]
    assert decide(FakeCluster(trusted()), other, "mutate-pods").patch is None


def test_a_workload_without_a_pod_template_is_denied() -> None:
    workload = {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "w", "namespace": "hkp"}, "spec": {}}
    decision = decide(FakeCluster(trusted()), workload, kind="Deployment")
    assert not decision.allowed and decision.reason == "NoPodTemplate"


@pytest.mark.parametrize("change, fragment", [
    (lambda pod: pod["spec"]["containers"][0]["securityContext"].update(
        capabilities={"add": ["SYS_ADMIN"]}), "capabilities.add"),
    (lambda pod: pod["spec"]["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]),
     "hostPort"),
    (lambda pod: pod["spec"].update(shareProcessNamespace=True), "shareProcessNamespace"),
    (lambda pod: pod["spec"].update(securityContext={"runAsUser": 0}), "runAsUser"),
    (lambda pod: pod["spec"].update(securityContext={"sysctls": [{"name": "kernel.shm_rmid_forced",
                                                                  "value": "1"}]}), "sysctls"),
    (lambda pod: pod["spec"]["containers"][0]["securityContext"].update(
        appArmorProfile={"type": "Unconfined"}), "appArmorProfile"),
    (lambda pod: pod["spec"]["containers"].append({**pod["spec"]["containers"][0], "name": "side",
                                                   "image": "docker.io/library/busybox:latest"}),
     'container "side": image'),
    (lambda pod: pod["spec"]["containers"][0].update(image=f"REGISTRY.EXAMPLE/hkp/ratelimit:latest"),
     "must be pinned by digest"),
    (lambda pod: pod["spec"]["containers"][0].update(image=f"other.example/evil@{DIGEST}"),
     "not from the Plugin's repository"),
    (lambda pod: pod["spec"].update(ephemeralContainers=[{"name": "dbg", "image": "busybox:latest",
                                                          "securityContext": {"privileged": True}}]),
     'ephemeral container "dbg"'),
])
def test_escapes_from_the_sandbox_are_denied(change: Any, fragment: str) -> None:
    cluster = FakeCluster(trusted())
    cluster.add(signed_plugin())
    pod = good_pod()
    change(pod)
    decision = decide(cluster, pod)
    assert not decision.allowed and fragment in decision.message, decision.message


def test_the_same_registry_spelled_differently_is_the_same_repository() -> None:
    cluster = FakeCluster(trusted())
    cluster.add(signed_plugin())
    for image in (f"Registry.Example/hkp/ratelimit@{DIGEST}", f"registry.example:443/hkp/ratelimit@{DIGEST}"):
        assert decide(cluster, good_pod(image=image)).allowed, image


def test_a_plugin_pod_cannot_be_relabelled_out_of_its_plugin() -> None:
    cluster = FakeCluster(trusted())
    cluster.add(signed_plugin())
    old = good_pod()
    new = copy.deepcopy(old)
    del new["metadata"]["labels"]
    body = admission(new)
    body["request"].update(operation="UPDATE", oldObject=old)
    _, decision = review(body, cluster, kind="pods")
    assert not decision.allowed and decision.reason == "PluginLabelChanged"


def spo_plugin(cluster: FakeCluster, *, installed: bool) -> dict[str, Any]:
    """A Plugin whose profile the Security Profiles Operator delivers."""
    document = cluster.add(signed_plugin())
    document["status"] = {"seccomp": {"sha256": "f" * 64,
                                      "localhostProfile": "operator/pluginguard.hkp.ratelimit.json",
                                      "seccompProfile": "pluginguard.hkp.ratelimit",
                                      "delivery": "security-profiles-operator",
                                      "installed": installed},
                          "limits": {"memory": "256Mi", "cpu": "500m"}}
    return document


def spo_pod() -> dict[str, Any]:
    pod = good_pod()
    pod["spec"]["containers"][0]["securityContext"]["seccompProfile"]["localhostProfile"] = \
        "operator/pluginguard.hkp.ratelimit.json"
    return pod


def test_pods_wait_until_the_security_profiles_operator_installed_the_profile() -> None:
    cluster = FakeCluster(trusted(), delivery=SPO_DELIVERY)
    spo_plugin(cluster, installed=False)
    refused = decide(cluster, spo_pod())
    assert not refused.allowed and refused.reason == "PodViolatesSandbox"
    assert "operator/pluginguard.hkp.ratelimit.json is not installed on the nodes" in refused.message
    # A workload may be applied meanwhile: its pods are judged when they are created.
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "rl", "namespace": "hkp"},
                  "spec": {"template": {k: v for k, v in spo_pod().items() if k in ("metadata", "spec")}}}
    assert decide(cluster, deployment, kind="Deployment").allowed

    cluster = FakeCluster(trusted(), delivery=SPO_DELIVERY)
    spo_plugin(cluster, installed=True)
    assert decide(cluster, spo_pod()).allowed
    assert not decide(cluster, good_pod()).allowed  # PluginGuard's own path is not the profile


def test_mutation_for_the_security_profiles_operator_adds_no_node_affinity() -> None:
    cluster = FakeCluster(trusted(), delivery=SPO_DELIVERY)
    spo_plugin(cluster, installed=True)
    pod = good_pod()
    del pod["spec"]["containers"][0]["securityContext"]["seccompProfile"]
    mutated = apply_patch(pod, decide(cluster, pod, "mutate-pods").patch or [])
    assert "affinity" not in mutated["spec"]  # that project labels no nodes
    assert mutated["spec"]["securityContext"]["seccompProfile"] == {
        "type": "Localhost", "localhostProfile": "operator/pluginguard.hkp.ratelimit.json"}
    assert decide(cluster, mutated).allowed
