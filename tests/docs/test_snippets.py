"""The documentation's configuration snippets, run for real.

Every fenced block of README.md, docs/*.md and the chart's README is collected:
- ```conf blocks are whole nats-server configuration files: nats-server 2.15.1 must start on
  each as it stands (variables it references are set in its environment);
- ```yaml blocks whose first line is `# nats-values...` are values for the official NATS chart:
  their `config.merge` is what the chart merges into the server's configuration, so the server
  must start on it (with `<< ... >>` written unquoted, as the chart writes it); TLS in
  `config.nats.tls` becomes the chart's `tls {}` block, on a certificate made by DEPLOY.md's own
  `openssl` commands (and a ```conf block naming the chart's certificate directory gets the same);
- ```yaml blocks whose first line is `# callout-values...` are values for this project's chart:
  they must render and pass `helm lint --strict` together with the documented required values;
- other ```yaml blocks holding Kubernetes objects must parse, and each object names its
  apiVersion, kind and metadata.name.

Operator-mode snippets hold generated keys and JWTs as placeholders, `<…_ACCOUNT>` and
`<…_JWT>`: they are filled from a real `nats-k8s-oidc-callout keys operator --client-account
PAYMENTS` run (`<OPERATOR_JWT>`, `<SENTINEL_JWT>`, and `<X_ACCOUNT>` / `<X_JWT>` for each account
X it writes; any other such name fails the test), and `<DATA_DIR>` is the server's own scratch
directory.
"""

import atexit
import base64
import collections
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# Port and nats-server lookups shared with tests/chart.
sys.path.insert(0, str(ROOT / "tests" / "chart"))
import kubelet  # noqa: E402

CHART = ROOT / "helm" / "nats-k8s-oidc-callout"
DEPLOY = ROOT / "docs" / "DEPLOY.md"
# Where the NATS chart mounts the Secret of `config.nats.tls` (its `dir` value's default).
CHART_TLS_DIR = "/etc/nats-certs/nats"
PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*_(?:ACCOUNT|JWT)|DATA_DIR)>")
DATA_DIR = "<DATA_DIR>"


def doc_files():
    files = [ROOT / "README.md", CHART / "README.md"]
    # The guides only: docs/examples/ may hold installed third-party packages (node_modules).
    files += sorted((ROOT / "docs").glob("*.md"))
    return [f for f in files if f.exists()]


FENCE = re.compile(r"^```(\S*)\s*$")


def fenced_blocks(path):
    """(info string, first line number, text) of every top-level fenced block."""
    blocks, lang, start, lines = [], None, 0, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        m = FENCE.match(line)
        if lang is None and m:
            lang, start, lines = m.group(1), n + 1, []
        elif lang is not None and line.startswith("```"):
            blocks.append((lang, start, "\n".join(lines) + "\n"))
            lang = None
        elif lang is not None:
            lines.append(line)
    assert lang is None, f"{path}: unclosed code fence opened at line {start - 1}"
    return blocks


def snippets(kind):
    found = []
    for path in doc_files():
        for lang, line, text in fenced_blocks(path):
            first = text.lstrip().splitlines()[0] if text.strip() else ""
            rel = f"{path.relative_to(ROOT)}:{line}"
            if kind == "conf" and lang == "conf":
                found.append(pytest.param(text, id=rel))
            elif kind == "nats-values" and lang == "yaml" and first.startswith("# nats-values"):
                found.append(pytest.param(text, id=rel))
            elif kind == "callout-values" and lang == "yaml" and first.startswith("# callout-values"):
                found.append(pytest.param(text, id=rel))
            elif (
                kind == "manifest"
                and lang == "yaml"
                and not first.startswith(("# nats-values", "# callout-values"))
                and re.search(r"^kind:", text, re.M)
            ):
                found.append(pytest.param(text, id=rel))
    return found


def block(path, lang, first_line_prefix=None, containing=None):
    """The first ```lang block of `path` whose text starts with `first_line_prefix` and holds
    `containing` (each when given); a test failure when there is none."""
    for l, _, text in fenced_blocks(path):
        if l != lang:
            continue
        if first_line_prefix and not text.lstrip().startswith(first_line_prefix):
            continue
        if containing and containing not in text:
            continue
        return text
    raise AssertionError(f"{path.name} has no {lang} block starting {first_line_prefix!r} / with {containing!r}")


def wait_http(port, path, timeout=30, proc=None):
    """The body of GET http://127.0.0.1:`port``path` once it answers 200 (503 until ready), within
    `timeout` seconds; gives up early when the process `proc` has ended."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                return r.read().decode()
        except Exception as e:  # not up yet, or 503 until ready
            last = e
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.1)
    raise AssertionError(f"{path} never answered 200: {last}")


def wait_text(read, *needles, timeout=10):
    """`read()` once it holds every needle, or as it is after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        text = read()
        if all(n in text for n in needles) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def variables(conf):
    """Names of the $VARIABLES a configuration takes from the environment."""
    return set(re.findall(r"(?<![\w$])\$([A-Z_][A-Z0-9_]*)", conf))


def jwt_claims(jwt):
    """The claims of a JWT (not verified: nats-server verifies them)."""
    body = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def creds_jwt(path):
    """The user JWT of a creds file."""
    lines = Path(path).read_text().splitlines()
    return lines[lines.index("-----BEGIN NATS USER JWT-----") + 1].strip()


def operator_values(op):
    """{placeholder: value} for the files `keys operator` wrote in `op`."""
    values = {
        "OPERATOR_JWT": (op / "operator.jwt").read_text().strip(),
        "SENTINEL_JWT": creds_jwt(op / "creds" / "sentinel.creds"),
    }
    for path in sorted((op / "accounts").glob("*.jwt")):
        jwt = path.read_text().strip()
        values[f"{path.stem}_JWT"] = jwt
        values[f"{path.stem}_ACCOUNT"] = jwt_claims(jwt)["sub"]
    return values


def binary():
    sys.path.insert(0, str(ROOT / "tests" / "chart"))
    import kubelet

    return kubelet.build_binary()


@functools.lru_cache(maxsize=None)
def operator_keys():
    """One `keys operator` run for every operator-mode snippet: its placeholder values."""
    work = Path(tempfile.mkdtemp(prefix="nats-doc-operator-keys."))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    subprocess.run(
        [binary(), "keys", "operator", "--dir", str(work / "op"), "--client-account", "PAYMENTS"],
        check=True, capture_output=True,
    )
    return operator_values(work / "op")


def fill(text, values=None):
    """`text` with its `<NAME>` placeholders filled (see the module's doc); `<DATA_DIR>` is left
    for start_server."""
    if not PLACEHOLDER.search(text.replace(DATA_DIR, "")):
        return text
    values = values or operator_keys()

    def value(m):
        if m.group(0) == DATA_DIR:
            return DATA_DIR
        assert m.group(1) in values, f"unknown placeholder {m.group(0)}"
        return values[m.group(1)]

    return PLACEHOLDER.sub(value, text)


def make_guide_certificates(workdir, extra_names=()):
    """Runs DEPLOY.md's certificate commands (its ```sh block with `openssl req -x509`) in
    `workdir` as a reader would, with `extra_names` (e.g. "IP:127.0.0.1") added to the server
    certificate's subjectAltName; returns the directory they write to."""
    commands = block(DEPLOY, "sh", containing="openssl req -x509")
    san = re.search(r"subjectAltName = [^'\n]*", commands).group(0)
    if extra_names:
        commands = commands.replace(san, ", ".join([san, *extra_names]))
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=workdir,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return Path(workdir) / re.search(r"^mkdir -p (\S+)$", commands, re.M).group(1)


@functools.lru_cache(maxsize=None)
def guide_certificates():
    """One run of DEPLOY.md's certificate commands for every snippet that needs a certificate:
    the directory holding ca.crt, tls.crt and tls.key."""
    work = Path(tempfile.mkdtemp(prefix="nats-doc-certificates."))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    return make_guide_certificates(work)


def with_guide_certificates(conf):
    """`conf` with the chart's certificate directory replaced by guide_certificates()."""
    if CHART_TLS_DIR + "/" not in conf:
        return conf
    return conf.replace(CHART_TLS_DIR + "/", f"{guide_certificates()}/")


def start_server(conf, extra_env=None):
    """Starts nats-server on `conf` (its port replaced by a free one, `<DATA_DIR>` by a scratch
    directory); returns (proc, port, log, workdir)."""
    workdir = Path(tempfile.mkdtemp(prefix="nats-doc-snippet."))
    conf_file = workdir / "nats.conf"
    conf_file.write_text(conf.replace(DATA_DIR, str(workdir / "data")))
    log = workdir / "nats.log"
    port = kubelet.free_port()
    env = dict(os.environ)
    env.update({name: f"doc-test-{name.lower()}" for name in variables(conf)})
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [kubelet.nats_server_bin(), "-c", str(conf_file), "-a", "127.0.0.1", "-p", str(port), "-l", str(log)],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, port, log, workdir


def wait_ready(proc, log, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if "Server is ready" in text:
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    text = log.read_text() if log.exists() else ""
    pytest.fail(f"nats-server did not start on the snippet:\n{err}\n{text}")


def stop(proc, workdir):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(workdir, ignore_errors=True)


def assert_server_accepts(conf, extra_env=None):
    proc, _, log, workdir = start_server(conf, extra_env)
    try:
        text = wait_ready(proc, log)
        errors = [l for l in text.splitlines() if "[ERR]" in l or "[FTL]" in l]
        assert not errors, errors
        return text
    finally:
        stop(proc, workdir)


def chart_tls_block(tls, secret_dirs):
    """The `tls` block the NATS chart writes for `config.nats.tls` (its files/config/tls.yaml):
    the Secret `secretName` is mounted at `dir` (CHART_TLS_DIR) and its keys `cert` and `key`
    (tls.crt, tls.key) there are cert_file and key_file, then `merge` over it. Here that Secret's
    files are in `secret_dirs[secretName]`, so the paths name them there instead of `dir`."""
    assert "ca" not in tls, "config.nats.tls.ca (client verification) is not modelled here"
    block = {}
    if tls.get("secretName"):
        mounted = secret_dirs[tls["secretName"]]
        block["cert_file"] = f"{mounted}/{tls.get('cert', 'tls.crt')}"
        block["key_file"] = f"{mounted}/{tls.get('key', 'tls.key')}"
    block.update(tls.get("merge", {}))
    return block


def nats_chart_config(values_text, secret_dirs=None):
    """The server configuration the official NATS chart makes of `config.merge`: the merged map
    as JSON (nats-server reads JSON), with `<< x >>` strings written unquoted. With
    `config.jetstream` or `config.resolver` enabled, what the chart adds for them comes first
    (JetStream's store and the full resolver's directory on the chart's /data volume, here
    `<DATA_DIR>`; the resolver's `merge` on top), and with `config.nats.tls` enabled its `tls`
    block (chart_tls_block: the Secrets' files are in `secret_dirs`, {Secret name: directory}),
    then `config.merge` over it."""
    values = yaml.safe_load(values_text)
    config = values["config"]
    assert not values.get("tlsCA", {}).get("enabled"), "the chart's tlsCA is not modelled here"
    merge = {}
    tls = config.get("nats", {}).get("tls", {})
    if tls.get("enabled"):
        merge["tls"] = chart_tls_block(tls, {} if secret_dirs is None else secret_dirs)
    if config.get("jetstream", {}).get("enabled"):
        merge["jetstream"] = {"store_dir": DATA_DIR}
    resolver = config.get("resolver", {})
    if resolver.get("enabled"):
        merge["resolver"] = {"type": "full", "dir": f"{DATA_DIR}/resolver", **resolver.get("merge", {})}
    merge.update(config["merge"])
    text = json.dumps(merge, indent=2)
    return re.sub(r'"<< (.*?) >>"', r"\1", text)


CONF = snippets("conf")
NATS_VALUES = snippets("nats-values")
CALLOUT_VALUES = snippets("callout-values")
MANIFESTS = snippets("manifest")


def test_the_docs_have_snippets_to_check():
    # The collector itself can break (a renamed marker, a moved file): the guides do hold
    # server configurations, NATS chart values, chart values and manifests.
    assert CONF and NATS_VALUES and CALLOUT_VALUES and MANIFESTS


@pytest.mark.parametrize("conf", CONF)
def test_nats_server_starts_on_conf_snippet(conf):
    text = assert_server_accepts(with_guide_certificates(fill(conf)))
    if CHART_TLS_DIR in conf:
        assert "TLS required for client connections" in text


@pytest.mark.parametrize("values", NATS_VALUES)
def test_nats_server_starts_on_nats_chart_values(values):
    # Whatever Secret the values mount for TLS holds the certificate of DEPLOY.md's commands.
    secret_dirs = collections.defaultdict(guide_certificates)
    text = assert_server_accepts(nats_chart_config(fill(values), secret_dirs))
    if "auth_callout" in values:
        # The server validated the callout block; a bad issuer or auth user refuses to start.
        assert "Server is ready" in text
    if yaml.safe_load(values)["config"].get("nats", {}).get("tls", {}).get("enabled"):
        assert "TLS required for client connections" in text


@pytest.mark.parametrize("values", CALLOUT_VALUES)
def test_chart_values_render_and_lint(values):
    import helm_python as h

    v = yaml.safe_load(fill(values))
    out = h.Chart.load(str(CHART)).render(v, name="nats-callout", namespace="nats-auth", is_install=True)
    assert any("kind: Deployment" in m for m in out.values())
    result = h.lint(str(CHART), v, strict=True)
    assert not result.get("errors"), result


@pytest.mark.parametrize("text", MANIFESTS)
def test_kubernetes_manifest_parses(text):
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    assert docs
    for d in docs:
        assert d.get("apiVersion") and d.get("kind"), d
        assert d.get("metadata", {}).get("name"), d
