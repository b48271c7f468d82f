"""PluginGuard end to end: the real API server calls our webhook with real
AdmissionReviews, validates our CRDs, and the operator reconciles Plugins."""

from __future__ import annotations

import copy
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from pluginguard import keys
from pluginguard.signing import sign_manifest
from tests.controlplane.pluginguard_local import ensure_namespace
from tests.e2e.plugins import (
    GROUP,
    IMAGE,
    KEY,
    STRANGER,
    VERSION,
    Refusal,
    create_plugin,
    eventually,
    events_for,
    plugin_pod,
    public_pem,
    refusal,
    signed,
    wait_ready,
)
from tests.plugin_factory import DIGEST, plugin, policy

pytestmark = pytest.mark.e2e


def test_schema_rejects_an_invalid_field(custom, namespace, pluginguard) -> None:
    bad = plugin("bad-digest", namespace=namespace, digest="sha256:not-hex")
    error = refusal(lambda: create_plugin(custom, bad))
    assert error.status == 422 and "spec.artifact.digest" in error.body


def test_signed_plugin_is_admitted_and_becomes_ready(custom, core, namespace, trust_policy) -> None:
    create_plugin(custom, signed("ratelimit", namespace))
    obj = wait_ready(custom, namespace, "ratelimit")
    status = obj["status"]
    assert status["verified"] is True and status["reason"] == "Verified"
    assert status["algorithm"] == "ECDSA-P256" and "release" in status["signer"]
    assert status["seccomp"]["localhostProfile"] == f"pluginguard/{namespace}/ratelimit.json"
    assert status["limits"]["memory"] == "256Mi" and status["limits"]["cgroup"]["pidsMax"] == 64
    config_map = core.read_namespaced_config_map("pluginguard-profile-ratelimit", namespace)
    import hashlib
    assert hashlib.sha256(config_map.data["profile.json"].encode()).hexdigest() == status["seccomp"]["sha256"]
    assert config_map.metadata.owner_references[0].name == "ratelimit"
    policies = client.NetworkingV1Api(core.api_client).read_namespaced_network_policy(
        "pluginguard-ratelimit", namespace)
    assert policies.spec.pod_selector.match_labels == {"pluginguard.dev/plugin": "ratelimit"}
    reasons = eventually(lambda: {e.reason for e in events_for(core, namespace, "ratelimit")}
                         >= {"Verified", "SeccompProfileGenerated"} and
                         {e.reason for e in events_for(core, namespace, "ratelimit")},
                         what="Verified and SeccompProfileGenerated events")
    assert "Verified" in reasons


@pytest.mark.parametrize("tamper, reason", [
    (lambda d: d["spec"]["artifact"].update(digest="sha256:" + "cd" * 32), "DigestMismatch"),
    (lambda d: d["spec"]["sandbox"]["seccomp"]["allow"].append("bpf"), "SandboxMismatch"),
    (lambda d: d["spec"]["sandbox"]["resources"].update(maxMemoryMB=2048), "SandboxMismatch"),
])
def test_tampered_plugin_is_refused_at_apply_time(custom, namespace, trust_policy, tamper, reason) -> None:
    document = signed(f"tampered-{uuid.uuid4().hex[:5]}", namespace)
    tamper(document)
    error = refusal(lambda: create_plugin(custom, document))
    assert error.status == 403
    assert 'admission webhook "plugins.pluginguard.dev" denied the request' in error.body
    assert reason in error.body


def test_a_plugin_whose_sandbox_does_not_compile_is_refused(custom, namespace, trust_policy) -> None:
    # A syscall name fits the CRD's schema; only libseccomp's tables know it is none.
    # (PluginGuard's signer refuses to sign it, so it is edited in after signing.)
    document = signed("no-such-call", namespace)
    document["spec"]["sandbox"]["seccomp"]["allow"] = ["frobnicate"]
    error = refusal(lambda: create_plugin(custom, document))
    assert error.status == 403
    assert f"PluginGuard refused Plugin {namespace}/no-such-call: SeccompProfileInvalid" in error.body
    assert "unknown syscall 'frobnicate'" in error.body


def test_untrusted_key_and_expired_certificate_are_refused(custom, namespace, trust_policy, pki) -> None:
    stranger = sign_manifest(plugin("stranger", namespace=namespace), key=STRANGER)
    assert "UntrustedSigner" in refusal(lambda: create_plugin(custom, stranger)).body
    key_path, cert_path = pki["expired"]
    old_key = keys.load_private_key(key_path.read_bytes(), where=str(key_path))
    certificate = keys.load_certificates(cert_path.read_bytes(), where=str(cert_path))
    expired = sign_manifest(plugin("expired", namespace=namespace), key=old_key, certificates=certificate)
    error = refusal(lambda: create_plugin(custom, expired))
    assert "CertificateExpired" in error.body and "expired on 2021-01-01" in error.body


def test_certificate_signed_plugin_is_admitted(custom, namespace, trust_policy, pki) -> None:
    key_path, cert_path = pki["good"]
    key = keys.load_private_key(key_path.read_bytes(), where=str(key_path))
    chain = keys.load_certificates(cert_path.read_bytes(), where=str(cert_path))
    create_plugin(custom, sign_manifest(plugin("certified", namespace=namespace), key=key,
                                        certificates=chain))
    obj = wait_ready(custom, namespace, "certified")
    assert "CN=publisher" in obj["status"]["signer"]


def test_good_plugin_pod_is_created(core, custom, namespace, trust_policy) -> None:
    create_plugin(custom, signed("pods-ok", namespace))
    wait_ready(custom, namespace, "pods-ok")
    created = core.create_namespaced_pod(namespace, plugin_pod("good", namespace, "pods-ok"))
    assert created.metadata.name == "good"


@pytest.mark.parametrize("container, fragment", [
    ({"image": f"{IMAGE}@sha256:{'00' * 32}"}, "is not the signed artifact"),
    ({"image": f"{IMAGE}:1.0"}, "must be pinned by digest"),
# A missing profile is filled in by the mutating endpoint; a different one is refused.
    ({"securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                          "seccompProfile": {"type": "RuntimeDefault"}}},
     "seccompProfile must be Localhost"),
    ({"resources": {"limits": {"memory": "1Gi", "cpu": "500m"}}}, "limits.memory 1Gi is above"),
    # An image's default user may be root: the pod must say it runs as someone else.
    ({"securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                          "runAsNonRoot": False}},
     "runAsNonRoot must be true"),
    # The API server itself refuses privileged with allowPrivilegeEscalation false.
    ({"securityContext": {"privileged": True, "readOnlyRootFilesystem": True}},
     "must not be privileged"),
])
def test_bad_plugin_pod_is_denied_naming_container_and_rule(core, custom, namespace, trust_policy,
                                                            container, fragment) -> None:
    name = "pods-bad"
    try:
        create_plugin(custom, signed(name, namespace))
    except client.ApiException as error:
        assert error.status == 409
    wait_ready(custom, namespace, name)
    pod = plugin_pod(f"bad-{uuid.uuid4().hex[:5]}", namespace, name, **container)
    error = refusal(lambda: core.create_namespaced_pod(namespace, pod))
    assert error.status == 403
    assert 'container "app"' in error.body
    assert fragment in error.body


def test_deployment_with_a_bad_template_is_denied(pluginguard, custom, namespace, trust_policy) -> None:
    create_plugin(custom, signed("deployed", namespace))
    wait_ready(custom, namespace, "deployed")
    template = plugin_pod("x", namespace, "deployed", image=f"{IMAGE}:latest")
    # The chart's webhook configuration selects a workload by its own labels, so the
    # plugin label goes on the Deployment too (as the README says).
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "ratelimit", "namespace": namespace,
                     "labels": template["metadata"]["labels"]},
        "spec": {"replicas": 1, "selector": {"matchLabels": template["metadata"]["labels"]},
                 "template": {"metadata": {"labels": template["metadata"]["labels"]},
                              "spec": template["spec"]}},
    }
    apps = client.AppsV1Api(pluginguard.api)
    error = refusal(lambda: apps.create_namespaced_deployment(namespace, deployment))
    assert error.status == 403 and "pinned by digest" in error.body
    good = copy.deepcopy(deployment)
    good["spec"]["template"]["spec"]["containers"][0]["image"] = f"{IMAGE}@{DIGEST}"
    assert apps.create_namespaced_deployment(namespace, good).metadata.name == "ratelimit"


def test_dry_run_leaves_no_event(core, custom, namespace, trust_policy) -> None:
    create_plugin(custom, signed("dry", namespace))
    wait_ready(custom, namespace, "dry")
    before = {(e.reason, e.count) for e in events_for(core, namespace, "dry")}
    pod = plugin_pod("dry-bad", namespace, "dry", image=f"{IMAGE}:latest")
    error = refusal(lambda: core.create_namespaced_pod(namespace, pod, dry_run="All"))
    assert error.status == 403
    real = plugin_pod("real-bad", namespace, "dry", image=f"{IMAGE}:latest")
    refusal(lambda: core.create_namespaced_pod(namespace, real))
    # The real refusal's Event arrives; by then the dry run's would have too.
    eventually(lambda: any(e.reason == "PodRefused" for e in events_for(core, namespace, "dry")),
               what="PodRefused event for the real request")
    refused = [e for e in events_for(core, namespace, "dry") if e.reason == "PodRefused"]
    assert len(refused) == 1 and refused[0].count == 1 and "real-bad" in refused[0].message
    assert before <= {(e.reason, e.count) for e in events_for(core, namespace, "dry")}


def test_warn_and_audit_modes(pluginguard, custom, core, kubectl: Path, tmp_path: Path) -> None:
    namespace = f"modes-{uuid.uuid4().hex[:6]}"
    ensure_namespace(pluginguard.api, namespace)
    name = f"modes-{namespace}"
    document = policy(name, enforcement="warn",
                      namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                      trustedKeys=[{"name": "release", "publicKey": public_pem(KEY)}])
    custom.create_cluster_custom_object(GROUP, VERSION, "plugintrustpolicies", document)
    unsigned = plugin("unsigned", namespace=namespace)
    # Under warn the unsigned Plugin is admitted (with a warning) but never Ready.
    eventually(lambda: create_plugin(custom, unsigned), what="unsigned Plugin admitted under warn")
    wait_ready(custom, namespace, "unsigned", status="False")
    manifest = tmp_path / "pod.yaml"
    import yaml
    manifest.write_text(yaml.safe_dump(plugin_pod("warned", namespace, "unsigned")))
    applied = subprocess.run([str(kubectl), "--kubeconfig", str(pluginguard.kubeconfig), "apply",
                              "-f", str(manifest)], capture_output=True, text=True, timeout=60)
    assert applied.returncode == 0, applied.stderr
    assert "Warning:" in applied.stderr and "SignatureMissing" in applied.stderr
    custom.patch_cluster_custom_object(GROUP, VERSION, "plugintrustpolicies", name,
                                       {"spec": {"enforcement": "audit"}})

    def audited() -> bool:
        pod = plugin_pod(f"audited-{uuid.uuid4().hex[:4]}", namespace, "unsigned")
        manifest.write_text(yaml.safe_dump(pod))
        result = subprocess.run([str(kubectl), "--kubeconfig", str(pluginguard.kubeconfig), "apply",
                                 "-f", str(manifest)], capture_output=True, text=True, timeout=60)
        return result.returncode == 0 and "Warning:" not in result.stderr
    eventually(audited, what="audit mode: allowed without a warning")
    eventually(lambda: any(e.reason == "PodAdmittedUnverified" and "audited-" in e.message
                           and "SignatureMissing" in e.message
                           for e in events_for(core, namespace, "unsigned")),
               what="an Event records the audited pod, naming it and why")
    custom.patch_cluster_custom_object(GROUP, VERSION, "plugintrustpolicies", name,
                                       {"spec": {"enforcement": "enforce"}})
    pod = plugin_pod("enforced", namespace, "unsigned")
    error = eventually(lambda: _refused(core, namespace, pod), what="enforce mode denies")
    assert "SignatureMissing" in error.body


def _refused(core: client.CoreV1Api, namespace: str, pod: dict[str, Any]) -> Refusal | None:
    try:
        core.create_namespaced_pod(namespace, pod)
    except client.ApiException as error:
        return Refusal(error) if error.status == 403 else None
    core.delete_namespaced_pod(pod["metadata"]["name"], namespace)
    return None


def test_changing_the_policy_reverifies_existing_plugins(pluginguard, custom, namespace,
                                                         trust_policy) -> None:
    create_plugin(custom, signed("reverified", namespace))
    wait_ready(custom, namespace, "reverified")
    name = trust_policy["metadata"]["name"]
    current = custom.get_cluster_custom_object(GROUP, VERSION, "plugintrustpolicies", name)
    keys_before = current["spec"]["trustedKeys"]
    custom.patch_cluster_custom_object(GROUP, VERSION, "plugintrustpolicies", name,
                                       {"spec": {"trustedKeys": [{"name": "other",
                                                                   "publicKey": public_pem(STRANGER)}]}})
    try:
        obj = wait_ready(custom, namespace, "reverified", status="False")
        assert obj["status"]["reason"] == "UntrustedSigner"
    finally:
        custom.patch_cluster_custom_object(GROUP, VERSION, "plugintrustpolicies", name,
                                           {"spec": {"trustedKeys": keys_before}})
    wait_ready(custom, namespace, "reverified")


def test_an_unreadable_reference_does_not_stop_admission(pluginguard, custom, core, namespace,
                                                         trust_policy) -> None:
    """A policy naming a Secret the webhook may not read (a typo) loses that entry only:
    decisions go on, in its namespaces and in others, and no watch of the typo lingers
    once it is fixed."""
    other = f"other-{uuid.uuid4().hex[:6]}"
    ensure_namespace(pluginguard.api, other)
    custom.create_cluster_custom_object(GROUP, VERSION, "plugintrustpolicies", policy(
        f"e2e-{other}", namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": other}},
        trustedKeys=[{"name": "release", "publicKey": public_pem(KEY)}]))
    for where in (namespace, other):
        create_plugin(custom, signed("steady", where))
        wait_ready(custom, where, "steady")
    name = trust_policy["metadata"]["name"]
    keys_before = custom.get_cluster_custom_object(
        GROUP, VERSION, "plugintrustpolicies", name)["spec"]["trustedKeys"]
    typo = {"name": "typo", "secretRef": {"namespace": "pluginguard-system", "name": "typo",
                                          "key": "release.pub"}}
    custom.patch_cluster_custom_object(GROUP, VERSION, "plugintrustpolicies", name,
                                       {"spec": {"trustedKeys": [*keys_before, typo]}})

    def typo_failures() -> int:
        log = pluginguard.webhook.log_path.read_text()
        return sum(1 for line in log.splitlines() if "watch secret-pluginguard-system-typo" in line)

    try:
        eventually(lambda: typo_failures() > 0, what="the webhook refused the typo's watch")
        # Past the staleness bound (2 s) a stuck watch would have turned every allow down.
        for attempt in range(4):
            for where in (namespace, other):
                core.create_namespaced_pod(where, plugin_pod(f"ok-{attempt}", where, "steady"),
                                           dry_run="All")
            time.sleep(1.0)
    finally:
        custom.patch_cluster_custom_object(GROUP, VERSION, "plugintrustpolicies", name,
                                           {"spec": {"trustedKeys": keys_before}})
    time.sleep(1.0)
    before = typo_failures()
    time.sleep(2.5)  # a lingering watch would fail again within a second
    assert typo_failures() == before


def test_debug_containers_and_relabelling_cannot_escape(core, custom, namespace, trust_policy) -> None:
    create_plugin(custom, signed("escape", namespace))
    wait_ready(custom, namespace, "escape")
    core.create_namespaced_pod(namespace, plugin_pod("target", namespace, "escape"))
    debug = {"spec": {"ephemeralContainers": [{
        "name": "dbg", "image": "busybox:latest", "securityContext": {"privileged": True}}]}}
    error = refusal(lambda: core.patch_namespaced_pod_ephemeralcontainers("target", namespace, debug))
    assert error.status == 403 and 'ephemeral container "dbg"' in error.body
    unlabel = {"metadata": {"labels": {"pluginguard.dev/plugin": None}}}
    error = refusal(lambda: core.patch_namespaced_pod("target", namespace, unlabel))
    assert error.status == 403 and "cannot be removed or changed" in error.body


def test_resizing_a_plugin_pod_beyond_its_limits_is_refused(core, custom, namespace,
                                                            trust_policy) -> None:
    create_plugin(custom, signed("resized", namespace))
    wait_ready(custom, namespace, "resized")
    core.create_namespaced_pod(namespace, plugin_pod("resized", namespace, "resized"))
    larger = {"spec": {"containers": [{"name": "app", "resources": {
        "limits": {"memory": "8Gi", "cpu": "500m"}, "requests": {"memory": "8Gi"}}}]}}
    error = refusal(lambda: core.patch_namespaced_pod_resize("resized", namespace, larger))
    assert error.status == 403 and "limits.memory 8Gi is above the plugin's 256Mi" in error.body


def test_a_forged_status_does_not_weaken_the_pods(custom, core, namespace, trust_policy) -> None:
    """Whoever may write a Plugin's status cannot point its pods at another profile."""
    create_plugin(custom, signed("forged", namespace))
    wait_ready(custom, namespace, "forged")
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "plugins", "forged", {
        "status": {"seccomp": {"localhostProfile": "profiles/unconfined.json", "sha256": "0" * 64},
                   "limits": {"memory": "8Gi", "cpu": "8"}}})
    weak = plugin_pod("weak", namespace, "forged")
    weak["spec"]["containers"][0]["securityContext"]["seccompProfile"]["localhostProfile"] = \
        "profiles/unconfined.json"
    error = refusal(lambda: core.create_namespaced_pod(namespace, weak, dry_run="All"))
    assert error.status == 403
    assert f'must be Localhost "pluginguard/{namespace}/forged.json"' in error.body
    bare = plugin_pod("bare", namespace, "forged")
    del bare["spec"]["containers"][0]["securityContext"]["seccompProfile"]
    del bare["spec"]["containers"][0]["resources"]
    created = core.create_namespaced_pod(namespace, bare, dry_run="All")
    assert created.spec.security_context.seccomp_profile.localhost_profile == \
        f"pluginguard/{namespace}/forged.json"
    assert created.spec.containers[0].resources.limits == {"memory": "256Mi", "cpu": "500m"}
    label = created.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    assert label.node_selector_terms[0].match_expressions[0].values != ["0" * 63]


def test_a_deleted_or_edited_owned_object_is_restored(pluginguard, core, custom, namespace,
                                                      trust_policy) -> None:
    create_plugin(custom, signed("restored", namespace))
    wait_ready(custom, namespace, "restored")
    networking = client.NetworkingV1Api(pluginguard.api)
    original = networking.read_namespaced_network_policy("pluginguard-restored", namespace).spec
    networking.delete_namespaced_network_policy("pluginguard-restored", namespace)
    eventually(lambda: networking.read_namespaced_network_policy("pluginguard-restored", namespace),
               what="NetworkPolicy restored")
    networking.patch_namespaced_network_policy("pluginguard-restored", namespace,
                                               {"spec": {"egress": [{}]}})
    eventually(lambda: networking.read_namespaced_network_policy(
        "pluginguard-restored", namespace).spec.egress == original.egress,
        what="edited NetworkPolicy restored")
    name = "pluginguard-profile-restored"
    profile = core.read_namespaced_config_map(name, namespace).data["profile.json"]
    core.patch_namespaced_config_map(name, namespace, {"data": {"profile.json": "{}"}})
    eventually(lambda: core.read_namespaced_config_map(name, namespace).data["profile.json"] == profile,
               what="edited profile restored")
