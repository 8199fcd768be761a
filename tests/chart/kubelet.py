"""The chart's pod as the kubelet would start it, with the real service binary: its environment
from the rendered Deployment (values, Secret references), its Secret and ConfigMap volumes
written as files, and every path in the environment moved to where those files are.

Volumes are laid out as the kubelet's atomic writer lays them out, so an update behaves as in a
cluster: the data in a timestamped directory, `..data` a symlink to it, and each key a symlink
through `..data`; an update writes a new directory and swaps `..data` in one rename.

Used by tests/chart (the rendered policy file) and tests/docs (docs/DEPLOY.md end to end).
"""

import itertools
import os
import shutil
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINARY_NAME = "nats-k8s-oidc-callout"
_versions = itertools.count(1)


def free_port():
    """A TCP port of 127.0.0.1 free at the moment of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_server_bin():
    """The nats-server binary scripts/test installed (NATS_SERVER_BIN) or one on PATH."""
    path = os.environ.get("NATS_SERVER_BIN") or shutil.which("nats-server")
    assert path, "nats-server not found: run the suite with scripts/test, which installs it"
    return path


def build_binary():
    """Builds the service (debug) and returns its path; honours CARGO_TARGET_DIR."""
    built = subprocess.run(
        ["cargo", "build", "--quiet", "--locked", "--bin", BINARY_NAME],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert built.returncode == 0, built.stderr
    target = Path(os.environ.get("CARGO_TARGET_DIR") or "target")
    if not target.is_absolute():
        target = ROOT / target
    return str(target / "debug" / BINARY_NAME)


def write_volume(target, files):
    """Writes (or updates) one volume at `target`: {path in the volume: text}."""
    target.mkdir(parents=True, exist_ok=True)
    version = f"..{next(_versions):04d}_data"
    (target / version).mkdir()
    for path, text in files.items():
        (target / version / path).write_text(text)
    # The swap: a new symlink renamed over ..data, atomic like the kubelet's.
    (target / "..data_tmp").symlink_to(version)
    os.replace(target / "..data_tmp", target / "..data")
    for path in files:
        link = target / path
        if not link.is_symlink():
            link.symlink_to(Path("..data") / path)


def volume_files(deployment, secrets=None, config_maps=None):
    """{mountPath: {path: text}} of the container's Secret and ConfigMap volumes. `secrets` and
    `config_maps` map an object's name to its data ({key: text}); the projected API token is
    left out (there is no API server here)."""
    secrets = secrets or {}
    config_maps = config_maps or {}
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted = {}
    for mount in container.get("volumeMounts", []):
        vol = volumes[mount["name"]]
        if "secret" in vol:
            source, data = vol["secret"], secrets[vol["secret"]["secretName"]]
        elif "configMap" in vol:
            source, data = vol["configMap"], config_maps[vol["configMap"]["name"]]
        else:
            continue
        assert mount.get("readOnly") is True, f"volume {mount['name']} is mounted writable"
        # A subPath mount is a copy the kubelet never updates.
        assert "subPath" not in mount, f"volume {mount['name']} is mounted with a subPath"
        items = source.get("items", [{"key": k, "path": k} for k in data])
        mounted[mount["mountPath"]] = {item["path"]: data[item["key"]] for item in items}
    return mounted


def kubelet_env_and_files(deployment, root, secrets=None, config_maps=None):
    """The container's environment as the kubelet would give it, with its volumes written under
    `root` (see volume_files) and every path in the environment moved there."""
    moved = {}
    for mount_path, files in volume_files(deployment, secrets, config_maps).items():
        target = root / mount_path.lstrip("/")
        write_volume(target, files)
        moved[mount_path] = str(target)
    env = {}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # Projected service-account tokens need an API server to issue them: there is none here.
    # The self-check's token is one, so the self-check is left out with it (tests/self_check.rs
    # runs it against the API emulator with real tokens).
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    projected_paths = [
        m["mountPath"] for m in container.get("volumeMounts", [])
        if any("serviceAccountToken" in src for src in volumes[m["name"]].get("projected", {}).get("sources", []))
    ]
    token_file = next((e.get("value", "") for e in container["env"] if e["name"] == "SELF_CHECK_TOKEN_FILE"), "")
    without_self_check = any(token_file.startswith(p + "/") for p in projected_paths)
    for e in container["env"]:
        if without_self_check and e["name"].startswith("SELF_CHECK_"):
            continue
        assert not any(e.get("value", "").startswith(p + "/") for p in projected_paths), (
            f"{e['name']} names a projected token, which this stand-in cannot issue"
        )
        if "value" in e:
            value = e["value"]
            for mount_path, local in moved.items():
                # A file in a volume, or the volume's directory itself.
                if value == mount_path or value.startswith(mount_path + "/"):
                    value = local + value[len(mount_path):]
            env[e["name"]] = value
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"]][ref["key"]]
    return env
