"""Secrets reach the pod only from Secrets: files in read-only volumes, or secretKeyRef."""

import base64
import json

from conftest import CREDS, FULLNAME, SIGNING_SEED, TOKEN, XKEY_SEED

DIR = "/etc/nats-k8s-oidc-callout"


def b64(s):
    return base64.b64encode(s.encode()).decode()


def assert_secret_file(r, volume, secret_name, key, path, mount_dir):
    vol = r.volume(volume)["secret"]
    assert vol["secretName"] == secret_name
    assert vol["items"] == [{"key": key, "path": path}]
    mode = vol["defaultMode"]
    assert mode & ~0o440 == 0, oct(mode)  # 0440 or tighter
    assert mode & 0o040, "group (fsGroup 65532) must be able to read"
    mount = r.mount(volume)
    assert mount["mountPath"] == mount_dir
    assert mount["readOnly"] is True


def assert_no_secret_outside_secrets(r, *secrets):
    """No secret, plain or base64, in any object but a Secret; no env value equals one."""
    for obj in r.objects:
        if obj["kind"] == "Secret":
            continue
        text = json.dumps(obj)
        for s in secrets:
            assert s not in text, f"{obj['kind']} holds a secret"
            assert b64(s) not in text, f"{obj['kind']} holds a base64 secret"
    for e in r.env.values():
        assert "value" not in e or e["value"] not in secrets, e["name"]
    assert not any(s in r.notes for s in secrets)


def chart_secret(r, suffix):
    return r.one("Secret", f"{FULLNAME}-{suffix}")


def test_existing_secrets_for_signing_xkey_creds(render):
    r = render(
        {
            "nats": {
                "signingKey": {"existingSecret": "keys", "existingSecretKey": "seed"},
                "xkey": {"existingSecret": "keys"},
                "userCredentials": {"existingSecret": "login"},
            }
        }
    )
    assert r.all("Secret") == []
    assert "checksum/secrets" not in (r.deployment["spec"]["template"]["metadata"].get("annotations") or {})
    assert_secret_file(r, "signing-key", "keys", "seed", "signing.key", f"{DIR}/signing")
    assert_secret_file(r, "xkey", "keys", "xkey.seed", "xkey.seed", f"{DIR}/xkey")
    assert_secret_file(r, "user-creds", "login", "user.creds", "user.creds", f"{DIR}/creds")
    env = r.env
    assert env["NATS_SIGNING_KEY_FILE"]["value"] == f"{DIR}/signing/signing.key"
    assert env["NATS_XKEY_SEED_FILE"]["value"] == f"{DIR}/xkey/xkey.seed"
    assert env["NATS_USER_CREDS_FILE"]["value"] == f"{DIR}/creds/user.creds"
    assert "NATS_TOKEN" not in env and "NATS_TOKEN_FILE" not in env


def test_existing_secret_for_token(render):
    r = render({"nats": {"tokenSecret": {"existingSecret": "nats-login", "existingSecretKey": "tok"}}})
    assert r.all("Secret") == []
    # A file (rotated in place by the kubelet), not an environment variable.
    assert_secret_file(r, "nats-token", "nats-login", "tok", "token", f"{DIR}/token")
    assert r.env["NATS_TOKEN_FILE"]["value"] == f"{DIR}/token/token"
    assert "NATS_TOKEN" not in r.env and "NATS_USER_CREDS_FILE" not in r.env


def test_existing_secret_for_url(render):
    r = render({"nats": {"urlSecret": {"existingSecret": "nats-url"}}})
    assert r.env["NATS_URL"] == {"name": "NATS_URL", "valueFrom": {"secretKeyRef": {"name": "nats-url", "key": "url"}}}


def test_chart_created_secrets_signing_xkey_creds(render):
    values = {
        "nats": {
            "signingKey": {"existingSecret": "", "create": True, "content": SIGNING_SEED},
            "xkey": {"create": True, "content": XKEY_SEED},
            "userCredentials": {"create": True, "content": CREDS},
        }
    }
    r = render(values)
    for suffix, key, content in [
        ("signing-key", "signing.key", SIGNING_SEED),
        ("xkey", "xkey.seed", XKEY_SEED),
        ("user-creds", "user.creds", CREDS),
    ]:
        s = chart_secret(r, suffix)
        assert s["type"] == "Opaque"
        assert base64.b64decode(s["data"][key]).decode() == content
    assert_secret_file(r, "signing-key", f"{FULLNAME}-signing-key", "signing.key", "signing.key", f"{DIR}/signing")
    assert_secret_file(r, "xkey", f"{FULLNAME}-xkey", "xkey.seed", "xkey.seed", f"{DIR}/xkey")
    assert_secret_file(r, "user-creds", f"{FULLNAME}-user-creds", "user.creds", "user.creds", f"{DIR}/creds")
    assert_no_secret_outside_secrets(r, SIGNING_SEED, XKEY_SEED, CREDS)


def test_chart_created_token(render):
    r = render({"nats": {"token": TOKEN}})
    s = chart_secret(r, "nats-token")
    assert base64.b64decode(s["data"]["token"]).decode() == TOKEN
    assert_secret_file(r, "nats-token", f"{FULLNAME}-nats-token", "token", "token", f"{DIR}/token")
    assert r.env["NATS_TOKEN_FILE"]["value"] == f"{DIR}/token/token"
    assert "NATS_TOKEN" not in r.env
    assert_no_secret_outside_secrets(r, TOKEN)


def test_checksum_annotation_follows_the_content(render):
    def checksum(values):
        return render(values).deployment["spec"]["template"]["metadata"]["annotations"]["checksum/secrets"]

    signing = {"nats": {"signingKey": {"existingSecret": "", "create": True, "content": SIGNING_SEED}}}
    a = checksum(signing)
    assert len(a) == 64
    assert a == checksum(signing)  # stable
    other_seed = {"nats": {"signingKey": {"existingSecret": "", "create": True, "content": SIGNING_SEED[:-1] + "Z"}}}
    assert checksum(other_seed) != a
    with_token = {"nats": {"signingKey": signing["nats"]["signingKey"], "token": TOKEN}}
    b = checksum(with_token)
    assert b != a
    with_other_token = {"nats": {"signingKey": signing["nats"]["signingKey"], "token": TOKEN + "2"}}
    assert checksum(with_other_token) != b
    with_xkey = {"nats": {"signingKey": signing["nats"]["signingKey"], "xkey": {"create": True, "content": XKEY_SEED}}}
    assert checksum(with_xkey) != a
    # Pod annotations given by the user stay next to it.
    r = render({**signing, "podAnnotations": {"team": "auth"}})
    assert r.deployment["spec"]["template"]["metadata"]["annotations"]["team"] == "auth"


def test_xkey_on_and_off(render):
    off = render()
    assert "NATS_XKEY_SEED_FILE" not in off.env
    assert "xkey" not in [v["name"] for v in off.pod["volumes"]]
    assert "xkey" not in [m["name"] for m in off.container["volumeMounts"]]
    on = render({"nats": {"xkey": {"existingSecret": "keys"}}})
    assert on.env["NATS_XKEY_SEED_FILE"]["value"] == f"{DIR}/xkey/xkey.seed"
    assert on.volume("xkey")["secret"]["secretName"] == "keys"


def test_secret_env_and_secret_volume(render):
    content = base64.b64encode(b"ca bundle").decode()
    r = render({"secretEnv": {"EXTRA_PASSWORD": "hunter2", "N": 3}, "secretVolume": {"ca.pem": content}})
    env_secret = chart_secret(r, "env")
    assert {k: base64.b64decode(v).decode() for k, v in env_secret["data"].items()} == {
        "EXTRA_PASSWORD": "hunter2",
        "N": "3",
    }
    assert {"secretRef": {"name": f"{FULLNAME}-env"}} in r.container["envFrom"]
    files = chart_secret(r, "files")
    assert files["data"] == {"ca.pem": content}
    vol = r.volume("secret-files")["secret"]
    assert vol["secretName"] == f"{FULLNAME}-files"
    assert vol["defaultMode"] & ~0o440 == 0
    assert r.mount("secret-files") == {"name": "secret-files", "mountPath": "/secrets", "readOnly": True}
    assert_no_secret_outside_secrets(r, "hunter2")
    assert "checksum/secrets" in r.deployment["spec"]["template"]["metadata"]["annotations"]


NKEY_SEED = "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4"


def test_nkey_seed_login_from_an_existing_or_a_chart_created_secret(render):
    r = render({"nats": {"nkeySeed": {"existingSecret": "callout-nkey", "existingSecretKey": "seed"}}})
    assert_secret_file(r, "nkey-seed", "callout-nkey", "seed", "nkey.seed", f"{DIR}/nkey")
    assert r.env["NATS_NKEY_SEED_FILE"]["value"] == f"{DIR}/nkey/nkey.seed"
    assert "NATS_TOKEN" not in r.env and "NATS_USER_CREDS_FILE" not in r.env

    r = render({"nats": {"nkeySeed": {"create": True, "content": NKEY_SEED}}})
    s = chart_secret(r, "nkey-seed")
    assert base64.b64decode(s["data"]["nkey.seed"]).decode() == NKEY_SEED
    assert_secret_file(r, "nkey-seed", f"{FULLNAME}-nkey-seed", "nkey.seed", "nkey.seed", f"{DIR}/nkey")
    assert_no_secret_outside_secrets(r, NKEY_SEED)
    annotations = r.deployment["spec"]["template"]["metadata"]["annotations"]
    other = render({"nats": {"nkeySeed": {"create": True, "content": NKEY_SEED[:-1] + "D"}}})
    assert other.deployment["spec"]["template"]["metadata"]["annotations"]["checksum/secrets"] != annotations["checksum/secrets"]


def test_tls_files_come_from_one_secret_mounted_as_a_directory(render):
    # A CA only: the service trusts it instead of the system CAs.
    r = render({"nats": {"tls": {"existingSecret": "nats-client-tls"}}})
    vol = r.volume("nats-tls")["secret"]
    assert vol["secretName"] == "nats-client-tls"
    assert vol["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert r.mount("nats-tls") == {"name": "nats-tls", "mountPath": f"{DIR}/nats-tls", "readOnly": True}
    assert r.env["NATS_CA_FILE"]["value"] == f"{DIR}/nats-tls/ca.crt"
    assert "NATS_CLIENT_CERT_FILE" not in r.env and "NATS_TLS_REQUIRED" not in r.env

    # Mutual TLS with keys named otherwise, TLS required.
    r = render(
        {
            "nats": {
                "tls": {
                    "existingSecret": "mtls",
                    "caKey": "",
                    "clientCertificate": True,
                    "certKey": "cert.pem",
                    "keyKey": "key.pem",
                    "required": True,
                }
            }
        }
    )
    assert r.volume("nats-tls")["secret"]["items"] == [
        {"key": "cert.pem", "path": "tls.crt"},
        {"key": "key.pem", "path": "tls.key"},
    ]
    assert "NATS_CA_FILE" not in r.env
    assert r.env["NATS_CLIENT_CERT_FILE"]["value"] == f"{DIR}/nats-tls/tls.crt"
    assert r.env["NATS_CLIENT_KEY_FILE"]["value"] == f"{DIR}/nats-tls/tls.key"
    assert r.env["NATS_TLS_REQUIRED"]["value"] == "true"

    # Off by default: no volume, no variable.
    r = render({})
    assert not any(v["name"] == "nats-tls" for v in r.deployment["spec"]["template"]["spec"]["volumes"])
    assert not any(k.startswith("NATS_CA") or k.startswith("NATS_CLIENT") for k in r.env)
