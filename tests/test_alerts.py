"""Alerts: what a receiver gets, the rate limits, retries, and that a slow or dead
receiver never holds up a decision. Every receiver here listens on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from pluginguard.alerts import (
    Alert,
    AlertFormat,
    Event,
    Notifier,
    Rate,
    TokenBucket,
    body,
)
from pluginguard.errors import InputError
from pluginguard.operator.reconcile import DesiredState, Reconciler
from pluginguard.webhooks.admission import review
from pluginguard.webhooks.server import _record
from tests.webhooks.test_admission import (
    FakeCluster,
    admission,
    good_pod,
    signed_plugin,
    trusted,
)

FAST = {"backoff": 0.01, "max_backoff": 0.05, "timeout": 2.0}
WIDE_OPEN = Rate(burst=1000, per_second=1000)


class Receiver:
    """An HTTP endpoint that records what it is sent and answers as told: each
    ``answers`` entry is a status code, or "hang" (wait until released, at most 10 s)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.answers: list[int | str] = []
        self.default: int | str = 200
        self.release = threading.Event()
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                receiver.arrived.set()
                answer = (
                    receiver.answers.pop(0) if receiver.answers else receiver.default
                )
                if answer == "hang":
                    receiver.release.wait(10)
                    answer = 200
                self.send_response(int(answer))
                if answer == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/services/T0/B0/s3cr3t-path"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    endpoint = Receiver()
    try:
        yield endpoint
    finally:
        endpoint.stop()


def refused(name: str = "ratelimit", reason: str = "SignatureInvalid") -> Alert:
    return Alert(
        Event.PLUGIN_REFUSED,
        reason,
        f"Plugin hkp/{name}",
        f"PluginGuard refused Plugin hkp/{name}: {reason}: <sig> & more",
        signer="release (ECDSA-P256)",
        digest="sha256:" + "ab" * 32,
        time=datetime(2026, 1, 31, 12, 0, tzinfo=UTC),
    )


def test_json_body_arrives_with_every_field(receiver: Receiver) -> None:
    with Notifier(receiver.url, cluster="prod-eu", **FAST) as notifier:
        assert notifier.notify(refused())
        assert notifier.flush(5)
    assert notifier.sent == 1
    assert receiver.bodies == [
        {
            "event": "PluginRefused",
            "reason": "SignatureInvalid",
            "object": "Plugin hkp/ratelimit",
            "signer": "release (ECDSA-P256)",
            "digest": "sha256:" + "ab" * 32,
            "message": "PluginGuard refused Plugin hkp/ratelimit: SignatureInvalid: <sig> & more",
            "time": "2026-01-31T12:00:00Z",
            "cluster": "prod-eu",
        }
    ]


def test_slack_body_has_text_and_blocks(receiver: Receiver) -> None:
    with Notifier(
        receiver.url, form=AlertFormat.SLACK, cluster="prod-eu", **FAST
    ) as notifier:
        notifier.notify(refused())
        assert notifier.flush(5)
    [message] = receiver.bodies
    assert set(message) == {"text", "blocks"}
    assert (
        message["text"]
        == "PluginGuard [prod-eu]: PluginRefused Plugin hkp/ratelimit (SignatureInvalid)"
    )
    section, context = message["blocks"]
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    assert "&lt;sig&gt; &amp; more" in section["text"]["text"]  # Slack markup escaped
    assert context["type"] == "context"
    assert "signer: release (ECDSA-P256)" in context["elements"][0]["text"]


def test_secrets_never_reach_the_receiver() -> None:
    alert = Alert(
        Event.POD_REFUSED,
        "InternalError",
        "Pod hkp/x",
        "could not evaluate: -----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n"
        "-----END PRIVATE KEY----- with Bearer abc.def.ghi",
    )
    for form in AlertFormat:
        text = json.dumps(body(alert, form=form))
        assert (
            "PRIVATE KEY" not in text
            and "MIGHAgEA" not in text
            and "abc.def" not in text
        )


def test_a_burst_about_one_object_is_limited_and_counted(receiver: Receiver) -> None:
    with Notifier(
        receiver.url,
        per_object=Rate(burst=3, per_second=0.001),
        overall=WIDE_OPEN,
        **FAST,
    ) as notifier:
        queued = [notifier.notify(refused()) for _ in range(20)]
        assert notifier.notify(refused("other"))  # another object has its own bucket
        assert notifier.flush(5)
    assert queued == [True] * 3 + [False] * 17
    assert notifier.rate_limited == 17 and notifier.sent == 4
    assert len(receiver.bodies) == 4


def test_the_overall_cap_holds_across_objects(receiver: Receiver) -> None:
    with Notifier(
        receiver.url,
        per_object=Rate(burst=3, per_second=0.001),
        overall=Rate(burst=5, per_second=0.001),
        **FAST,
    ) as notifier:
        for n in range(30):
            notifier.notify(refused(f"plugin-{n}"))
        assert notifier.flush(5)
    assert notifier.sent == 5 and notifier.rate_limited == 25


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(Rate(burst=2, per_second=0.5), now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert not bucket.take(1.0)  # half a token
    assert bucket.take(2.0)
    assert bucket.take(100.0) and bucket.take(100.0) and not bucket.take(100.0)


def test_server_errors_are_retried_until_delivered(receiver: Receiver) -> None:
    receiver.answers = [500, 503, 200]
    with Notifier(receiver.url, **FAST) as notifier:
        notifier.notify(refused())
        assert notifier.flush(5)
    assert notifier.sent == 1 and notifier.retries == 2 and notifier.failed == 0
    assert len(receiver.bodies) == 3


def test_429_is_retried(receiver: Receiver) -> None:
    receiver.answers = [429, 200]
    with Notifier(receiver.url, **FAST) as notifier:
        notifier.notify(refused())
        assert notifier.flush(5)
    assert notifier.sent == 1 and notifier.retries == 1


def test_retries_stop_after_the_last_attempt(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.default = 500
    with caplog.at_level(logging.WARNING, logger="pluginguard.alerts"):
        with Notifier(receiver.url, attempts=4, **FAST) as notifier:
            notifier.notify(refused())
            assert notifier.flush(5)
    assert len(receiver.bodies) == 4
    assert notifier.failed == 1 and notifier.retries == 3 and notifier.sent == 0
    assert "not delivered: HTTP 500" in caplog.text
    assert "s3cr3t-path" not in caplog.text  # a webhook URL is a credential


def test_client_errors_are_not_retried(receiver: Receiver) -> None:
    receiver.answers = [404]
    with Notifier(receiver.url, **FAST) as notifier:
        notifier.notify(refused())
        assert notifier.flush(5)
    assert len(receiver.bodies) == 1 and notifier.failed == 1 and notifier.retries == 0


def test_timeouts_are_retried_and_bounded(receiver: Receiver) -> None:
    receiver.default = "hang"
    notifier = Notifier(receiver.url, attempts=2, backoff=0.01, timeout=0.2)
    notifier.notify(refused())
    assert notifier.flush(5)
    assert notifier.failed == 1 and notifier.retries == 1 and len(receiver.bodies) == 2
    notifier.close(0.1)


def test_an_unreachable_receiver_is_retried_and_bounded() -> None:
    import socket

    with socket.socket() as probe:  # a port that was just free: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    notifier = Notifier(f"http://127.0.0.1:{port}/hook", attempts=3, **FAST)
    notifier.notify(refused())
    assert notifier.flush(5)
    assert notifier.failed == 1 and notifier.retries == 2
    notifier.close(0.1)


def test_a_hanging_receiver_does_not_delay_notify_and_the_queue_is_bounded(
    receiver: Receiver,
) -> None:
    receiver.default = "hang"  # answers after 10 s, or when the test ends
    notifier = Notifier(
        receiver.url, overall=WIDE_OPEN, capacity=5, timeout=10.0, backoff=0.01
    )
    notifier.notify(refused("first"))
    assert receiver.arrived.wait(5)  # the worker is now stuck in that request
    durations = []
    for n in range(200):
        started = time.perf_counter()
        notifier.notify(refused(f"plugin-{n}"))
        durations.append(time.perf_counter() - started)
    assert max(durations) < 0.05, f"slowest notify took {max(durations) * 1000:.1f} ms"
    assert notifier.queue_full == 200 - 5
    receiver.release.set()
    notifier.close(5)
    assert notifier.sent == 6


def test_only_http_urls_are_accepted() -> None:
    for url in ("file:///etc/passwd", "ftp://example.com/x", "not a url"):
        with pytest.raises(InputError, match="--alert-webhook-url"):
            Notifier(url)


# --- where alerts come from -------------------------------------------------------------


class Collected:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def notify(self, alert: Alert) -> bool:
        self.alerts.append(alert)
        return True


def test_the_webhook_alerts_on_refusals_of_plugins_and_plugin_pods() -> None:
    cluster = FakeCluster(trusted())
    cluster.add(signed_plugin())
    sink = Collected()
    tampered = signed_plugin()
    tampered["spec"]["sandbox"]["resources"]["maxMemoryMB"] = 4096
    bad_pod = good_pod(image="registry.example/hkp/ratelimit:v1")
    for obj, endpoint, kw in (
        (signed_plugin(), "plugins", {"kind": "Plugin"}),  # allowed: no alert
        (tampered, "plugins", {"kind": "Plugin"}),
        (bad_pod, "pods", {}),
        (bad_pod, "pods", {"dry_run": True}),  # a dry run changes nothing: no alert
    ):
        request = admission(obj, **kw)
        _, decision = review(request, cluster, kind=endpoint)
        _record(decision, request["request"], endpoint, None, alerts=sink)  # type: ignore[arg-type]
    assert [(a.event, a.reason, a.resource) for a in sink.alerts] == [
        (Event.PLUGIN_REFUSED, "SandboxMismatch", "Plugin hkp/ratelimit"),
        (Event.POD_REFUSED, "PodViolatesSandbox", "Pod hkp/rl-1"),
    ]


def _outcome(reason: str, *, verified: bool) -> DesiredState:
    status = {
        "verified": verified,
        "reason": reason,
        "message": f"{reason} happened",
        "signer": "release",
        "digest": "sha256:" + "cd" * 32,
    }
    return DesiredState(status, None, None, [("Warning", reason, f"{reason} happened")])


def test_the_operator_alerts_on_revocation_refusal_and_expiry_once() -> None:
    sink = Collected()
    reconciler = Reconciler(client.ApiClient(), None, None, alerts=sink)  # type: ignore[arg-type]
    reconciler._report(_outcome("CertificateRevoked", verified=False), "Plugin hkp/a")
    reconciler._report(_outcome("NoMatchingPolicy", verified=False), "Plugin hkp/b")
    expiring = (
        "Warning",
        "CertificateExpiringSoon",
        "certificate of release expires on 2026-02-01",
    )
    verified = DesiredState(
        {
            "verified": True,
            "reason": "Verified",
            "message": "ok",
            "signer": "release",
            "digest": None,
        },
        None,
        None,
        [expiring],
    )
    reconciler._report(verified, "Plugin hkp/c")
    reconciler._report(verified, "Plugin hkp/c")  # the event repeats each reconcile
    assert [(a.event, a.resource) for a in sink.alerts] == [
        (Event.CERTIFICATE_REVOKED, "Plugin hkp/a"),
        (Event.PLUGIN_REFUSED, "Plugin hkp/b"),
        (Event.CERTIFICATE_EXPIRING, "Plugin hkp/c"),
    ]
