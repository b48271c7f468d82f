"""Shared pieces of the end-to-end tests: signing, creating Plugins and plugin pods,
waiting for the operator, reading refusals."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from kubernetes import client

from pluginguard import keys
from pluginguard.signing import sign_manifest
from tests.plugin_factory import DIGEST, plugin

GROUP, VERSION = "pluginguard.dev", "v1alpha1"
IMAGE = "registry.example/hkp/ratelimit"
KEY = keys.generate_private_key("ECDSA-P256")
STRANGER = keys.generate_private_key("Ed25519")
T = TypeVar("T")


def eventually(
    check: Callable[[], T],
    *,
    timeout: float = 20.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll ``check`` until it returns a truthy value (and return it) or fail."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (client.ApiException, AssertionError, KeyError) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"{what} not reached in {timeout:.0f}s; last: {last!r}", pytrace=False)


def public_pem(key: keys.PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def signed(name: str, namespace: str, **changes: Any) -> dict[str, Any]:
    document = plugin(name, namespace=namespace, **changes)
    return sign_manifest(document, key=KEY)


def create_plugin(custom: client.CustomObjectsApi, document: dict[str, Any], *,
                  dry_run: bool = False) -> dict[str, Any]:
    return custom.create_namespaced_custom_object(
        GROUP, VERSION, document["metadata"]["namespace"], "plugins", document,
        dry_run="All" if dry_run else None)


class Refusal:
    """An API error as a person reads it: its HTTP status and the Status message."""

    def __init__(self, error: client.ApiException) -> None:
        self.status = error.status
        try:
            self.body = json.loads(error.body)["message"]
        except (TypeError, ValueError, KeyError):
            self.body = str(error.body)


def refusal(call: Any) -> Refusal:
    with pytest.raises(client.ApiException) as caught:
        call()
    return Refusal(caught.value)


def plugin_pod(name: str, namespace: str, plugin_name: str, **container: Any) -> dict[str, Any]:
    spec = {
        "name": "app", "image": f"{IMAGE}@{DIGEST}",
        "resources": {"limits": {"memory": "256Mi", "cpu": "500m"}},
        "securityContext": {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "Localhost",
                               "localhostProfile": f"pluginguard/{namespace}/{plugin_name}.json"}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    spec.update(container)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"pluginguard.dev/plugin": plugin_name}},
            "spec": {"containers": [spec], "volumes": [{"name": "tmp", "emptyDir": {}}]}}


def events_for(core: client.CoreV1Api, namespace: str, name: str) -> list[client.CoreV1Event]:
    listed = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
    return listed.items


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for entry in (obj.get("status") or {}).get("conditions") or []:
        if entry["type"] == kind:
            return entry
    return None


def wait_ready(custom: client.CustomObjectsApi, namespace: str, name: str,
               status: str = "True") -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "plugins", name)
        found = condition(obj, "Ready")
        generation = obj["metadata"]["generation"]
        if found and found["status"] == status and found["observedGeneration"] == generation:
            return obj
        return None
    return eventually(ready, timeout=30, what=f"Plugin {name} Ready={status}")



