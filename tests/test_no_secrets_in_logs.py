"""No private key, key material or token in anything PluginGuard writes for people to
read: CLI output, webhook and operator logs, Events, audit records and alerts.

The flow is the demo's: a publisher signs with a private key; a policy trusts the public
key through a Secret, a Secret that (by an admin's mistake) also holds the private key
and a bearer token; Plugins and pods are admitted and refused; the operator reconciles.
Every line produced is then searched for the key and the token.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from pluginguard.alerts import Notifier
from pluginguard.audit import AuditLog
from pluginguard.cli import ManifestMaterial
from pluginguard.errors import InputError
from pluginguard.logs import JsonFormatter
from pluginguard.operator.reconcile import Reconciler
from pluginguard.policy import compile_policy
from pluginguard.webhooks.admission import review
from pluginguard.webhooks.server import _record
from tests.plugin_factory import plugin
from tests.test_alerts import Receiver
from tests.webhooks.test_admission import FakeCluster, admission

TOKEN = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InNhLWtleSJ9.eyJpc3MiOiJrdWJlcm5ldGVzL3NlcnZpY2Vh"
    "Y2NvdW50Iiwic3ViIjoic3lzdGVtOnNhOnBsdWdpbmd1YXJkIn0.bm90LWEtcmVhbC1zaWduYXR1cmU"
)


def cli(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pluginguard.cli", *args],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Events:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def record(self, obj: dict[str, Any], **event: str) -> None:
        self.messages.append(json.dumps(event))

    def write_once(self, obj: dict[str, Any], **event: str) -> None:
        self.messages.append(json.dumps(event))


class AcceptEverything:
    """The Kubernetes APIs the reconciler writes through, accepting every write."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class OperatorState:
    def __init__(self, policies: list[Any], problems: list[str]) -> None:
        self.policies, self.problems = policies, problems

    def trust_policies(self) -> tuple[list[Any], list[str]]:
        return self.policies, self.problems

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        return {"team": "keyserver"} if namespace == "hkp" else {}


@pytest.fixture()
def captured_logs() -> Iterator[io.StringIO]:
    """Every log record, as the deployables write them (JSON) and as text."""
    stream = io.StringIO()
    handlers = [logging.StreamHandler(stream), logging.StreamHandler(stream)]
    handlers[0].setFormatter(JsonFormatter())
    handlers[1].setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield stream
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(previous)


def test_no_key_or_token_in_any_output(
    tmp_path: Path, captured_logs: io.StringIO
) -> None:
    outputs: list[str] = []

    # 1. The publisher: a key pair, a signed Plugin, offline checks (verbose).
    (tmp_path / "plugin.yaml").write_text(yaml.safe_dump(plugin()))
    (tmp_path / "artifact.bin").write_bytes(b"rate limiter build 7\n")
    steps = [
        ("keygen", "--algorithm", "ecdsa-p256", "--out", "release"),
        (
            "-v",
            "sign",
            "plugin.yaml",
            "--key",
            "release.key",
            "--artifact",
            "artifact.bin",
            "-o",
            "signed.yaml",
        ),
    ]
    for step in steps:
        result = cli(tmp_path, *step)
        assert result.returncode == 0, result.stderr
        outputs += [result.stdout, result.stderr]
    private_pem = (tmp_path / "release.key").read_text()
    public_pem = (tmp_path / "release.pub").read_text()
    signed = yaml.safe_load((tmp_path / "signed.yaml").read_text())

    # 2. The admin: a Secret with the public key, and, by mistake, the private key and
    #    a token; one policy trusts the public key, another points at the private one.
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "plugin-signing-keys", "namespace": "pluginguard-system"},
        "data": {
            name: base64.b64encode(value.encode()).decode()
            for name, value in {
                "release.pub": public_pem,
                "release.key": private_pem,
                "token": f"Bearer {TOKEN}",
            }.items()
        },
    }

    def trust(name: str, key: str) -> dict[str, Any]:
        return {
            "apiVersion": "pluginguard.dev/v1alpha1",
            "kind": "PluginTrustPolicy",
            "metadata": {"name": name},
            "spec": {
                "enforcement": "enforce",
                "requireSignedSandbox": True,
                "namespaceSelector": {"matchLabels": {"team": "keyserver"}},
                "trustedKeys": [
                    {
                        "name": name,
                        "secretRef": {
                            "namespace": "pluginguard-system",
                            "name": "plugin-signing-keys",
                            "key": key,
                        },
                    }
                ],
            },
        }

    (tmp_path / "policy.yaml").write_text(
        yaml.safe_dump_all([trust("release", "release.pub"), secret])
    )
    (tmp_path / "mistake.yaml").write_text(
        yaml.safe_dump_all([trust("mistaken", "release.key"), secret])
    )
    (tmp_path / "token.yaml").write_text(
        yaml.safe_dump_all([trust("token", "token"), secret])
    )
    tampered = copy.deepcopy(signed)
    tampered["spec"]["sandbox"]["resources"]["maxMemoryMB"] = 4096
    (tmp_path / "tampered.yaml").write_text(yaml.safe_dump(tampered))
    for args in (
        ("signed.yaml", "--policy", "policy.yaml"),
        ("tampered.yaml", "--policy", "policy.yaml"),
        ("signed.yaml", "--policy", "mistake.yaml"),
        ("signed.yaml", "--policy", "token.yaml"),
        ("signed.yaml", "--policy", "release.key"),
    ):  # the key file as a policy
        result = cli(
            tmp_path, "-v", "verify", *args, "--namespace-label", "team=keyserver"
        )
        outputs += [result.stdout, result.stderr]
    assert "verified" in outputs[4]  # the first verify: the flow did what it should

    documents = [trust("release", "release.pub"), secret]
    policies = [compile_policy(documents[0], material=ManifestMaterial(documents))]
    problems = []  # the operator reports policies that do not compile in its verdicts
    for mistake in ("release.key", "token"):
        with pytest.raises(InputError) as error:
            compile_policy(
                trust("mistake", mistake), material=ManifestMaterial(documents)
            )
        problems.append(str(error.value))

    # 3. The webhook and the operator, with their audit logs and alerts.
    receiver = Receiver()
    notifier = Notifier(receiver.url, backoff=0.01)
    webhook_audit = AuditLog(tmp_path / "webhook-audit.jsonl", component="webhook")
    operator_audit = AuditLog(tmp_path / "operator-audit.jsonl", component="operator")
    events = Events()
    try:
        cluster = FakeCluster()
        cluster._policies = policies
        cluster.labels["hkp"] = {"team": "keyserver"}
        stored = cluster.add(signed)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "ratelimit-0",
                "namespace": "hkp",
                "labels": {"pluginguard.dev/plugin": "ratelimit"},
            },
            "spec": {
                "containers": [
                    {"name": "plugin", "image": "registry.example/hkp/ratelimit:1.0"}
                ]
            },
        }
        for obj, endpoint, kind in (
            (signed, "plugins", "Plugin"),
            (tampered, "plugins", "Plugin"),
            (pod, "pods", "Pod"),
            (pod, "mutate-pods", "Pod"),
        ):
            request = admission(obj, kind=kind)
            _, decision = review(request, cluster, kind=endpoint)
            _record(
                decision,
                request["request"],
                endpoint,
                events,  # type: ignore[arg-type]
                audit=webhook_audit,
                alerts=notifier,
            )

        reconciler = Reconciler(
            client.ApiClient(),
            OperatorState(policies, problems),
            events,  # type: ignore[arg-type]
            audit=operator_audit,
            alerts=notifier,
        )
        reconciler._core = reconciler._networking = reconciler._custom = (
            AcceptEverything()
        )  # type: ignore[assignment]
        outcomes = [(stored, "hkp"), (tampered, "hkp"), (stored, "elsewhere")]
        for index, (obj, namespace) in enumerate(outcomes):
            body = copy.deepcopy(obj)
            body["metadata"].update(
                namespace=namespace, uid=f"uid-{index}", generation=1
            )
            reconciler.reconcile(body)
        assert notifier.flush(10)
    finally:
        notifier.close(1)
        webhook_audit.close()
        operator_audit.close()
        receiver.stop()

    # 4. Everything a person or a pipeline will read.
    audit_lines = [
        (tmp_path / f"{c}-audit.jsonl").read_text() for c in ("webhook", "operator")
    ]
    assert audit_lines[0].count("\n") == 3 and audit_lines[1].count("\n") == 3
    assert "policies that do not compile" in audit_lines[1]
    produced = "\n".join(
        [
            *outputs,
            captured_logs.getvalue(),
            *audit_lines,
            *map(json.dumps, receiver.bodies),
            *events.messages,
        ]
    )
    assert receiver.bodies and events.messages and "refused" in produced.lower()

    key_lines = [
        line
        for line in private_pem.splitlines()
        if line and not line.startswith("-----")
    ]
    assert key_lines
    assert "PRIVATE KEY" not in produced
    for line in key_lines:
        for start in range(0, len(line) - 15, 8):  # any 16 characters of it
            assert line[start : start + 16] not in produced
    assert TOKEN[:24] not in produced and TOKEN.split(".")[1][:24] not in produced
    assert "bearer " not in produced.lower()
    raw = base64.b64decode("".join(key_lines))
    assert raw.hex()[:32] not in produced
