"""docs/OPERATOR_SETUP.md and docs/NACK_INTEGRATION.md followed on this machine, as far as they go
without a cluster.

The guides' own pieces are taken from the files, not repeated here: the `keys operator` command
and the shell lines that read the public keys (run through bash), the NATS chart values (their
`<…>` filled from this run's keys as the guide says, merged into a real nats-server's
configuration the way test_snippets models the chart), the `kubectl create secret` lines (the
Secrets built from the files they name), the service chart values (after the guide's `sed`,
rendered by Helm; the Deployment's environment, Secrets and volumes then given to the real
service binary, as the kubelet would), the client ServiceAccounts, and NACK's creds Secret and
Stream. Only the cluster is stood in for: ServiceAccounts come from a file and tokens from the
service's dev-signer (same claims as the API server's).
"""

import asyncio
import json
import os
import re
import shlex
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
sys.path.insert(0, str(ROOT / "tests" / "chart"))
import kubelet  # noqa: E402

GUIDE = ROOT / "docs" / "OPERATOR_SETUP.md"
NACK_GUIDE = ROOT / "docs" / "NACK_INTEGRATION.md"
DEV_ISSUER = "https://dev-signer.nats-k8s-oidc-callout.local"
BINARY_NAME = "nats-k8s-oidc-callout"


def bash(script, cwd, env=None):
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, f"{script}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def commands(text):
    """The commands of a sh block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [l.strip() for l in joined.splitlines() if l.strip() and not l.strip().startswith("#")]


def secrets_of(text, cwd, variables):
    """{name: {key: content}} of the `kubectl create secret generic` commands in `text`, with the
    shell `variables` expanded and the files read from `cwd`."""
    found = {}
    for command in commands(text):
        if "create secret generic" not in command:
            continue
        for name, value in variables.items():
            command = command.replace(f"${name}", value)
        args = shlex.split(command)
        name = args[args.index("generic") + 1]
        data = {}
        for arg in args:
            if not arg.startswith("--from-file="):
                continue
            spec = arg[len("--from-file="):]
            key, _, path = spec.rpartition("=")
            source = cwd / path
            if source.is_dir():
                data.update({p.name: p.read_text() for p in sorted(source.iterdir())})
            else:
                data[key or source.name] = source.read_text()
        found[name] = data
    assert found, "no kubectl create secret command"
    return found


def render(values):
    import helm_python as h

    out = h.Chart.load(str(snip.CHART)).render(values, name="nats-k8s-oidc-callout",
                                              namespace="nats-auth", is_install=True)
    return [d for path, m in out.items() if path.endswith(".yaml") for d in yaml.safe_load_all(m) if d]


def service_accounts(path):
    found = []
    for lang, _, text in snip.fenced_blocks(path):
        if lang == "yaml" and "kind: ServiceAccount" in text:
            found += [d for d in yaml.safe_load_all(text) if d and d["kind"] == "ServiceAccount"]
    for sa in found:
        sa["metadata"]["uid"] = str(uuid.uuid4())
    return {(sa["metadata"]["namespace"], sa["metadata"]["name"]): sa for sa in found}


@pytest.fixture(scope="module")
def guide():
    binary = kubelet.build_binary()
    work = Path(tempfile.mkdtemp(prefix="nats-callout-operator-guide."))
    started = []
    try:
        yield from _follow_the_guide(binary, work, started)
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def _follow_the_guide(binary, work, started):
    # Step 1: the keys command as written (the binary by its path), then the public-key lines.
    keys_block = snip.block(GUIDE, "sh", containing=" keys operator --dir")
    (line,) = [l for l in commands(keys_block) if " keys operator --dir" in l]
    assert line.startswith(BINARY_NAME + " "), line
    bash(shlex.quote(binary) + line[len(BINARY_NAME):], work)
    op = work / "op"
    assert (op / "accounts" / "AUTH.signing.nk").stat().st_mode & 0o777 == 0o600
    keys_lines = snip.block(GUIDE, "sh", containing="APP=$(")
    names = re.findall(r"^([A-Z_]+)=\$\(", keys_lines, re.M)
    printed = bash(keys_lines + "".join(f'echo "{n}=${n}"\n' for n in names), work)
    variables = dict(l.split("=", 1) for l in printed.splitlines())
    generated = snip.operator_values(op)

    # Step 2: NATS from the guide's chart values, the <…> filled from this run.
    nats_values = snip.block(GUIDE, "yaml", "# nats-values")
    conf = snip.nats_chart_config(snip.fill(nats_values, generated))
    server, nats_port, nats_log, server_dir = snip.start_server(conf)
    started.append(server)
    try:
        snip.wait_ready(server, nats_log)

        # Step 3: the Secrets, from the guide's kubectl lines.
        secrets = secrets_of(snip.block(GUIDE, "sh", containing="create secret generic nats-callout-op-keys"),
                             work, variables)

        # Step 4: the chart values, public keys put in by the guide's sed line, rendered by Helm.
        step4 = snip.block(GUIDE, "sh", containing="sed -i")
        (values_file,) = re.findall(r"--values (\S+)", step4)
        (work / values_file).write_text(snip.block(GUIDE, "yaml", "# callout-values-operator"))
        (sed,) = [c for c in commands(step4) if c.startswith("sed ")]
        bash(sed, work, env={**os.environ, **variables})
        values = yaml.safe_load((work / values_file).read_text())
        objects = render(values)
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        config_maps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
        env = kubelet.kubelet_env_and_files(deployment, work / "pod", secrets, config_maps)

        accounts = service_accounts(GUIDE)
        excluded = re.search(r"kubectl -n (kube-system) create token (\S+)\s+--audience nats", GUIDE.read_text())
        excluded = (excluded.group(1), excluded.group(2))
        accounts[excluded] = {"apiVersion": "v1", "kind": "ServiceAccount",
                              "metadata": {"namespace": excluded[0], "name": excluded[1], "uid": str(uuid.uuid4())}}
        (work / "serviceaccounts.yaml").write_text(yaml.safe_dump({"items": list(accounts.values())}))
        subprocess.run([binary, "dev-signer", "init", "--dir", str(work / "signer")], check=True,
                       capture_output=True)
        assert env["NATS_URL"] == values["nats"]["url"]
        http_port = kubelet.free_port()
        env.update(
            NATS_URL=f"nats://127.0.0.1:{nats_port}",
            SERVICE_ACCOUNTS_PATH=str(work / "serviceaccounts.yaml"),
            JWKS_PATH=str(work / "signer" / "jwks.json"),
            JWT_ISSUER=DEV_ISSUER,
            PORT=str(http_port),
            PATH=os.environ.get("PATH", ""),
        )
        service_log = work / "service.log"
        with open(service_log, "w") as f:
            service = subprocess.Popen([binary], env=env, stdout=f, stderr=subprocess.STDOUT)
        started.append(service)
        snip.wait_http(http_port, "/readyz", proc=service)
        yield {
            "binary": binary, "work": work, "op": op, "variables": variables, "generated": generated,
            "accounts": accounts, "excluded": excluded, "nats_port": nats_port, "nats_log": nats_log,
            "http_port": http_port, "service_log": service_log, "env": env, "values": values,
        }
    finally:
        snip.stop(server, server_dir)


def mint(d, namespace, name, audience="nats"):
    sa = d["accounts"][(namespace, name)]
    return subprocess.run(
        [d["binary"], "dev-signer", "mint", "--key", str(d["work"] / "signer" / "signer.key"),
         "--namespace", namespace, "--name", name, "--uid", sa["metadata"]["uid"],
         "--audience", audience, "--ttl", "600"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


async def connect(d, **kwargs):
    import nats

    errors = []

    async def on_error(e):
        errors.append(str(e))

    nc = await nats.connect(f"nats://127.0.0.1:{d['nats_port']}", allow_reconnect=False,
                            connect_timeout=5, error_cb=on_error, **kwargs)
    return nc, errors


async def refusal(d, **kwargs):
    try:
        nc, _ = await connect(d, **kwargs)
    except Exception as e:  # the connect itself fails
        return str(e)
    await nc.close()
    return None


async def wait_errors(errors):
    for _ in range(50):
        if errors:
            return
        await asyncio.sleep(0.1)


def metric(d, line_start):
    text = snip.wait_http(d["http_port"], "/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith(line_start):
            total += float(line.rsplit(" ", 1)[1])
    return total


# OPERATOR_SETUP.md


def test_the_guide_shell_lines_read_the_generated_public_keys(guide):
    v, g = guide["variables"], guide["generated"]
    assert v == {"APP": g["APP_ACCOUNT"], "AUTH": g["AUTH_ACCOUNT"], "PAYMENTS": g["PAYMENTS_ACCOUNT"]}
    # What the guide says AUTH's JWT holds.
    auth = snip.jwt_claims(g["AUTH_JWT"])["nats"]
    assert sorted(auth["authorization"]["allowed_accounts"]) == sorted([v["APP"], v["PAYMENTS"]])
    assert auth["limits"]["conn"] == -1
    signing = (guide["op"] / "accounts" / "AUTH.signing.nk").read_text().strip()
    assert len(auth["signing_keys"]) == 1 and signing.startswith("SA")


def test_the_service_runs_in_operator_mode_with_the_guide_values(guide):
    env, v = guide["env"], guide["variables"]
    assert env["NATS_OPERATOR_MODE"] == "true"
    assert env["NATS_ACCOUNT"] == v["APP"] and env["NATS_CALLOUT_ACCOUNT"] == v["AUTH"]
    assert Path(env["NATS_USER_CREDS_FILE"]).read_text().startswith("-----BEGIN NATS USER JWT-----")
    assert (Path(env["NATS_ACCOUNT_SIGNING_KEYS_DIR"]) / f"{v['PAYMENTS']}.nk").exists()
    log = snip.wait_text(guide["service_log"].read_text, "connected to nats")
    assert f"a signing key of the callout account {v['AUTH']} (NATS_CALLOUT_ACCOUNT)" in log, log
    for account in (v["APP"], v["PAYMENTS"]):
        assert f"operator mode: clients of account {account} get user JWTs signed by its signing key" in log, log
    assert "account_key_missing" not in log
    # No seed reaches the log.
    for path in guide["op"].rglob("*.nk"):
        assert path.read_text().strip() not in log


def test_a_client_with_its_token_alone_is_allowed_in_its_namespace_and_refused_elsewhere(guide):
    async def scenario():
        nc, errors = await connect(guide, token=mint(guide, "my-app", "my-nats-client"))
        sub = await nc.subscribe("my-app.hello")
        await nc.publish("my-app.hello", b"world")
        assert (await sub.next_msg(timeout=5)).data == b"world"
        await nc.publish("other-team.hello", b"world")
        await nc.flush()
        await wait_errors(errors)
        await nc.close()
        return errors

    errors = asyncio.run(scenario())
    assert any('permissions violation for publish to "other-team.hello"' in e.lower() for e in errors), errors
    log = snip.wait_text(guide["service_log"].read_text, "allowed my-app/my-nats-client (client ")
    assert re.search(r"allowed my-app/my-nats-client \(client .*\), expires in (599|600)s", log), log


def test_the_sentinel_creds_with_the_token_work_too(guide):
    async def scenario():
        nc, _ = await connect(guide, token=mint(guide, "my-app", "my-nats-client"),
                              user_credentials=str(guide["op"] / "creds" / "sentinel.creds"))
        sub = await nc.subscribe("my-app.sentinel")
        await nc.publish("my-app.sentinel", b"x")
        assert (await sub.next_msg(timeout=5)).data == b"x"
        await nc.close()

    asyncio.run(scenario())


def test_a_namespace_the_policy_excludes_is_refused_and_nats_server_logs_it(guide):
    ns, name = guide["excluded"]
    err = asyncio.run(refusal(guide, token=mint(guide, ns, name)))
    assert err is not None and "authorization violation" in err.lower(), err
    log = snip.wait_text(guide["service_log"].read_text, f"denied {ns}/{name} (client ", "(reason=namespace_not_allowed)")
    assert f"denied {ns}/{name} (client " in log and "(reason=namespace_not_allowed)" in log, log
    # The guide's table: what nats-server logs when the service denies.
    nats_log = snip.wait_text(guide["nats_log"].read_text, "Auth callout service returned an error: authorization failed")
    assert re.search(r'\[ERR\] .* - authentication error - JWT User "U[A-Z0-9]{55}"', nats_log), nats_log
    assert "Auth callout service returned an error: authorization failed" in nats_log


def test_the_payments_rule_places_its_client_in_the_payments_account(guide):
    async def scenario():
        app, _ = await connect(guide, token=mint(guide, "my-app", "my-nats-client"))
        pay, pay_errors = await connect(guide, token=mint(guide, "payments-ledger", "ledger"))
        app_inbox = await app.subscribe("_INBOX.operator-guide.>")
        pay_inbox = await pay.subscribe("_INBOX.operator-guide.>")
        payments = await pay.subscribe("payments.>")
        await pay.flush()
        await app.publish("_INBOX.operator-guide.1", b"from my-app")
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
    assert "allowed payments-ledger/ledger (client " in guide["service_log"].read_text()


def test_the_scoped_values_render_with_the_operator_values(guide):
    scoped = yaml.safe_load(snip.block(GUIDE, "yaml", "# scoped-values"))
    values = json.loads(json.dumps(guide["values"]))
    values["nats"]["signingKey"].update(scoped["nats"]["signingKey"])
    deployment = next(o for o in render(values) if o["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["NATS_SIGNING_KEY_SCOPED"] == "true"
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "signing-key")
    key = scoped["nats"]["signingKey"]["existingSecretKey"]
    assert volume["secret"]["items"] == [{"key": key, "path": "signing.key"}]
    assert f"--from-file={key}=op/accounts/APP.scoped.nk" in GUIDE.read_text()


# NACK_INTEGRATION.md


def test_nack_uses_jetstream_in_its_account_beside_a_callout_client(guide):
    secrets = secrets_of(snip.block(NACK_GUIDE, "sh", containing="create secret generic"), guide["work"], {})
    nack_values = yaml.safe_load(snip.block(NACK_GUIDE, "yaml", "# nack-values"))
    ref = nack_values["jetstream"]["nats"]["credentials"]["secret"]
    creds = guide["work"] / "nack.creds"
    creds.write_text(secrets[ref["name"]][ref["key"]])
    stream = next(d for lang, _, text in snip.fenced_blocks(NACK_GUIDE) if lang == "yaml" and "kind: Stream" in text
                  for d in yaml.safe_load_all(text) if d and d["kind"] == "Stream")["spec"]
    decisions = lambda: metric(guide, "nats_callout_decisions_total{")  # noqa: E731

    async def scenario():
        client, client_errors = await connect(guide, token=mint(guide, "my-app", "my-nats-client"))
        await asyncio.sleep(0.5)  # the client's decision counted
        before = decisions()
        nack, nack_errors = await connect(guide, user_credentials=str(creds))
        await asyncio.sleep(0.5)
        # NACK's connection took no callout decision.
        assert before >= 1 and decisions() == before
        jsm = nack.jsm()
        info = await jsm.add_stream(name=stream["name"], subjects=stream["subjects"], storage=stream["storage"])
        assert info.config.name == stream["name"]
        # The callout client works meanwhile; its publish to the stream's subjects is in APP.
        sub = await client.subscribe("my-app.orders.>")
        await client.publish("my-app.orders.new", b"order 1")
        assert (await sub.next_msg(timeout=5)).data == b"order 1"
        await client.flush()
        await asyncio.sleep(0.5)
        state = (await jsm.stream_info(stream["name"])).state
        # NACK's user may publish the JetStream API only.
        await nack.publish("my-app.orders.from-nack", b"x")
        await nack.flush()
        await wait_errors(nack_errors)
        await jsm.delete_stream(stream["name"])
        await nack.close()
        await client.close()
        return state, client_errors, nack_errors

    state, client_errors, nack_errors = asyncio.run(scenario())
    assert state.messages == 0, state
    assert client_errors == []
    assert any('permissions violation for publish to "my-app.orders.from-nack"' in e.lower() for e in nack_errors), nack_errors
