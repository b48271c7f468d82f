"""The node agent's file handling: atomic, and never outside its own folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from pluginguard.operator.node_agent import ProfileStore


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
