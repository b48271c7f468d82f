"""The session's runc: packages installed, a busybox root built, the machine checked.

When runc cannot run containers with cgroup limits here, every test in this directory
fails with the reason. ``PLUGINGUARD_SKIP_RUNC=1`` skips them instead, for whoever asks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.runtime.runc import (
    SKIP_ENV,
    Runc,
    RuntimeUnavailable,
    build_rootfs,
    cgroup_version,
    ensure_packages,
)


@pytest.fixture(scope="session")
def runc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runc]:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: not running sandboxes under runc")
    if os.geteuid() != 0:
        pytest.fail(
            "runc needs root here to create namespaces and cgroups with limits;"
            f" run as root or set {SKIP_ENV}=1",
            pytrace=False,
        )
    work = tmp_path_factory.mktemp("runc")
    failure: str | None = None
    try:
        ensure_packages()
        runtime = Runc(work, build_rootfs(work / "rootfs"), cgroup_version())
        smoke = runtime.run({}, ["true"], label="smoke")
        if smoke.status != 0:
            raise RuntimeUnavailable(
                f"{runtime.version()} cannot run a container here (exit"
                f" {smoke.status}): {smoke.stderr.strip()}"
            )
    except RuntimeUnavailable as error:
        failure = str(error)
    # Failed outside the handler, so the report shows the reason once, unchained.
    if failure:
        pytest.fail(failure, pytrace=False)
    try:
        yield runtime
    finally:
        runtime.clean()
