"""Hostile AdmissionReviews, to the decision logic and to the real aiohttp app.

Whatever arrives, the webhook answers 200 with a well-formed AdmissionReview carrying
the request's uid, or 4xx for a body that is not one; never 500, never a hang, and
never ``allowed: true`` for a plugin pod whose Plugin does not verify.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pluginguard.errors import InputError
from pluginguard.keys import generate_private_key
from pluginguard.operator.cluster import ClusterState
from pluginguard.signing import sign_manifest
from pluginguard.webhooks.admission import review
from pluginguard.webhooks.server import MAX_BODY_BYTES, WebhookCluster, make_app
from tests.plugin_factory import plugin
from tests.strategies import JSON, mutated
from tests.webhooks.test_admission import (
    FakeCluster,
    admission,
    good_pod,
    signed_plugin,
    trusted,
)

BOUNDED = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SECONDS = 10.0  # an answer later than this is a hang: the API server gives up at 10s
ENDPOINTS = {
    "plugins": "/validate/plugins",
    "pods": "/validate/pods",
    "mutate-pods": "/mutate/pods",
}
UNTRUSTED_KEY = generate_private_key("ECDSA-P256")


def plugins_that_do_not_verify() -> dict[str, dict[str, Any]]:
    """Plugins in namespace hkp that the trusted() policy must refuse, by name."""
    return {
        "unsigned": plugin("unsigned"),
        "stranger": sign_manifest(plugin("stranger"), key=UNTRUSTED_KEY),
    }


def cluster_with_plugins() -> FakeCluster:
    cluster = FakeCluster(trusted(), enforce=True)
    cluster.add(signed_plugin())
    for document in plugins_that_do_not_verify().values():
        cluster.add(document)
    return cluster


def as_workload(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    template = {"metadata": pod.get("metadata"), "spec": pod.get("spec")}
    if kind == "Pod":
        return pod
    if kind == "CronJob":
        return {
            "metadata": {"name": "w"},
            "spec": {"jobTemplate": {"spec": {"template": template}}},
        }
    return {"metadata": {"name": "w"}, "spec": {"template": template}}


def review_of(obj: Any, kind: str) -> dict[str, Any]:
    """An AdmissionReview for ``obj``, however mangled its metadata."""
    body = admission({"metadata": {"name": "w"}}, kind=kind)
    body["request"]["object"] = obj
    return body


def assert_well_formed(answer: dict[str, Any], uid: str) -> dict[str, Any]:
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == uid
    assert isinstance(response["allowed"], bool)
    if not response["allowed"]:
        assert response["status"]["code"] == 403
        assert isinstance(response["status"]["message"], str)
    return response


# -- Strategies ---------------------------------------------------------------------

WORKLOAD_KINDS = ["Pod", "Deployment", "StatefulSet", "Job", "CronJob"]
# Pods of Plugins that do not verify: anything may change but the label that makes
# them plugin pods of that Plugin, and the namespace that is not exempt.
UNVERIFIED_POD_REQUESTS = st.builds(
    lambda pod, kind: review_of(as_workload(pod, kind), kind),
    st.sampled_from(sorted(plugins_that_do_not_verify())).flatmap(
        lambda name: mutated(good_pod(name), keep=[("metadata", "labels")])
    ),
    st.sampled_from(WORKLOAD_KINDS),
)
UNVERIFIED_PLUGIN_REQUESTS = st.sampled_from(
    list(plugins_that_do_not_verify().values())
).flatmap(lambda document: mutated(document).map(lambda obj: review_of(obj, "Plugin")))
REQUESTS = st.fixed_dictionaries(
    {"uid": st.text(max_size=40)},
    optional={
        "kind": st.fixed_dictionaries(
            {"kind": st.sampled_from([*WORKLOAD_KINDS, "Plugin"])}
        )
        | JSON,
        "namespace": st.sampled_from(["hkp", "kube-system", "other"]) | JSON,
        "name": JSON,
        "operation": st.sampled_from(["CREATE", "UPDATE"]) | JSON,
        "dryRun": JSON,
        "object": mutated(good_pod("unsigned")) | mutated(signed_plugin()) | JSON,
    },
)
REVIEWS = (
    st.fixed_dictionaries(
        {"kind": st.just("AdmissionReview"), "request": REQUESTS},
        optional={"apiVersion": st.just("admission.k8s.io/v1") | JSON},
    )
    | UNVERIFIED_POD_REQUESTS
    | UNVERIFIED_PLUGIN_REQUESTS
    | mutated(admission(good_pod()))
    | JSON
)


# -- The decision logic ----------------------------------------------------------------


@BOUNDED
@given(REVIEWS, st.sampled_from(sorted(ENDPOINTS)))
def test_review_answers_every_admission_review_or_raises_input_error(
    body: Any, endpoint: str
) -> None:
    try:
        uid, decision = review(body, cluster_with_plugins(), kind=endpoint)
    except InputError:
        request = body.get("request") if isinstance(body, dict) else None
        assert not (
            isinstance(request, dict)
            and isinstance(request.get("uid"), str)
            and body.get("kind") == "AdmissionReview"
        )
        return
    assert uid == body["request"]["uid"]
    assert_well_formed(json.loads(json.dumps(decision.response(uid))), uid)


@BOUNDED
@given(UNVERIFIED_POD_REQUESTS)
def test_pod_of_a_plugin_that_does_not_verify_is_never_allowed(
    body: dict[str, Any],
) -> None:
    _, decision = review(body, cluster_with_plugins(), kind="pods")
    assert not decision.allowed, decision.message


@BOUNDED
@given(UNVERIFIED_PLUGIN_REQUESTS)
def test_plugin_that_does_not_verify_is_never_admitted(body: dict[str, Any]) -> None:
    _, decision = review(body, cluster_with_plugins(), kind="plugins")
    assert not decision.allowed, decision.message


# -- The server ----------------------------------------------------------------------


class Webhook:
    """The real app behind aiohttp's TestServer, driven from synchronous tests: the
    client and server live on an event loop of their own, one request at a time."""

    def __init__(self, cluster: WebhookCluster) -> None:
        self.loop = asyncio.new_event_loop()
        self.client: TestClient = self.loop.run_until_complete(self._start(cluster))

    @staticmethod
    async def _start(cluster: WebhookCluster) -> TestClient:
        client = TestClient(TestServer(make_app(cluster)))
        await client.start_server()
        return client

    def post(self, path: str, body: bytes) -> tuple[int, bytes, float]:
        """Status, body and seconds taken; a request that takes SECONDS fails."""

        async def send() -> tuple[int, bytes]:
            response = await self.client.post(
                path, data=body, headers={"Content-Type": "application/json"}
            )
            return response.status, await response.read()

        started = time.monotonic()
        status, answer = self.loop.run_until_complete(asyncio.wait_for(send(), SECONDS))
        return status, answer, time.monotonic() - started

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


def cluster_state(api: kubernetes.client.ApiClient) -> ClusterState:
    """A ClusterState never started: its copies are filled here, as the watches would."""
    state = ClusterState(api)
    source = cluster_with_plugins()
    state.namespaces.objects[("", "hkp")] = {
        "metadata": {"name": "hkp", "labels": dict(source.labels["hkp"])}
    }
    state.policies.objects[("", "hkp-plugins")] = {
        **trusted(),
        "metadata": {"name": "hkp-plugins", "resourceVersion": "1"},
    }
    for (namespace, name), document in source.plugins.items():
        document = copy.deepcopy(document)
        document["metadata"]["resourceVersion"] = "1"
        state.plugins.objects[(namespace, name)] = document
    for reflector in (state.namespaces, state.policies, state.plugins):
        reflector.synced.set()
    return state


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    api = kubernetes.client.ApiClient()
    server = Webhook(WebhookCluster(cluster_state(api)))
    try:
        yield server
    finally:
        server.close()
        api.close()


def decided(webhook: Webhook, endpoint: str, body: Any) -> dict[str, Any]:
    """POST ``body`` (an AdmissionReview) and return its well-formed response.

    NaN and Infinity are not JSON (RFC 8259) and the API server never sends them: a
    body holding one is refused as malformed, and the example says nothing more.
    """
    try:
        json.dumps(body, allow_nan=False)
    except ValueError:
        status, answer, _ = webhook.post(ENDPOINTS[endpoint], json.dumps(body).encode())
        assert status == 400, answer
        assume(False)
    status, answer, _ = webhook.post(ENDPOINTS[endpoint], json.dumps(body).encode())
    assert status == 200, answer
    return assert_well_formed(json.loads(answer), body["request"]["uid"])


def test_the_app_allows_a_good_plugin_pod(webhook: Webhook) -> None:
    """The fixture is a working webhook, so the refusals below are not an accident."""
    response = decided(webhook, "pods", admission(good_pod()))
    assert response["allowed"], response


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{" + b" " * MAX_BODY_BYTES + b"}", id="blank-json"),
        pytest.param(
            json.dumps(admission(good_pod())).encode() + b" " * MAX_BODY_BYTES,
            id="padded-review",
        ),
        pytest.param(b"\xff" * (MAX_BODY_BYTES + 1), id="binary"),
    ],
)
def test_body_over_the_limit_is_413_before_parsing(
    webhook: Webhook, body: bytes
) -> None:
    status, _, seconds = webhook.post("/validate/pods", body)
    assert status == 413
    assert seconds < SECONDS


def _nested(depth: int) -> list[tuple[str, bytes]]:
    inner = b"[" * depth + b"]" * depth
    review_prefix = b'{"kind":"AdmissionReview","request":{"uid":"u","object":'
    return [
        ("lists", b"[" * depth),
        ("objects", b'{"a":' * depth),
        ("balanced", inner),
        ("inside-a-review", review_prefix + inner + b"}}"),
    ]


@pytest.mark.parametrize("name, body", _nested(100_000), ids=[n for n, _ in _nested(1)])
@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_deeply_nested_json_is_400(
    webhook: Webhook, name: str, body: bytes, endpoint: str
) -> None:
    status, answer, _ = webhook.post(ENDPOINTS[endpoint], body)
    assert status == 400, answer
    assert b"not an AdmissionReview" in answer


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b'"AdmissionReview"',
        b'{"kind":"AdmissionReview"}',
        b'{"kind":"AdmissionReview","request":{"uid":7}}',
        b"\xff\xfe{}",
        b'{"kind":"AdmissionReview","request":{"uid":"u"}, "x":' + b"1" * 5000 + b"}",
    ],
    ids=[
        "empty",
        "null",
        "list",
        "string",
        "no-request",
        "uid-not-string",
        "not-utf8",
        "huge-integer",
    ],
)
def test_body_that_is_not_an_admission_review_is_400(
    webhook: Webhook, body: bytes
) -> None:
    for path in ENDPOINTS.values():
        status, answer, _ = webhook.post(path, body)
        assert status == 400, answer


@pytest.mark.parametrize(
    "field, value",
    [
        ("kind", "Pod"),
        ("kind", ["Pod"]),
        ("namespace", ["hkp"]),
        ("object", "pod"),
        ("name", {"a": 1}),
        ("dryRun", {"a": 1}),
    ],
)
@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_request_field_of_the_wrong_type_is_answered_not_crashed(
    webhook: Webhook, field: str, value: Any, endpoint: str
) -> None:
    body = admission(good_pod("unsigned"))
    body["request"][field] = value
    response = decided(webhook, endpoint, body)
    # With kind or object changed the request may no longer be about a pod at all.
    if endpoint == "pods" and field not in ("kind", "object"):
        assert not response["allowed"]


@BOUNDED
@given(st.binary(max_size=256))
def test_arbitrary_bytes_are_never_a_500(webhook: Webhook, body: bytes) -> None:
    status, answer, _ = webhook.post("/validate/pods", body)
    assert status in (200, 400), answer


@BOUNDED
@given(REVIEWS, st.sampled_from(sorted(ENDPOINTS)))
def test_any_json_body_is_answered_with_its_uid_or_400(
    webhook: Webhook, body: Any, endpoint: str
) -> None:
    status, answer, _ = webhook.post(ENDPOINTS[endpoint], json.dumps(body).encode())
    assert status in (200, 400), answer
    if status == 200:
        assert_well_formed(json.loads(answer), body["request"]["uid"])


@BOUNDED
@given(UNVERIFIED_POD_REQUESTS)
def test_the_app_never_allows_a_pod_of_a_plugin_that_does_not_verify(
    webhook: Webhook, body: dict[str, Any]
) -> None:
    assert not decided(webhook, "pods", body)["allowed"]


def test_megabyte_of_pem_markers_is_refused_in_time(webhook: Webhook) -> None:
    """A Plugin whose .sig is 1.3 MB of BEGIN lines (under the API server's limit)."""
    document = plugin("redos")
    document["spec"]["signature"] = {
        "format": "hkp",
        "hkp": "-----BEGIN SIGNATURE-----\n" * 50_000,
    }
    status, answer, seconds = webhook.post(
        "/validate/plugins", json.dumps(admission(document, kind="Plugin")).encode()
    )
    response = assert_well_formed(json.loads(answer), "3a1c-uid")
    assert status == 200 and not response["allowed"]
    assert "MalformedSignature" in response["status"]["message"]
    assert seconds < SECONDS
