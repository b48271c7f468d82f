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
PLUGIN_NAMESPACE_LABEL = f"{GROUP}/plugin-namespace"  # on cluster-scoped objects of a Plugin
NODE_LABEL_PREFIX = f"seccomp.{GROUP}/"

# The Security Profiles Operator's SeccompProfile (cluster-scoped since its v0.9), which
# the operator writes instead of a ConfigMap when profiles are delivered by that project.
SPO_GROUP = "security-profiles-operator.x-k8s.io"
SPO_VERSION = "v1beta1"
SPO_INSTALLED = "Installed"  # its status.status once every node holds the profile
SPO_DELIVERY = "security-profiles-operator"  # status.seccomp.delivery of such Plugins
# Who puts profiles on the nodes: PluginGuard's node agent, or that project.
NODE_AGENT_DELIVERY = "node-agent"
DELIVERIES = (NODE_AGENT_DELIVERY, SPO_DELIVERY)


def profile_path(namespace: str, name: str) -> str:
    """Where a Plugin's profile lives under the kubelet's seccomp root: the pods'
    ``localhostProfile``."""
    return f"pluginguard/{namespace}/{name}.json"


def profile_config_map(name: str) -> str:
    """The name of the ConfigMap holding Plugin ``name``'s profile."""
    return f"pluginguard-profile-{name}"


def spo_profile_name(namespace: str, name: str) -> str:
    """The SeccompProfile holding Plugin ``namespace/name``'s profile.

    Namespaces hold no dots, so ``pluginguard.<namespace>.<name>`` names one Plugin
    only; past the 253 characters an object name may have, a hash stands for the name.
    """
    full = f"pluginguard.{namespace}.{name}"
    if len(full) <= 253:
        return full
    return f"pluginguard.{namespace}.{hashlib.sha256(name.encode()).hexdigest()[:40]}"


def spo_profile_path(namespace: str, name: str) -> str:
    """Where the Security Profiles Operator puts that profile under the kubelet's
    seccomp root (``operator/<name>.json`` for a cluster-scoped SeccompProfile)."""
    return f"operator/{spo_profile_name(namespace, name)}.json"


def localhost_profile(namespace: str, name: str, delivery: str) -> str:
    """The ``localhostProfile`` of Plugin ``namespace/name``'s pods under ``delivery``.

    Derived from the Plugin's identity alone, never from its status, which more people
    may be able to write than its spec.
    """
    if delivery == SPO_DELIVERY:
        return spo_profile_path(namespace, name)
    return profile_path(namespace, name)


def node_label(namespace: str, name: str) -> str:
    """The Node label saying which profile of Plugin ``namespace/name`` a node holds.

    Label names are limited to 63 characters, so the Plugin is named by a hash.
    """
    return NODE_LABEL_PREFIX + hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:40]


def node_label_value(sha256: str) -> str:
    """Label values are limited to 63 characters: the first 63 hex digits of the sha256."""
    return sha256[:63]
