"""What the operator and the webhook know of the cluster: Plugins, trust policies,
namespaces and the trust material the policies reference, all kept in memory.

Decisions read this state and never wait on the API server. Trust material is watched
object by object (a field selector per referenced Secret or ConfigMap), so the deployables
need read access to exactly what the policies name, not to every Secret in the cluster.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config

from pluginguard.errors import PluginGuardError
from pluginguard.manifest import GROUP
from pluginguard.policy import (
    MaterialUnavailable,
    TrustPolicy,
    compile_policy,
    selector_matches,
    unusable_policy,
)
from pluginguard.operator.watch import Reflector

log = logging.getLogger(__name__)

VERSION = "v1alpha1"
_CRL_REFRESH_SECONDS = 300.0
_CRL_TIMEOUT_SECONDS = 5.0
_CRL_MAX_BYTES = 16 << 20

MaterialKey = tuple[str, str, str]  # (kind, namespace, name)


@dataclass(frozen=True)
class _Compiled:
    version: str
    material_versions: tuple[tuple[MaterialKey, str], ...]
    policy: TrustPolicy | None
    problem: str | None


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """A client for the API server: from ``kubeconfig`` (or $KUBECONFIG) when given,
    else from the pod's ServiceAccount, as the deployables run in a cluster."""
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG")
    if kubeconfig:
        return config.new_client_from_config(kubeconfig)
    config.load_incluster_config()
    return client.ApiClient()


class ClusterState:
    """Live copies of everything a verification decision depends on.

    ``on_trust_change`` is called (on a watch thread) when a policy, a referenced Secret
    or ConfigMap, a fetched CRL or a namespace's labels change; ``on_plugin`` when a
    Plugin does. ``plugin_view`` makes what is kept of each Plugin (see Reflector).
    """

    def __init__(self, api: client.ApiClient, *,
                 on_trust_change: Callable[[], None] | None = None,
                 on_plugin: Callable[[str, dict[str, Any]], None] | None = None,
                 plugin_view: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                 ) -> None:
        self.api = api
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._on_trust_change = on_trust_change or (lambda: None)
        self._lock = threading.Lock()
        self._compiled: dict[str, _Compiled] = {}
        self._policy_list: tuple[int, list[TrustPolicy], list[str]] = (-1, [], [])
        # Bumped on every change that can alter a verdict; caches key on it.
        self.generation = 0
        self.material: dict[MaterialKey, Reflector] = {}
        self.crls = CrlFetcher(on_change=self._trust_changed)
        self.plugins = Reflector(
            "plugins",
            functools.partial(self._custom.list_cluster_custom_object, GROUP, VERSION, "plugins"),
            listener=on_plugin, view=plugin_view,
        )
        self.policies = Reflector(
            "plugintrustpolicies",
            functools.partial(self._custom.list_cluster_custom_object, GROUP, VERSION,
                              "plugintrustpolicies"),
            listener=lambda kind, obj: self._policy_changed(),
        )
        self.namespaces = Reflector("namespaces", self._core.list_namespace,
                                    listener=lambda kind, obj: self._trust_changed())

    def start(self) -> ClusterState:
        for reflector in (self.namespaces, self.policies, self.plugins):
            reflector.start()
        self.crls.start()
        return self

    def stop(self) -> None:
        for reflector in (self.namespaces, self.policies, self.plugins, *self.material.values()):
            reflector.stop()
        self.crls.stop()

    def synced(self) -> bool:
        """Whether the Plugins, policies and namespaces have been listed at least once,
        and every referenced Secret and ConfigMap has been tried.

        A reference that cannot be read (missing, or not permitted) does not hold the
        rest back: its policy does not compile, and trusts nothing, until it can be.
        """
        return (all(r.synced.is_set() for r in (self.namespaces, self.policies, self.plugins))
                and all(r.tried.is_set() for r in list(self.material.values())))

    def stale_for(self) -> float:
        """Seconds the least current copy has been out of touch with the API server.

        Trust material that was never read counts as unavailable to its policy, not as
        stale: one unreadable reference must not stop decisions for every namespace.
        """
        reflectors = (self.namespaces, self.policies, self.plugins,
                      *(r for r in list(self.material.values()) if r.synced.is_set()))
        return max(r.stale_for() for r in reflectors)

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        found = self.namespaces.get("", namespace)
        return dict(((found or {}).get("metadata") or {}).get("labels") or {})

    def trust_policies(self) -> tuple[list[TrustPolicy], list[str]]:
        """Every policy, compiled (cached until it or its material changes), and the
        problems of those that do not compile."""
        generation = self.generation
        if self._policy_list[0] == generation:
            return self._policy_list[1], self._policy_list[2]
        policies, problems = [], []
        for obj in self.policies.values():
            compiled = self._compile(obj)
            if compiled.policy is not None:
                policies.append(compiled.policy)
            else:
                problems.append(f"PluginTrustPolicy {obj['metadata']['name']}: {compiled.problem}")
                policies.append(unusable_policy(obj, compiled.problem or "it does not compile"))
        self._policy_list = (generation, policies, problems)
        return policies, problems

    def trust_fingerprint(self, namespace: str) -> str:
        """Changes whenever anything that decides trust in ``namespace`` changes."""
        labels = self.namespace_labels(namespace)
        parts = [f"ns={sorted(labels.items())}"]
        for obj in sorted(self.policies.values(), key=lambda o: o["metadata"]["name"]):
            spec = obj.get("spec") or {}
            if selector_matches(spec.get("namespaceSelector") or {}, labels):
                compiled = self._compile(obj)
                parts.append(f"{obj['metadata']['name']}={compiled.version}:{compiled.material_versions}")
        parts.append(f"crl={self.crls.generation}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def _compile(self, obj: dict[str, Any]) -> _Compiled:
        name, version = obj["metadata"]["name"], obj["metadata"].get("resourceVersion", "")
        with self._lock:
            cached = self._compiled.get(name)
        if cached and cached.version == version and cached.material_versions == \
                self._versions(k for k, _ in cached.material_versions):
            return cached
        source = _StateMaterial(self)
        try:
            policy = compile_policy(obj, material=source, where=f"PluginTrustPolicy {name}")
            problem = None
        except PluginGuardError as error:
            policy, problem = None, str(error)
        references = source.references | set(policy.references if policy else ())
        compiled = _Compiled(version, self._versions(references), policy, problem)
        with self._lock:
            self._compiled[name] = compiled
        return compiled

    def _versions(self, keys: Any) -> tuple[tuple[MaterialKey, str], ...]:
        versions = []
        for key in sorted(set(keys)):
            reflector = self.material.get(key)
            obj = reflector.get(key[1], key[2]) if reflector else None
            versions.append((key, (obj or {}).get("metadata", {}).get("resourceVersion", "absent")))
        return tuple(versions)

    def _policy_changed(self) -> None:
        referenced: set[MaterialKey] = set()
        for obj in self.policies.values():
            compiled = self._compile(obj)
            for key, _ in compiled.material_versions:
                referenced.add(key)
                self._watch_material(key)
            for url in _crl_urls(obj):
                self.crls.track(url)
        self._unwatch_material(referenced)
        self._trust_changed()

    def _unwatch_material(self, referenced: set[MaterialKey]) -> None:
        """Stop watching Secrets and ConfigMaps no policy names any more (a typo fixed,
        a policy deleted): a watch the webhook may not hold would fail forever."""
        with self._lock:
            unused = [key for key in self.material if key not in referenced]
            stopped = [self.material.pop(key) for key in unused]
            names = {obj["metadata"]["name"] for obj in self.policies.values()}
            for name in [n for n in self._compiled if n not in names]:
                del self._compiled[name]
        for reflector in stopped:
            log.info("watch %s: no policy references it any more; stopped", reflector.name)
            reflector.stop()

    def _watch_material(self, key: MaterialKey) -> None:
        with self._lock:
            if key in self.material:
                return
            kind, namespace, name = key
            list_fn = (self._core.list_namespaced_secret if kind == "Secret"
                       else self._core.list_namespaced_config_map)
            self.material[key] = Reflector(
                f"{kind.lower()}-{namespace}-{name}",
                functools.partial(list_fn, namespace, field_selector=f"metadata.name={name}"),
                listener=lambda kind, obj: self._trust_changed(),
            )
        self.material[key].start()

    def _trust_changed(self) -> None:
        self.generation += 1
        try:
            self._on_trust_change()
        except Exception:
            log.exception("trust change listener failed")


class _StateMaterial:
    """MaterialSource over ClusterState: what it has in memory, and nothing else."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.references: set[MaterialKey] = set()

    def reference(self, kind: str, namespace: str, name: str, key: str) -> bytes:
        self.references.add((kind, namespace, name))
        reflector = self.state.material.get((kind, namespace, name))
        if reflector is None or not reflector.synced.is_set():
            raise MaterialUnavailable(f"{kind} {namespace}/{name} is not loaded yet")
        obj = reflector.get(namespace, name)
        if obj is None:
            raise MaterialUnavailable(f"{kind} {namespace}/{name} does not exist")
        if kind == "Secret" and key in (obj.get("data") or {}):
            return base64.b64decode(obj["data"][key])
        value = (obj.get("data") or {}).get(key)
        if value is None:
            raise MaterialUnavailable(f"{kind} {namespace}/{name} has no key {key}")
        return str(value).encode()

    def url(self, url: str) -> bytes:
        return self.state.crls.body(url)


def _crl_urls(obj: dict[str, Any]) -> list[str]:
    sources = ((obj.get("spec") or {}).get("crl") or {}).get("sources") or []
    return [str(s["url"]) for s in sources if isinstance(s, dict) and s.get("url")]


class CrlFetcher:
    """Fetches CRLs named by URL in the background and keeps the last good copy.

    Verification only ever reads what was fetched: a slow or dead CRL server costs the
    admission path nothing; it shows up as RevocationUnavailable (or is tolerated, as
    the policy says).
    """

    def __init__(self, *, on_change: Callable[[], None]) -> None:
        self._bodies: dict[str, bytes | str] = {}
        self._on_change = on_change
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.generation = 0

    def start(self) -> None:
        threading.Thread(target=self._run, name="crl-fetcher", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def track(self, url: str) -> None:
        if url not in self._bodies:
            self._bodies[url] = "not fetched yet"
            self._wake.set()

    def body(self, url: str) -> bytes:
        found = self._bodies.get(url)
        if isinstance(found, bytes):
            return found
        self.track(url)
        raise MaterialUnavailable(f"CRL {url}: {found or 'not fetched yet'}")

    def _run(self) -> None:
        while not self._stop.is_set():
            changed = False
            for url in list(self._bodies):
                body = self._fetch(url)
                if body != self._bodies.get(url) and not (
                        isinstance(body, str) and isinstance(self._bodies.get(url), bytes)):
                    self._bodies[url] = body
                    changed = True
            if changed:
                self.generation += 1
                self._on_change()
            self._wake.wait(_CRL_REFRESH_SECONDS)
            self._wake.clear()

    @staticmethod
    def _fetch(url: str) -> bytes | str:
        if not url.startswith(("http://", "https://")):
            return "only http and https CRL URLs are fetched"
        try:
            with urllib.request.urlopen(url, timeout=_CRL_TIMEOUT_SECONDS) as response:  # noqa: S310
                return response.read(_CRL_MAX_BYTES)
        except (urllib.error.URLError, OSError, ValueError) as error:
            return f"cannot fetch: {error}"
