"""PluginGuard on its worst day, on the real control plane: an operator killed halfway
through a batch, API server and etcd restarts under a serving webhook, an expired watch,
a steady load while everything churns, and two webhook replicas."""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from pluginguard import keys
from pluginguard.operator.watch import Reflector
from tests.controlplane.pluginguard_local import REPOSITORY, ensure_namespace
from tests.e2e.plugins import (
    GROUP,
    KEY,
    VERSION,
    create_plugin,
    eventually,
    events_for,
    plugin_pod,
    public_pem,
    signed,
    wait_ready,
)
from tests.plugin_factory import policy

pytestmark = pytest.mark.e2e
STALENESS_BOUND = 2.0  # the webhook's promise: see STALENESS_BOUND_SECONDS


@pytest.fixture()
def fresh_namespace(pluginguard, custom) -> tuple[str, str]:
    """A namespace of its own, with a policy trusting KEY there only."""
    namespace = f"fault-{uuid.uuid4().hex[:6]}"
    ensure_namespace(pluginguard.api, namespace)
    name = f"trust-{namespace}"
    custom.create_cluster_custom_object(GROUP, VERSION, "plugintrustpolicies", policy(
        name, namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        trustedKeys=[{"name": "release", "publicKey": public_pem(KEY)}]))
    probe = signed("probe", namespace)
    eventually(lambda: create_plugin(custom, probe, dry_run=True), what="webhook sees the policy")
    return namespace, name


def test_operator_killed_mid_batch_converges_without_duplicates(pluginguard, custom, core,
                                                                 fresh_namespace) -> None:
    namespace, _ = fresh_namespace
    names = [f"batch-{i:03d}" for i in range(40)]
    for name in names:
        create_plugin(custom, signed(name, namespace))

    def reconciled() -> int:
        listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "plugins")
        return sum(1 for item in listed["items"] if (item.get("status") or {}).get("verified"))

    active = next(o for o in pluginguard.operators if o.running())
    eventually(lambda: reconciled() >= 5, what="the batch under way")
    active.kill()
    done_at_kill = reconciled()
    pluginguard.operators.remove(active)
    pluginguard.start_operator(name=f"operator-{uuid.uuid4().hex[:4]}", priority=pluginguard.outranking_priority())
    for name in names:
        wait_ready(custom, namespace, name)
    print(f"\noperator SIGKILLed with {done_at_kill}/{len(names)} Plugins reconciled; all converged")

    for name in names:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "plugins", name)
        config_map = core.read_namespaced_config_map(f"pluginguard-profile-{name}", namespace)
        assert config_map.metadata.annotations["pluginguard.dev/profile-sha256"] == \
            obj["status"]["seccomp"]["sha256"]
        events = events_for(core, namespace, name)
        for reason in ("Verified", "SeccompProfileGenerated"):
            matching = [e for e in events if e.reason == reason]
            assert len(matching) == 1 and matching[0].count == 1, \
                (name, reason, [(e.name, e.count) for e in matching])


def pod_review(namespace: str, plugin: str) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace, "name": "load", "operation": "CREATE",
        "object": plugin_pod("load", namespace, plugin)}}


def revoke(custom, policy_name: str, revoked: list[str]) -> float:
    custom.patch_cluster_custom_object(GROUP, VERSION, "plugintrustpolicies", policy_name,
                                       {"spec": {"revokedKeys": revoked}})
    return time.monotonic()


def time_to_refusal(core, namespace: str, plugin: str, changed_at: float) -> float:
    """Create (dry-run) plugin pods until one is refused; fail if a pod sent later than
    the bound after the change was admitted."""
    while True:
        sent = time.monotonic()
        try:
            core.create_namespaced_pod(namespace, plugin_pod(f"p-{uuid.uuid4().hex[:6]}", namespace,
                                                             plugin), dry_run="All")
        except client.ApiException as error:
            if error.status == 403:
                return time.monotonic() - changed_at
            if error.status >= 500:  # the API server itself is still coming up
                time.sleep(0.05)
                continue
            raise
        assert sent - changed_at <= STALENESS_BOUND, \
            f"admitted a pod sent {sent - changed_at:.2f}s after its Plugin's key was revoked"
        if sent - changed_at > 30:
            pytest.fail("never refused")
        time.sleep(0.02)


@pytest.mark.parametrize("restart", ["none", "apiserver", "etcd"])
def test_a_revoked_plugin_is_refused_within_the_bound_across_restarts(
        control_plane, pluginguard, custom, core, fresh_namespace, restart: str) -> None:
    namespace, policy_name = fresh_namespace
    create_plugin(custom, signed("revocable", namespace))
    wait_ready(custom, namespace, "revocable")
    core.create_namespaced_pod(namespace, plugin_pod("before", namespace, "revocable"), dry_run="All")
    if restart == "apiserver":
        control_plane.restart_apiserver()
    elif restart == "etcd":
        control_plane.restart_etcd()
    fingerprint = keys.fingerprint(KEY.public_key())
    changed_at = revoke(custom, policy_name, [fingerprint])
    latency = time_to_refusal(core, namespace, "revocable", changed_at)
    print(f"\nrevocation refused after {latency * 1000:.0f} ms (restart: {restart}; bound {STALENESS_BOUND}s)")
    revoke(custom, policy_name, [])
    eventually(lambda: _admitted(core, namespace, "revocable"), what="admitted again after un-revoking")


def _admitted(core, namespace: str, plugin: str) -> bool:
    try:
        core.create_namespaced_pod(namespace, plugin_pod(f"a-{uuid.uuid4().hex[:6]}", namespace, plugin),
                                   dry_run="All")
    except client.ApiException:
        return False
    return True


def test_an_expired_watch_is_listed_again(pluginguard, custom, fresh_namespace, caplog) -> None:
    namespace, _ = fresh_namespace
    caplog.set_level(logging.INFO, logger="pluginguard.operator.watch")
    list_plugins = functools.partial(client.CustomObjectsApi(pluginguard.api).list_cluster_custom_object,
                                     GROUP, VERSION, "plugins")
    reflector = Reflector("expired-test", list_plugins)
    real_list = reflector._list
    calls = []

    def first_list_returns_an_ancient_version() -> str:
        version = real_list()
        calls.append(version)
        return "1" if len(calls) == 1 else version

    reflector._list = first_list_returns_an_ancient_version  # type: ignore[method-assign]
    reflector.start()
    try:
        eventually(lambda: len(calls) >= 2, what="a second list after 410 Gone")
        assert any("resourceVersion expired" in r.getMessage() for r in caplog.records)
        create_plugin(custom, signed("after-expiry", namespace))
        eventually(lambda: reflector.get(namespace, "after-expiry"), what="the copy follows again")
        assert reflector.stale_for() == 0.0
    finally:
        reflector.stop()


def test_steady_load_while_plugins_and_policies_churn(pluginguard, custom, fresh_namespace,
                                                      tmp_path: Path) -> None:
    namespace, policy_name = fresh_namespace
    create_plugin(custom, signed("steady", namespace))
    wait_ready(custom, namespace, "steady")
    body = tmp_path / "review.json"
    body.write_text(json.dumps(pod_review(namespace, "steady")))
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pluginguard.ca_pem)
    rss_before = pluginguard.webhook.rss_bytes()
    load = subprocess.Popen(
        [sys.executable, str(REPOSITORY / "benchmarks/loadgen.py"), f"{pluginguard.url}/validate/pods",
         "--body", str(body), "--ca", str(ca), "--rate", "150", "--seconds", "15",
         "--connections", "16"], stdout=subprocess.PIPE, text=True)
    churned = 0
    deadline = time.monotonic() + 14
    while time.monotonic() < deadline:
        name = f"churn-{churned}"
        create_plugin(custom, signed(name, namespace))
        custom.patch_cluster_custom_object(GROUP, VERSION, "plugintrustpolicies", policy_name,
                                           {"spec": {"verificationTimeout": f"{churned % 5 + 1}s"}})
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "plugins", name)
        churned += 1
    out, _ = load.communicate(timeout=60)
    result = json.loads(out)
    rss_after = pluginguard.webhook.rss_bytes()
    print(f"\nsteady load: {result} while {churned} Plugins and policy changes churned; "
          f"webhook RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB")
    assert result["failures"] == 0, result["failure_kinds"]
    assert result["requests"] >= 150 * 10
    assert rss_after - rss_before < 64 * 2**20


def test_two_webhook_replicas_serve_the_same_decisions(pluginguard, custom, fresh_namespace,
                                                        tmp_path: Path) -> None:
    namespace, _ = fresh_namespace
    create_plugin(custom, signed("twice", namespace))
    wait_ready(custom, namespace, "twice")
    second = pluginguard.start_extra_webhook("webhook-2")
    try:
        import ssl
        import urllib.request
        context = ssl.create_default_context(cadata=pluginguard.ca_pem.decode())
        good, bad = pod_review(namespace, "twice"), pod_review(namespace, "twice")
        bad["request"]["object"]["spec"]["containers"][0]["image"] += "-tampered"
        answers = []
        for url in (pluginguard.url, second):
            for review in (good, bad):
                request = urllib.request.Request(f"{url}/validate/pods", data=json.dumps(review).encode(),
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, context=context, timeout=10) as response:
                    answer = json.loads(response.read())["response"]
                answers.append((answer["uid"] == review["request"]["uid"], answer["allowed"]))
        assert answers == [(True, True), (True, False), (True, True), (True, False)]
    finally:
        pluginguard.stop_extra_webhook("webhook-2")
