"""The node agent: puts every Plugin's seccomp profile where the kubelet looks for it,
and tells the scheduler which nodes have it.

Runs on each node (a DaemonSet). It watches the operator's profile ConfigMaps and the
Plugins, writes ``<root>/pluginguard/<namespace>/<plugin>.json`` atomically (temporary
file, fsync, rename), removes the files of Plugins that are gone, and never touches
anything outside ``<root>/pluginguard``. Once the file is in place it labels its Node,
one label per Plugin whose value is the profile's sha256, so that the mutating webhook
can require a node that already holds the profile: no plugin pod starts on a node that
lacks it.
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

from pluginguard.manifest import GROUP
from pluginguard.names import (
    PLUGIN_LABEL,
    PROFILE_LABEL,
    PROFILE_SHA_ANNOTATION,
    node_label,
    node_label_value,
)
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
        wanted = self._wanted()
        labels: dict[str, str | None] = {}
        for (namespace, name), (content, sha256, plugin) in wanted.items():
            if hashlib.sha256(content).hexdigest() != sha256:
                log.warning("profile of %s/%s does not match its sha256; not installed", namespace, name)
                continue
            if self.store.write(namespace, name, content):
                log.info("installed profile %s/%s sha256:%s", namespace, name, sha256[:16])
                self._events.record(plugin, type="Normal", reason="ProfileInstalled",
                                    message=f"node {self.node_name} holds seccomp profile sha256:{sha256[:16]}")
            labels[node_label(namespace, name)] = node_label_value(sha256)
        for namespace, name in self.store.installed() - wanted.keys():
            self.store.remove(namespace, name)
            log.info("removed profile %s/%s: its Plugin is gone", namespace, name)
            labels[node_label(namespace, name)] = None
        self._label_node(labels)

    def _wanted(self) -> dict[tuple[str, str], tuple[bytes, str, dict[str, Any]]]:
        wanted = {}
        for config_map in self.config_maps.values():
            metadata = config_map["metadata"]
            namespace, plugin_name = metadata["namespace"], (metadata.get("labels") or {}).get(PLUGIN_LABEL)
            plugin = self.plugins.get(namespace, plugin_name or "")
            content = (config_map.get("data") or {}).get("profile.json")
            sha256 = (metadata.get("annotations") or {}).get(PROFILE_SHA_ANNOTATION)
            if plugin is None or content is None or sha256 is None:
                continue
            wanted[(namespace, plugin_name)] = (content.encode(), sha256, plugin)
        return wanted

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
