"""PluginGuard running against the session's real API server: CRDs, webhook, operator."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client

from tests.controlplane.cluster import ControlPlaneError
from tests.controlplane.pluginguard_local import WEBHOOK_NAME, LocalPluginGuard

T = TypeVar("T")


@pytest.fixture(scope="session")
def pluginguard(
    kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalPluginGuard]:
    local = LocalPluginGuard(kubeconfig, tmp_path_factory.mktemp("pluginguard"))
    try:
        local.start()
    except ControlPlaneError as error:
        local.stop()
        pytest.fail(f"cannot start PluginGuard: {error}", pytrace=False)
    try:
        yield local
    finally:
        local.stop()
        try:
            client.AdmissionregistrationV1Api(
                local.api
            ).delete_validating_webhook_configuration(WEBHOOK_NAME)
        except client.ApiException:
            pass


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
