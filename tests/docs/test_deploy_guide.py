"""docs/DEPLOY.md followed on this machine, as far as it goes without a cluster.

The guide's own pieces are taken from the file, not repeated here: the `keys` command, the NATS
chart values (merged into a real nats-server's configuration the way the NATS chart does it), the
service chart values (rendered by Helm; the Deployment's environment, Secret references and
volume mounts are then given to the real service binary, as the kubelet would), and the client
ServiceAccounts. Only the cluster is stood in for: ServiceAccounts come from a file and tokens from
the service's dev-signer (same claims as the API server's). Then the guide's checks: a client
publishes in its namespace, is refused in another one, and a token without the audience is
refused with the reason the guide names; the guide's policy refuses a namespace it excludes and
places the payments namespace's client in its own account.
"""

import asyncio
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

import test_snippets as snip

ROOT = Path(__file__).resolve().parents[2]
# The chart's pod as the kubelet starts it: shared with tests/chart.
sys.path.insert(0, str(ROOT / "tests" / "chart"))
import kubelet  # noqa: E402

GUIDE = ROOT / "docs" / "DEPLOY.md"
DEV_ISSUER = "https://dev-signer.nats-k8s-oidc-callout.local"


def guide_blocks():
    return snip.fenced_blocks(GUIDE)


def block(lang, first_line_prefix=None, containing=None):
    return snip.block(GUIDE, lang, first_line_prefix, containing)


@pytest.fixture(scope="module")
def binary():
    return kubelet.build_binary()


@pytest.fixture(scope="module")
def work():
    d = Path(tempfile.mkdtemp(prefix="nats-callout-deploy-guide."))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_guide_keys_command(binary, work):
    """The guide's `keys` command, with the binary's path and the directory replaced (the keys
    go to `work`/callout-keys)."""
    line = next(l for l in block("sh", containing=" keys --dir").splitlines() if " keys --dir" in l)
    args = line.split()[1:]
    assert args[:3] == ["keys", "--dir", "./callout-keys"], line
    args[2] = str(work / "callout-keys")
    out = subprocess.run([binary] + args, capture_output=True, text=True, check=True).stdout
    issuer = re.search(r'issuer: "(A[A-Z0-9]{55})"', out).group(1)
    xkey = re.search(r'xkey: "(X[A-Z0-9]{55})"', out).group(1)
    return out, issuer, xkey


def guide_objects(values):
    """The objects the chart renders for these values, as the guide installs it."""
    import helm_python as h

    out = h.Chart.load(str(snip.CHART)).render(
        values, name="nats-k8s-oidc-callout", namespace="nats-auth", is_install=True
    )
    return [d for path, m in out.items() if path.endswith(".yaml") for d in yaml.safe_load_all(m) if d]


def guide_service_accounts():
    """Every ServiceAccount manifest of the guide, with a uid as the API server gives one."""
    found = []
    for lang, _, text in guide_blocks():
        if lang == "yaml" and "kind: ServiceAccount" in text:
            found += [d for d in yaml.safe_load_all(text) if d and d["kind"] == "ServiceAccount"]
    for sa in found:
        sa["metadata"]["uid"] = str(uuid.uuid4())
    return found


def guide_token_command(namespace):
    """(namespace, name) of the guide's `kubectl -n NAMESPACE create token NAME --audience nats`."""
    for lang, _, text in guide_blocks():
        m = re.search(rf"kubectl -n ({re.escape(namespace)}) create token (\S+) --audience nats", text)
        if lang == "sh" and m:
            return m.group(1), m.group(2)
    raise AssertionError(f"DEPLOY.md has no token command for namespace {namespace}")


@pytest.fixture(scope="module")
def deployed(binary, work):

    keys_out, issuer, xkey = run_guide_keys_command(binary, work)
    seeds = work / "callout-keys"
    assert (seeds / "signing.nk").stat().st_mode & 0o777 == 0o600

    # NATS from the guide's NATS chart values, with this run's keys in place of the examples.
    nats_values = block("yaml", "# nats-values")
    doc_issuer = re.search(r"issuer: (A[A-Z0-9]{55})", nats_values).group(1)
    doc_xkey = re.search(r"xkey: (X[A-Z0-9]{55})", nats_values).group(1)
    conf = snip.nats_chart_config(nats_values.replace(doc_issuer, issuer).replace(doc_xkey, xkey))
    values = yaml.safe_load(nats_values)
    password_env = next(iter(values["container"]["env"]))
    password = secrets.token_hex(24)
    server, port, log, server_dir = snip.start_server(conf, {password_env: password})
    try:
        snip.wait_ready(server, log)

        # The Secrets of the guide's step 3, as the kubectl commands there create them.
        step3 = block("sh", containing="create secret generic nats-callout-url")
        url_template = re.search(r'url="([^"]+)"', step3).group(1)
        secrets_by_name = {
            "nats-callout-url": {
                "url": url_template.replace("$CALLOUT_PASSWORD", password).replace(
                    "nats.nats.svc.cluster.local:4222", f"127.0.0.1:{port}"
                )
            },
            "nats-callout-keys": {
                "signing.key": (seeds / "signing.nk").read_text(),
                "xkey.seed": (seeds / "xkey.nk").read_text(),
            },
        }
        assert "--from-file=signing.key=callout-keys/signing.nk" in step3
        assert "--from-file=xkey.seed=callout-keys/xkey.nk" in step3

        # The service from the guide's chart values, rendered by Helm; the policy ConfigMap and
        # the Secrets become files as the kubelet writes them.
        objects = guide_objects(yaml.safe_load(block("yaml", "# callout-values")))
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        config_maps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
        env = kubelet.kubelet_env_and_files(deployment, work / "pod", secrets_by_name, config_maps)

        # The stand-in cluster: the guide's ServiceAccounts, the kube-system one it takes a token
        # of, and a dev-signer for tokens.
        accounts = {(a["metadata"]["namespace"], a["metadata"]["name"]): a for a in guide_service_accounts()}
        excluded = guide_token_command("kube-system")
        accounts[excluded] = {
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"namespace": excluded[0], "name": excluded[1], "uid": str(uuid.uuid4())},
        }
        (work / "serviceaccounts.yaml").write_text(yaml.safe_dump({"items": list(accounts.values())}))
        sa = accounts[("my-app", "my-nats-client")]
        subprocess.run([binary, "dev-signer", "init", "--dir", str(work / "signer")],
                       check=True, capture_output=True)
        http_port = kubelet.free_port()
        env.update(
            SERVICE_ACCOUNTS_PATH=str(work / "serviceaccounts.yaml"),
            JWKS_PATH=str(work / "signer" / "jwks.json"),
            JWT_ISSUER=DEV_ISSUER,
            PORT=str(http_port),
            PATH=os.environ.get("PATH", ""),
        )
        service_log = work / "service.log"
        with open(service_log, "w") as f:
            service = subprocess.Popen([binary], env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            snip.wait_http(http_port, "/readyz")
            yield {
                "binary": binary, "work": work, "sa": sa, "accounts": accounts, "nats_port": port,
                "http_port": http_port, "service_log": service_log, "env": env, "nats_log": log,
            }
        finally:
            service.terminate()
            service.wait(timeout=20)
    finally:
        snip.stop(server, server_dir)


def mint(d, audience="nats", ttl=600, sa=None):
    meta = (sa or d["sa"])["metadata"]
    return subprocess.run(
        [d["binary"], "dev-signer", "mint", "--key", str(d["work"] / "signer" / "signer.key"),
         "--namespace", meta["namespace"], "--name", meta["name"], "--uid", meta["uid"],
         "--audience", audience, "--ttl", str(ttl)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


async def connect(port, token):
    import nats

    errors = []

    async def on_error(e):
        errors.append(str(e))

    nc = await nats.connect(
        f"nats://127.0.0.1:{port}", token=token, allow_reconnect=False,
        connect_timeout=5, error_cb=on_error,
    )
    return nc, errors


def test_the_keys_output_shown_in_the_guide_is_what_the_command_prints(binary, work):
    out, issuer, xkey = run_guide_keys_command(binary, work / "again")
    shown = next(
        text for lang, _, text in guide_blocks() if lang == "" and "auth_callout.issuer" in text
    )
    doc_issuer = re.search(r"(A[A-Z0-9]{55})", shown).group(1)
    doc_xkey = re.search(r"(X[A-Z0-9]{55})", shown).group(1)
    expected = (
        shown.replace(doc_issuer, issuer)
        .replace(doc_xkey, xkey)
        .replace("./callout-keys/", str(work / "again" / "callout-keys") + "/")
    )
    assert out == expected


def test_the_chart_environment_is_what_the_binary_reads(deployed):
    env = deployed["env"]
    # Secrets arrive as files or secret references; the binary started on them (it is ready).
    assert env["NATS_ACCOUNT"] == "APPS"
    assert Path(env["NATS_SIGNING_KEY_FILE"]).read_text().startswith("SA")
    assert Path(env["NATS_XKEY_SEED_FILE"]).read_text().startswith("SX")
    assert env["NATS_URL"].startswith("nats://callout:")


def test_client_publishes_in_its_namespace_and_is_refused_elsewhere(deployed):
    ns = deployed["sa"]["metadata"]["namespace"]

    async def scenario():
        nc, errors = await connect(deployed["nats_port"], mint(deployed))
        sub = await nc.subscribe(f"{ns}.hello")
        await nc.publish(f"{ns}.hello", b"world")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"world"
        # The annotation of the guide's ServiceAccount grants this subject.
        shared = await nc.subscribe("shared.events.>")
        await nc.publish("shared.events.created", b"x")
        assert (await shared.next_msg(timeout=5)).data == b"x"
        await nc.publish("other-team.hello", b"world")
        await nc.flush()
        for _ in range(50):
            if errors:
                break
            await asyncio.sleep(0.1)
        await nc.close()
        return errors

    errors = asyncio.run(scenario())
    # nats-py lower-cases the server's -ERR text.
    assert any('permissions violation for publish to "other-team.hello"' in e.lower() for e in errors), errors
    log = deployed["service_log"].read_text()
    assert re.search(rf"allowed {ns}/my-nats-client \(client .* on \S+\), expires in (599|600)s", log), log
    # The login password (in NATS_URL) and the seeds never reach the log.
    password = deployed["env"]["NATS_URL"].split(":")[2].split("@")[0]
    assert password not in log
    seed = Path(deployed["env"]["NATS_SIGNING_KEY_FILE"]).read_text().strip()
    assert seed not in log


def test_token_without_the_audience_is_refused_with_the_logged_reason(deployed):
    async def scenario():
        try:
            nc, _ = await connect(deployed["nats_port"], mint(deployed, audience="https://kubernetes.default.svc"))
        except Exception as e:  # the connect itself fails
            return str(e)
        await nc.close()
        return None

    err = asyncio.run(scenario())
    assert err is not None and "authorization violation" in err.lower(), err
    ns = deployed["sa"]["metadata"]["namespace"]
    expected = f"denied {ns}/my-nats-client (claimed) (client "
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        log = deployed["service_log"].read_text()
        if expected in log and "token refused: audience not accepted (reason=token_wrong_audience)" in log:
            break
        time.sleep(0.1)
    assert expected in log and "audience not accepted (reason=token_wrong_audience)" in log, log
    metrics = snip.wait_http(deployed["http_port"], "/metrics")
    assert 'nats_callout_decisions_total{result="deny",reason="token_wrong_audience"} 1' in metrics


def wait_log(d, *needles, timeout=5):
    return snip.wait_text(d["service_log"].read_text, *needles, timeout=timeout)


def test_the_guide_policy_and_inbox_mode_reach_the_service(deployed):
    env = deployed["env"]
    assert env["INBOX_MODE"] == "shared"
    # The policy file as the kubelet lays out a ConfigMap volume, read at start.
    assert Path(env["POLICY_FILE"]).is_symlink()
    log = wait_log(deployed, "accounts named by rules: PAYMENTS")
    assert f"policy {env['POLICY_FILE']}: annotations granted only within its patterns; accounts named by rules: PAYMENTS" in log
    assert "INBOX_MODE=shared" in log


def test_a_namespace_the_policy_excludes_is_refused(deployed):
    sa = deployed["accounts"][guide_token_command("kube-system")]

    async def scenario():
        try:
            nc, _ = await connect(deployed["nats_port"], mint(deployed, sa=sa))
        except Exception as e:  # the connect itself fails
            return str(e)
        await nc.close()
        return None

    err = asyncio.run(scenario())
    assert err is not None and "authorization violation" in err.lower(), err
    expected = (
        f"denied kube-system/{sa['metadata']['name']} (client ",
        'namespace is not served by the policy: namespaces.exclude pattern "kube-*" matches it (reason=namespace_not_allowed)',
    )
    log = wait_log(deployed, *expected)
    assert all(e in log for e in expected), log
    metrics = snip.wait_http(deployed["http_port"], "/metrics")
    assert 'nats_callout_decisions_total{result="deny",reason="namespace_not_allowed"} 1' in metrics


def test_the_payments_rule_places_its_client_in_its_own_account(deployed):
    ledger = deployed["accounts"][guide_token_command("payments-ledger")]

    async def scenario():
        app, _ = await connect(deployed["nats_port"], mint(deployed))
        pay, pay_errors = await connect(deployed["nats_port"], mint(deployed, sa=ledger))
        # Both may use _INBOX.> (shared mode), each in its own account.
        app_inbox = await app.subscribe("_INBOX.deploy-guide.>")
        pay_inbox = await pay.subscribe("_INBOX.deploy-guide.>")
        # The rule's bounds let the ledger's annotations grant payments.>.
        payments = await pay.subscribe("payments.>")
        await pay.flush()
        await app.publish("_INBOX.deploy-guide.1", b"from my-app")
        await pay.publish("payments.settled", b"42")
        await app.flush()
        await pay.flush()
        assert (await app_inbox.next_msg(timeout=5)).data == b"from my-app"
        assert (await payments.next_msg(timeout=5)).data == b"42"
        with pytest.raises(Exception):  # nats-py's timeout: nothing crossed the accounts
            await pay_inbox.next_msg(timeout=1)
        await app.close()
        await pay.close()
        return pay_errors

    assert asyncio.run(scenario()) == []
    log = wait_log(deployed, "allowed payments-ledger/ledger (client ")
    assert "allowed payments-ledger/ledger (client " in log


def test_the_guide_admission_values_render_with_the_service_values():
    values = yaml.safe_load(block("yaml", "# callout-values"))
    admission = yaml.safe_load(block("yaml", "# admission-values"))
    objects = guide_objects({**values, **admission})
    (policy,) = [o for o in objects if o["kind"] == "ValidatingAdmissionPolicy"]
    assert any(
        '"platform-admins"' in v["expression"] and '"system:masters"' in v["expression"]
        for v in policy["spec"]["variables"]
    )
