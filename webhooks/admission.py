"""Admission decisions for Plugins and plugin pods, from an AdmissionReview to its answer.

Pure logic: what the cluster looks like comes through a ``Cluster`` (the webhook's
in-memory copies), so every decision can be reached, and tested, without an API server.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pluginguard.errors import InputError
from pluginguard.manifest import parse_plugin
from pluginguard.names import (
    ENFORCE_LABEL,
    NODE_AGENT_DELIVERY,
    PLUGIN_LABEL,
    SPO_DELIVERY,
    localhost_profile,
    node_label,
    node_label_value,
    spo_profile_name,
)
from pluginguard.policy import TrustPolicy
from pluginguard.sandbox import (
    PodRules,
    check_pod,
    normalize_sandbox,
    pod_rules,
    seccomp_profile,
)
from pluginguard.verdict import Enforcement, Reason, Verdict
from pluginguard.verify import verify_plugin

log = logging.getLogger(__name__)

EXEMPT_NAMESPACES = frozenset({"kube-system"})

# Where each workload kind keeps the pod it will create.
_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


class Cluster(Protocol):
    """What a decision needs to know of the cluster; answered from memory.

    ``delivery`` says who puts profiles on the nodes (``NODE_AGENT_DELIVERY`` or
    ``SPO_DELIVERY``), as the webhook was started.
    """

    delivery: str

    def plugin(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def namespace_labels(self, namespace: str) -> Mapping[str, str]: ...

    def verdict(self, plugin: dict[str, Any]) -> Verdict: ...

    def pod_rules(self, plugin: dict[str, Any]) -> PodRules | InputError:
        """plugin_pod_rules(plugin, delivery=self.delivery), which a cluster may keep
        per Plugin version."""

    def policies(self) -> list[TrustPolicy]: ...


@dataclass
class Decision:
    """An admission answer plus what should be recorded about it."""

    allowed: bool
    message: str = ""
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    plugin: dict[str, Any] | None = None  # the Plugin an Event about this belongs to
    verdict: Verdict | None = None
    audit: bool = False  # a violation allowed only because the policy says audit/warn
    patch: list[dict[str, Any]] | None = None  # JSON Patch, from the mutating endpoint

    def response(self, uid: str) -> dict[str, Any]:
        answer: dict[str, Any] = {"uid": uid, "allowed": self.allowed}
        if self.patch:
            answer["patchType"] = "JSONPatch"
            answer["patch"] = base64.b64encode(json.dumps(self.patch).encode()).decode()
        if not self.allowed:
            answer["status"] = {"code": 403, "reason": "Forbidden", "message": self.message}
        if self.warnings:
            answer["warnings"] = [w[:1000] for w in self.warnings]
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": answer}


def admission_view(plugin: dict[str, Any]) -> dict[str, Any]:
    """The part of a stored Plugin that admission decisions read: its identity and spec,
    and whether the Security Profiles Operator reports its profile installed. The
    webhook keeps only this of each Plugin (a Plugin as stored, conditions and
    annotations included, is several times larger).

    Nothing that decides what a pod must look like comes from the status: the status
    subresource is writable by more people than the spec, whose changes this webhook
    sees. The profile path, its sha256 and the limits follow from the spec."""
    metadata = plugin.get("metadata") or {}
    seccomp = (plugin.get("status") or {}).get("seccomp") or {}
    view = {
        **{key: plugin[key] for key in ("apiVersion", "kind", "spec") if key in plugin},
        "metadata": {key: metadata[key] for key in _VIEW_METADATA if key in metadata},
    }
    if isinstance(seccomp, Mapping) and "installed" in seccomp:
        view["status"] = {"seccomp": {"installed": seccomp["installed"]}}
    return view


_VIEW_METADATA = ("name", "namespace", "uid", "resourceVersion", "generation", "labels")


def review_plugin(request: Mapping[str, Any], cluster: Cluster) -> Decision:
    """Validate a Plugin CREATE or UPDATE: it must verify and its sandbox must compile."""
    obj = request.get("object") or {}
    namespace = request.get("namespace") or (obj.get("metadata") or {}).get("namespace") or "default"
    obj = {**obj, "metadata": {**(obj.get("metadata") or {}), "namespace": namespace}}
    try:
        plugin = parse_plugin(obj, where="Plugin")
        sandbox = normalize_sandbox(plugin.sandbox)
        seccomp_profile(sandbox)
    except InputError as error:
        name = (obj.get("metadata") or {}).get("name") or ""
        return Decision(False, f"PluginGuard refused Plugin {namespace}/{name}: "
                               f"SeccompProfileInvalid: {error}", reason="SeccompProfileInvalid")
    verdict = verify_plugin(plugin, cluster.policies(),
                            namespace_labels=cluster.namespace_labels(namespace))
    if verdict.verified:
        return Decision(True, verdict.message, reason=verdict.reason.value, verdict=verdict)
    message = f"PluginGuard refused Plugin {namespace}/{plugin.name}: {verdict.reason}: {verdict.message}"
    return _enforced(message, verdict, plugin=obj)


def review_pod(request: Mapping[str, Any], cluster: Cluster, *,
               own_namespace: str | None = None) -> Decision:
    """Validate a pod, or the pod template of a workload; see the module docstring."""
    kind = (request.get("kind") or {}).get("kind", "")
    namespace = request.get("namespace") or "default"
    if namespace in EXEMPT_NAMESPACES or namespace == own_namespace:
        return Decision(True, reason="Exempt")
    if kind not in _TEMPLATE_PATHS:
        return Decision(True, reason="NotAPod")
    template = _template(request.get("object") or {}, kind)
    if template is None:
        # The API server never sends this; if it arrives anyway, fail closed.
        return Decision(False, f"PluginGuard: {kind} {namespace}/{request.get('name') or ''} "
                               "has no pod template", reason="NoPodTemplate")
    labels = (template.get("metadata") or {}).get("labels") or {}
    what = _describe(kind, request)
    name = labels.get(PLUGIN_LABEL)
    before = _template(request.get("oldObject") or {}, kind) if request.get("oldObject") else None
    earlier = ((before or {}).get("metadata") or {}).get("labels") or {}
    if earlier.get(PLUGIN_LABEL) and earlier.get(PLUGIN_LABEL) != name:
        # Relabelling would take a running plugin out of its NetworkPolicy and checks.
        return Decision(False, f"PluginGuard: {what} runs Plugin {earlier[PLUGIN_LABEL]}; its "
                               f"{PLUGIN_LABEL} label cannot be removed or changed",
                        reason="PluginLabelChanged")
    if not name:
        if cluster.namespace_labels(namespace).get(ENFORCE_LABEL, "").lower() == "true":
            return Decision(False, f"PluginGuard: {what} in namespace {namespace} (labelled "
                                   f"{ENFORCE_LABEL}=true) must be a plugin pod with label {PLUGIN_LABEL}",
                            reason="NotAPluginPod")
        return Decision(True, reason="NotAPluginPod")

    plugin = cluster.plugin(namespace, name)
    if plugin is None:
        return Decision(False, f"PluginGuard: {what}: Plugin {namespace}/{name} does not exist",
                        reason="PluginNotFound")
    verdict = cluster.verdict(plugin)
    if not verdict.verified:
        message = (f"PluginGuard: {what}: Plugin {namespace}/{name} is not trusted: "
                   f"{verdict.reason}: {verdict.message}")
        decision = _enforced(message, verdict, plugin=plugin)
        if not decision.allowed:
            return decision
        warnings, unverified = decision.warnings, message
    else:
        warnings, unverified = [], ""

    spec = template.get("spec")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("containers"), list) \
            or not spec["containers"]:
        return Decision(False, f"PluginGuard: {what}: the pod spec has no list of containers",
                        reason="PodViolatesSandbox", plugin=plugin, verdict=verdict)
    violations = list(_image_violations(spec, plugin))
    violations += _sandbox_violations(spec, plugin, cluster)
    if kind == "Pod" and cluster.delivery == SPO_DELIVERY:
        # A template may wait; its pods are judged when they are created.
        violations += _profile_missing(plugin)
    if violations:
        return Decision(False, f"PluginGuard: {what} breaks the sandbox of Plugin "
                               f"{namespace}/{name}: " + "; ".join(violations),
                        reason="PodViolatesSandbox", plugin=plugin, verdict=verdict)
    # Under warn and audit, the message says what was let through (the Event records it).
    return Decision(True, unverified, reason=verdict.reason.value, warnings=warnings,
                    plugin=plugin, verdict=verdict, audit=bool(warnings) or not verdict.verified)


def _enforced(message: str, verdict: Verdict, *, plugin: dict[str, Any]) -> Decision:
    """Refuse, warn or only record, as the deciding policy's enforcement says."""
    if verdict.enforcement is Enforcement.ENFORCE or verdict.reason is Reason.NO_MATCHING_POLICY:
        return Decision(False, message, reason=verdict.reason.value, plugin=plugin, verdict=verdict)
    warnings = [message] if verdict.enforcement is Enforcement.WARN else []
    return Decision(True, message, reason=verdict.reason.value, warnings=warnings,
                    plugin=plugin, verdict=verdict, audit=True)


def _template(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    path = _TEMPLATE_PATHS.get(kind)
    if path is None:
        return None
    found: Any = obj
    for step in path:
        found = found.get(step) if isinstance(found, Mapping) else None
    return found if isinstance(found, Mapping) else None


def _describe(kind: str, request: Mapping[str, Any]) -> str:
    name = request.get("name") or ((request.get("object") or {}).get("metadata") or {}).get(
        "generateName", "") + "*"
    return f"{kind} {request.get('namespace', 'default')}/{name}"


def _image_violations(spec: Mapping[str, Any], plugin: Mapping[str, Any]) -> Iterator[str]:
    """A plugin pod runs the signed artifact and nothing else: every image, in every kind
    of container and image volume, is pinned by the signed digest (content addressed, so
    no registry or tag can swap it), from the Plugin's repository when it names one."""
    artifact = (plugin.get("spec") or {}).get("artifact") or {}
    digest, repository = artifact.get("digest", ""), artifact.get("image")
    wanted = _normal_repository(repository) if repository else None
    for label, image in _images(spec):
        key = (image, digest, repository)
        try:
            problem = _IMAGE_PROBLEMS[key]
        except (KeyError, TypeError):  # TypeError: a field of the Plugin is unhashable
            problem = _image_problem(image, digest, repository, wanted)
            if len(_IMAGE_PROBLEMS) < _REMEMBERED_IMAGES and type(digest) is str \
                    and (repository is None or type(repository) is str):
                _IMAGE_PROBLEMS[key] = problem
        if problem is not None:
            yield f"{label}: {problem}"


# What _image_problem said about each image, digest and repository seen: a plugin's pods
# name the same few images on every request. Bounded; past the bound, judged afresh.
_IMAGE_PROBLEMS: dict[tuple[str, Any, Any], str | None] = {}
_REMEMBERED_IMAGES = 4096


def _image_problem(image: str, digest: Any, repository: Any, wanted: str | None) -> str | None:
    """Why ``image`` is not the artifact ``digest`` (from ``repository``, whose normal
    form is ``wanted``), or None when it is."""
    repo, _, pinned = _split_reference(image)
    if pinned is None:
        return f'image "{image}" must be pinned by digest ({repository or repo}@{digest})'
    if pinned != digest:
        return f'image "{image}" is not the signed artifact {digest}'
    if wanted is not None and _normal_repository(repo) != wanted:
        return f'image "{image}" is not from the Plugin\'s repository {repository}'
    return None


def _images(spec: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for key, label in (("initContainers", "init container"), ("containers", "container"),
                       ("ephemeralContainers", "ephemeral container")):
        for container in spec.get(key) or []:
            if isinstance(container, Mapping):
                yield f'{label} "{container.get("name", "")}"', str(container.get("image", ""))
    for volume in spec.get("volumes") or []:
        if isinstance(volume, Mapping) and isinstance(volume.get("image"), Mapping):
            yield f'image volume "{volume.get("name", "")}"', str(volume["image"].get("reference", ""))


def _split_reference(image: str) -> tuple[str, str | None, str | None]:
    """``repo[:tag][@digest]`` into its parts; a port in the registry is not a tag."""
    rest, _, digest = image.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    tag = None
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
    return rest, tag, digest or None


def _normal_repository(repository: str) -> str:
    """A repository as the registry understands it: ``nginx`` is
    ``docker.io/library/nginx``, registry hosts are case-insensitive, ``index.docker.io``
    is ``docker.io`` and :443 is the default port."""
    first, _, remainder = repository.partition("/")
    if not remainder:
        return f"docker.io/library/{repository}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{repository}"
    host = first.lower().removesuffix(":443")
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = "docker.io"
    if host == "docker.io" and "/" not in remainder:
        remainder = f"library/{remainder}"
    return f"{host}/{remainder}"


def _sandbox_violations(spec: Mapping[str, Any], plugin: dict[str, Any],
                        cluster: Cluster) -> list[str]:
    rules = cluster.pod_rules(plugin)
    if isinstance(rules, InputError):
        return [f"the Plugin's sandbox does not compile ({rules})"]
    return check_pod(spec, rules)


def _profile_missing(plugin: Mapping[str, Any]) -> list[str]:
    """The Security Profiles Operator installs profiles on every node at its own pace; a
    pod started before it reports the profile installed could land on a node without it.
    (The node agent's profiles are awaited by the node affinity the mutation adds.)

    Only the wait is read from the status: a forged ``installed`` lets a pod start early
    and fail for want of its profile, never run under another one."""
    seccomp = (plugin.get("status") or {}).get("seccomp") or {}
    if seccomp.get("installed") is True:
        return []
    metadata = plugin.get("metadata") or {}
    namespace, name = str(metadata.get("namespace", "default")), str(metadata.get("name"))
    return [f"its seccomp profile {localhost_profile(namespace, name, SPO_DELIVERY)} is not "
            f"installed on the nodes yet (SeccompProfile {spo_profile_name(namespace, name)}); "
            "create the pod once the Plugin is Ready"]


def plugin_pod_rules(plugin: Mapping[str, Any], *,
                     delivery: str = NODE_AGENT_DELIVERY) -> PodRules | InputError:
    """The rules every pod of ``plugin`` must follow, or why its sandbox does not compile."""
    metadata = plugin.get("metadata") or {}
    path = localhost_profile(str(metadata.get("namespace", "default")),
                             str(metadata.get("name")), delivery)
    try:
        return pod_rules((plugin.get("spec") or {}).get("sandbox") or {}, profile_path=path)
    except InputError as error:
        return error


def mutate_pod(request: Mapping[str, Any], cluster: Cluster) -> Decision:
    """Complete a plugin pod from its Plugin's spec: a required node affinity on nodes
    that hold its profile, and the seccompProfile, runAsNonRoot and limits where the pod
    has none.

    Never refuses: the validating endpoint judges the result.
    """
    pod = request.get("object") or {}
    namespace = request.get("namespace") or "default"
    name = ((pod.get("metadata") or {}).get("labels") or {}).get(PLUGIN_LABEL)
    plugin = cluster.plugin(namespace, name) if name else None
    if plugin is None or (request.get("kind") or {}).get("kind") != "Pod":
        return Decision(True, reason="NotMutated")
    rules = cluster.pod_rules(plugin)
    if isinstance(rules, InputError):
        return Decision(True, reason="NotMutated")  # the validating endpoint says why
    spec = pod.get("spec") or {}
    patch: list[dict[str, Any]] = []
    if cluster.delivery == NODE_AGENT_DELIVERY:  # the other project labels no nodes
        patch += _affinity_patch(spec, node_label(namespace, name),
                                 node_label_value(rules.profile_sha256))
    patch += _security_context_patch(spec, rules.profile_path)
    patch += _limits_patch(spec, rules.limits.kubernetes())
    return Decision(True, reason="Mutated" if patch else "NotMutated", patch=patch or None)


def _affinity_patch(spec: Mapping[str, Any], key: str, value: str) -> list[dict[str, Any]]:
    term = {"matchExpressions": [{"key": key, "operator": "In", "values": [value]}]}
    affinity = spec.get("affinity")
    if not isinstance(affinity, Mapping):
        return [{"op": "add", "path": "/spec/affinity",
                 "value": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                     "nodeSelectorTerms": [term]}}}}]
    node = affinity.get("nodeAffinity")
    if not isinstance(node, Mapping):
        return [{"op": "add", "path": "/spec/affinity/nodeAffinity",
                 "value": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}]
    required = node.get("requiredDuringSchedulingIgnoredDuringExecution")
    if not isinstance(required, Mapping) or not required.get("nodeSelectorTerms"):
        return [{"op": "add", "path": "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                 "value": {"nodeSelectorTerms": [term]}}]
    # Terms are ORed: the requirement must join every one of them.
    patch = []
    for index, existing in enumerate(required["nodeSelectorTerms"]):
        expressions = existing.get("matchExpressions") or []
        if any(e.get("key") == key for e in expressions):
            continue
        base = f"/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/{index}"
        if "matchExpressions" in existing:
            patch.append({"op": "add", "path": f"{base}/matchExpressions/-", "value": term["matchExpressions"][0]})
        else:
            patch.append({"op": "add", "path": f"{base}/matchExpressions", "value": term["matchExpressions"]})
    return patch


def _security_context_patch(spec: Mapping[str, Any], path: str) -> list[dict[str, Any]]:
    """The pod's seccompProfile and runAsNonRoot, where the pod sets neither."""
    wanted = {"seccompProfile": {"type": "Localhost", "localhostProfile": path},
              "runAsNonRoot": True}
    context = spec.get("securityContext")
    if not isinstance(context, Mapping):
        return [{"op": "add", "path": "/spec/securityContext", "value": wanted}]
    return [{"op": "add", "path": f"/spec/securityContext/{key}", "value": value}
            for key, value in wanted.items() if key not in context]


def _limits_patch(spec: Mapping[str, Any], ceiling: Mapping[str, str]) -> list[dict[str, Any]]:
    patch: list[dict[str, Any]] = []
    for key in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(key) or []):
            base = f"/spec/{key}/{index}/resources"
            resources = container.get("resources")
            if not isinstance(resources, Mapping):
                patch.append({"op": "add", "path": base, "value": {"limits": dict(ceiling)}})
                continue
            limits = resources.get("limits")
            if not isinstance(limits, Mapping):
                patch.append({"op": "add", "path": f"{base}/limits", "value": dict(ceiling)})
                continue
            patch += [{"op": "add", "path": f"{base}/limits/{name}", "value": value}
                      for name, value in ceiling.items() if name not in limits]
    return patch


def review(body: Any, cluster: Cluster, *, kind: str,
           own_namespace: str | None = None) -> tuple[str, Decision]:
    """The uid and decision for an AdmissionReview ``body`` sent to endpoint ``kind``.

    Raises InputError when ``body`` is not an AdmissionReview v1 request.
    """
    if not isinstance(body, Mapping) or body.get("kind") != "AdmissionReview":
        raise InputError("body", "not an AdmissionReview")
    request = body.get("request")
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str):
        raise InputError("request", "an AdmissionReview request with a uid is required")
    try:
        if kind == "pods":
            return request["uid"], review_pod(request, cluster, own_namespace=own_namespace)
        if kind == "mutate-pods":
            return request["uid"], mutate_pod(request, cluster)
        if kind == "plugins":
            return request["uid"], review_plugin(request, cluster)
        raise KeyError(kind)
    except (InputError, TypeError, AttributeError, KeyError, ValueError) as error:
        # Fail closed, with a message: a malformed object is never waved through.
        log.warning("cannot decide %s: %s", kind, error)
        return request["uid"], Decision(False, f"PluginGuard could not evaluate this object: {error}",
                                        reason="InternalError")
