"""The admission webhook's HTTPS server: AdmissionReviews in, decisions out, fast.

Every decision is made from memory (watch-fed copies and a bounded cache of verdicts);
Events and audit records are queued and written in the background. Anything that goes
wrong while deciding denies, with a message: the webhook fails closed.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pluginguard.alerts import Alert, Event, Notifier
from pluginguard.audit import AuditLog
from pluginguard.errors import InputError
from pluginguard.manifest import parse_plugin
from pluginguard.names import DELIVERIES, NODE_AGENT_DELIVERY
from pluginguard.policy import TrustPolicy
from pluginguard.sandbox import PodRules
from pluginguard.verdict import Reason, Verdict
from pluginguard.verify import verify_plugin
from pluginguard.operator.cluster import ClusterState
from pluginguard.operator.events import EventRecorder
from pluginguard.webhooks.admission import Decision, plugin_pod_rules, review

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 << 20  # the API server's own object limit is ~1.5 MiB; UPDATE sends two
# How long the webhook may decide on copies that have lost their watch before it denies.
STALENESS_BOUND_SECONDS = 2.0
_VERIFIED_TTL = 300.0
_REFUSED_TTL = 10.0
_NOT_PLUGIN_PODS = frozenset({"NotAPluginPod", "NotAPod", "Exempt"})  # not audited


class VerdictCache:
    """Verdicts keyed by what they depend on: the Plugin's resourceVersion and the trust
    generation. Bounded (least recently used out); refusals live briefly, so that a
    transient cause (material still loading) does not stick."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[Any, ...], tuple[float, Verdict]] = OrderedDict()

    def get(self, key: tuple[Any, ...]) -> Verdict | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: tuple[Any, ...], verdict: Verdict) -> None:
        ttl = _VERIFIED_TTL if verdict.verified else _REFUSED_TTL
        if verdict.signer_expires is not None:
            remaining = (verdict.signer_expires - datetime.now(UTC)).total_seconds()
            ttl = max(0.0, min(ttl, remaining))
        self._entries[key] = (time.monotonic() + ttl, verdict)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class WebhookCluster:
    """The admission logic's view of the cluster, over ClusterState and VerdictCache."""

    def __init__(self, state: ClusterState, cache: VerdictCache | None = None, *,
                 rules_capacity: int = 100_000, delivery: str = NODE_AGENT_DELIVERY) -> None:
        if delivery not in DELIVERIES:
            raise ValueError(f"delivery must be one of {', '.join(DELIVERIES)}, not {delivery!r}")
        self.state = state
        self.delivery = delivery
        self.cache = cache or VerdictCache()
        self.rules_capacity = rules_capacity
        # Per Plugin: the resourceVersion its pod rules were compiled from, and them.
        self._rules: OrderedDict[tuple[str, str], tuple[str, PodRules | InputError]] = \
            OrderedDict()

    def plugin(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.state.plugins.get(namespace, name)

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return self.state.namespace_labels(namespace)

    def policies(self) -> list[TrustPolicy]:
        return self.state.trust_policies()[0]

    def pod_rules(self, plugin: dict[str, Any]) -> PodRules | InputError:
        """The Plugin's pod rules, compiled once per resourceVersion (a stored object
        changes only with it) rather than on every pod."""
        metadata = plugin.get("metadata") or {}
        version = metadata.get("resourceVersion")
        if version is None:
            return plugin_pod_rules(plugin, delivery=self.delivery)
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        found = self._rules.get(key)
        if found is not None and found[0] == version:
            self._rules.move_to_end(key)
            return found[1]
        rules = plugin_pod_rules(plugin, delivery=self.delivery)
        self._rules[key] = (version, rules)
        self._rules.move_to_end(key)
        while len(self._rules) > self.rules_capacity:
            self._rules.popitem(last=False)
        return rules

    def verdict(self, plugin: dict[str, Any]) -> Verdict:
        metadata = plugin["metadata"]
        key = (metadata["namespace"], metadata["name"], metadata.get("resourceVersion"),
               self.state.generation)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        try:
            parsed = parse_plugin(plugin, where=f"Plugin {metadata['namespace']}/{metadata['name']}")
            verdict = verify_plugin(parsed, self.policies(),
                                    namespace_labels=self.namespace_labels(metadata["namespace"]))
        except InputError as error:
            verdict = Verdict(False, Reason.MALFORMED_SIGNATURE, str(error))
        self.cache.put(key, verdict)
        return verdict


class _CacheCollector(Collector):
    """Reads the verdict cache's own counters at scrape time: nothing on the hot path."""

    def __init__(self, cache: VerdictCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        lookups = CounterMetricFamily("pluginguard_verdict_cache_lookups",
                                      "Verdict cache lookups", labels=["result"])
        lookups.add_metric(["hit"], self.cache.hits)
        lookups.add_metric(["miss"], self.cache.misses)
        yield lookups
        yield GaugeMetricFamily("pluginguard_verdict_cache_entries",
                                "Verdicts held in the cache", value=len(self.cache))


class Metrics:
    def __init__(self, cache: VerdictCache) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_CacheCollector(cache))
        self.requests = Counter("pluginguard_admission_requests_total",
                                "Admission requests by endpoint, verdict and reason",
                                ["kind", "verdict", "reason"], registry=self.registry)
        self.latency = Histogram("pluginguard_admission_duration_seconds",
                                 "Time to decide an admission request", ["kind"],
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
                                 registry=self.registry)
        self.errors = Counter("pluginguard_admission_errors_total",
                              "Requests that could not be decided normally", ["kind"],
                              registry=self.registry)
        # Children bound on first use and kept: labels() costs a lock and a lookup per
        # call, more than the increment itself. A series still appears only once used.
        self._decided: dict[tuple[str, bool, str], tuple[Any, Any]] = {}

    def decided(self, kind: str, decision: Decision, seconds: float) -> None:
        """Count a decision on endpoint ``kind`` and observe how long it took."""
        key = (kind, decision.allowed, decision.reason)
        children = self._decided.get(key)
        if children is None:
            verdict = "allowed" if decision.allowed else "denied"
            children = (self.requests.labels(kind, verdict, decision.reason or "none"),
                        self.latency.labels(kind))
            self._decided[key] = children
        children[0].inc()
        children[1].observe(seconds)


def make_app(cluster: WebhookCluster, *, events: EventRecorder | None = None,
             own_namespace: str | None = None,
             collectors: Sequence[Collector] = (), audit: AuditLog | None = None,
             alerts: Notifier | None = None) -> web.Application:
    """The webhook's routes; ``collectors`` add to what /metrics reports; ``audit`` and
    ``alerts`` receive decisions about Plugins and plugin pods."""
    metrics = Metrics(cluster.cache)
    for collector in collectors:
        metrics.registry.register(collector)
    app = web.Application(client_max_size=MAX_BODY_BYTES)

    async def admit(request: web.Request) -> web.Response:
        kind = request.match_info.get("kind", "mutate-pods")
        started = time.perf_counter()
        body: Any = None
        try:
            body = orjson.loads(await request.read())
            uid, decision = review(body, cluster, kind=kind, own_namespace=own_namespace)
            decision = _unless_stale(decision, cluster, kind)
        except web.HTTPRequestEntityTooLarge:
            raise
        except (ValueError, RecursionError, InputError) as error:
            metrics.errors.labels(kind).inc()
            text = str(error) if isinstance(error, InputError) else "body is not JSON"
            return web.json_response({"error": f"not an AdmissionReview v1: {text}"}, status=400)
        except Exception as error:  # noqa: BLE001 - fail closed, never a 500
            log.exception("admission %s failed", kind)
            metrics.errors.labels(kind).inc()
            uid = _uid(body)
            if uid is None:
                return web.json_response({"error": "internal error"}, status=400)
            decision = Decision(False, f"PluginGuard internal error, denying: {error}",
                                reason="InternalError")
        metrics.decided(kind, decision, time.perf_counter() - started)
        _record(decision, body["request"], kind, events, audit=audit, alerts=alerts)
        return web.Response(body=orjson.dumps(decision.response(uid)),
                            content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        if cluster.state.synced():
            return web.Response(text="ok")
        return web.Response(status=503, text="caches not synced")

    async def metrics_endpoint(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_post("/validate/{kind:plugins|pods}", admit)
    app.router.add_post("/mutate/pods", admit)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app


def _unless_stale(decision: Decision, cluster: WebhookCluster, kind: str) -> Decision:
    """Turn an allow that rests on the copies into a denial when they are out of date.

    A Plugin or policy may have changed while the watches were cut off; an allow for a
    plugin object is only as good as the copies, so past the bound it is withdrawn.
    """
    if not decision.allowed or kind == "mutate-pods":
        return decision
    if kind == "pods" and decision.plugin is None:
        return decision  # not a plugin pod: nothing it depends on is in the copies
    stale = cluster.state.stale_for()
    if stale <= STALENESS_BOUND_SECONDS:
        return decision
    return Decision(False, f"PluginGuard cannot confirm the current trust state (out of touch "
                           f"with the API server for {stale:.1f}s); denying until it can",
                    reason="StaleState", plugin=decision.plugin)


def _uid(body: Any) -> str | None:
    request = body.get("request") if isinstance(body, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    return uid if isinstance(uid, str) else None


def _record(decision: Decision, request: Mapping[str, Any], kind: str,
            events: EventRecorder | None, *, audit: AuditLog | None = None,
            alerts: Notifier | None = None) -> None:
    """One log line per decision; an Event on the Plugin for refusals and audited pods;
    an audit record (and, for refusals, an alert) about Plugins and plugin pods."""
    if decision.allowed and not decision.audit and audit is None:
        return  # the usual case: nothing to log, audit, alert on or report
    # Any field may be of any type here: the request was decided, maybe as malformed.
    resource = request.get("kind")
    resource_kind = resource.get("kind") if isinstance(resource, Mapping) else resource
    what = f"{resource_kind} {request.get('namespace')}/{request.get('name') or ''}"
    fields = {"decision": "allowed" if decision.allowed else "denied", "reason": decision.reason,
              "object": what, "dryRun": bool(request.get("dryRun"))}
    if decision.verdict is not None:
        fields.update(signer=decision.verdict.signer, digest=decision.verdict.digest)
    if not decision.allowed or decision.audit:
        log.info("%s %s: %s", fields["decision"], what, decision.message, extra={"fields": fields})
    if (kind in ("plugins", "pods") and not request.get("dryRun")
            and decision.reason not in _NOT_PLUGIN_PODS):
        if audit is not None:
            audit.record(decision=str(fields["decision"]), reason=decision.reason, resource=what,
                         signer=fields.get("signer"), digest=fields.get("digest"),
                         message=decision.message)
        if alerts is not None and not decision.allowed:
            alerts.notify(Alert(Event.PLUGIN_REFUSED if kind == "plugins" else Event.POD_REFUSED,
                                decision.reason, what, decision.message,
                                signer=fields.get("signer"), digest=fields.get("digest")))
    if events is None or request.get("dryRun") or decision.plugin is None or kind != "pods":
        return
    if not decision.allowed:
        events.record(decision.plugin, type="Warning", reason="PodRefused", message=decision.message)
    elif decision.audit:
        events.record(decision.plugin, type="Warning", reason="PodAdmittedUnverified",
                      message=decision.message)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise InputError(f"{cert}, {key}", f"cannot load the TLS certificate and key: {error}") from error
    return context
