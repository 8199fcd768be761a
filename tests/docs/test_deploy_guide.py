"""docs/DEPLOY.md followed on this machine, as far as it goes without a cluster.

The guide's own pieces are taken from the file, not repeated here: the `keys` command, the
`openssl` commands that make NATS' CA and certificate, the Secrets and ConfigMap its `kubectl
create` commands make of those files, the NATS chart values (merged into a real nats-server's
configuration the way the NATS chart does it, TLS included), the service chart values (rendered by
Helm; the Deployment's environment, Secret references and volume mounts are then given to the real
service binary, as the kubelet would), the client ServiceAccounts and the check pod's CA mount.
Only the cluster is stood in for: ServiceAccounts come from a file and tokens from the service's
dev-signer (same claims as the API server's), and nats-server listens on 127.0.0.1, a name the
service's URL then holds, so the certificate gets it as an IP address besides the guide's names
(the test's clients still check the guide's name). Then the guide's checks, every connection over
TLS: a client publishes in its namespace, is refused in another one, and a token without the
audience is refused with the reason the guide names; the guide's policy refuses a namespace it
excludes and places the payments namespace's client in its own account; a client without the
guide's CA, and one that does not speak TLS, are refused.
"""

import asyncio
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import ssl
import string
import subprocess
import sys
import tempfile
import time
import urllib.parse
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


def guide_commands():
    """Every command line of the guide's ```sh blocks (continuation lines joined), as words."""
    for lang, _, text in guide_blocks():
        if lang == "sh":
            for line in text.replace("\\\n", " ").splitlines():
                if line.strip():
                    yield shlex.split(line, comments=True)


def guide_created_objects(variables, files_root):
    """{(kind, namespace, name): data} of the guide's `kubectl -n NS create secret generic|tls`
    and `create configmap` commands, as the API server stores them: --from-literal values with
    the shell `variables` expanded, --from-file, --cert and --key read under `files_root`."""
    found = {}
    for words in guide_commands():
        if words[:2] != ["kubectl", "-n"] or words[3:4] != ["create"] or words[4] not in ("secret", "configmap"):
            continue
        namespace, kind = words[2], words[4]
        name, options = (words[6], words[7:]) if kind == "secret" else (words[5], words[6:])
        data = {}
        for option in options:
            flag, _, value = option.partition("=")
            if flag == "--from-literal":
                key, _, literal = value.partition("=")
                data[key] = string.Template(literal).substitute(variables)
            elif flag == "--from-file":
                key, _, path = value.partition("=")
                data[key] = (files_root / path).read_text()
            elif flag in ("--cert", "--key"):
                data[f"tls.{flag[2:].replace('cert', 'crt')}"] = (files_root / value).read_text()
            else:
                raise AssertionError(f"unknown kubectl create option {option}")
        found[(kind, namespace, name)] = data
    return found


def guide_check_command():
    """(server URL, CA file) of the guide's `kubectl exec nats-check -- nats …` command."""
    for words in guide_commands():
        if "exec" in words and "--" in words and words[words.index("--") + 1] == "nats":
            nats = words[words.index("--") + 1:]
            return nats[nats.index("--server") + 1], nats[nats.index("--tlsca") + 1]
    raise AssertionError("DEPLOY.md has no `kubectl exec … -- nats …` command")


def guide_check_pod_ca(configmaps, ca_path):
    """The CA file the guide's check pod reads at `ca_path`: the pod's ConfigMap volume mounted
    over it must be one the guide creates in the pod's namespace, with that key."""
    pod = next(
        d for lang, _, text in guide_blocks() if lang == "yaml" and "kind: Pod" in text
        for d in yaml.safe_load_all(text) if d and d["kind"] == "Pod"
    )
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for mount in pod["spec"]["containers"][0]["volumeMounts"]:
        if ca_path.startswith(mount["mountPath"] + "/"):
            name = volumes[mount["name"]]["configMap"]["name"]
            data = configmaps[("configmap", pod["metadata"]["namespace"], name)]
            return data[ca_path[len(mount["mountPath"]) + 1:]]
    raise AssertionError(f"the check pod mounts nothing at {ca_path}")


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

    # The guide's CA and server certificate (step 3), made by its openssl commands; nats-server
    # listens on 127.0.0.1 here, the name the service's URL then holds.
    cert_dir = snip.make_guide_certificates(work, extra_names=["IP:127.0.0.1"])
    # The Secrets and ConfigMaps the guide's kubectl commands make of those files and the keys.
    password = secrets.token_hex(24)
    objects = guide_created_objects({"CALLOUT_PASSWORD": password}, work)

    # NATS from the guide's NATS chart values, with this run's keys in place of the examples; the
    # Secret of config.nats.tls as the kubelet mounts it.
    nats_values = block("yaml", "# nats-values")
    doc_issuer = re.search(r"issuer: (A[A-Z0-9]{55})", nats_values).group(1)
    doc_xkey = re.search(r"xkey: (X[A-Z0-9]{55})", nats_values).group(1)
    values = yaml.safe_load(nats_values)
    tls_secret = values["config"]["nats"]["tls"]["secretName"]
    kubelet.write_volume(work / "nats-pod" / tls_secret, objects[("secret", "nats", tls_secret)])
    conf = snip.nats_chart_config(
        nats_values.replace(doc_issuer, issuer).replace(doc_xkey, xkey),
        {tls_secret: work / "nats-pod" / tls_secret},
    )
    password_env = next(iter(values["container"]["env"]))
    server, port, log, server_dir = snip.start_server(conf, {password_env: password})
    try:
        snip.wait_ready(server, log)

        # The service's Secrets of step 3, its URL pointed at this server.
        secrets_by_name = {
            name: dict(data) for (kind, ns, name), data in objects.items()
            if kind == "secret" and ns == "nats-auth"
        }
        url = secrets_by_name["nats-callout-url"]["url"]
        assert "@nats.nats.svc.cluster.local:4222" in url, url
        secrets_by_name["nats-callout-url"]["url"] = url.replace(
            "nats.nats.svc.cluster.local:4222", f"127.0.0.1:{port}"
        )

        # The check pod's client: the guide's CA from the pod's ConfigMap, and the name of the
        # guide's URL checked in nats-server's certificate.
        server_url, ca_path = guide_check_command()
        client_tls = ssl.create_default_context(cadata=guide_check_pod_ca(objects, ca_path))
        tls_hostname = urllib.parse.urlsplit(server_url).hostname

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
                "client_tls": client_tls, "tls_hostname": tls_hostname, "cert_dir": cert_dir,
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


async def connect(d, token, tls=None):
    """A client of the guide's check pod: TLS with the guide's CA (or `tls`), checking the name of
    the guide's URL in nats-server's certificate."""
    import nats

    errors = []

    async def on_error(e):
        errors.append(str(e))

    nc = await nats.connect(
        f"tls://127.0.0.1:{d['nats_port']}", token=token, allow_reconnect=False,
        connect_timeout=5, error_cb=on_error, tls=tls or d["client_tls"],
        tls_hostname=d["tls_hostname"],
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
    assert env["NATS_URL"].startswith("tls://callout:")
    # TLS to NATS with the guide's CA only: the service became ready over it.
    assert env["NATS_TLS_REQUIRED"] == "true"
    assert Path(env["NATS_CA_FILE"]).read_text() == (deployed["cert_dir"] / "ca.crt").read_text()
    assert "TLS required for client connections" in deployed["nats_log"].read_text()


def test_client_publishes_in_its_namespace_and_is_refused_elsewhere(deployed):
    ns = deployed["sa"]["metadata"]["namespace"]

    async def scenario():
        nc, errors = await connect(deployed, mint(deployed))
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
            nc, _ = await connect(deployed, mint(deployed, audience="https://kubernetes.default.svc"))
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
            nc, _ = await connect(deployed, mint(deployed, sa=sa))
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
        app, _ = await connect(deployed, mint(deployed))
        pay, pay_errors = await connect(deployed, mint(deployed, sa=ledger))
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


def decisions(d):
    """The service's decision counters, as /metrics shows them."""
    metrics = snip.wait_http(d["http_port"], "/metrics")
    return sorted(l for l in metrics.splitlines() if l.startswith("nats_callout_decisions_total{"))


def test_a_client_without_the_guide_ca_is_refused(deployed):
    before = decisions(deployed)

    async def scenario():
        # The system's CAs only, as a client without the guide's ConfigMap has.
        nc, _ = await connect(deployed, mint(deployed), tls=ssl.create_default_context())
        await nc.close()

    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        asyncio.run(scenario())
    # Its token never reached the service.
    assert decisions(deployed) == before


def test_a_client_that_does_not_start_tls_is_dropped_before_its_token_is_read(deployed):
    before = decisions(deployed)
    with socket.create_connection(("127.0.0.1", deployed["nats_port"]), timeout=10) as s:
        info = s.makefile("rb").readline()
        assert info.startswith(b"INFO "), info
        assert json.loads(info[5:])["tls_required"] is True
        # A valid token, in clear: what a client without TLS would send.
        connect_line = json.dumps({"auth_token": mint(deployed), "verbose": True})
        s.sendall(f"CONNECT {connect_line}\r\nPING\r\n".encode())
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except ConnectionResetError:  # closed with the CONNECT unread
            pass
    # The server closed the connection without accepting anything.
    assert b"+OK" not in reply and b"PONG" not in reply, reply
    assert decisions(deployed) == before
    log = snip.wait_text(deployed["nats_log"].read_text, "TLS handshake error")
    assert "TLS handshake error" in log, log
