"""Every object the chart renders, for every documented option, accepted by the real
API server under server-side apply.

CRDs (the chart's, and stand-ins for cert-manager's and the Prometheus Operator's kinds
from ``fixtures/foreign-crds.yaml``) and namespaces are applied for real. Everything else
is applied with ``dryRun=All``: the API server decodes, defaults, validates and admits
each object exactly as for a real apply, but stores nothing, so webhook configurations
pointing at a Service with no pods never reach the rest of the test session.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.charts.options import OPTIONS, RELEASE_NAMESPACE
from tests.controlplane.chart import ChartError, apply, render
from tests.controlplane.pluginguard_local import ensure_namespace

pytestmark = pytest.mark.e2e

FOREIGN_CRDS = Path(__file__).with_name("fixtures") / "foreign-crds.yaml"


def _wait_established(
    api: client.ApiClient, names: list[str], timeout: float = 30
) -> None:
    extensions = client.ApiextensionsV1Api(api)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            status = extensions.read_custom_resource_definition(name).status
            if any(
                c.type == "Established" and c.status == "True"
                for c in status.conditions or []
            ):
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"CRD {name} not Established in {timeout:.0f}s", pytrace=False
                )
            time.sleep(0.1)


@pytest.fixture(scope="module")
def foreign_crds(api_client: client.ApiClient) -> list[str]:
    crds = [d for d in yaml.safe_load_all(FOREIGN_CRDS.read_text()) if d]
    apply(api_client, crds)
    names = [c["metadata"]["name"] for c in crds]
    _wait_established(api_client, names)
    return names


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_api_server_accepts_every_rendered_object(
    option: str, api_client: client.ApiClient, foreign_crds: list[str]
) -> None:
    objects = render(
        namespace=RELEASE_NAMESPACE, values=OPTIONS[option], include_crds=True
    )
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    others = [o for o in objects if o["kind"] != "CustomResourceDefinition"]

    apply(api_client, crds)
    _wait_established(api_client, [c["metadata"]["name"] for c in crds])
    namespaces = {
        o["metadata"]["namespace"] for o in others if "namespace" in o["metadata"]
    }
    for namespace in sorted(namespaces):
        ensure_namespace(api_client, namespace)

    applied = apply(api_client, others, dry_run=True)

    assert len(applied) == len(others)
    for sent, answer in zip(others, applied, strict=True):
        assert answer["kind"] == sent["kind"]
        assert answer["metadata"]["name"] == sent["metadata"]["name"]


def test_api_server_refuses_what_the_schemas_forbid(
    api_client: client.ApiClient, foreign_crds: list[str]
) -> None:
    """The stand-in CRDs are strict enough to catch a broken template."""
    objects = render(values=OPTIONS["cert-manager-and-monitoring"])
    ensure_namespace(api_client, RELEASE_NAMESPACE)
    rule = next(o for o in objects if o["kind"] == "PrometheusRule")
    broken: dict[str, Any] = yaml.safe_load(yaml.safe_dump(rule))
    del broken["spec"]["groups"][0]["rules"][0]["expr"]
    with pytest.raises(ChartError, match="expr"):
        apply(api_client, [broken], dry_run=True)

    certificate = next(o for o in objects if o["kind"] == "Certificate")
    broken = yaml.safe_load(yaml.safe_dump(certificate))
    del broken["spec"]["secretName"]
    with pytest.raises(ChartError, match="secretName"):
        apply(api_client, [broken], dry_run=True)
