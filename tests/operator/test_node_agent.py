"""The node agent's file handling: atomic, and never outside its own folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from pluginguard.operator.node_agent import ProfileStore, profile_to_install
from pluginguard.sandbox import seccomp_profile


def test_write_is_atomic_and_idempotent(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path)
    assert store.write("hkp", "ratelimit", b'{"a": 1}\n') is True
    assert store.write("hkp", "ratelimit", b'{"a": 1}\n') is False
    path = tmp_path / "pluginguard" / "hkp" / "ratelimit.json"
    assert path.read_bytes() == b'{"a": 1}\n' and oct(path.stat().st_mode & 0o777) == "0o644"
    assert store.installed() == {("hkp", "ratelimit")}
    assert not list(path.parent.glob(".*"))


@pytest.mark.parametrize("namespace, name", [
    ("..", "x"), ("hkp", "../../etc/passwd"), ("hkp/evil", "x"), ("hkp", ""), ("HKP", "x"),
])
def test_paths_outside_the_folder_are_refused(tmp_path: Path, namespace: str, name: str) -> None:
    with pytest.raises(ValueError):
        ProfileStore(tmp_path).write(namespace, name, b"{}")
    assert not any(tmp_path.rglob("*.json"))


def test_remove_takes_only_the_profile_and_its_empty_folder(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path)
    store.write("hkp", "a", b"{}")
    store.write("hkp", "b", b"{}")
    (tmp_path / "other.json").write_text("{}")
    store.remove("hkp", "a")
    assert store.installed() == {("hkp", "b")}
    store.remove("hkp", "b")
    assert not (tmp_path / "pluginguard" / "hkp").exists()
    assert (tmp_path / "other.json").exists()


# -- which ConfigMap is believed --------------------------------------------------------

SANDBOX = {"seccomp": {"deny": ["ptrace"]}}


def _plugin() -> dict:
    return {"metadata": {"namespace": "hkp", "name": "ratelimit", "uid": "u-1"},
            "spec": {"sandbox": SANDBOX}}


def _config_map(content: str, *, owner_uid: str = "u-1") -> dict:
    return {"metadata": {"name": "pluginguard-profile-ratelimit", "namespace": "hkp",
                         "ownerReferences": [{"kind": "Plugin", "name": "ratelimit",
                                              "uid": owner_uid, "controller": True}]},
            "data": {"profile.json": content}}


def test_the_profile_the_plugins_sandbox_compiles_to_is_installed() -> None:
    profile = seccomp_profile(SANDBOX)
    content, problem = profile_to_install(_plugin(), _config_map(profile.json_bytes.decode()),
                                          profile.sha256)
    assert (content, problem) == (profile.json_bytes, None)


def test_another_profile_is_refused_whatever_its_configmap_claims() -> None:
    expected = seccomp_profile(SANDBOX).sha256
    allow_all = '{"defaultAction":"SCMP_ACT_ALLOW"}'
    content, problem = profile_to_install(_plugin(), _config_map(allow_all), expected)
    assert content is None and problem is not None
    assert f"not the sha256:{expected[:16]} the Plugin's sandbox compiles to" in problem


def test_a_configmap_the_plugin_does_not_control_is_refused() -> None:
    profile = seccomp_profile(SANDBOX)
    content, problem = profile_to_install(
        _plugin(), _config_map(profile.json_bytes.decode(), owner_uid="u-other"), profile.sha256)
    assert content is None and problem == (
        "ConfigMap pluginguard-profile-ratelimit is not controlled by this Plugin")


def test_nothing_to_install_without_a_configmap_or_a_compiling_sandbox() -> None:
    profile = seccomp_profile(SANDBOX)
    assert profile_to_install(_plugin(), None, profile.sha256) == (None, None)
    assert profile_to_install(_plugin(), _config_map("{}"), None) == (None, None)
