"""The container image, built from the Containerfile by scripts/build-image with buildah.

The image is built once per session into a private buildah storage and checked in two ways:
the exported OCI archive (what a registry receives: config, labels, the exact file list) and
the binary run from the image alone with `buildah run` (static, starts, runs as 65532, no shell).
"""

import gzip
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = "/usr/local/bin/nats-k8s-oidc-callout"


def crate_version() -> str:
    for line in (ROOT / "Cargo.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("no version in Cargo.toml")


@pytest.fixture(scope="session")
def storage():
    root = tempfile.mkdtemp(prefix="nats-callout-buildah.")
    yield root
    # vfs layers are plain directories; buildah's own cleanup keeps mounts tidy.
    subprocess.run(buildah_cmd(root) + ["rm", "--all"], capture_output=True)
    subprocess.run(buildah_cmd(root) + ["rmi", "--all", "--force"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def buildah_cmd(root):
    return ["buildah", "--storage-driver", "vfs", "--root", root, "--runroot", root + "/run"]


@pytest.fixture(scope="session")
def image(storage):
    if shutil.which("buildah") is None:
        pytest.fail("buildah is not installed: scripts/test installs it (Debian package buildah)")
    env = dict(os.environ, BUILDAH_STORAGE_ROOT=storage)
    built = subprocess.run(
        [str(ROOT / "scripts/build-image")], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert built.returncode == 0, f"scripts/build-image failed:\n{built.stderr[-4000:]}"
    tag = built.stdout.strip().splitlines()[-1]
    assert tag == f"nats-k8s-oidc-callout:{crate_version()}"
    return tag


def blob(oci, digest):
    """The bytes of the blob `digest` (sha256:…) of an opened OCI archive."""
    return oci.extractfile("blobs/sha256/" + digest.split(":", 1)[1]).read()


@pytest.fixture(scope="session")
def archive(image):
    """The exported OCI archive: (config JSON, {path: TarInfo} of the single layer)."""
    path = ROOT / "dist" / f"nats-k8s-oidc-callout-{crate_version()}-amd64.oci.tar"
    with tarfile.open(path) as oci:
        index = json.loads(oci.extractfile("index.json").read())
        manifest = json.loads(blob(oci, index["manifests"][0]["digest"]))
        config = json.loads(blob(oci, manifest["config"]["digest"]))
        assert len(manifest["layers"]) == 1, manifest["layers"]
        layer = blob(oci, manifest["layers"][0]["digest"])
        if layer[:2] == b"\x1f\x8b":
            layer = gzip.decompress(layer)
        with tarfile.open(fileobj=io.BytesIO(layer)) as t:
            files = {m.name.lstrip("./").rstrip("/"): m for m in t.getmembers()}
    return config, files


def run_in_image(storage, image, *args, env=(), volumes=()):
    """Runs `args` in a fresh container of `image`, with only these `(name, value)` environment
    variables besides the image's own, and these `(host dir, container dir)` mounted read-only."""
    cmd = buildah_cmd(storage)
    container = subprocess.run(
        cmd + ["from", "--quiet", image], capture_output=True, text=True, check=True
    ).stdout.strip()
    options = [f"--env={name}={value}" for name, value in env]
    options += [f"--volume={host}:{inside}:ro" for host, inside in volumes]
    try:
        return subprocess.run(
            cmd + ["run", "--isolation", "chroot"] + options + [container, "--"] + list(args),
            capture_output=True,
            text=True,
        )
    finally:
        subprocess.run(cmd + ["rm", container], capture_output=True)


def test_config_runs_the_binary_as_non_root(archive):
    config, _ = archive
    c = config["config"]
    assert c["User"] == "65532:65532"
    assert c["Entrypoint"] == [BINARY]
    assert not c.get("Cmd"), "arguments come from the pod spec, not the image"
    assert "8080/tcp" in c.get("ExposedPorts", {})
    assert "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" in c.get("Env", [])
    assert config["architecture"] == "amd64" and config["os"] == "linux"


def test_oci_labels(archive):
    labels = archive[0]["config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "nats-k8s-oidc-callout"
    assert labels["org.opencontainers.image.version"] == crate_version()
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == (revision or "unknown")
    assert labels["org.opencontainers.image.created"].startswith("20")


def test_contains_exactly_binary_ca_bundle_and_passwd(archive):
    _, files = archive
    regular = sorted(name for name, m in files.items() if m.isfile())
    assert regular == [
        "etc/group",
        "etc/passwd",
        "etc/ssl/certs/ca-certificates.crt",
        "usr/local/bin/nats-k8s-oidc-callout",
    ]
    assert not [m for m in files.values() if m.issym() or m.islnk()], "no links, no shell"
    assert files["usr/local/bin/nats-k8s-oidc-callout"].mode & 0o777 == 0o755
    assert files["etc/ssl/certs/ca-certificates.crt"].size > 10_000


def test_binary_is_static(archive):
    rootfs = ROOT / "dist" / "rootfs-amd64" / BINARY.lstrip("/")
    elf = rootfs.read_bytes()
    assert elf[:4] == b"\x7fELF"
    # A dynamically linked ELF names its loader in a PT_INTERP segment ("/lib/ld-...").
    assert b"/lib/ld-" not in elf and b"ld-linux" not in elf, "binary is dynamically linked"


def test_binary_starts_from_the_image_alone(storage, image):
    out = run_in_image(storage, image, BINARY, "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"nats-k8s-oidc-callout {crate_version()}"


def test_missing_settings_are_reported_from_the_image(storage, image):
    out = run_in_image(storage, image, BINARY)
    assert out.returncode != 0
    assert "NATS_SIGNING_KEY_FILE is required" in out.stderr
    assert "NATS_ACCOUNT is required" in out.stderr


def test_runs_as_uid_65532_without_a_shell(storage, image):
    # As 65532 the image's / is not writable: the key helper's refusal proves the user.
    out = run_in_image(storage, image, BINARY, "keys", "--dir", "/etc")
    assert out.returncode != 0
    assert "ermission denied" in out.stderr, out.stderr
    shell = run_in_image(storage, image, "/bin/sh", "-c", "true")
    assert shell.returncode != 0


EXPLAIN_ACCOUNTS = """\
apiVersion: v1
kind: ServiceAccount
metadata:
  name: api
  namespace: payments
  uid: 5d0c2f7e-0000-4000-8000-000000000001
  annotations:
    nats.io/allowed-pub-subjects: "orders.>, ledger.other.x"
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: ops
  namespace: kube-system
  uid: 5d0c2f7e-0000-4000-8000-000000000002
"""

EXPLAIN_POLICY = """\
namespaces:
  exclude: ["kube-*"]
rules:
  - namespaces: ["payments"]
    account: PAYMENTS
    annotations:
      publish: ["orders.>"]
"""


def test_explain_runs_from_the_image_on_a_mounted_serviceaccount_file_and_policy(
    storage, image, tmp_path
):
    """`explain` as `kubectl exec` would run it in the pod, where there is no shell: the binary
    alone, only the settings it needs, its files mounted as a ConfigMap would be."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "serviceaccounts.yaml").write_text(EXPLAIN_ACCOUNTS)
    (config / "policy.yaml").write_text(EXPLAIN_POLICY)
    # Readable by the image's user 65532, as a ConfigMap volume is.
    config.chmod(0o755)
    for f in config.iterdir():
        f.chmod(0o644)
    env = [
        ("SERVICE_ACCOUNTS_PATH", "/config/serviceaccounts.yaml"),
        ("POLICY_FILE", "/config/policy.yaml"),
        ("NATS_ACCOUNT", "APP"),
        ("INBOX_MODE", "private"),
    ]
    mounts = [(config, "/config")]

    out = run_in_image(
        storage, image, BINARY, "explain", "payments/api", "--output", "json",
        env=env, volumes=mounts,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["service_account"]["uid"] == "5d0c2f7e-0000-4000-8000-000000000001"
    assert report["source"] == {"kind": "file", "location": "/config/serviceaccounts.yaml"}
    assert report["inbox_mode"] == "private"
    assert report["account"] == {"name": "PAYMENTS", "from": "rule"}
    assert report["permissions"]["publish"]["allow"] == ["payments.>", "_INBOX.>", "orders.>"]
    assert report["permissions"]["subscribe"]["allow"] == ["payments.>", "_INBOX.payments.api.>"]
    assert [(e["entry"], e["outcome"]) for e in report["entries"]] == [
        ("orders.>", "granted"),
        ("ledger.other.x", "dropped"),
    ]

    text = run_in_image(storage, image, BINARY, "explain", "payments/api", env=env, volumes=mounts)
    assert text.returncode == 0, text.stderr
    assert "account         PAYMENTS (named by rules[0])" in text.stdout

    refused = run_in_image(
        storage, image, BINARY, "explain", "kube-system/ops", env=env, volumes=mounts
    )
    assert refused.returncode == 3, refused.stderr
    assert 'namespaces.exclude pattern "kube-*" matches it' in refused.stderr

    missing = run_in_image(
        storage, image, BINARY, "explain", "payments/api",
        env=[(k, v) for k, v in env if k != "POLICY_FILE"] + [("POLICY_FILE", "/config/nope.yaml")],
        volumes=mounts,
    )
    assert missing.returncode == 5
    assert "POLICY_FILE: invalid policy /config/nope.yaml" in missing.stderr


# Last: the multi-arch build replaces the single-arch image name with a manifest list.
@pytest.fixture(scope="session")
def multiarch(storage, image):
    """amd64 + arm64 images under one manifest list, exported as one OCI archive."""
    env = dict(os.environ, BUILDAH_STORAGE_ROOT=storage)
    built = subprocess.run(
        [str(ROOT / "scripts/build-image"), "amd64", "arm64"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert built.returncode == 0, f"scripts/build-image amd64 arm64 failed:\n{built.stderr[-4000:]}"
    return ROOT / "dist" / f"nats-k8s-oidc-callout-{crate_version()}.oci.tar"


def test_multi_arch_manifest_list_holds_amd64_and_arm64(multiarch):
    with tarfile.open(multiarch) as oci:
        def doc(digest):
            return json.loads(blob(oci, digest))

        outer = json.loads(oci.extractfile("index.json").read())["manifests"]
        assert len(outer) == 1
        assert outer[0]["annotations"]["org.opencontainers.image.ref.name"] == (
            f"nats-k8s-oidc-callout:{crate_version()}"
        )
        platforms = {}
        for m in doc(outer[0]["digest"])["manifests"]:
            config = doc(doc(m["digest"])["config"]["digest"])
            assert config["architecture"] == m["platform"]["architecture"]
            assert config["config"]["User"] == "65532:65532"
            platforms[m["platform"]["architecture"]] = m["platform"]["os"]
    assert platforms == {"amd64": "linux", "arm64": "linux"}


def test_arm64_binary_is_static_and_starts(multiarch):
    binary = ROOT / "dist" / "rootfs-arm64" / BINARY.lstrip("/")
    elf = binary.read_bytes()
    assert elf[:4] == b"\x7fELF" and elf[18:20] == (183).to_bytes(2, "little"), "not an aarch64 ELF"
    assert b"/lib/ld-" not in elf, "binary is dynamically linked"
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if qemu is None:
        pytest.fail("qemu-aarch64-static is not installed: scripts/ensure-test-tools installs it")
    out = subprocess.run([qemu, str(binary), "--version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"nats-k8s-oidc-callout {crate_version()}"


def test_deploy_guides_push_command_reaches_a_registry(multiarch, tmp_path):
    """docs/DEPLOY.md step 1 pushes the archive with skopeo: run that command against a local
    registry (Debian's docker-registry, plain HTTP on loopback) and pull both platforms back."""
    guide = (ROOT / "docs" / "DEPLOY.md").read_text()
    command = re.search(r"^(skopeo copy .*?\n\s+docker://\S+)$", guide.replace("\\\n", "\n"), re.M)
    assert command, "DEPLOY.md has no skopeo copy command"
    args = shlex.split(command.group(1))
    source = next(a for a in args if a.startswith("oci-archive:"))
    assert source == f"oci-archive:dist/{multiarch.name}", "the guide pushes another file than the build makes"
    for tool in ("skopeo", "docker-registry"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: scripts/ensure-test-tools installs it")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    registry = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the local registry did not start"
                time.sleep(0.05)
        dest = next(a for a in args if a.startswith("docker://"))
        local = "docker://127.0.0.1:%d/%s" % (port, dest.split("/", 3)[3])
        run = [a if a != dest else local for a in args] + ["--dest-tls-verify=false"]
        pushed = subprocess.run(run, cwd=ROOT, capture_output=True, text=True)
        assert pushed.returncode == 0, pushed.stderr
        for arch in ("amd64", "arm64"):
            out = subprocess.run(
                ["skopeo", "inspect", "--tls-verify=false", "--override-arch", arch, local],
                capture_output=True, text=True,
            )
            assert out.returncode == 0, out.stderr
            info = json.loads(out.stdout)
            assert info["Architecture"] == arch
            assert info["Labels"]["org.opencontainers.image.version"] == crate_version()
    finally:
        registry.terminate()
        registry.wait(timeout=10)
