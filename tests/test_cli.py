"""The pluginguard command as a deploy pipeline runs it: a real process, real files."""

from __future__ import annotations

import base64
import errno
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pluginguard import signing
from pluginguard.cli import main
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
    assert result.returncode == 2
    # The output is named, not the temporary file written beside it.
    assert result.stderr == (
        "pluginguard: missing-dir/out.yaml: cannot write: No such file or directory\n"
    )
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


# -- in-process runs, for what a real process cannot arrange ---------------------------


@pytest.fixture()
def cli(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """``pluginguard`` run in this process in the workspace: (exit code, stdout, stderr)."""
    monkeypatch.chdir(workspace)

    def call(*args: str) -> tuple[int, str, str]:
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's way out
            code = int(exit.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return call


def one_line(stderr: str) -> bool:
    return stderr.count("\n") == 1 and "Traceback" not in stderr


def signed_plugin(workspace: Path, cli: Callable[..., tuple[int, str, str]]) -> Path:
    """plugin.yaml signed by a new k.key as signed.yaml, and policy.yaml trusting k.pub."""
    assert cli("keygen", "--algorithm", "ed25519", "--out", "k")[0] == 0
    assert cli("sign", "plugin.yaml", "--key", "k.key", "-o", "signed.yaml")[0] == 0
    write_policy(workspace, workspace / "k.pub")
    return workspace / "signed.yaml"


# -- sign -o and keygen: where they write ------------------------------------------------


def test_sign_output_through_a_symlink_writes_its_target(workspace: Path, cli) -> None:
    cli("keygen", "--algorithm", "ed25519", "--out", "k")
    (workspace / "real.yaml").write_text("previous\n")
    (workspace / "link.yaml").symlink_to("real.yaml")
    (workspace / "dangling.yaml").symlink_to("new.yaml")
    for link in ("link.yaml", "dangling.yaml"):
        code, _, err = cli("sign", "plugin.yaml", "--key", "k.key", "-o", link)
        assert code == 0, err
        assert (workspace / link).is_symlink()
    for target in ("real.yaml", "new.yaml"):
        assert yaml.safe_load((workspace / target).read_text())["spec"]["signature"]
    assert not [p for p in workspace.iterdir() if p.name.endswith(".tmp")]


def test_sign_output_to_a_device_writes_into_it(workspace: Path) -> None:
    # A /dev/full of the test's own: were the node replaced, only the workspace's would go.
    full = workspace / "full"
    try:
        os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD")
    run("keygen", "--algorithm", "ed25519", "--out", "k", cwd=workspace)
    result = run("sign", "plugin.yaml", "--key", "k.key", "-o", "full", cwd=workspace)
    assert result.returncode == 2 and one_line(result.stderr)
    assert result.stderr == "pluginguard: full: cannot write: No space left on device\n"
    assert stat.S_ISCHR(os.lstat(full).st_mode)


def test_sign_output_to_a_fifo_or_standard_output_writes_into_it(workspace: Path) -> None:
    run("keygen", "--algorithm", "ed25519", "--out", "k", cwd=workspace)
    fifo = workspace / "fifo"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    piped = run("sign", "plugin.yaml", "--key", "k.key", "-o", "fifo", cwd=workspace)
    reader.join(timeout=30)
    assert piped.returncode == 0, piped.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert received and "signature:" in received[0]

    # Through a link of the workspace's, so that a regression replaces no system file.
    (workspace / "stdout").symlink_to("/dev/stdout")
    stdout = run("sign", "plugin.yaml", "--key", "k.key", "-o", "stdout", cwd=workspace)
    assert stdout.returncode == 0, stdout.stderr
    assert yaml.safe_load(stdout.stdout)["spec"]["signature"]
    assert (workspace / "stdout").is_symlink()


@pytest.mark.parametrize("planted", ["directory", "symlink"])
def test_sign_output_ignores_whatever_sits_beside_it(workspace: Path, cli, planted: str) -> None:
    cli("keygen", "--algorithm", "ed25519", "--out", "k")
    victim = workspace / "victim.txt"
    victim.write_text("keep me\n")
    old_temporary = workspace / ".out.yaml.tmp"
    if planted == "directory":
        old_temporary.mkdir()
    else:
        old_temporary.symlink_to(victim)
    code, _, err = cli("sign", "plugin.yaml", "--key", "k.key", "-o", "out.yaml")
    assert code == 0, err
    assert victim.read_text() == "keep me\n"
    assert old_temporary.is_dir() if planted == "directory" else old_temporary.is_symlink()
    assert yaml.safe_load((workspace / "out.yaml").read_text())["spec"]["signature"]


def test_sign_output_that_fails_midway_keeps_the_old_file(
    workspace: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("keygen", "--algorithm", "ed25519", "--out", "k")
    (workspace / "out.yaml").write_text("previous\n")
    before = sorted(p.name for p in workspace.iterdir())

    def disk_full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    code, _, err = cli("sign", "plugin.yaml", "--key", "k.key", "-o", "out.yaml")
    assert code == 2 and one_line(err)
    assert err == "pluginguard: out.yaml: cannot write: No space left on device\n"
    assert (workspace / "out.yaml").read_text() == "previous\n"
    assert sorted(p.name for p in workspace.iterdir()) == before


def test_sign_output_keeps_the_permissions_of_the_file_it_replaces(workspace: Path, cli) -> None:
    cli("keygen", "--algorithm", "ed25519", "--out", "k")
    (workspace / "out.yaml").write_text("previous\n")
    (workspace / "out.yaml").chmod(0o640)
    assert cli("sign", "plugin.yaml", "--key", "k.key", "-o", "out.yaml")[0] == 0
    assert stat.S_IMODE((workspace / "out.yaml").stat().st_mode) == 0o640


@pytest.mark.parametrize("prefix", ["", "somedir/", "."])
def test_keygen_refuses_a_prefix_without_a_file_name(workspace: Path, cli, prefix: str) -> None:
    (workspace / "somedir").mkdir()
    before = sorted(p.name for p in workspace.rglob("*"))
    code, _, err = cli("keygen", "--algorithm", "ed25519", "--out", prefix)
    assert code == 2 and one_line(err) and "--out" in err and "no file name" in err
    assert sorted(p.name for p in workspace.rglob("*")) == before


@pytest.mark.parametrize("suffix", [".key", ".pub"])
def test_keygen_removes_only_what_it_wrote(
    workspace: Path, cli, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """A file that appears at one of the names while keygen runs is someone else's: it
    stays, and so does nothing of keygen's."""
    create = signing._create

    def racing(path: Path, content: bytes, *, mode: int) -> None:
        if path.suffix == suffix:
            path.write_text("someone else's\n")
        create(path, content, mode=mode)

    monkeypatch.setattr(signing, "_create", racing)
    code, _, err = cli("keygen", "--algorithm", "ed25519", "--out", "k")
    assert code == 2 and one_line(err) and f"k{suffix}: exists already" in err
    assert (workspace / f"k{suffix}").read_text() == "someone else's\n"
    assert sorted(p.name for p in workspace.iterdir()) == ["artifact.bin", f"k{suffix}", "plugin.yaml"]


def test_keygen_that_cannot_write_the_public_key_leaves_no_private_one(
    workspace: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    create = signing._create

    def full_disk(path: Path, content: bytes, *, mode: int) -> None:
        if path.suffix == ".pub":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        create(path, content, mode=mode)

    monkeypatch.setattr(signing, "_create", full_disk)
    code, _, err = cli("keygen", "--algorithm", "ed25519", "--out", "k")
    assert code == 2 and err == "pluginguard: k.pub: cannot write: No space left on device\n"
    assert not (workspace / "k.key").exists()


# -- verify: policies and the material they reference ------------------------------------


def secret_policy(workspace: Path, *documents: dict[str, object]) -> None:
    """policy.yaml: a policy trusting key release.pub of Secret pluginguard/keys, then
    ``documents``."""
    trust = policy(trustedKeys=[{"name": "release", "secretRef": {
        "name": "keys", "namespace": "pluginguard", "key": "release.pub"}}])
    (workspace / "policy.yaml").write_text(yaml.safe_dump_all([trust, *documents]))


def secret(data: dict[str, str], **fields: object) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "keys", "namespace": "pluginguard"}, "data": data, **fields}


def test_a_secret_value_that_is_not_base64_is_named(workspace: Path, cli) -> None:
    signed_plugin(workspace, cli)
    secret_policy(workspace, secret({"release.pub": "!!!notbase64"}))
    code, _, err = cli("verify", "signed.yaml", "--policy", "policy.yaml")
    assert code == 2 and one_line(err)
    assert err == ("pluginguard: policy.yaml: document 2: Secret pluginguard/keys: "
                   "data.release.pub is not valid base64\n")


def test_a_bad_key_in_a_secret_names_the_secret(workspace: Path, cli) -> None:
    signed_plugin(workspace, cli)
    secret_policy(workspace, secret({"release.pub": base64.b64encode(b"garbage").decode()}))
    code, _, err = cli("verify", "signed.yaml", "--policy", "policy.yaml")
    assert code == 2 and one_line(err)
    assert "spec.trustedKeys[0] (release, from Secret pluginguard/keys key release.pub)" in err
    assert "not a PEM public key: no PEM block" in err


def test_secret_values_are_read_as_the_api_server_reads_them(workspace: Path, cli) -> None:
    signed_plugin(workspace, cli)
    public = (workspace / "k.pub").read_bytes()
    wrapped = base64.encodebytes(public).decode()  # line breaks every 76 characters
    secret_policy(workspace, secret({"release.pub": wrapped}))
    assert cli("verify", "signed.yaml", "--policy", "policy.yaml")[0] == 0
    # stringData wins over data, as on a write to the API server.
    secret_policy(workspace, secret({"release.pub": "!!!"},
                                    stringData={"release.pub": public.decode()}))
    assert cli("verify", "signed.yaml", "--policy", "policy.yaml")[0] == 0


def test_one_secret_given_twice_is_refused_naming_both(workspace: Path, cli) -> None:
    signed_plugin(workspace, cli)
    public = base64.b64encode((workspace / "k.pub").read_bytes()).decode()
    secret_policy(workspace, secret({"release.pub": public}))
    (workspace / "more.yaml").write_text(yaml.safe_dump(secret({"release.pub": "AAAA"})))
    code, _, err = cli("verify", "signed.yaml", "--policy", "policy.yaml", "--policy", "more.yaml")
    assert code == 2 and one_line(err)
    assert err == ("pluginguard: more.yaml: document 1: Secret pluginguard/keys is given "
                   "twice, here and in policy.yaml: document 2; give it once\n")


@pytest.mark.parametrize("spec, message", [
    ({"enforcement": "strict"}, "spec.enforcement must be one of enforce, warn, audit"),
    ({"requireSignature": "yes"}, "spec.requireSignature must be a boolean"),
    ({"trustedKeys": {}}, "spec.trustedKeys must be a list"),
    ({"crl": []}, "spec.crl must be a mapping"),
    ({"crl": {"onUnavailable": "maybe"}}, "spec.crl.onUnavailable must be one of deny, allow"),
])
def test_policy_fields_are_named_by_their_full_path(
    workspace: Path, cli, spec: dict[str, object], message: str
) -> None:
    (workspace / "policy.yaml").write_text(yaml.safe_dump(policy(**spec)))
    code, _, err = cli("verify", "plugin.yaml", "--policy", "policy.yaml")
    assert code == 2 and one_line(err)
    assert err.startswith(f"pluginguard: policy.yaml: document 1: {message}")


# -- verify: a sandbox that does not compile is input, not a refusal ---------------------


@pytest.mark.parametrize("section, key, value", [
    ("resources", "maxMemoryMB", "lots"),
    ("resources", "maxMemoryMB", -5),
    ("resources", "maxMemoryMB", 2.5),
    ("resources", "maxMemoryMB", True),
    ("resources", "maxMemoryMB", 1e30),
    ("seccomp", None, []),
    ("seccomp", "deny", "ptrace"),
    ("seccomp", "architectures", ["mips"]),
    ("seccomp", "allow", ["read", "frobnicate"]),
    ("seccomp", "allow", [f"read{n}" for n in range(513)]),
])
def test_verify_names_a_sandbox_field_that_does_not_compile(
    workspace: Path, cli, section: str, key: str | None, value: object
) -> None:
    signed = signed_plugin(workspace, cli)
    document = yaml.safe_load(signed.read_text())
    if key is None:
        document["spec"]["sandbox"][section] = value
    else:
        document["spec"]["sandbox"][section][key] = value
    signed.write_text(yaml.safe_dump(document))
    code, out, err = cli("verify", "signed.yaml", "--policy", "policy.yaml")
    assert code == 2 and one_line(err) and "REFUSED" not in out
    assert err.startswith(f"pluginguard: signed.yaml: spec.sandbox.{section}")
    assert (code, err) == cli("seccomp", "signed.yaml")[::2]


def test_verify_names_the_document_of_a_file_of_several(workspace: Path, cli) -> None:
    signed = signed_plugin(workspace, cli)
    good = yaml.safe_load(signed.read_text())
    bad = yaml.safe_load(signed.read_text())
    bad["spec"]["sandbox"]["seccomp"]["allow"] = ["frobnicate"]
    signed.write_text(yaml.safe_dump_all([good, bad]))
    code, _, err = cli("verify", "signed.yaml", "--policy", "policy.yaml")
    assert code == 2
    assert err.startswith("pluginguard: signed.yaml: document 2: spec.sandbox.seccomp.allow[0]: "
                          "unknown syscall 'frobnicate'")


# -- sign: what it refuses to sign --------------------------------------------------------


@pytest.mark.parametrize("digest", [
    "sha256:xyz", "sha256:" + "AB" * 32, "sha512:" + "ab" * 64, "ab" * 32,
])
def test_sign_refuses_a_digest_that_cannot_verify(workspace: Path, cli, digest: str) -> None:
    cli("keygen", "--algorithm", "ed25519", "--out", "k")
    (workspace / "p.yaml").write_text(yaml.safe_dump(plugin(digest=digest)))
    code, out, err = cli("sign", "p.yaml", "--key", "k.key")
    assert code == 2 and one_line(err) and not out
    assert err.startswith("pluginguard: p.yaml: spec.artifact.digest: ")
    assert "64 lowercase hex digits" in err


def test_sign_refuses_a_certificate_of_another_key(workspace: Path, cli) -> None:
    root = openssl_pki.root_authority(workspace, "Root", "ECDSA-P256")
    key, cert = root.issue("publisher", "ECDSA-P256")
    other, _ = root.issue("someone-else", "ECDSA-P256")
    code, out, err = cli("sign", "plugin.yaml", "--key", str(other), "--cert", str(cert))
    assert code == 2 and one_line(err) and not out
    assert err.startswith(f"pluginguard: {cert}: certificate 1 (CN=publisher) is for key sha256:")
    assert "not the signing key" in err
    assert cli("sign", "plugin.yaml", "--key", str(key), "--cert", str(cert))[0] == 0


def test_sign_refuses_a_sandbox_that_does_not_compile_in_either_format(workspace: Path, cli) -> None:
    cli("keygen", "--algorithm", "ed25519", "--out", "k")
    (workspace / "p.yaml").write_text(
        yaml.safe_dump(plugin(sandbox={"seccomp": {"allow": ["frobnicate"]}})))
    for form in ("dsse", "hkp"):
        code, _, err = cli("sign", "p.yaml", "--key", "k.key", "--format", form)
        assert code == 2 and "spec.sandbox.seccomp.allow[0]: unknown syscall" in err


def test_an_hkp_signature_is_written_as_a_literal_block(workspace: Path, cli) -> None:
    cli("keygen", "--algorithm", "ecdsa-p256", "--out", "k")
    code, out, _ = cli("sign", "plugin.yaml", "--key", "k.key", "--format", "hkp")
    assert code == 0
    assert "    hkp: |\n      -----BEGIN SIGNATURE-----\n" in out
    assert "\n\n" not in out
    (workspace / "signed.yaml").write_text(out)
    write_policy(workspace, workspace / "k.pub", requireSignedSandbox=False)
    assert cli("verify", "signed.yaml", "--policy", "policy.yaml")[0] == 0


# -- arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize("at", [
    "2026-01-01", "2026-01-01T00:00:00", "2026-01-01 00:00:00Z", "2026-01-01T00:00Z",
    "2026-01-01T00:00:00+0100", "2026-13-01T00:00:00Z", "20260101T000000Z",
])
def test_at_must_be_rfc3339(workspace: Path, cli, at: str) -> None:
    code, _, err = cli("verify", "plugin.yaml", "--policy", "plugin.yaml", "--at", at)
    assert code == 2 and one_line(err) and "argument --at" in err


@pytest.mark.parametrize("at", [
    "2026-01-01T00:00:00Z", "2026-01-01t00:00:00z", "2026-01-01T00:00:00.123456789+05:30",
])
def test_at_takes_rfc3339_times(at: str) -> None:
    from pluginguard.cli import _timestamp

    assert _timestamp(at).tzinfo is not None


@pytest.mark.parametrize("anchor", ["xyz", "ab" * 31, "sha512:" + "ab" * 32, "ab" * 33])
def test_a_malformed_anchor_is_input_not_a_cut_log(workspace: Path, cli, anchor: str) -> None:
    (workspace / "audit.jsonl").write_text("")
    code, out, err = cli("audit", "verify", "audit.jsonl", "--anchor", anchor)
    assert code == 2 and one_line(err) and not out
    assert "argument --anchor" in err and "not a record hash" in err


@pytest.mark.parametrize("label", [
    "a b=c", "=c", "a=b c", "a=-b", "Example.com/a=b", "a/b/c=d", "/a=b", "k=" + "v" * 64,
    "x" * 64 + "=v", "nosign",
])
def test_namespace_labels_are_checked_as_kubernetes_does(workspace: Path, cli, label: str) -> None:
    signed_plugin(workspace, cli)
    code, _, err = cli("verify", "signed.yaml", "--policy", "policy.yaml", "--namespace-label", label)
    assert code == 2 and one_line(err) and "--namespace-label" in err


def test_valid_namespace_labels_are_taken(workspace: Path, cli) -> None:
    signed_plugin(workspace, cli)
    labels = ["team=keyserver", "example.com/tier=", "a.b-c_d=E.f-G_h", "k=" + "v" * 63]
    arguments = [part for label in labels for part in ("--namespace-label", label)]
    code, _, err = cli("verify", "signed.yaml", "--policy", "policy.yaml", *arguments)
    assert code == 0, err


@pytest.mark.parametrize("arguments, message", [
    (["verify"], ("pluginguard verify: error: the following arguments are required: "
                  "PLUGIN.yaml, --policy (see pluginguard verify --help)")),
    (["sign", "p.yaml", "--key", "k", "--format", "pgp"],
     "pluginguard sign: error: argument --format: invalid choice: 'pgp'"),
    ([], "pluginguard: error: the following arguments are required: COMMAND"),
])
def test_argument_errors_are_one_line(workspace: Path, arguments: list[str], message: str) -> None:
    result = run(*arguments, cwd=workspace)
    assert result.returncode == 2 and one_line(result.stderr)
    assert result.stderr.startswith(message)


def test_verify_help_says_it_takes_one_file(workspace: Path) -> None:
    result = run("verify", "--help", cwd=workspace)
    assert "Verify the Plugins of one manifest file" in result.stdout


# -- YAML ---------------------------------------------------------------------------------


def test_a_key_given_twice_in_a_manifest_is_refused(workspace: Path, cli) -> None:
    text = (workspace / "plugin.yaml").read_text()
    (workspace / "twice.yaml").write_text(text.replace("  name: ratelimit\n",
                                                       "  name: ratelimit\n  name: other\n"))
    for command in (["seccomp", "twice.yaml"], ["verify", "plugin.yaml", "--policy", "twice.yaml"]):
        code, _, err = cli(*command)
        assert code == 2 and one_line(err)
        assert "twice.yaml: invalid YAML: line " in err and "duplicate key 'name'" in err


def test_json_output_is_an_object_for_one_plugin_and_an_array_for_several(
    workspace: Path, cli
) -> None:
    signed = signed_plugin(workspace, cli)
    code, out, _ = cli("verify", "signed.yaml", "--policy", "policy.yaml", "--output", "json")
    assert code == 0 and json.loads(out)["plugin"] == "hkp/ratelimit"
    document = yaml.safe_load(signed.read_text())
    signed.write_text(yaml.safe_dump_all([document, document]))
    code, out, _ = cli("verify", "signed.yaml", "--policy", "policy.yaml", "--output", "json")
    assert code == 0 and [v["verified"] for v in json.loads(out)] == [True, True]
