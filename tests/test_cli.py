"""The pluginguard command as a deploy pipeline runs it: a real process, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import openssl_pki
from tests.plugin_factory import plugin, policy


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pluginguard.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "plugin.yaml").write_text(yaml.safe_dump(plugin()))
    (tmp_path / "artifact.bin").write_bytes(b"rate limiter plugin build 42\n")
    return tmp_path


def write_policy(workspace: Path, public: Path, **spec: object) -> Path:
    path = workspace / "policy.yaml"
    path.write_text(
        yaml.safe_dump(
            policy(
                trustedKeys=[{"name": "release", "publicKey": public.read_text()}],
                **spec,
            )
        )
    )
    return path


def test_keygen_sign_verify_round_trip(workspace: Path) -> None:
    assert (
        run(
            "keygen", "--algorithm", "ecdsa-p384", "--out", "release", cwd=workspace
        ).returncode
        == 0
    )
    assert oct((workspace / "release.key").stat().st_mode & 0o777) == "0o600"
    signed = run(
        "sign",
        "plugin.yaml",
        "--key",
        "release.key",
        "--artifact",
        "artifact.bin",
        "-o",
        "signed.yaml",
        cwd=workspace,
    )
    assert signed.returncode == 0, signed.stderr
    write_policy(workspace, workspace / "release.pub")
    result = run(
        "verify",
        "signed.yaml",
        "--policy",
        "policy.yaml",
        "--output",
        "json",
        cwd=workspace,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["verified"] is True and verdict["reason"] == "Verified"
    assert verdict["algorithm"] == "ECDSA-P384" and "release" in verdict["signer"]
    import hashlib

    digest = hashlib.sha256((workspace / "artifact.bin").read_bytes()).hexdigest()
    assert verdict["digest"] == f"sha256:{digest}"


def test_keygen_refuses_to_overwrite(workspace: Path) -> None:
    run("keygen", "--algorithm", "ed25519", "--out", "k", cwd=workspace)
    again = run("keygen", "--algorithm", "ed25519", "--out", "k", cwd=workspace)
    assert again.returncode == 2 and "exists already" in again.stderr


def test_a_key_made_by_openssl_signs_too(workspace: Path) -> None:
    openssl_pki.generate_key(workspace / "rsa.key", "RSA-4096")
    signed = run(
        "sign",
        "plugin.yaml",
        "--key",
        "rsa.key",
        "--format",
        "hkp",
        "-o",
        "signed.yaml",
        cwd=workspace,
    )
    assert signed.returncode == 0, signed.stderr
    write_policy(workspace, workspace / "rsa.pub", requireSignedSandbox=False)
    result = run("verify", "signed.yaml", "--policy", "policy.yaml", cwd=workspace)
    assert result.returncode == 0, result.stdout
    assert "verified (Verified)" in result.stdout and "RSA-4096" in result.stdout


def test_refused_plugin_exits_1_with_the_reason(workspace: Path) -> None:
    run("keygen", "--algorithm", "ed25519", "--out", "k", cwd=workspace)
    run("sign", "plugin.yaml", "--key", "k.key", "-o", "signed.yaml", cwd=workspace)
    document = yaml.safe_load((workspace / "signed.yaml").read_text())
    document["spec"]["sandbox"]["seccomp"]["allow"].append("bpf")
    (workspace / "signed.yaml").write_text(yaml.safe_dump(document))
    write_policy(workspace, workspace / "k.pub")
    result = run("verify", "signed.yaml", "--policy", "policy.yaml", cwd=workspace)
    assert result.returncode == 1
    assert (
        "REFUSED (SandboxMismatch)" in result.stdout
        and "seccomp.allow" in result.stdout
    )


def test_verify_at_a_later_time_sees_the_certificate_expired(workspace: Path) -> None:
    root = openssl_pki.root_authority(workspace, "Root", "ECDSA-P256")
    key, cert = root.issue("publisher", "ECDSA-P256", days=10)
    signed = run(
        "sign",
        "plugin.yaml",
        "--key",
        str(key),
        "--cert",
        str(cert),
        "-o",
        "signed.yaml",
        cwd=workspace,
    )
    assert signed.returncode == 0, signed.stderr
    (workspace / "policy.yaml").write_text(
        yaml.safe_dump(
            policy(
                trustedRoots=[{"name": "root", "certificates": root.cert.read_text()}]
            )
        )
    )
    now = run("verify", "signed.yaml", "--policy", "policy.yaml", cwd=workspace)
    assert now.returncode == 0, now.stdout
    later = run(
        "verify",
        "signed.yaml",
        "--policy",
        "policy.yaml",
        "--at",
        "2099-01-01T00:00:00Z",
        cwd=workspace,
    )
    assert later.returncode == 1 and "CertificateExpired" in later.stdout


def test_policy_material_from_a_secret_manifest(workspace: Path) -> None:
    import base64

    run("keygen", "--algorithm", "ecdsa-p256", "--out", "k", cwd=workspace)
    run("sign", "plugin.yaml", "--key", "k.key", "-o", "signed.yaml", cwd=workspace)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "keys", "namespace": "pluginguard"},
        "data": {
            "release.pub": base64.b64encode((workspace / "k.pub").read_bytes()).decode()
        },
    }
    trust = policy(
        trustedKeys=[
            {
                "name": "release",
                "secretRef": {
                    "name": "keys",
                    "namespace": "pluginguard",
                    "key": "release.pub",
                },
            }
        ]
    )
    (workspace / "policy.yaml").write_text(yaml.safe_dump_all([trust, secret]))
    assert (
        run(
            "verify", "signed.yaml", "--policy", "policy.yaml", cwd=workspace
        ).returncode
        == 0
    )


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("spec: [unclosed", "invalid YAML: line 1"),
        ("- just\n- a list\n", "not a mapping"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            "expected one Plugin document",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_file(
    workspace: Path, content: str, fragment: str
) -> None:
    (workspace / "bad.yaml").write_text(content)
    result = run("seccomp", "bad.yaml", cwd=workspace)
    assert result.returncode == 2
    assert (
        result.stderr.count("\n") == 1
        and "bad.yaml" in result.stderr
        and fragment in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_unknown_syscall_is_named_with_its_field(workspace: Path) -> None:
    (workspace / "p.yaml").write_text(
        yaml.safe_dump(plugin(sandbox={"seccomp": {"allow": ["read", "frobnicate"]}}))
    )
    result = run("seccomp", "p.yaml", cwd=workspace)
    assert result.returncode == 2
    assert (
        "p.yaml" in result.stderr
        and "frobnicate" in result.stderr
        and "allow[1]" in result.stderr
    )


def test_missing_file_and_bad_arguments(workspace: Path) -> None:
    missing = run("verify", "nope.yaml", "--policy", "nope.yaml", cwd=workspace)
    assert missing.returncode == 2 and "nope.yaml: cannot read" in missing.stderr
    bad_time = run(
        "verify",
        "plugin.yaml",
        "--policy",
        "plugin.yaml",
        "--at",
        "yesterday",
        cwd=workspace,
    )
    assert bad_time.returncode == 2 and "RFC 3339" in bad_time.stderr


def test_seccomp_and_limits_print_what_the_operator_publishes(workspace: Path) -> None:
    profile = run("seccomp", "plugin.yaml", cwd=workspace)
    assert profile.returncode == 0
    document = json.loads(profile.stdout)
    assert document["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = {
        n
        for rule in document["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW"
        for n in rule["names"]
    }
    assert "ptrace" in allowed and "mount" not in allowed
    limits = json.loads(run("limits", "plugin.yaml", cwd=workspace).stdout)
    assert limits == {
        "kubernetes": {"memory": "256Mi", "cpu": "500m"},
        "cgroup": {"memory.max": 268435456, "cpu.max": "50000 100000", "pids.max": 64},
    }


def test_sign_with_a_bad_output_path_leaves_nothing_behind(workspace: Path) -> None:
    run("keygen", "--algorithm", "ed25519", "--out", "k", cwd=workspace)
    result = run(
        "sign",
        "plugin.yaml",
        "--key",
        "k.key",
        "-o",
        "missing-dir/out.yaml",
        cwd=workspace,
    )
    assert result.returncode == 2 and "cannot write" in result.stderr
    assert not (workspace / "missing-dir").exists()


def test_keygen_and_sign_refuse_what_they_cannot_do_in_one_line(workspace: Path) -> None:
    missing = run("keygen", "--algorithm", "ed25519", "--out", "no/such/dir/k", cwd=workspace)
    assert missing.returncode == 2 and "cannot write" in missing.stderr
    assert "Traceback" not in missing.stderr
    (workspace / "dangling.key").symlink_to(workspace / "nowhere")
    dangling = run("keygen", "--algorithm", "ed25519", "--out", "dangling", cwd=workspace)
    assert dangling.returncode == 2 and "exists already" in dangling.stderr
    openssl_pki.openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521",
                        "-out", str(workspace / "p521.key"))
    odd = run("sign", "plugin.yaml", "--key", "p521.key", cwd=workspace)
    assert odd.returncode == 2 and "cannot sign plugins" in odd.stderr
    openssl_pki.generate_key(workspace / "rsa3072.key", "RSA-3072")
    rsa = run("sign", "plugin.yaml", "--key", "rsa3072.key", cwd=workspace)
    assert rsa.returncode == 2 and "RSA-3072 keys cannot sign plugins" in rsa.stderr


def test_signing_the_placeholder_digest_is_refused(workspace: Path) -> None:
    document = yaml.safe_load((workspace / "plugin.yaml").read_text())
    document["spec"]["artifact"]["digest"] = "sha256:" + "0" * 64
    (workspace / "placeholder.yaml").write_text(yaml.safe_dump(document))
    run("keygen", "--algorithm", "ed25519", "--out", "k", cwd=workspace)
    result = run("sign", "placeholder.yaml", "--key", "k.key", cwd=workspace)
    assert result.returncode == 2 and "placeholder" in result.stderr


def test_output_to_a_closed_pipe_is_quiet(workspace: Path) -> None:
    command = f"{sys.executable} -m pluginguard.cli seccomp plugin.yaml | head -c 10"
    result = subprocess.run(command, shell=True, cwd=workspace, capture_output=True, text=True,
                            timeout=60)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
