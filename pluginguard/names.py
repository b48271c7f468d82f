"""The names PluginGuard gives things in a cluster: labels, annotations, profile paths.

One place, because the operator writes them, the node agent and the webhook read them,
and a mismatch between the two would be a silent hole.
"""

from __future__ import annotations

import hashlib

from pluginguard.manifest import GROUP

PLUGIN_LABEL = f"{GROUP}/plugin"  # on pods: which Plugin they run
ENFORCE_LABEL = f"{GROUP}/enforce"  # on namespaces: every pod must be a plugin pod
PROFILE_LABEL = f"{GROUP}/seccomp-profile"  # on the operator's profile ConfigMaps
PROFILE_SHA_ANNOTATION = f"{GROUP}/profile-sha256"
NODE_LABEL_PREFIX = f"seccomp.{GROUP}/"


def profile_path(namespace: str, name: str) -> str:
    """Where a Plugin's profile lives under the kubelet's seccomp root: the pods'
    ``localhostProfile``."""
    return f"pluginguard/{namespace}/{name}.json"


def profile_config_map(name: str) -> str:
    """The name of the ConfigMap holding Plugin ``name``'s profile."""
    return f"pluginguard-profile-{name}"


def node_label(namespace: str, name: str) -> str:
    """The Node label saying which profile of Plugin ``namespace/name`` a node holds.

    Label names are limited to 63 characters, so the Plugin is named by a hash.
    """
    return NODE_LABEL_PREFIX + hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:40]


def node_label_value(sha256: str) -> str:
    """Label values are limited to 63 characters: the first 63 hex digits of the sha256."""
    return sha256[:63]
