"""What the webhook remembers between requests to answer faster never changes an answer:
image judgements are per image, digest and repository, metric series per outcome."""

from __future__ import annotations

import copy

from pluginguard.webhooks.admission import Decision, review
from pluginguard.webhooks.server import Metrics, VerdictCache
from tests.webhooks.test_admission import (
    IMAGE,
    FakeCluster,
    admission,
    decide,
    good_pod,
    signed_plugin,
    trusted,
)


def test_an_image_allowed_for_one_plugin_is_judged_afresh_for_another() -> None:
    cluster = FakeCluster(trusted())
    cluster.add(signed_plugin())
    assert decide(cluster, good_pod()).allowed

    other = signed_plugin(name="other", digest="sha256:" + "cd" * 32)
    cluster.add(other)
    pod = good_pod("other")
    pod["spec"]["containers"][0]["image"] = good_pod()["spec"]["containers"][0]["image"]
    refused = decide(cluster, pod)
    assert not refused.allowed
    assert f'container "app": image "{pod["spec"]["containers"][0]["image"]}" is not the ' \
           f"signed artifact sha256:{'cd' * 32}" in refused.message


def test_the_same_image_from_another_repository_is_refused_each_time() -> None:
    cluster = FakeCluster(trusted())
    cluster.add(signed_plugin())
    pod = good_pod()
    digest = pod["spec"]["containers"][0]["image"].partition("@")[2]
    pod["spec"]["containers"][0]["image"] = f"elsewhere.example/hkp/ratelimit@{digest}"
    for _ in range(2):
        refused = decide(cluster, copy.deepcopy(pod))
        assert not refused.allowed and f"is not from the Plugin's repository {IMAGE}" \
            in refused.message


def test_each_container_is_named_in_its_own_refusal() -> None:
    cluster = FakeCluster(trusted())
    cluster.add(signed_plugin())
    pod = good_pod()
    second = copy.deepcopy(pod["spec"]["containers"][0])
    second["name"] = "sidecar"
    second["image"] = f"{IMAGE}:latest"
    pod["spec"]["containers"].append(second)
    pod["spec"]["initContainers"] = [{**second, "name": "setup"}]
    message = decide(cluster, pod).message
    assert 'container "sidecar": image "registry.example/hkp/ratelimit:latest" must be ' \
           "pinned by digest" in message
    assert 'init container "setup": image' in message


def test_an_unknown_endpoint_is_still_denied_as_an_internal_error() -> None:
    _, decision = review(admission(good_pod()), FakeCluster(trusted()), kind="nodes")
    assert not decision.allowed and decision.reason == "InternalError"
    assert "'nodes'" in decision.message


def test_decisions_are_counted_per_endpoint_verdict_and_reason() -> None:
    metrics = Metrics(VerdictCache())
    for decision in (Decision(True, reason="Verified"), Decision(True, reason="Verified"),
                     Decision(False, reason="PodViolatesSandbox"), Decision(True),
                     Decision(False, reason="Verified")):
        metrics.decided("pods", decision, 0.001)
    metrics.decided("plugins", Decision(True, reason="Verified"), 0.001)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in metrics.registry.collect() for s in family.samples}

    def requests(kind: str, verdict: str, reason: str) -> float:
        labels = (("kind", kind), ("reason", reason), ("verdict", verdict))
        return samples[("pluginguard_admission_requests_total", labels)]

    assert requests("pods", "allowed", "Verified") == 2
    assert requests("pods", "denied", "PodViolatesSandbox") == 1
    assert requests("pods", "allowed", "none") == 1
    assert requests("pods", "denied", "Verified") == 1
    assert requests("plugins", "allowed", "Verified") == 1
    assert samples[("pluginguard_admission_duration_seconds_count", (("kind", "pods"),))] == 5
    assert ("pluginguard_admission_errors_total", (("kind", "pods"),)) not in samples
