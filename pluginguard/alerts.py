"""Alerts on security violations (a refused plugin, a revoked or expiring certificate),
posted to a webhook URL as generic JSON or as a Slack message.

``Notifier.notify`` only rate-limits and queues: a background thread posts, retrying
5xx answers, 429 and timeouts with exponential backoff and jitter. A slow or dead
receiver therefore never slows a decision; what cannot be queued or delivered is
counted and logged. The URL is never logged (a Slack webhook URL is a credential).
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import os
import queue
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

from pluginguard.audit import redact
from pluginguard.errors import InputError

log = logging.getLogger(__name__)

URL_ENV = "PLUGINGUARD_ALERT_WEBHOOK_URL"
CLUSTER_ENV = "PLUGINGUARD_CLUSTER"
_MAX_MESSAGE = 2000
_MAX_KEYS = 10_000  # per-object buckets kept; the least recently used go first


class AlertFormat(enum.StrEnum):
    JSON = "json"
    SLACK = "slack"


class Event(enum.StrEnum):
    """What happened; receivers route on it."""

    PLUGIN_REFUSED = "PluginRefused"
    POD_REFUSED = "PodRefused"
    CERTIFICATE_REVOKED = "CertificateRevoked"
    CERTIFICATE_EXPIRING = "CertificateExpiringSoon"


@dataclass(frozen=True)
class Alert:
    """One security violation about one object ("Plugin hkp/ratelimit")."""

    event: Event
    reason: str
    resource: str
    message: str
    signer: str | None = None
    digest: str | None = None
    time: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Rate:
    """A token bucket's shape: ``burst`` at once, then ``per_second`` on average."""

    burst: float
    per_second: float


class TokenBucket:
    def __init__(self, rate: Rate, *, now: float) -> None:
        self.rate = rate
        self.tokens = rate.burst
        self.updated = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.rate.burst, self.tokens + elapsed * self.rate.per_second)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def body(alert: Alert, *, form: AlertFormat, cluster: str = "") -> dict[str, Any]:
    """The JSON a receiver gets; secrets in any field are redacted."""
    fields = {
        "event": alert.event.value,
        "reason": alert.reason,
        "object": alert.resource,
        "signer": alert.signer,
        "digest": alert.digest,
        "message": alert.message[:_MAX_MESSAGE],
        "time": alert.time.astimezone(UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
        "cluster": cluster,
    }
    for name, value in fields.items():
        if isinstance(value, str):
            fields[name] = redact(value)[0]
    return fields if form is AlertFormat.JSON else _slack(fields)


def _slack(fields: dict[str, Any]) -> dict[str, Any]:
    def escape(text: str) -> str:
        # Slack's mrkdwn treats these three as markup.
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    where = f" [{escape(fields['cluster'])}]" if fields["cluster"] else ""
    headline = (
        f"PluginGuard{where}: {fields['event']} {escape(fields['object'])} "
        f"({escape(fields['reason'])})"
    )
    context = [f"time: {fields['time']}"]
    for name in ("signer", "digest"):
        if fields[name]:
            context.append(f"{name}: {escape(fields[name])}")
    return {
        "text": headline,
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"*{escape(headline)}*\n{escape(fields['message'])}",
                },
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": " | ".join(context)}],
            },
        ],
    }


class Notifier:
    """Posts alerts from a background thread; see the module docstring.

    Limits: one bucket per (reason, object), so that one plugin refused in a loop sends
    a few alerts, not thousands; and one bucket for everything. Raises InputError from
    the constructor for a URL that is not http(s).
    """

    def __init__(
        self,
        url: str,
        *,
        form: AlertFormat = AlertFormat.JSON,
        cluster: str = "",
        per_object: Rate = Rate(burst=3, per_second=1 / 300),
        overall: Rate = Rate(burst=30, per_second=1.0),
        attempts: int = 4,
        timeout: float = 5.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        capacity: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InputError(
                "--alert-webhook-url", "must be an http:// or https:// URL"
            )
        self.receiver = f"{parsed.scheme}://{parsed.hostname}"  # what logs may name
        self.sent = self.failed = self.retries = 0
        self.rate_limited = self.queue_full = 0
        self._url, self._form, self._cluster = url, form, cluster
        self._per_object, self._overall_rate = per_object, overall
        self._attempts, self._timeout = max(1, attempts), timeout
        self._backoff, self._max_backoff = backoff, max_backoff
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self._overall = TokenBucket(overall, now=clock())
        self._guard = threading.Lock()
        self._queue: queue.Queue[Alert | None] = queue.Queue(capacity)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self._thread.start()

    def notify(self, alert: Alert) -> bool:
        """Queue ``alert`` unless a limit drops it; returns at once, never raises."""
        with self._guard:
            if not self._admit(alert):
                self.rate_limited += 1
                dropped = self.rate_limited
                queued = False
            else:
                queued = True
        if not queued:
            if dropped % 1000 == 1:
                log.info("alert rate limit reached; %d alerts dropped so far", dropped)
            return False
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            with self._guard:
                self.queue_full += 1
                dropped = self.queue_full
            if dropped % 1000 == 1:
                log.warning("alert queue full; %d alerts dropped so far", dropped)
            return False
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued alert was delivered or given up on."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within ``timeout``, then stop (no more retries)."""
        self.flush(timeout)
        self._stopping.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=1.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _admit(self, alert: Alert) -> bool:
        now = self._clock()
        key = (alert.reason, alert.resource)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._per_object, now=now)
            while len(self._buckets) > _MAX_KEYS:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(key)
        # Charge the overall bucket only for what the object's bucket lets through.
        return bucket.take(now) and self._overall.take(now)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            try:
                if alert is None:
                    return
                self._deliver(alert)
            except Exception:  # noqa: BLE001 - an alert is never worth the thread
                log.exception("alert %s not delivered", getattr(alert, "event", "?"))
            finally:
                self._queue.task_done()

    def _deliver(self, alert: Alert) -> None:
        payload = json.dumps(
            body(alert, form=self._form, cluster=self._cluster)
        ).encode()
        problem = ""
        for attempt in range(self._attempts):
            if attempt:
                self.retries += 1
                if self._stopping.wait(self._delay(attempt, problem)):
                    break
            retry, problem = self._post(payload)
            if not problem:
                self.sent += 1
                return
            if not retry:
                break
        self.failed += 1
        log.warning(
            "alert %s on %s to %s not delivered: %s",
            alert.event,
            alert.resource,
            self.receiver,
            problem,
        )

    def _delay(self, attempt: int, problem: str) -> float:
        """Full jitter over an exponentially growing ceiling; a receiver's Retry-After
        (carried in ``problem`` as "retry after N s") sets a floor."""
        ceiling = min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
        delay = random.uniform(0, ceiling)  # noqa: S311 - jitter, not a secret
        if problem.startswith("retry after "):
            asked = float(problem.split()[2])
            delay = max(delay, min(asked, self._max_backoff))
        return delay

    def _post(self, payload: bytes) -> tuple[bool, str]:
        """(whether to retry, what went wrong: empty when delivered)."""
        request = urllib.request.Request(
            self._url,
            data=payload,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "pluginguard"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                response.read(1 << 16)
                return False, ""
        except urllib.error.HTTPError as error:
            if error.code == 429:
                return (
                    True,
                    f"retry after {_seconds(error.headers.get('Retry-After'))} s",
                )
            return error.code >= 500, f"HTTP {error.code}"
        except (TimeoutError, urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            return True, f"{type(reason).__name__}: {reason}"


def _seconds(header: str | None) -> float:
    try:
        return max(0.0, float(header or 1))
    except ValueError:
        return 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The alert options of ``webhook serve`` and ``operator run``."""
    parser.add_argument(
        "--alert-webhook-url",
        metavar="URL",
        default=os.environ.get(URL_ENV),
        help=f"post security violations here (default: ${URL_ENV}; prefer it, set from "
        "a Secret: such URLs are credentials)",
    )
    parser.add_argument(
        "--alert-format",
        choices=[f.value for f in AlertFormat],
        default=AlertFormat.JSON.value,
        help="json: {event, reason, object, signer, digest, message, time, cluster}; "
        "slack: an incoming-webhook message",
    )
    parser.add_argument(
        "--alert-cluster",
        metavar="NAME",
        default=os.environ.get(CLUSTER_ENV, ""),
        help=f"the cluster's name in alerts (default: ${CLUSTER_ENV})",
    )


def from_arguments(args: argparse.Namespace) -> Notifier | None:
    """The Notifier the options ask for, or None."""
    if not args.alert_webhook_url:
        return None
    return Notifier(
        args.alert_webhook_url,
        form=AlertFormat(args.alert_format),
        cluster=args.alert_cluster,
    )
