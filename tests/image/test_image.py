"""The container image, built from the Containerfile by scripts/build-image with buildah.

The image is built once per session into a private buildah storage and checked in three ways:
the exported OCI archive (what a registry receives: config, labels, the exact file list), the
binary run from the image alone with `buildah run` (static, starts, runs as 65532, no shell), and
the SBOM carried in the image and beside the archive, against Cargo.lock and `cargo tree`.
"""

import gzip
import hashlib
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
import tomllib
from datetime import datetime
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BINARY = "/usr/local/bin/nats-k8s-oidc-callout"
SBOM = "/usr/share/doc/nats-k8s-oidc-callout/sbom.cdx.json"
TRIPLES = {"amd64": "x86_64-unknown-linux-musl", "arm64": "aarch64-unknown-linux-musl"}


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


def single_layer(path):
    """The config JSON and the (uncompressed) single layer of the image in the OCI archive."""
    with tarfile.open(path) as oci:
        index = json.loads(oci.extractfile("index.json").read())
        manifest = json.loads(blob(oci, index["manifests"][0]["digest"]))
        config = json.loads(blob(oci, manifest["config"]["digest"]))
        assert len(manifest["layers"]) == 1, manifest["layers"]
        layer = blob(oci, manifest["layers"][0]["digest"])
    if layer[:2] == b"\x1f\x8b":
        layer = gzip.decompress(layer)
    return config, layer


def amd64_archive():
    return ROOT / "dist" / f"nats-k8s-oidc-callout-{crate_version()}-amd64.oci.tar"


@pytest.fixture(scope="session")
def archive(image):
    """The exported OCI archive: (config JSON, {path: TarInfo} of the single layer)."""
    config, layer = single_layer(amd64_archive())
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
        SBOM.lstrip("/"),
    ]
    assert not [m for m in files.values() if m.issym() or m.islnk()], "no links, no shell"
    assert files["usr/local/bin/nats-k8s-oidc-callout"].mode & 0o777 == 0o755
    assert files["etc/ssl/certs/ca-certificates.crt"].size > 10_000
    assert files[SBOM.lstrip("/")].mode & 0o777 == 0o644


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


# The SBOM: what cargo-cyclonedx says the binary is made of, checked against Cargo's own view.


def sbom_beside(arch):
    return ROOT / "dist" / f"nats-k8s-oidc-callout-{crate_version()}-linux-{arch}.cdx.json"


def cargo_json(*args):
    out = subprocess.run(
        ["cargo", *args, "--locked"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout


def cargo_tree(triple, edges):
    """{(name, version)} of the packages `cargo tree` reaches over these edge kinds when
    building for `triple` (the features of the build, as resolver 2 decides them), but ours."""
    out = cargo_json("tree", "-e", edges, "--target", triple, "--prefix", "none", "--format", "{p}")
    found = {tuple(re.match(r"(\S+) v(\S+)", line).groups()) for line in out.splitlines() if line}
    return {p for p in found if p[0] != "nats-k8s-oidc-callout"}


def lock_packages():
    """{(name, version): checksum or None} of Cargo.lock."""
    lock = tomllib.loads((ROOT / "Cargo.lock").read_text())
    return {(p["name"], p["version"]): p.get("checksum") for p in lock["package"]}


def check_sbom(bom, triple):
    """Asserts that the CycloneDX document `bom` describes this package's binary for `triple`:
    every crate compiled into it at its Cargo.lock version and checksum, no dev-only and no
    build-only crate."""
    assert bom["bomFormat"] == "CycloneDX"
    assert bom["specVersion"] == "1.5"
    meta = bom["metadata"]
    assert meta["component"]["name"] == "nats-k8s-oidc-callout"
    assert meta["component"]["version"] == crate_version()
    assert meta["component"]["licenses"] == [{"expression": "Apache-2.0"}]
    assert {"name": "cdx:rustc:sbom:target:triple", "value": triple} in meta["properties"]
    assert "path+file:///" not in json.dumps(bom), "the build directory leaked into the SBOM"

    lock = lock_packages()
    listed = {}
    for c in bom["components"]:
        key = (c["name"], c["version"])
        assert key in lock, f"{key} is not in Cargo.lock"
        assert c.get("licenses"), f"{key} has no license"
        assert c["purl"] == f"pkg:cargo/{c['name']}@{c['version']}"
        hashes = {h["alg"]: h["content"] for h in c.get("hashes", [])}
        assert hashes.get("SHA-256") == lock[key], f"{key}: checksum differs from Cargo.lock"
        listed[key] = c
    assert len(listed) == len(bom["components"]), "a crate is listed twice"

    runtime = cargo_tree(triple, "normal")
    missing = runtime - set(listed)
    assert not missing, f"crates built into the binary but not in the SBOM: {sorted(missing)}"
    names = {name for name, _ in listed}
    assert {"rustls", "ring", "ureq", "nkeys", "serde_json"} <= names

    # Dev-dependencies (the test-only NATS client, token minting, …) and what only they bring.
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    dev = set(manifest["dev-dependencies"]) - set(manifest["dependencies"])
    assert "nats" in dev
    assert not names & dev, f"dev-dependencies in the SBOM: {sorted(names & dev)}"
    build_only = cargo_tree(triple, "normal,build") - runtime
    assert ("cc", lock_version("cc")) in build_only
    assert not set(listed) & build_only, f"build-only crates in the SBOM: {sorted(set(listed) & build_only)}"

    # cargo-cyclonedx reads `cargo metadata`, which unifies features across normal and dev
    # dependencies (CycloneDX/cyclonedx-rust-cargo#760): an optional dependency that only a
    # dev-dependency's features switch on is listed too. Allow exactly that, nothing else.
    metadata = json.loads(cargo_json("metadata", "--format-version", "1", "--filter-platform", triple))
    optional_of_runtime = {
        d["name"]
        for p in metadata["packages"]
        if (p["name"], p["version"]) in runtime
        for d in p["dependencies"]
        if d["kind"] is None and d["optional"]
    }
    for name, version in set(listed) - runtime:
        assert name in optional_of_runtime, (
            f"{name} {version} is in the SBOM but neither built into the binary nor an optional "
            "dependency of a crate that is"
        )


def lock_version(name):
    versions = [v for n, v in lock_packages() if n == name]
    assert len(versions) == 1, (name, versions)
    return versions[0]


def test_sbom_beside_the_archive_describes_the_amd64_binary(image):
    assert amd64_archive().exists()
    check_sbom(json.loads(sbom_beside("amd64").read_text()), TRIPLES["amd64"])


def test_sbom_in_the_image_is_the_one_beside_it(image):
    config, layer = single_layer(amd64_archive())
    with tarfile.open(fileobj=io.BytesIO(layer)) as t:
        member = next(m for m in t.getmembers() if m.name.lstrip("./") == SBOM.lstrip("/"))
        inside = t.extractfile(member).read()
    assert inside == sbom_beside("amd64").read_bytes()
    # Dated like the image: by the commit, not by the build.
    created = config["config"]["Labels"]["org.opencontainers.image.created"]
    stamp = json.loads(inside)["metadata"]["timestamp"]
    assert datetime.fromisoformat(stamp[:19] + "+00:00") == datetime.fromisoformat(created)


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


def test_arm64_sbom_describes_the_arm64_binary_beside_and_in_its_root_filesystem(multiarch):
    beside = sbom_beside("arm64")
    assert beside.parent == multiarch.parent
    inside = ROOT / "dist" / "rootfs-arm64" / SBOM.lstrip("/")
    assert inside.read_bytes() == beside.read_bytes()
    check_sbom(json.loads(beside.read_text()), TRIPLES["arm64"])


@pytest.fixture
def registry(tmp_path):
    """A local registry (Debian's docker-registry, plain HTTP on loopback): its host:port."""
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
    server = subprocess.Popen(
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
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def guide_push_command(guide, multiarch, registry):
    """The guide's `skopeo copy … docker://…` command (continuation lines joined), checked to push
    the archive the build makes, and aimed at `registry` instead: (args, local destination)."""
    text = (ROOT / "docs" / guide).read_text()
    command = re.search(r"^\s*(skopeo copy .*?\n\s+docker://\S+)$", text.replace("\\\n", "\n"), re.M)
    assert command, f"{guide} has no skopeo copy command"
    args = shlex.split(command.group(1))
    source = next(a for a in args if a.startswith("oci-archive:"))
    assert source == f"oci-archive:dist/{multiarch.name}", "the guide pushes another file than the build makes"
    dest = next(a for a in args if a.startswith("docker://"))
    local = "docker://%s/%s" % (registry, dest.split("/", 3)[3])
    return [a if a != dest else local for a in args] + ["--dest-tls-verify=false"], local


def test_deploy_guides_push_command_reaches_a_registry(multiarch, registry):
    """docs/DEPLOY.md step 1 pushes the archive with skopeo: run that command against a local
    registry and pull both platforms back."""
    run, local = guide_push_command("DEPLOY.md", multiarch, registry)
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


def test_release_guide_pins_the_pushed_digest_and_the_sbom_travels_with_it(multiarch, registry, tmp_path):
    """docs/RELEASING.md: the push records the manifest list's digest, which is the archive's,
    the one the registry serves, and the one the chart then puts in the pod; each platform's
    image pulled back by that digest carries its SBOM."""
    run, local = guide_push_command("RELEASING.md", multiarch, registry)
    digest_file = ROOT / run[run.index("--digestfile") + 1]
    assert digest_file.name == multiarch.name.replace(".oci.tar", ".digest")
    digest_file.unlink(missing_ok=True)
    pushed = subprocess.run(run, cwd=ROOT, capture_output=True, text=True)
    assert pushed.returncode == 0, pushed.stderr
    digest = digest_file.read_text().strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), digest

    with tarfile.open(multiarch) as oci:
        index = json.loads(oci.extractfile("index.json").read())
    assert digest == index["manifests"][0]["digest"], "the registry holds other manifests than the archive"
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", local], capture_output=True, check=True
    ).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    assert len(json.loads(raw)["manifests"]) == 2

    # The guide's helm command reads the same file into image.digest; the chart pins it.
    guide = (ROOT / "docs" / "RELEASING.md").read_text()
    assert f'--set image.digest="$(cat dist/{digest_file.name})"' in guide
    import helm_python as h

    repository = re.search(r"^\s*repository: (\S+)$", guide, re.M).group(1)
    values = {
        "image": {"repository": repository, "digest": digest},
        "nats": {"account": "APP", "signingKey": {"existingSecret": "callout-keys"}},
    }
    rendered = h.Chart.load(str(ROOT / "helm" / "nats-k8s-oidc-callout")).render(
        values, name="nats-k8s-oidc-callout", namespace="nats-auth", is_install=True
    )
    deployment = yaml.safe_load(rendered["nats-k8s-oidc-callout/templates/deployment.yaml"])
    images = [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert images == [f"{repository}@{digest}"]

    # The guide's read-back of the SBOM: copy one platform's image by digest, untar the layers.
    by_digest = local.rsplit(":", 1)[0] + "@" + digest
    for arch in ("amd64", "arm64"):
        image_dir = tmp_path / f"image-{arch}"
        pulled = subprocess.run(
            ["skopeo", "copy", "--src-tls-verify=false", "--override-arch", arch,
             by_digest, f"dir:{image_dir}"],
            capture_output=True, text=True,
        )
        assert pulled.returncode == 0, pulled.stderr
        found = []
        for layer in image_dir.iterdir():
            out = subprocess.run(
                ["tar", "-xOf", str(layer), SBOM.lstrip("/")], capture_output=True
            )
            if out.returncode == 0:
                found.append(out.stdout)
        assert found == [sbom_beside(arch).read_bytes()], f"{arch}: SBOM not in the pushed image"
