"""What the webhook keeps per Plugin: pod rules compiled once for each resourceVersion
and never served for another, and only the part of a Plugin its decisions read."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes.client
import pytest

from pluginguard.errors import InputError
from pluginguard.operator.cluster import ClusterState
from pluginguard.sandbox import cpu_millicores, memory_bytes
from pluginguard.webhooks.admission import admission_view, review
from pluginguard.webhooks.server import WebhookCluster
from tests.plugin_factory import plugin
from tests.webhooks.test_admission import (
    FakeCluster,
    admission,
    good_pod,
    signed_plugin,
    trusted,
)


def stored(version: str | None, **sandbox_changes: Any) -> dict[str, Any]:
    document = plugin()
    document["spec"]["sandbox"]["resources"].update(sandbox_changes)
    if version is not None:
        document["metadata"]["resourceVersion"] = version
    return document


@pytest.fixture
def cluster() -> WebhookCluster:
    return WebhookCluster(ClusterState(kubernetes.client.ApiClient()), rules_capacity=2)


def test_the_same_version_is_compiled_once(cluster: WebhookCluster) -> None:
    first = cluster.pod_rules(stored("7"))
    assert cluster.pod_rules(copy.deepcopy(stored("7"))) is first


def test_a_new_version_is_compiled_again(cluster: WebhookCluster) -> None:
    before = cluster.pod_rules(stored("7", maxMemoryMB=256))
    after = cluster.pod_rules(stored("8", maxMemoryMB=128))
    assert not isinstance(before, InputError) and not isinstance(after, InputError)
    assert (before.limits.memory_bytes, after.limits.memory_bytes) == (256 * 2**20, 128 * 2**20)


def test_an_object_never_stored_is_compiled_every_time(cluster: WebhookCluster) -> None:
    assert cluster.pod_rules(stored(None)) is not cluster.pod_rules(stored(None))


def test_a_sandbox_that_does_not_compile_is_kept_as_its_error(cluster: WebhookCluster) -> None:
    rules = cluster.pod_rules(stored("9", maxMemoryMB=0))
    assert isinstance(rules, InputError) and "maxMemoryMB" in str(rules)


def test_the_least_recently_used_plugin_goes_first(cluster: WebhookCluster) -> None:
    def named(name: str) -> dict[str, Any]:
        document = stored("1")
        document["metadata"]["name"] = name
        return document

    a = cluster.pod_rules(named("a"))
    cluster.pod_rules(named("b"))
    assert cluster.pod_rules(named("a")) is a
    cluster.pod_rules(named("c"))  # over capacity: "b" was used least recently
    assert cluster.pod_rules(named("a")) is a
    assert len(cluster._rules) == 2 and ("hkp", "b") not in cluster._rules


@pytest.mark.parametrize("convert", [memory_bytes, cpu_millicores])
def test_a_remembered_quantity_still_refuses_each_bad_one_at_its_place(convert: Any) -> None:
    assert convert("2Gi", where="a") == convert("2Gi", where="b")
    for place in ("first", "second"):
        with pytest.raises(InputError, match=place):
            convert("two", where=place)


def test_the_admission_view_decides_as_the_stored_plugin_does() -> None:
    full = signed_plugin()
    full["metadata"].update(namespace="hkp", resourceVersion="3", uid="u-1",
                            annotations={"pluginguard.dev/last-handled-configuration": "{}"})
    full["status"] = {"verified": True, "conditions": [{"type": "Ready", "status": "True"}],
                      "seccomp": {"sha256": "ab" * 32, "localhostProfile": "pluginguard/hkp/ratelimit.json"},
                      "limits": {"memory": "256Mi", "cpu": "500m"}}
    view = admission_view(full)
    assert "annotations" not in view["metadata"] and "status" not in view  # none is read
    answers = []
    for kept in (full, view):
        cluster = FakeCluster(trusted())
        cluster.add(kept)
        for endpoint in ("pods", "mutate-pods"):
            _, decision = review(admission(good_pod()), cluster, kind=endpoint)
            answers.append((endpoint, decision.allowed, decision.reason, decision.patch))
    assert answers[:2] == answers[2:]
