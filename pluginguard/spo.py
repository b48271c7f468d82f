"""A Plugin's seccomp profile as a SeccompProfile of the Security Profiles Operator, for
clusters where that project, rather than PluginGuard's node agent, puts profiles on nodes.

The SeccompProfile is cluster-scoped; the project's daemon writes it to
``operator/<name>.json`` under every node's kubelet seccomp root and reports
``status.status: Installed`` once all nodes hold it.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Any

from pluginguard.errors import InputError
from pluginguard.names import (
    PLUGIN_LABEL,
    PLUGIN_NAMESPACE_LABEL,
    PROFILE_SHA_ANNOTATION,
    SPO_GROUP,
    SPO_INSTALLED,
    SPO_VERSION,
    spo_profile_name,
)
from pluginguard.sandbox import SeccompProfile

# What the project's SeccompProfile spec can say of a profile PluginGuard generates.
_FIELDS = {"defaultAction", "architectures", "syscalls"}


def seccomp_profile_object(profile: SeccompProfile, *, namespace: str, name: str) -> dict[str, Any]:
    """The SeccompProfile for Plugin ``namespace/name``; raises InputError for a profile
    the project's schema cannot express (it would drop the field and weaken the profile)."""
    spec = dict(profile.profile)
    # Its spec has no defaultErrnoRet; runtimes answer SCMP_ACT_ERRNO with EPERM anyway.
    if spec.pop("defaultErrnoRet", errno.EPERM) != errno.EPERM:
        raise InputError("seccomp", "the Security Profiles Operator cannot express a default "
                                    "errno other than EPERM")
    unknown = sorted(set(spec) - _FIELDS)
    if unknown:
        raise InputError("seccomp", f"the Security Profiles Operator cannot express {', '.join(unknown)}")
    return {
        "apiVersion": f"{SPO_GROUP}/{SPO_VERSION}",
        "kind": "SeccompProfile",
        "metadata": {
            "name": spo_profile_name(namespace, name),
            "labels": {PLUGIN_LABEL: name, PLUGIN_NAMESPACE_LABEL: namespace},
            "annotations": {PROFILE_SHA_ANNOTATION: profile.sha256},
        },
        "spec": spec,
    }


def installation(stored: Mapping[str, Any] | None) -> tuple[bool, str]:
    """Whether the project reports ``stored`` (a SeccompProfile as the API server holds
    it, or None) installed on every node, and its state in words."""
    if stored is None:
        return False, "not created yet"
    state = str((stored.get("status") or {}).get("status") or "not reported yet")
    return state == SPO_INSTALLED, state
