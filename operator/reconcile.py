"""Reconciling one Plugin: verify it, compile its sandbox, publish what nodes and the
webhook need, and say what happened.

``desired_state`` is pure: from a Plugin object and the trust policies it computes the
profile ConfigMap (or, when the Security Profiles Operator delivers profiles, its
SeccompProfile), the NetworkPolicy, the status and the events. ``Reconciler`` applies
that with server-side apply, so a repeated or interrupted reconcile converges to the same
objects without duplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client

from pluginguard.alerts import Alert, Event, Notifier
from pluginguard.audit import AuditLog
from pluginguard.errors import InputError
from pluginguard.manifest import GROUP, parse_plugin
from pluginguard.names import (
    DELIVERIES,
    NODE_AGENT_DELIVERY,
    PLUGIN_LABEL,
    PROFILE_LABEL,
    PROFILE_SHA_ANNOTATION,
    SPO_DELIVERY,
    SPO_GROUP,
    SPO_VERSION,
    localhost_profile,
    profile_config_map,
    spo_profile_name,
)
from pluginguard.policy import TrustPolicy
from pluginguard.sandbox import limits, network_policy, normalize_sandbox, seccomp_profile
from pluginguard.spo import installation, seccomp_profile_object
from pluginguard.verdict import Reason, Verdict
from pluginguard.verify import verify_plugin
from pluginguard.operator.cluster import VERSION, ClusterState
from pluginguard.operator.events import EventRecorder

log = logging.getLogger(__name__)

FIELD_MANAGER = "pluginguard-operator"
EXPIRY_WARNING = timedelta(days=14)
# How profiles reach the nodes: PluginGuard's node agent reads the profile ConfigMaps;
# the Security Profiles Operator reads its own SeccompProfile objects.
NODE_AGENT = NODE_AGENT_DELIVERY
SECURITY_PROFILES_OPERATOR = SPO_DELIVERY


@dataclass
class DesiredState:
    status: dict[str, Any]
    config_map: dict[str, Any] | None
    network_policy: dict[str, Any] | None
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    seccomp_profile: dict[str, Any] | None = None  # the Security Profiles Operator's


def desired_state(obj: Mapping[str, Any], policies: Sequence[TrustPolicy], *,
                  namespace_labels: Mapping[str, str], problems: Sequence[str] = (),
                  delivery: str = NODE_AGENT, delivered: Mapping[str, Any] | None = None,
                  at: datetime | None = None) -> DesiredState:
    """What the cluster should hold for Plugin ``obj``; see the module docstring.

    Under ``delivery=SECURITY_PROFILES_OPERATOR``, ``delivered`` is the Plugin's
    SeccompProfile as the API server holds it (None before there is one): its profile
    is ready once that project reports it installed on every node.
    """
    if delivery not in DELIVERIES:
        raise ValueError(f"delivery must be one of {', '.join(DELIVERIES)}, not {delivery!r}")
    at = at or datetime.now(UTC)
    metadata = obj["metadata"]
    namespace, name = metadata.get("namespace", "default"), metadata["name"]
    previous = obj.get("status") or {}
    generation = metadata.get("generation")

    # 1. Verification.
    try:
        plugin = parse_plugin(obj, where=f"Plugin {namespace}/{name}")
        verdict = verify_plugin(plugin, policies, namespace_labels=namespace_labels, at=at)
    except InputError as error:
        verdict = Verdict(False, Reason.MALFORMED_SIGNATURE, str(error))
    if not verdict.verified and problems and verdict.reason in (
            Reason.NO_MATCHING_POLICY, Reason.UNTRUSTED_SIGNER):
        verdict = Verdict(verdict.verified, verdict.reason,
                          f"{verdict.message}; policies that do not compile: {'; '.join(problems)}",
                          algorithm=verdict.algorithm, signer=verdict.signer, chain=verdict.chain,
                          policy=verdict.policy, enforcement=verdict.enforcement, digest=verdict.digest)

    # 2. Sandbox.
    owner = _owner(obj)
    try:
        sandbox = normalize_sandbox(obj.get("spec", {}).get("sandbox"))
        profile = seccomp_profile(sandbox)
        ceiling = limits(sandbox)
        profile_error = None
    except InputError as error:
        profile, ceiling, profile_error = None, None, str(error)

    # 3. Objects the plugin owns.
    config_map = policy = spo_object = None
    if profile is not None and delivery == SECURITY_PROFILES_OPERATOR:
        try:
            spo_object = seccomp_profile_object(profile, namespace=namespace, name=name)
        except InputError as error:
            profile, ceiling, profile_error = None, None, str(error)
    if profile is not None and delivery == NODE_AGENT:
        config_map = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": profile_config_map(name), "namespace": namespace,
                "labels": {PROFILE_LABEL: "true", PLUGIN_LABEL: name},
                "annotations": {PROFILE_SHA_ANNOTATION: profile.sha256},
                "ownerReferences": [owner],
            },
            "data": {"profile.json": profile.json_bytes.decode()},
        }
    if profile is not None:
        policy = network_policy(sandbox, namespace=namespace, name=f"pluginguard-{name}",
                                pod_selector={PLUGIN_LABEL: name})
        policy.setdefault("metadata", {})["ownerReferences"] = [owner]
        policy["metadata"].setdefault("labels", {})[PLUGIN_LABEL] = name

    # 4. Status and events.
    status = _status(verdict, generation=generation, at=at, previous=previous)
    pending = None  # why the profile is not on the nodes yet, where PluginGuard can tell
    if profile is not None and ceiling is not None:
        # The webhook derives the same path from the same three facts.
        path = localhost_profile(namespace, name, delivery)
        if delivery == NODE_AGENT:
            status["seccomp"] = {
                "localhostProfile": path,
                "sha256": profile.sha256,
                "configMap": profile_config_map(name),
            }
        else:
            installed, state = installation(delivered)
            status["seccomp"] = {
                "localhostProfile": path,
                "sha256": profile.sha256,
                "seccompProfile": spo_profile_name(namespace, name),
                "delivery": SECURITY_PROFILES_OPERATOR,
                "installed": installed,
            }
            if not installed:
                pending = (f"waiting for the Security Profiles Operator to install {path} on "
                           f"every node (SeccompProfile {spo_profile_name(namespace, name)}: {state})")
        status["limits"] = ceiling.status()
    status["conditions"] = _conditions(verdict, profile_error, generation, at, previous,
                                       pending=pending)
    events = _events(verdict, profile, profile_error, previous, generation, at)
    sequence = int(previous.get("outcomeSequence") or 0)
    status["outcomeSequence"] = sequence + 1 if events else sequence
    return DesiredState(status, config_map, policy, events, seccomp_profile=spo_object)


def _status(verdict: Verdict, *, generation: int | None, at: datetime,
            previous: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "verified": verdict.verified,
        "reason": verdict.reason.value,
        "message": verdict.message,
        "signer": verdict.signer,
        "signerKey": verdict.signer_key,
        "algorithm": verdict.algorithm,
        "digest": verdict.digest,
        "observedGeneration": generation,
        "lastVerified": _time(at),
        "nodes": previous.get("nodes") or [],
    }


def _conditions(verdict: Verdict, profile_error: str | None, generation: int | None,
                at: datetime, previous: Mapping[str, Any], *,
                pending: str | None = None) -> list[dict[str, Any]]:
    if profile_error:
        profile = (False, "SeccompProfileInvalid", profile_error)
    elif pending:
        profile = (False, "ProfileNotInstalled", pending)
    else:
        profile = (True, "SeccompProfileGenerated", "seccomp profile and limits generated")
    ready = verdict.verified and profile[0]
    wanted = [
        ("Verified", verdict.verified, verdict.reason.value, verdict.message),
        ("ProfileReady", *profile),
        ("Ready", ready, "Ready" if ready else (verdict.reason.value if not verdict.verified
                                                 else profile[1]),
         "plugin verified and sandbox ready" if ready else (
             verdict.message if not verdict.verified else profile[2])),
    ]
    before = {c.get("type"): c for c in previous.get("conditions") or []}
    conditions = []
    for kind, ok, reason, message in wanted:
        status = "True" if ok else "False"
        old = before.get(kind) or {}
        changed = old.get("status") != status
        conditions.append({
            "type": kind, "status": status, "reason": reason, "message": message[:32768],
            "observedGeneration": generation,
            "lastTransitionTime": _time(at) if changed or not old.get("lastTransitionTime")
            else old["lastTransitionTime"],
        })
    return conditions


def _events(verdict: Verdict, profile: Any, profile_error: str | None,
            previous: Mapping[str, Any], generation: int | None,
            at: datetime) -> list[tuple[str, str, str]]:
    """One event per outcome that changed; identical repeats are aggregated downstream."""
    events = []
    fresh = previous.get("observedGeneration") != generation
    if fresh or previous.get("reason") != verdict.reason.value or previous.get("message") != verdict.message:
        kind = "Normal" if verdict.verified else "Warning"
        # A verified message names the signer already; a refusal may not.
        signer = f" [signer: {verdict.signer}]" if verdict.signer and not verdict.verified else ""
        events.append((kind, verdict.reason.value, f"{verdict.message}{signer}"))
    if profile_error and (fresh or previous.get("seccomp")):
        events.append(("Warning", "SeccompProfileInvalid", profile_error))
    elif profile is not None and (previous.get("seccomp") or {}).get("sha256") != profile.sha256:
        events.append(("Normal", "SeccompProfileGenerated",
                       f"seccomp profile sha256:{profile.sha256[:16]} generated"))
    expires = verdict.signer_expires
    if verdict.verified and expires is not None and expires - at < EXPIRY_WARNING:
        events.append(("Warning", "CertificateExpiringSoon",
                       f"certificate of {verdict.signer} expires on {expires.date().isoformat()}"))
    return events


def _owner(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Plugin",
        "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
        "controller": True, "blockOwnerDeletion": True,
    }


def _time(at: datetime) -> str:
    return at.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Reconciler:
    """Applies DesiredState to the cluster.

    Under the Security Profiles Operator's delivery, ``delivered(namespace, name)``
    returns a Plugin's SeccompProfile as last seen (from a watch), or None.
    """

    def __init__(self, api: client.ApiClient, state: ClusterState, events: EventRecorder, *,
                 audit: AuditLog | None = None, alerts: Notifier | None = None,
                 delivery: str = NODE_AGENT,
                 delivered: Callable[[str, str], Mapping[str, Any] | None] | None = None) -> None:
        if delivery not in DELIVERIES:
            raise ValueError(f"delivery must be one of {', '.join(DELIVERIES)}, not {delivery!r}")
        self.delivery = delivery
        self._delivered = delivered or (lambda namespace, name: None)
        self.state = state
        self.events = events
        self.audit = audit
        self.alerts = alerts
        self._expiry_alerted: set[tuple[str, str]] = set()
        self._reported: dict[tuple[str, str], int | None] = {}  # (resource, uid) -> outcome
        self._core = client.CoreV1Api(api)
        self._networking = client.NetworkingV1Api(api)
        self._custom = client.CustomObjectsApi(api)

    def reconcile(self, obj: Mapping[str, Any]) -> DesiredState:
        metadata = obj["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        policies, problems = self.state.trust_policies()
        desired = desired_state(obj, policies, problems=problems,
                                namespace_labels=self.state.namespace_labels(namespace),
                                delivery=self.delivery,
                                delivered=self._delivered(namespace, name))
        if desired.seccomp_profile is not None:
            # Cluster-scoped, so no owner reference to the namespaced Plugin: the
            # operator deletes it when the Plugin goes (see delete_seccomp_profile).
            self._custom.patch_cluster_custom_object(
                SPO_GROUP, SPO_VERSION, "seccompprofiles",
                desired.seccomp_profile["metadata"]["name"], desired.seccomp_profile,
                field_manager=FIELD_MANAGER, force=True,
                _content_type="application/apply-patch+yaml")
        if desired.config_map is not None:
            self._core.patch_namespaced_config_map(
                desired.config_map["metadata"]["name"], namespace, desired.config_map,
                field_manager=FIELD_MANAGER, force=True,
                _content_type="application/apply-patch+yaml")
        if desired.network_policy is not None:
            self._networking.patch_namespaced_network_policy(
                desired.network_policy["metadata"]["name"], namespace, desired.network_policy,
                field_manager=FIELD_MANAGER, force=True,
                _content_type="application/apply-patch+yaml")
        # Events first, each named by the outcome's sequence number, then the status that
        # advances it: killed in between, the replay finds its Events written already.
        sequence = desired.status["outcomeSequence"]
        for index, (type, reason, message) in enumerate(desired.events):
            self.events.write_once(dict(obj), key=f"{sequence}.{index}", type=type,
                                   reason=reason, message=message)
        self._custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "plugins", name, {"status": desired.status},
            _content_type="application/merge-patch+json")
        log.info("plugin %s/%s: %s (%s)", namespace, name, desired.status["reason"],
                 desired.status["message"])
        self._report(desired, f"Plugin {namespace}/{name}", str(metadata.get("uid")))
        return desired

    def delete_seccomp_profile(self, namespace: str, name: str) -> bool:
        """Delete Plugin ``namespace/name``'s SeccompProfile; False if there was none."""
        try:
            self._custom.delete_cluster_custom_object(
                SPO_GROUP, SPO_VERSION, "seccompprofiles", spo_profile_name(namespace, name))
        except client.ApiException as error:
            if error.status == 404:
                return False
            raise
        log.info("plugin %s/%s is gone: deleted SeccompProfile %s", namespace, name,
                 spo_profile_name(namespace, name))
        return True

    def _report(self, desired: DesiredState, resource: str, uid: str = "") -> None:
        """An audit record when the verdict changed; alerts for refusals and for a
        certificate about to expire (once per certificate: that event repeats)."""
        status = desired.status
        signed = {"signer": status["signer"], "digest": status["digest"]}
        # Two handlers may reconcile from the same stale copy; like the Events, report
        # an outcome once.
        outcome = status.get("outcomeSequence")
        if outcome is not None and self._reported.get((resource, uid)) == outcome:
            return
        self._reported[(resource, uid)] = outcome
        for _, reason, message in desired.events:
            if reason == status["reason"]:  # the verdict's own event: it changed
                if self.audit is not None:
                    self.audit.record(decision="verified" if status["verified"] else "refused",
                                      reason=reason, resource=resource,
                                      message=status["message"], **signed)
                if self.alerts is not None and not status["verified"]:
                    event = (Event.CERTIFICATE_REVOKED if reason == Reason.CERTIFICATE_REVOKED
                             else Event.PLUGIN_REFUSED)
                    self.alerts.notify(Alert(event, reason, resource, message, **signed))
            elif reason == "CertificateExpiringSoon" and self.alerts is not None \
                    and (resource, message) not in self._expiry_alerted:
                self._expiry_alerted.add((resource, message))
                self.alerts.notify(Alert(Event.CERTIFICATE_EXPIRING, reason, resource, message,
                                         **signed))
