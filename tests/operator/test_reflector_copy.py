"""What a Reflector keeps of each object: never managedFields, and only its view when
it has one."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from pluginguard.operator.watch import Reflector


def listing(*items: dict[str, Any]) -> Any:
    body = {"metadata": {"resourceVersion": "42"}, "items": list(items)}
    return lambda **_: SimpleNamespace(data=json.dumps(body).encode())


def stored(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "hkp", "resourceVersion": "7",
                     "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
                     "annotations": {"note": "kept unless a view drops it"}},
        "spec": {"size": 1},
    }


def test_managed_fields_are_not_kept() -> None:
    reflector = Reflector("test", listing(stored("a")))
    assert reflector._list() == "42"
    kept = reflector.get("hkp", "a")
    assert kept is not None and "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {"note": "kept unless a view drops it"}


def test_a_view_makes_what_is_kept_and_what_listeners_see() -> None:
    seen: list[dict[str, Any]] = []
    reflector = Reflector("test", listing(stored("a")),
                          listener=lambda kind, obj: seen.append(obj),
                          view=lambda obj: {"metadata": {"name": obj["metadata"]["name"]}})
    reflector._list()
    assert reflector.objects == {("hkp", "a"): {"metadata": {"name": "a"}}}
    assert seen == [{"metadata": {"name": "a"}}]
