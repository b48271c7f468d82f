"""The operator's kopf handlers: reconcile Plugins when they change, and re-verify the
Plugins a trust change affects — right away on policy events, and by a short timer for
changes of referenced Secrets, ConfigMaps, CRLs and namespace labels.

kopf runs these handlers only in the active replica (peering), so two replicas never
write the same Plugin at once.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

import kopf
from kubernetes import client

from pluginguard.alerts import Notifier
from pluginguard.audit import AuditLog
from pluginguard.manifest import GROUP
from pluginguard.names import (
    PLUGIN_LABEL,
    PLUGIN_NAMESPACE_LABEL,
    PROFILE_LABEL,
    SPO_GROUP,
    SPO_VERSION,
    spo_profile_name,
)
from pluginguard.operator.cluster import VERSION, ClusterState, api_client
from pluginguard.operator.events import EventRecorder
from pluginguard.operator.reconcile import NODE_AGENT, SECURITY_PROFILES_OPERATOR, Reconciler
from pluginguard.operator.watch import Reflector
from pluginguard.spo import installation

log = logging.getLogger(__name__)

# How often a trust change that no policy event announced is looked for, and how often
# every Plugin is verified again anyway (certificates expire, CRLs are re-issued).
TRUST_POLL_SECONDS = 2.0
RESYNC_SECONDS = 600.0
PEERING_LIFETIME = 60  # seconds; set from the command line
AUDIT: AuditLog | None = None  # set from the command line, as are the alerts
ALERTS: Notifier | None = None
PROFILE_DELIVERY = NODE_AGENT
_ORPHAN_GRACE_SECONDS = 5.0


class Operator:
    """The operator's state: the cluster copy, the reconciler and what it last applied."""

    def __init__(self, api: client.ApiClient, *, delivery: str = NODE_AGENT) -> None:
        self.state = ClusterState(api).start()
        self.events = EventRecorder(api, component="pluginguard-operator")
        self.delivery = delivery
        self._applied: dict[tuple[str, str], tuple[str, int | None, float]] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        # The objects each Plugin owns, watched so that a deleted or edited one is put
        # back within the trust poll, not at the next resync.
        self._repairs: set[tuple[str, str]] = set()
        self._owned: dict[tuple[str, str], dict[str, Any]] = {}  # key -> kind -> as written
        core, networking = client.CoreV1Api(api), client.NetworkingV1Api(api)
        self.owned = [
            Reflector("plugin-networkpolicies", functools.partial(
                networking.list_network_policy_for_all_namespaces, label_selector=PLUGIN_LABEL),
                listener=self._owned_changed).start(),
        ]
        self.seccomp_profiles: Reflector | None = None
        if delivery == SECURITY_PROFILES_OPERATOR:
            self.seccomp_profiles = Reflector("seccompprofiles", functools.partial(
                client.CustomObjectsApi(api).list_cluster_custom_object, SPO_GROUP, SPO_VERSION,
                "seccompprofiles", label_selector=PLUGIN_NAMESPACE_LABEL),
                listener=self._owned_changed).start()
            self.owned.append(self.seccomp_profiles)
        else:
            self.owned.append(Reflector("profile-configmaps", functools.partial(
                core.list_config_map_for_all_namespaces, label_selector=f"{PROFILE_LABEL}=true"),
                listener=self._owned_changed).start())
        self.reconciler = Reconciler(api, self.state, self.events, audit=AUDIT, alerts=ALERTS,
                                     delivery=delivery, delivered=self._delivered)

    def reconcile(self, body: dict[str, Any], *, unless_current: bool = False) -> bool:
        """Reconcile one Plugin; with ``unless_current``, only if its trust inputs or
        generation changed since it was last applied (checked under the Plugin's lock, so
        concurrent triggers do the work once). Returns whether it reconciled."""
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        with self._lock(key):
            fingerprint = self.state.trust_fingerprint(key[0])
            if unless_current and self._current(key, body, fingerprint):
                return False
            desired = self.reconciler.reconcile(body)
            self._applied[key] = (fingerprint, body["metadata"].get("generation"), time.monotonic())
            written: dict[str, Any] = {}
            if desired.config_map is not None:
                written["ConfigMap"] = desired.config_map["data"]["profile.json"]
            if desired.network_policy is not None:
                written["NetworkPolicy"] = desired.network_policy["spec"]
            if desired.seccomp_profile is not None:
                written["SeccompProfile"] = (desired.seccomp_profile["spec"],
                                             desired.status["seccomp"]["installed"])
            self._owned[key] = written
            return True

    def _delivered(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Plugin ``namespace/name``'s SeccompProfile as last seen."""
        if self.seccomp_profiles is None:
            return None
        return self.seccomp_profiles.get("", spo_profile_name(namespace, name))

    def reverify_stale(self) -> int:
        """Reconcile every Plugin applied before whose trust inputs changed since, or
        that was last verified longer ago than the resync period.

        Plugins never applied by this replica are left to kopf's own handlers."""
        done = self._repair()
        self._delete_orphans()
        self._forget_deleted()
        fingerprints: dict[str, str] = {}
        for body in self.state.plugins.values():
            key = (body["metadata"]["namespace"], body["metadata"]["name"])
            if key not in self._applied:
                continue
            if key[0] not in fingerprints:
                fingerprints[key[0]] = self.state.trust_fingerprint(key[0])
            if self._current(key, body, fingerprints[key[0]]):
                continue
            try:
                done += self.reconcile(body, unless_current=True)
            except client.ApiException as error:
                if error.status != 404:  # a Plugin deleted meanwhile needs nothing
                    log.warning("re-verify %s/%s: %s", *key, error.reason)
            except Exception as error:  # noqa: BLE001 - the API server away: next poll
                log.warning("re-verify %s/%s: %s", *key, error)
                break
        return done

    def _owned_changed(self, kind: str, obj: dict[str, Any]) -> None:
        """Note a Plugin whose ConfigMap, NetworkPolicy or SeccompProfile was deleted, no
        longer says what the operator last wrote, or (a SeccompProfile) was installed on
        the nodes or taken off them since."""
        metadata = obj["metadata"]
        labels = metadata.get("labels") or {}
        key = (metadata.get("namespace") or labels.get(PLUGIN_NAMESPACE_LABEL, ""),
               labels.get(PLUGIN_LABEL, ""))
        written = self._owned.get(key, {}).get(obj.get("kind"))
        if written is None:
            return
        if obj.get("kind") == "ConfigMap":
            drifted = (obj.get("data") or {}).get("profile.json") != written
        elif obj.get("kind") == "SeccompProfile":
            spec, installed = written
            drifted = (_pruned(obj.get("spec")) != _pruned(spec)
                       or installation(obj)[0] != installed)
        else:
            drifted = _pruned(obj.get("spec")) != _pruned(written)
        if kind == "DELETED" or drifted:
            self._repairs.add(key)

    def _delete_orphans(self) -> None:
        """Delete the SeccompProfiles of Plugins that are gone (cluster-scoped, they have
        no owner reference for the garbage collector to follow), whether they went while
        the operator ran or while it did not."""
        if self.seccomp_profiles is None or not self.state.plugins.synced.is_set():
            return
        now = time.monotonic()
        for profile in self.seccomp_profiles.values():
            labels = profile["metadata"].get("labels") or {}
            key = (labels.get(PLUGIN_NAMESPACE_LABEL, ""), labels.get(PLUGIN_LABEL, ""))
            if self.state.plugins.get(*key) is not None:
                continue
            applied = self._applied.get(key)
            if applied is not None and now - applied[2] < _ORPHAN_GRACE_SECONDS:
                continue  # reconciled a moment ago: the Plugin may not be in the copy yet
            try:
                self.reconciler.delete_seccomp_profile(*key)
            except Exception as error:  # noqa: BLE001 - retried at the next poll
                log.warning("delete SeccompProfile of %s/%s: %s", *key, error)
            else:
                self.forget(*key)

    def _forget_deleted(self) -> None:
        """Drop what is kept of Plugins that are gone (kopf reports the deletion of an
        object without a finalizer only when it sees it happen)."""
        if not self.state.plugins.synced.is_set():
            return
        now = time.monotonic()
        for key, (_, _, when) in list(self._applied.items()):
            if now - when >= _ORPHAN_GRACE_SECONDS and self.state.plugins.get(*key) is None:
                self.forget(*key)

    def _repair(self) -> int:
        done = 0
        while self._repairs:
            key = self._repairs.pop()
            body = self.state.plugins.get(*key)
            if body is None:
                continue
            log.info("plugin %s/%s: an object it owns was changed or deleted; restoring", *key)
            try:
                done += self.reconcile(body)
            except Exception as error:  # noqa: BLE001 - retried at the next poll
                self._repairs.add(key)
                log.warning("restore %s/%s: %s", *key, error)
                break
        return done

    def _current(self, key: tuple[str, str], body: dict[str, Any], fingerprint: str) -> bool:
        applied = self._applied.get(key)
        if applied is None:
            return False
        applied_fingerprint, generation, when = applied
        return (applied_fingerprint == fingerprint
                and generation == body["metadata"].get("generation")
                and time.monotonic() - when < RESYNC_SECONDS)

    def forget(self, namespace: str, name: str) -> None:
        self._applied.pop((namespace, name), None)
        self._owned.pop((namespace, name), None)
        with self._guard:
            self._locks.pop((namespace, name), None)

    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())


def _pruned(value: Any) -> Any:
    """``value`` without empty lists, maps and nulls, which the API server may drop."""
    if isinstance(value, dict):
        pruned = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


_operator: Operator | None = None


def _current() -> Operator:
    if _operator is None:
        raise kopf.TemporaryError("operator state is not initialised yet", delay=1)
    return _operator


@kopf.on.startup()
def start(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _operator
    settings.posting.enabled = False  # Events are ours: aggregated, with our reasons
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.execution.max_workers = 8
    settings.watching.server_timeout = 240
    settings.peering.lifetime = PEERING_LIFETIME
    _operator = Operator(api_client(), delivery=PROFILE_DELIVERY)
    deadline = time.monotonic() + 60
    while not _operator.state.synced() and time.monotonic() < deadline:
        time.sleep(0.05)


@kopf.on.cleanup()
def stop(**_: Any) -> None:
    if _operator is not None:
        _operator.events.flush(timeout=5)
        for sink in (AUDIT, ALERTS):
            if sink is not None:
                sink.flush(timeout=5)
        _operator.state.stop()
        for reflector in _operator.owned:
            reflector.stop()


@kopf.on.resume(GROUP, VERSION, "plugins")
@kopf.on.create(GROUP, VERSION, "plugins")
@kopf.on.update(GROUP, VERSION, "plugins")
def plugin_changed(body: kopf.Body, **_: Any) -> None:
    _current().reconcile(_plain(body))


@kopf.on.delete(GROUP, VERSION, "plugins", optional=True)
def plugin_deleted(namespace: str, name: str, **_: Any) -> None:
    _current().forget(namespace, name)


@kopf.on.event(GROUP, VERSION, "plugintrustpolicies")
def policy_event(**_: Any) -> None:
    operator = _current()
    # The policy copy is fed by its own watch; give it the moment it may lag kopf's.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and not operator.state.policies.synced.is_set():
        time.sleep(0.05)
    time.sleep(0.1)
    operator.reverify_stale()


@kopf.timer(GROUP, VERSION, "plugintrustpolicies", interval=TRUST_POLL_SECONDS,
            sharp=True, idle=None)
def trust_poll(**_: Any) -> None:
    _current().reverify_stale()


def _plain(body: kopf.Body) -> dict[str, Any]:
    return dict(body)
