"""The node agent: puts every Plugin's seccomp profile where the kubelet looks for it,
and tells the scheduler which nodes have it.

Runs on each node (a DaemonSet). It watches the operator's profile ConfigMaps and the
Plugins, writes ``<root>/pluginguard/<namespace>/<plugin>.json`` atomically (temporary
file, fsync, rename), removes the files of Plugins that are gone, and never touches
anything outside ``<root>/pluginguard``. Once the file is in place it labels its Node,
one label per Plugin whose value is the profile's sha256, so that the mutating webhook
can require a node that already holds the profile: no plugin pod starts on a node that
lacks it.

A ConfigMap is only the carrier. The agent installs a profile only when its sha256 is
that of the profile the Plugin's own sandbox compiles to (the agent compiles it too), so
neither a ConfigMap someone else wrote nor an edit of the operator's can put another
profile on the node. A profile already installed stays while its Plugin exists, even
when its ConfigMap goes, so that containers restarting meanwhile still find it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

from kubernetes import client

from pluginguard.errors import InputError
from pluginguard.manifest import GROUP
from pluginguard.names import (
    PROFILE_LABEL,
    node_label,
    node_label_value,
    profile_config_map,
)
from pluginguard.sandbox import seccomp_profile
from pluginguard.operator.cluster import VERSION
from pluginguard.operator.events import EventRecorder
from pluginguard.operator.watch import Reflector

log = logging.getLogger(__name__)

SUBDIRECTORY = "pluginguard"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class ProfileStore:
    """The files under ``<root>/pluginguard``; the only place the agent writes."""

    def __init__(self, root: Path) -> None:
        self.base = (Path(root) / SUBDIRECTORY).resolve()

    def path(self, namespace: str, name: str) -> Path:
        if not (_NAME.match(namespace) and _NAME.match(name)):
            raise ValueError(f"refusing profile path for {namespace!r}/{name!r}")
        path = self.base / namespace / f"{name}.json"
        if path.resolve().parent.parent != self.base:
            raise ValueError(f"{path} leaves {self.base}")
        return path

    def write(self, namespace: str, name: str, content: bytes) -> bool:
        """Install ``content`` unless it is there already; True when the file changed."""
        path = self.path(namespace, name)
        if path.is_file() and not path.is_symlink() and path.read_bytes() == content:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return True

    def read(self, namespace: str, name: str) -> bytes:
        return self.path(namespace, name).read_bytes()

    def installed(self) -> set[tuple[str, str]]:
        """(namespace, plugin) of every profile file present."""
        if not self.base.is_dir():
            return set()
        return {(p.parent.name, p.stem) for p in self.base.glob("*/*.json") if p.is_file()}

    def remove(self, namespace: str, name: str) -> None:
        path = self.path(namespace, name)
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()
        except OSError:
            pass  # other profiles of the namespace remain


class NodeAgent:
    """Converges the profile files and this Node's labels on what the cluster says."""

    def __init__(self, api: client.ApiClient, *, root: Path, node_name: str) -> None:
        self.store = ProfileStore(root)
        self.node_name = node_name
        self._core = client.CoreV1Api(api)
        self._events = EventRecorder(api, component=f"pluginguard-node-agent/{node_name}")
        self._wake = threading.Event()
        self._stop = threading.Event()
        custom = client.CustomObjectsApi(api)
        poke = lambda kind, obj: self._wake.set()  # noqa: E731
        self.config_maps = Reflector("profile-configmaps", functools.partial(
            self._core.list_config_map_for_all_namespaces, label_selector=f"{PROFILE_LABEL}=true"),
            listener=poke)
        self.plugins = Reflector("plugins", functools.partial(
            custom.list_cluster_custom_object, GROUP, VERSION, "plugins"), listener=poke)
        self._labels: dict[str, str] = {}
        # (namespace, plugin) -> sha256 of the profile file this node holds; read from
        # disk at the first converge.
        self._held: dict[tuple[str, str], str] | None = None
        self._expected_by_version: dict[tuple[str, str, Any], str | None] = {}
        self._rejected: set[tuple[str, str, str]] = set()

    def run(self) -> None:
        self.config_maps.start()
        self.plugins.start()
        while not self._stop.is_set():
            self._wake.wait(30.0)
            self._wake.clear()
            if self.config_maps.synced.is_set() and self.plugins.synced.is_set():
                try:
                    self.converge()
                except Exception:  # noqa: BLE001 - log and try again at the next change
                    log.exception("node agent: converge failed")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.config_maps.stop()
        self.plugins.stop()

    def converge(self) -> None:
        """Write what is wanted, remove what is not, then label the Node accordingly."""
        if self._held is None:
            self._held = {key: hashlib.sha256(self.store.read(*key)).hexdigest()
                          for key in self.store.installed()}
        labels: dict[str, str | None] = {}
        plugins = {(p["metadata"]["namespace"], p["metadata"]["name"]): p
                   for p in self.plugins.values()}
        for (namespace, name), plugin in plugins.items():
            config_map = self.config_maps.get(namespace, profile_config_map(name))
            content, problem = profile_to_install(plugin, config_map, self._expected(plugin))
            if problem is not None:
                self._reject(plugin, problem)
            elif content is not None:
                sha256 = hashlib.sha256(content).hexdigest()
                if self.store.write(namespace, name, content):
                    log.info("installed profile %s/%s sha256:%s", namespace, name, sha256[:16])
                    self._events.record(
                        plugin, type="Normal", reason="ProfileInstalled",
                        message=f"node {self.node_name} holds seccomp profile sha256:{sha256[:16]}")
                self._held[(namespace, name)] = sha256
            held = self._held.get((namespace, name))
            if held is not None:
                labels[node_label(namespace, name)] = node_label_value(held)
        for namespace, name in self.store.installed() - plugins.keys():
            self.store.remove(namespace, name)
            self._held.pop((namespace, name), None)
            log.info("removed profile %s/%s: its Plugin is gone", namespace, name)
            labels[node_label(namespace, name)] = None
        self._label_node(labels)

    def _expected(self, plugin: dict[str, Any]) -> str | None:
        """The sha256 of the profile ``plugin``'s sandbox compiles to (None if it does
        not compile), once per resourceVersion."""
        metadata = plugin["metadata"]
        key = (metadata["namespace"], metadata["name"], metadata.get("resourceVersion"))
        if key not in self._expected_by_version:
            try:
                sandbox = (plugin.get("spec") or {}).get("sandbox") or {}
                expected: str | None = seccomp_profile(sandbox).sha256
            except InputError:
                expected = None
            if len(self._expected_by_version) > 4 * max(len(self.plugins.objects), 256):
                self._expected_by_version.clear()  # versions of Plugins long changed
            self._expected_by_version[key] = expected
        return self._expected_by_version[key]

    def _reject(self, plugin: dict[str, Any], problem: str) -> None:
        """Say once per Plugin and problem why its profile was not installed."""
        metadata = plugin["metadata"]
        key = (metadata["namespace"], metadata["name"], problem)
        if key in self._rejected:
            return
        if len(self._rejected) > 10_000:
            self._rejected.clear()  # said before; an edit loop must not grow this
        self._rejected.add(key)
        log.warning("profile of %s/%s not installed: %s", key[0], key[1], problem)
        self._events.record(plugin, type="Warning", reason="ProfileRejected",
                            message=f"node {self.node_name}: {problem}")

    def _label_node(self, labels: dict[str, str | None]) -> None:
        changes = {k: v for k, v in labels.items() if self._labels.get(k, "absent") != v}
        if not changes:
            return
        # A strategic merge patch; a null value removes the label.
        self._core.patch_node(self.node_name, {"metadata": {"labels": changes}})
        for key, value in changes.items():
            if value is None:
                self._labels.pop(key, None)
            else:
                self._labels[key] = value


def profile_to_install(plugin: dict[str, Any], config_map: dict[str, Any] | None,
                       expected: str | None) -> tuple[bytes | None, str | None]:
    """The profile to install for ``plugin`` from ``config_map`` (its operator-written
    ConfigMap, or None), given ``expected``, the sha256 of the profile the Plugin's
    sandbox compiles to; or why none is installed.

    Returns (content, None) to install, (None, None) when there is nothing to install
    yet (no ConfigMap, or a sandbox that does not compile: the operator says why), and
    (None, problem) for a ConfigMap that must not be believed.
    """
    if config_map is None or expected is None:
        return None, None
    name = config_map["metadata"].get("name")
    uid = plugin["metadata"].get("uid")
    owners = config_map["metadata"].get("ownerReferences") or []
    if not any(o.get("kind") == "Plugin" and o.get("uid") == uid and o.get("controller")
               for o in owners if isinstance(o, dict)):
        return None, f"ConfigMap {name} is not controlled by this Plugin"
    content = (config_map.get("data") or {}).get("profile.json")
    if not isinstance(content, str):
        return None, f"ConfigMap {name} has no profile.json"
    found = hashlib.sha256(content.encode()).hexdigest()
    if found != expected:
        return None, (f"ConfigMap {name} holds a profile of sha256:{found[:16]}, not the "
                      f"sha256:{expected[:16]} the Plugin's sandbox compiles to")
    return content.encode(), None
