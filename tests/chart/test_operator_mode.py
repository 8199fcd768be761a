"""Operator mode in the chart: nats.operatorMode, nats.signingKey.scoped, nats.calloutSigningKey,
nats.calloutAccount and nats.accountSigningKeys become the service's NATS_OPERATOR_MODE,
NATS_SIGNING_KEY_SCOPED, NATS_CALLOUT_SIGNING_KEY_FILE, NATS_CALLOUT_ACCOUNT and
NATS_ACCOUNT_SIGNING_KEYS_DIR; the values the service would refuse
are refused by the chart first.

The rendered environment is then handed to the real service binary, with its Secrets laid out as
the kubelet lays them out and the keys made by `keys operator`, against a real nats-server booted
on the configuration `keys operator` wrote: the service must become ready, and a changed Secret of
the accounts' keys, swapped in as the kubelet swaps it, must be read again without a restart.
"""

import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

import kubelet
from conftest import FULLNAME, IMAGE, NAMESPACE, RELEASE, SIGNING_SEED, XKEY_SEED, merge

DIR = "/etc/nats-k8s-oidc-callout"
# Shaped like account public keys (A + 55 base32 characters); never real keys.
APP = "A" + "P" * 55
PAYMENTS = "A" + "Q" * 55
AUTH = "A" + "S" * 55
ORDERS = "A" + "R" * 55
CALLOUT_SEED = "SAAFAKECALLOUTSEEDFORTHECHARTTESTSONLYZZZZZZZZZZZZZZZZZZZ"
ACCOUNT_SEEDS = {f"{PAYMENTS}.nk": "SAAFAKEPAYMENTSSEED", f"{ORDERS}.scoped.nk": "SAAFAKEORDERSSCOPEDSEED"}

OPERATOR = {
    "image": {"repository": IMAGE},
    "nats": {
        "account": APP,
        "operatorMode": True,
        "signingKey": {"existingSecret": "app-signing"},
        "calloutSigningKey": {"existingSecret": "callout-account"},
        "accountSigningKeys": {"existingSecret": "account-keys"},
        "xkey": {"existingSecret": "callout-xkey"},
        "userCredentials": {"existingSecret": "callout-login"},
    },
}
OPERATOR_ENV = ["NATS_OPERATOR_MODE", "NATS_SIGNING_KEY_SCOPED", "NATS_CALLOUT_SIGNING_KEY_FILE",
                "NATS_CALLOUT_ACCOUNT", "NATS_ACCOUNT_SIGNING_KEYS_DIR"]


def op(values=None):
    return merge(OPERATOR, values)


# The render


def test_config_mode_sets_none_of_the_operator_settings(render):
    r = render()
    for name in OPERATOR_ENV:
        assert name not in r.env
    names = [v["name"] for v in r.pod["volumes"]]
    assert "callout-key" not in names and "account-keys" not in names


def test_operator_mode_with_existing_secrets(render):
    r = render(base=OPERATOR)
    env = r.env
    assert env["NATS_OPERATOR_MODE"] == {"name": "NATS_OPERATOR_MODE", "value": "true"}
    assert env["NATS_ACCOUNT"]["value"] == APP
    assert "NATS_SIGNING_KEY_SCOPED" not in env
    assert env["NATS_SIGNING_KEY_FILE"]["value"] == f"{DIR}/signing/signing.key"
    assert env["NATS_CALLOUT_SIGNING_KEY_FILE"]["value"] == f"{DIR}/callout/callout.key"
    assert env["NATS_ACCOUNT_SIGNING_KEYS_DIR"]["value"] == f"{DIR}/accounts"
    assert "NATS_CALLOUT_ACCOUNT" not in env  # the callout key is the account's own seed
    # The callout account's seed: one file, like the other seeds.
    callout = r.volume("callout-key")["secret"]
    assert callout["secretName"] == "callout-account"
    assert callout["items"] == [{"key": "callout.key", "path": "callout.key"}]
    # The accounts' keys: the whole Secret as one directory, each key a file named after its
    # account; no items (any key the Secret gets is there) and no subPath (the kubelet swaps it).
    keys = r.volume("account-keys")["secret"]
    assert keys == {"secretName": "account-keys", "defaultMode": 0o440}
    for name, path in [("callout-key", f"{DIR}/callout"), ("account-keys", f"{DIR}/accounts")]:
        assert r.mount(name) == {"name": name, "mountPath": path, "readOnly": True}
        mode = r.volume(name)["secret"]["defaultMode"]
        assert mode & ~0o440 == 0 and mode & 0o040, oct(mode)  # readable through fsGroup only
    assert r.all("Secret") == []


def test_operator_mode_existing_secret_keys_and_scoped(render):
    r = render(op({"nats": {"signingKey": {"scoped": True, "existingSecretKey": "APP.scoped.nk"},
                            "calloutSigningKey": {"existingSecretKey": "AUTH.nk"}}}))
    assert r.env["NATS_SIGNING_KEY_SCOPED"] == {"name": "NATS_SIGNING_KEY_SCOPED", "value": "true"}
    assert r.volume("signing-key")["secret"]["items"] == [{"key": "APP.scoped.nk", "path": "signing.key"}]
    assert r.volume("callout-key")["secret"]["items"] == [{"key": "AUTH.nk", "path": "callout.key"}]


def test_operator_mode_callout_signing_key_of_a_named_account(render):
    r = render(op({"nats": {"calloutAccount": AUTH, "calloutSigningKey": {"existingSecretKey": "AUTH.signing.nk"}}}))
    assert r.env["NATS_CALLOUT_ACCOUNT"] == {"name": "NATS_CALLOUT_ACCOUNT", "value": AUTH}
    assert r.volume("callout-key")["secret"]["items"] == [{"key": "AUTH.signing.nk", "path": "callout.key"}]


def test_operator_mode_with_chart_created_secrets(render):
    values = op({"nats": {
        "signingKey": {"existingSecret": "", "create": True, "content": SIGNING_SEED},
        "calloutSigningKey": {"existingSecret": "", "create": True, "content": CALLOUT_SEED},
        "accountSigningKeys": {"existingSecret": "", "create": True, "files": ACCOUNT_SEEDS},
        "xkey": {"existingSecret": "", "create": True, "content": XKEY_SEED},
    }})
    r = render(base=values)
    callout = r.one("Secret", f"{FULLNAME}-callout-key")
    assert base64.b64decode(callout["data"]["callout.key"]).decode() == CALLOUT_SEED
    keys = r.one("Secret", f"{FULLNAME}-account-keys")
    assert {k: base64.b64decode(v).decode() for k, v in keys["data"].items()} == ACCOUNT_SEEDS
    assert r.volume("callout-key")["secret"]["secretName"] == f"{FULLNAME}-callout-key"
    assert r.volume("account-keys")["secret"]["secretName"] == f"{FULLNAME}-account-keys"
    # No seed anywhere but in a Secret, plain or base64.
    seeds = [SIGNING_SEED, CALLOUT_SEED, XKEY_SEED, *ACCOUNT_SEEDS.values()]
    for obj in r.objects:
        if obj["kind"] != "Secret":
            text = json.dumps(obj)
            for s in seeds:
                assert s not in text and base64.b64encode(s.encode()).decode() not in text, obj["kind"]
    # A changed key of either rolls the pods, as every Secret the chart creates does.
    checksum = r.deployment["spec"]["template"]["metadata"]["annotations"]["checksum/secrets"]
    for change in (
        {"nats": {"calloutSigningKey": {"content": CALLOUT_SEED[:-1] + "Y"}}},
        {"nats": {"accountSigningKeys": {"files": {f"{PAYMENTS}.nk": "SAAFAKEOTHERSEED"}}}},
    ):
        other = render(base=merge(values, change))
        assert other.deployment["spec"]["template"]["metadata"]["annotations"]["checksum/secrets"] != checksum


def test_operator_mode_policy_rules_name_accounts_by_public_key(render):
    policy = {"rules": [{"namespaces": ["payments-*"], "account": PAYMENTS}]}
    r = render(base=op({"policy": policy}))
    assert yaml.safe_load(r.one("ConfigMap")["data"]["policy.yaml"]) == policy


def test_operator_mode_notes(render):
    notes = render(base=OPERATOR).notes
    assert "Operator mode" in notes and "auth_callout" not in notes
    assert "must then be" not in notes
    without = render(base=op({"nats": {"calloutSigningKey": {"existingSecret": ""}}})).notes
    assert f"{APP} must then be\n   the callout account itself" in without


# Refusals: what the service would refuse, the chart refuses, naming the value.

TEMPLATE_REFUSALS = [
    # Operator-only settings without operator mode (the service stops: "applies to operator mode only").
    ({"nats": {"calloutSigningKey": {"existingSecret": "c"}}}, False,
     "nats.calloutSigningKey apply to operator mode only"),
    ({"nats": {"accountSigningKeys": {"existingSecret": "k"}, "signingKey": {"scoped": True}}}, False,
     "nats.accountSigningKeys, nats.signingKey.scoped apply to operator mode only"),
    ({"nats": {"calloutAccount": AUTH}}, False, "nats.calloutAccount apply to operator mode only"),
    # The account of the callout key, without the key.
    ({"nats": {"calloutAccount": AUTH, "calloutSigningKey": {"existingSecret": ""}}}, True,
     "nats.calloutAccount is set but nats.calloutSigningKey is off"),
    # Operator mode names accounts by public key.
    ({"nats": {"account": "APP"}}, True, 'nats.account="APP": in operator mode it must be'),
    ({"nats": {"account": APP.lower()}}, True, "in operator mode it must be the clients' account public key"),
    ({"policy": {"rules": [{"namespaces": ["a"]}, {"namespaces": ["b"], "account": "PAYMENTS"}]}}, True,
     'policy.rules[1].account="PAYMENTS": in operator mode it must be an account public key'),
    # The Secrets.
    ({"nats": {"accountSigningKeys": {"create": True, "existingSecret": "k", "files": ACCOUNT_SEEDS}}}, True,
     "set either nats.accountSigningKeys.create=true with nats.accountSigningKeys.files, or"),
    ({"nats": {"accountSigningKeys": {"create": True, "existingSecret": ""}}}, True,
     "nats.accountSigningKeys.create is true but nats.accountSigningKeys.files is empty"),
    ({"nats": {"accountSigningKeys": {"existingSecret": "", "files": ACCOUNT_SEEDS}}}, True,
     "nats.accountSigningKeys.files is set but nats.accountSigningKeys.create is false"),
    ({"nats": {"calloutSigningKey": {"create": True, "existingSecret": ""}}}, True,
     "nats.calloutSigningKey.create is true but nats.calloutSigningKey.content is empty"),
    ({"nats": {"calloutSigningKey": {"create": True, "content": CALLOUT_SEED}}}, True,
     "nats.calloutSigningKey: set either nats.calloutSigningKey.create=true"),
]


@pytest.mark.parametrize("values, operator, message", TEMPLATE_REFUSALS)
def test_chart_refuses(render_error, values, operator, message):
    base = OPERATOR if operator else {"image": {"repository": IMAGE},
                                      "nats": {"account": "APP", "signingKey": {"existingSecret": "k"}}}
    assert message in render_error(values, base=base)


SCHEMA_REFUSALS = [
    ({"nats": {"operatorMode": "true"}}, "/nats/operatorMode"),
    ({"nats": {"signingKey": {"scoped": "yes"}}}, "/nats/signingKey/scoped"),
    ({"nats": {"calloutSigningKey": {"existingSecret": "c", "scoped": True}}}, "/nats/calloutSigningKey"),
    ({"nats": {"calloutSigningKey": {"existingSecret": "Not_A_Name"}}}, "/nats/calloutSigningKey/existingSecret"),
    ({"nats": {"calloutAccount": "AUTH"}}, "/nats/calloutAccount"),
    ({"nats": {"calloutAccount": AUTH.lower()}}, "/nats/calloutAccount"),
    ({"nats": {"accountSigningKeys": {"existingSecret": "k", "existingSecretKey": "x"}}}, "/nats/accountSigningKeys"),
    # A file the service would refuse to read as an account's key.
    ({"nats": {"accountSigningKeys": {"create": True, "files": {"PAYMENTS.nk": "SA"}}}},
     "/nats/accountSigningKeys/files"),
    ({"nats": {"accountSigningKeys": {"create": True, "files": {f"{PAYMENTS}.seed": "SA"}}}},
     "/nats/accountSigningKeys/files"),
    ({"nats": {"accountSigningKeys": {"create": True, "files": {f"{PAYMENTS}.nk": ""}}}},
     "/nats/accountSigningKeys/files"),
    ({"nats": {"accountSigningKeys": {"create": True, "files": [f"{PAYMENTS}.nk"]}}},
     "/nats/accountSigningKeys/files"),
]


@pytest.mark.parametrize("values, where", SCHEMA_REFUSALS)
def test_schema_refuses(render_error, values, where):
    assert f"at '{where}" in render_error(values, base=OPERATOR)


# The real service on the rendered environment


def wait_ready(port, proc, log, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                return r.read().decode()
        except Exception:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    raise AssertionError(f"the service never became ready (exit {proc.poll()}):\n{log.read_text()}")


def wait_log(log, pattern, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if re.search(pattern, text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not logged:\n{log.read_text()}")


class Stack:
    """`keys operator` output, nats-server on its memory-resolver configuration, and the service
    binary started on a render of the chart."""

    def __init__(self, chart, work):
        self.chart, self.work = chart, work
        self.binary = kubelet.build_binary()
        self.keys = work / "op"
        subprocess.run([self.binary, "keys", "operator", "--dir", str(self.keys), "--client-account", "PAYMENTS"],
                       check=True, capture_output=True)
        subprocess.run([self.binary, "dev-signer", "init", "--dir", str(work / "signer")], check=True,
                       capture_output=True)
        (work / "serviceaccounts.yaml").write_text("items: []\n")
        self.nats_port = kubelet.free_port()
        conf = work / "nats.conf"
        conf.write_text(f'listen: "127.0.0.1:{self.nats_port}"\n' + (self.keys / "nats-memory.conf").read_text())
        self.nats_log = work / "nats.log"
        self.procs = [subprocess.Popen([kubelet.nats_server_bin(), "-c", str(conf), "-l", str(self.nats_log)])]
        deadline = time.monotonic() + 10
        while "Server is ready" not in (self.nats_log.read_text() if self.nats_log.exists() else ""):
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)

    def public(self, account):
        seed = (self.keys / "accounts" / f"{account}.nk").read_text().strip()
        text = (self.keys / "nats-memory.conf").read_text()
        # The configuration lists each account's public key under a comment with its name.
        m = re.search(rf"  # {account}\n  (A[A-Z2-7]{{55}}):", text)
        assert m and seed, account
        return m.group(1)

    def secrets(self):
        """The Secrets an operator would create from the `keys operator` output."""
        keys = self.keys
        app = self.public("APP")
        return {
            "app-signing": {"signing.key": (keys / "signing-keys" / f"{app}.nk").read_text(),
                            "APP.scoped.nk": (keys / "accounts" / "APP.scoped.nk").read_text()},
            "callout-account": {"callout.key": (keys / "accounts" / "AUTH.nk").read_text(),
                                "AUTH.signing.nk": (keys / "accounts" / "AUTH.signing.nk").read_text()},
            "account-keys": {p.name: p.read_text() for p in (keys / "signing-keys").iterdir()},
            "callout-xkey": {"xkey.seed": (keys / "xkey.nk").read_text()},
            "callout-login": {"user.creds": (keys / "creds" / "callout.creds").read_text()},
        }

    def start(self, values, name):
        r = self.chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        objects = [d for p, m in r.items() if p.endswith(".yaml") for d in yaml.safe_load_all(m) if d]
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        config_maps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
        env = kubelet.kubelet_env_and_files(deployment, self.work / name, self.secrets(), config_maps)
        port = kubelet.free_port()
        env.update(
            NATS_URL=f"nats://127.0.0.1:{self.nats_port}",
            SERVICE_ACCOUNTS_PATH=str(self.work / "serviceaccounts.yaml"),
            JWKS_PATH=str(self.work / "signer" / "jwks.json"),
            JWT_ISSUER="https://dev-signer.nats-k8s-oidc-callout.local",
            PORT=str(port),
        )
        log = self.work / name / "service.log"
        with open(log, "w") as f:
            proc = subprocess.Popen([self.binary], env=env, stdout=f, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        wait_ready(port, proc, log)
        return env, port, log, proc

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)


@pytest.fixture(scope="module")
def stack(chart):
    work = Path(tempfile.mkdtemp(prefix="nats-callout-chart-operator."))
    s = Stack(chart, work)
    yield s
    s.stop()
    shutil.rmtree(work, ignore_errors=True)


def test_the_service_starts_in_operator_mode_on_the_rendered_environment(stack):
    app, payments = stack.public("APP"), stack.public("PAYMENTS")
    values = op({"nats": {"account": app},
                 "policy": {"rules": [{"namespaces": ["payments-*"], "account": payments}]}})
    env, port, log, _ = stack.start(values, "plain")
    assert env["NATS_OPERATOR_MODE"] == "true"
    text = wait_log(log, r"connected to nats")
    auth = stack.public("AUTH")
    assert f"operator mode: responses signed by the callout account {auth}" in text
    assert f"operator mode: clients of account {app} get user JWTs signed by its signing key" in text
    assert f"operator mode: clients of account {payments} get user JWTs signed by its signing key" in text
    # The seeds never reach the log.
    for secret in stack.secrets().values():
        for content in secret.values():
            for line in content.splitlines():
                if line.startswith("S") and len(line) == 58:
                    assert line not in text

    # The Secret of the accounts' keys changes (a key rotated): the kubelet swaps the mounted
    # directory and the running service reads the keys again, no restart.
    keys_dir = Path(env["NATS_ACCOUNT_SIGNING_KEYS_DIR"])
    assert (keys_dir / f"{payments}.nk").is_symlink()
    new_seed = (stack.keys / "accounts" / "PAYMENTS.nk").read_text()  # the account's own seed signs too
    files = dict(stack.secrets()["account-keys"])
    files[f"{payments}.nk"] = new_seed
    kubelet.write_volume(keys_dir, files)
    text = wait_log(log, r"key files re-read: .*")
    assert f"account {payments} signed by {payments}" in text.split("key files re-read:")[-1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        assert 'nats_callout_key_reloads_total{result="success"} 1' in r.read().decode()


def test_the_service_starts_with_a_scoped_signing_key(stack):
    app = stack.public("APP")
    values = op({"nats": {"account": app, "signingKey": {"scoped": True, "existingSecretKey": "APP.scoped.nk"},
                          "accountSigningKeys": {"existingSecret": ""}}})
    env, _, log, _ = stack.start(values, "scoped")
    assert env["NATS_SIGNING_KEY_SCOPED"] == "true" and "NATS_ACCOUNT_SIGNING_KEYS_DIR" not in env
    text = wait_log(log, r"connected to nats")
    assert "the key is scoped: its scope in the account JWT decides the permissions" in text


def test_the_service_signs_responses_with_a_signing_key_of_the_callout_account(stack):
    """What `keys operator` sets up: AUTH's own seed stays with the operator, a signing key of AUTH
    (listed in its JWT) signs the answers, named with nats.calloutAccount."""
    app, auth = stack.public("APP"), stack.public("AUTH")
    signing = (stack.keys / "accounts" / "AUTH.signing.nk").read_text()
    values = op({"nats": {"account": app, "calloutAccount": auth,
                          "calloutSigningKey": {"existingSecretKey": "AUTH.signing.nk"},
                          "accountSigningKeys": {"existingSecret": ""}}})
    env, _, log, _ = stack.start(values, "callout-signing-key")
    assert env["NATS_CALLOUT_ACCOUNT"] == auth
    text = wait_log(log, r"connected to nats")
    assert f"a signing key of the callout account {auth}" in text
    assert all(line not in text for line in signing.splitlines() if line.startswith("S"))
