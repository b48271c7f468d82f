"""What the operator writes for a Plugin when the Security Profiles Operator, not
PluginGuard's node agent, puts profiles on the nodes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pluginguard.names import spo_profile_name, spo_profile_path
from pluginguard.operator.reconcile import SECURITY_PROFILES_OPERATOR, desired_state
from pluginguard.sandbox import seccomp_profile

SANDBOX = {"seccomp": {"defaultAction": "errno", "allow": ["ptrace"], "deny": ["mount"]}}


def plugin(name: str = "ratelimit", sandbox: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "pluginguard.dev/v1alpha1", "kind": "Plugin",
            "metadata": {"name": name, "namespace": "hkp", "uid": "u-1", "generation": 3},
            "spec": {"artifact": {"digest": "sha256:" + "ab" * 32},
                     "sandbox": sandbox if sandbox is not None else SANDBOX}}


def delivered(state: str | None) -> dict[str, Any]:
    return {"metadata": {"name": spo_profile_name("hkp", "ratelimit")},
            "status": {"status": state} if state else {}}


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_a_seccomp_profile_object_replaces_the_config_map() -> None:
    desired = desired_state(plugin(), [], namespace_labels={}, delivery=SECURITY_PROFILES_OPERATOR)
    assert desired.config_map is None
    assert desired.network_policy is not None  # the NetworkPolicy does not depend on delivery
    body = desired.seccomp_profile
    assert body is not None
    assert body["apiVersion"] == "security-profiles-operator.x-k8s.io/v1beta1"
    assert body["metadata"]["name"] == "pluginguard.hkp.ratelimit"
    assert "namespace" not in body["metadata"] and "ownerReferences" not in body["metadata"]
    assert body["metadata"]["labels"] == {"pluginguard.dev/plugin": "ratelimit",
                                          "pluginguard.dev/plugin-namespace": "hkp"}
    profile = seccomp_profile(SANDBOX)
    # The same rules as the file the node agent would install, less defaultErrnoRet (the
    # project's schema has none; runtimes answer SCMP_ACT_ERRNO with EPERM anyway).
    expected = json.loads(profile.json_bytes)
    assert expected.pop("defaultErrnoRet") == 1
    assert body["spec"] == expected
    assert body["metadata"]["annotations"]["pluginguard.dev/profile-sha256"] == profile.sha256


def test_the_status_points_pods_at_the_projects_path() -> None:
    status = desired_state(plugin(), [], namespace_labels={},
                           delivery=SECURITY_PROFILES_OPERATOR).status
    assert status["seccomp"] == {
        "localhostProfile": "operator/pluginguard.hkp.ratelimit.json",
        "sha256": seccomp_profile(SANDBOX).sha256,
        "seccompProfile": "pluginguard.hkp.ratelimit",
        "delivery": "security-profiles-operator",
        "installed": False,
    }


@pytest.mark.parametrize("state", [None, "Pending", "InProgress", "Partial", "Terminating"])
def test_the_profile_is_not_ready_until_the_project_reports_it_installed(state: str | None) -> None:
    status = desired_state(plugin(), [], namespace_labels={}, delivery=SECURITY_PROFILES_OPERATOR,
                           delivered=delivered(state)).status
    assert conditions(status)["ProfileReady"] == ("False", "ProfileNotInstalled")
    message = next(c["message"] for c in status["conditions"] if c["type"] == "ProfileReady")
    assert "operator/pluginguard.hkp.ratelimit.json" in message
    assert (state or "not reported yet") in message
    assert status["seccomp"]["installed"] is False


def test_an_installed_profile_is_ready() -> None:
    status = desired_state(plugin(), [], namespace_labels={}, delivery=SECURITY_PROFILES_OPERATOR,
                           delivered=delivered("Installed")).status
    assert conditions(status)["ProfileReady"] == ("True", "SeccompProfileGenerated")
    assert status["seccomp"]["installed"] is True
    # Unsigned here, so not Ready for that reason, not for the profile.
    assert conditions(status)["Ready"][1] != "ProfileNotInstalled"


def test_node_agent_delivery_is_unchanged() -> None:
    desired = desired_state(plugin(), [], namespace_labels={})
    assert desired.seccomp_profile is None and desired.config_map is not None
    assert desired.status["seccomp"]["localhostProfile"] == "pluginguard/hkp/ratelimit.json"
    assert conditions(desired.status)["ProfileReady"] == ("True", "SeccompProfileGenerated")


def test_names_stay_unique_and_within_the_limit() -> None:
    assert spo_profile_name("a-b", "c") != spo_profile_name("a", "b-c")
    long = "p" * 253
    name = spo_profile_name("hkp", long)
    assert len(name) <= 253 and name != spo_profile_name("hkp", long[:-1])
    assert spo_profile_path("hkp", long) == f"operator/{name}.json"


def test_an_unknown_delivery_is_refused() -> None:
    with pytest.raises(ValueError, match="delivery"):
        desired_state(plugin(), [], namespace_labels={}, delivery="ftp")
