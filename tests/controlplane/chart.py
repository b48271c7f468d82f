"""PluginGuard's Helm chart as the tests use it: helm built from its Go module, the chart
rendered into objects, those objects applied to a control plane with server-side apply,
and ServiceAccount tokens turned into kubeconfigs.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, dynamic
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from tests.controlplane.cluster import ControlPlaneError

REPOSITORY = Path(__file__).resolve().parents[2]
CHART = REPOSITORY / "charts" / "pluginguard"
HELM_BUILD_SCRIPT = Path(__file__).with_name("helm") / "build.sh"
#: A prebuilt helm binary to use instead of running ``helm/build.sh``.
HELM_ENV = "PLUGINGUARD_HELM"
FIELD_MANAGER = "pluginguard-tests"
RBAC_KINDS = frozenset(
    {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
)


class ChartError(ControlPlaneError):
    """helm failed, or the API server refused a rendered object."""


def ensure_helm() -> Path:
    """The helm binary: ``$PLUGINGUARD_HELM``, or the one ``helm/build.sh`` builds (a few
    minutes, once per version) and afterwards only finds.

    Raises ChartError if the build fails.
    """
    override = os.environ.get(HELM_ENV)
    if override:
        return Path(override)
    build = subprocess.run(
        ["bash", str(HELM_BUILD_SCRIPT)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    printed = build.stdout.split()
    if build.returncode != 0 or not printed:
        raise ChartError(
            f"helm build: {HELM_BUILD_SCRIPT} exited with code {build.returncode}:\n"
            f"{build.stderr[-4000:]}"
        )
    return Path(printed[-1])


def helm(*arguments: str, values: Mapping[str, Any] | None = None) -> str:
    """Run helm on the chart's behalf and return its stdout.

    ``values`` go in as a values file. Raises ChartError with helm's message when it
    exits non-zero.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values_file:
        yaml.safe_dump(dict(values or {}), values_file)
        values_file.flush()
        command = [str(ensure_helm()), *arguments, "--values", values_file.name]
        # No kubeconfig: template, lint and client-side dry runs must not need a cluster.
        environment = {
            **os.environ,
            "KUBECONFIG": os.devnull,
            "HELM_CACHE_HOME": tempfile.gettempdir(),
        }
        run = subprocess.run(
            command, capture_output=True, text=True, check=False, env=environment
        )
    if run.returncode != 0:
        errors = "\n".join(
            line for line in run.stderr.splitlines() if "symbolic link" not in line
        )
        raise ChartError(f"helm {' '.join(arguments)}: {errors or run.stdout}")
    return run.stdout


def render(
    *,
    release: str = "pluginguard",
    namespace: str = "pluginguard-system",
    values: Mapping[str, Any] | None = None,
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """The objects ``helm template`` makes of the chart, in helm's install order."""
    arguments = ["template", release, str(CHART), "--namespace", namespace]
    if include_crds:
        arguments.append("--include-crds")
    text = helm(*arguments, values=values)
    return [document for document in yaml.safe_load_all(text) if document]


def find(
    objects: Iterable[dict[str, Any]], kind: str, name: str | None = None
) -> list[dict[str, Any]]:
    """The objects of ``kind`` (and ``name``, if given)."""
    return [
        o
        for o in objects
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(
    objects: Iterable[dict[str, Any]], kind: str, name: str | None = None
) -> dict[str, Any]:
    found = find(objects, kind, name)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, rendered {len(found)}")
    return found[0]


def apply(
    api: client.ApiClient,
    objects: Sequence[dict[str, Any]],
    *,
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """Server-side apply each object, in order; the API server validates every one.

    ``dry_run`` runs validation and admission without storing anything. Raises
    ChartError naming the object the API server refused, with its reason.
    """
    resources = dynamic.DynamicClient(api).resources
    applied = []
    for obj in objects:
        what = f"{obj['kind']} {obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
        try:
            resource = _resource(resources, obj)
            response = dynamic.DynamicClient(api).server_side_apply(
                resource,
                body=obj,
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                dry_run="All" if dry_run else None,
            )
        except client.ApiException as error:
            raise ChartError(
                f"{what}: refused by the API server: {_message(error)}"
            ) from error
        except ResourceNotFoundError as error:
            raise ChartError(
                f"{what}: the API server does not serve this kind"
            ) from error
        applied.append(response.to_dict())
    return applied


def _resource(resources: Any, obj: Mapping[str, Any]) -> Any:
    try:
        return resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    except ResourceNotFoundError:
        # A CRD applied a moment ago is not in the discovery cache yet.
        resources.invalidate_cache()
        return resources.get(api_version=obj["apiVersion"], kind=obj["kind"])


def _message(error: client.ApiException) -> str:
    try:
        return str(json.loads(error.body)["message"])
    except (TypeError, ValueError, KeyError):
        return f"{error.status} {error.reason}"


def token_kubeconfig(
    api: client.ApiClient,
    admin_kubeconfig: Path,
    path: Path,
    *,
    namespace: str,
    service_account: str,
    seconds: int = 24 * 3600,
) -> Path:
    """Write a kubeconfig that authenticates as ``service_account`` with a token from
    the TokenRequest API; the server and its CA come from ``admin_kubeconfig``."""
    token = (
        client.CoreV1Api(api)
        .create_namespaced_service_account_token(
            service_account, namespace, {"spec": {"expirationSeconds": seconds}}
        )
        .status.token
    )
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    user = f"system:serviceaccount:{namespace}:{service_account}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "pluginguard", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": "pluginguard", "context": {"cluster": "pluginguard", "user": user}}
        ],
        "current-context": "pluginguard",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
