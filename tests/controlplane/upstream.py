"""CustomResourceDefinitions of projects PluginGuard works with, read from the Go modules
those projects publish (fetched once through the Go module proxy, then cached by Go)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.controlplane.cluster import ControlPlaneError

# The Security Profiles Operator release whose SeccompProfile schema the operator writes to.
SECURITY_PROFILES_OPERATOR = ("sigs.k8s.io/security-profiles-operator", "v0.10.0")


def module_dir(module: str, version: str) -> Path:
    """The unpacked source of ``module@version``."""
    if shutil.which("go") is None:
        raise ControlPlaneError(f"the Go toolchain is needed to fetch {module}@{version}")
    # Outside any go.mod, so that no module of ours decides what is fetched.
    with tempfile.TemporaryDirectory() as outside:
        done = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"],
                              cwd=outside, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "GOFLAGS": "", "GO111MODULE": "on"})
    try:
        answer = json.loads(done.stdout or "{}")
    except json.JSONDecodeError:
        answer = {}
    if done.returncode != 0 or not answer.get("Dir"):
        reason = answer.get("Error") or done.stderr.strip() or f"exit code {done.returncode}"
        raise ControlPlaneError(f"cannot fetch {module}@{version}: {reason}")
    return Path(answer["Dir"])


def seccomp_profile_crd() -> Path:
    """The Security Profiles Operator's SeccompProfile CRD, as that release ships it."""
    path = module_dir(*SECURITY_PROFILES_OPERATOR) / "deploy/base-crds/crds/seccompprofile.yaml"
    if not path.is_file():
        raise ControlPlaneError(f"{path} is missing from {'@'.join(SECURITY_PROFILES_OPERATOR)}")
    return path
