"""Fixtures shared across PluginGuard's tests.

The end-to-end tests (``tests/e2e``) run against a real etcd and kube-apiserver, started
once per session in a temporary directory. ``PLUGINGUARD_KUBECONFIG`` points them at an
existing cluster instead. When the control plane cannot be built or started, the tests
that need it fail with the reason: they are never skipped.

A cold build of the binaries takes longer than the per-test timeout; CI runs
``tests/controlplane/build.sh`` as a step of its own before pytest.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import kubernetes.config
import pytest

from tests.controlplane.cluster import (
    KUBECTL,
    ControlPlane,
    ControlPlaneError,
    ensure_binaries,
)

KUBECONFIG_ENV = "PLUGINGUARD_KUBECONFIG"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The session's own control plane; tests that restart components need this one."""
    if os.environ.get(KUBECONFIG_ENV):
        pytest.fail(
            "this test stops and starts control-plane processes, which it cannot do "
            f"on the cluster that {KUBECONFIG_ENV} points to; unset it to run the test",
            pytrace=False,
        )
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"))
    try:
        plane.start()
    except ControlPlaneError as error:
        failure = f"cannot start the test control plane: {error}"
    else:
        failure = None
    # Failed outside the handler, so the report shows the reason once, unchained.
    if failure:
        pytest.fail(failure, pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()
        # pytest keeps the last few temporary directories: keep the logs, not the data.
        shutil.rmtree(plane.etcd_data, ignore_errors=True)


@pytest.fixture(scope="session")
def kubeconfig(request: pytest.FixtureRequest) -> Path:
    """An admin kubeconfig: ``$PLUGINGUARD_KUBECONFIG`` or the session's own cluster."""
    external = os.environ.get(KUBECONFIG_ENV)
    if external:
        return Path(external)
    plane: ControlPlane = request.getfixturevalue("control_plane")
    return plane.kubeconfig


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> Iterator[kubernetes.client.ApiClient]:
    """A Kubernetes API client with the admin's credentials."""
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def kubectl() -> Path:
    """The kubectl binary built with the control plane (same version as the server)."""
    try:
        return ensure_binaries() / KUBECTL
    except ControlPlaneError as error:
        failure = str(error)
    pytest.fail(failure, pytrace=False)
