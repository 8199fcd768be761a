"""The permission settings: the admin policy (ConfigMap, mount, POLICY_FILE, schema), INBOX_MODE
and SERVICEACCOUNT_EVENTS.

The rendered policy file is handed to the real service binary, laid out as the kubelet lays out a
ConfigMap volume: the service must read it at start and re-read it when `helm upgrade` changes
it and the kubelet swaps `..data`, without the pods being rolled.
"""

import copy
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
from conftest import CHART_DIR, FULLNAME, MINIMAL, NAMESPACE, RELEASE, merge

POLICY_DIR = "/etc/nats-k8s-oidc-callout/policy"
POLICY = {
    "namespaces": {"include": ["*"], "exclude": ["kube-system", "kube-*"]},
    "annotations": {
        "publish": ["shared.events.>", "{namespace}.{name}.out.>"],
        "subscribe": ["shared.>", "$JS.API.>"],
    },
    "rules": [
        {
            "namespaces": ["payments", "shop-?"],
            "account": "PAYMENTS",
            "annotations": {"publish": ["orders.*.>", "$JS.ACK.orders.>"], "subscribe": ["orders.>"]},
        },
        # A rule with neither account nor annotations: its namespaces get the defaults'
        # account and no annotation grants.
        {"namespaces": ["batch-*"]},
    ],
}


def policy_file(rendered):
    return rendered.one("ConfigMap", f"{FULLNAME}-policy")["data"]["policy.yaml"]


# The chart


def test_no_policy_by_default(render):
    r = render()
    assert r.all("ConfigMap") == []
    assert "POLICY_FILE" not in r.env
    assert "policy" not in [v["name"] for v in r.pod["volumes"]]
    assert "no policy is set" in r.notes


def test_the_policy_is_a_configmap_mounted_read_only(render):
    r = render({"policy": POLICY})
    assert yaml.safe_load(policy_file(r)) == POLICY
    assert r.one("ConfigMap")["metadata"]["namespace"] == NAMESPACE
    assert r.env["POLICY_FILE"] == {"name": "POLICY_FILE", "value": f"{POLICY_DIR}/policy.yaml"}
    # The directory, never a subPath: the kubelet updates only whole-directory mounts.
    assert r.mount("policy") == {"name": "policy", "mountPath": POLICY_DIR, "readOnly": True}
    assert r.volume("policy")["configMap"] == {"name": f"{FULLNAME}-policy", "defaultMode": 0o444}
    assert "no policy is set" not in r.notes
    assert f"{FULLNAME}-policy" in r.notes


def test_an_empty_policy_is_a_policy(render):
    # {} serves every namespace and lets annotations grant nothing: not the same as no policy.
    r = render({"policy": {}})
    assert yaml.safe_load(policy_file(r)) == {}
    assert "POLICY_FILE" in r.env


def test_a_policy_change_does_not_roll_the_pods(render):
    changed = copy.deepcopy(POLICY)
    changed["namespaces"]["exclude"].append("sandbox")
    before, after = render({"policy": POLICY}), render({"policy": changed})
    assert policy_file(before) != policy_file(after)
    assert before.deployment["spec"]["template"] == after.deployment["spec"]["template"]


SCHEMA_REFUSALS = [
    # Unknown keys, at every level.
    ({"namespace": {"include": ["*"]}}, "/policy"),
    ({"namespaces": {"includes": ["*"]}}, "/policy/namespaces"),
    ({"annotations": {"pub": ["a"]}}, "/policy/annotations"),
    ({"rules": [{"namespaces": ["a"], "acount": "X"}]}, "/policy/rules/0"),
    # Namespace globs: lowercase letters, digits, -, * and ?; not empty; at most 63.
    ({"namespaces": {"include": ["Team-A"]}}, "/policy/namespaces/include/0"),
    ({"namespaces": {"include": [""]}}, "/policy/namespaces/include/0"),
    ({"namespaces": {"exclude": ["kube_system"]}}, "/policy/namespaces/exclude/0"),
    ({"namespaces": {"exclude": ["a" * 64]}}, "/policy/namespaces/exclude/0"),
    ({"rules": [{"namespaces": ["team a"]}]}, "/policy/rules/0/namespaces/0"),
    # Rules need namespaces.
    ({"rules": [{"account": "X"}]}, "/policy/rules/0"),
    ({"rules": [{"namespaces": []}]}, "/policy/rules/0/namespaces"),
    # Accounts: no spaces, dots or control characters.
    ({"rules": [{"namespaces": ["a"], "account": "my account"}]}, "/policy/rules/0/account"),
    ({"rules": [{"namespaces": ["a"], "account": "A.B"}]}, "/policy/rules/0/account"),
    ({"rules": [{"namespaces": ["a"], "account": ""}]}, "/policy/rules/0/account"),
    # Not the system account: clients there read the answers to operators' $SYS requests.
    ({"rules": [{"namespaces": ["a"], "account": "$SYS"}]}, "/policy/rules/0/account"),
    # Subject patterns.
    ({"annotations": {"publish": ["{namespace}..x"]}}, "/policy/annotations/publish/0"),
    ({"annotations": {"publish": ["{nmspace}.>"]}}, "/policy/annotations/publish/0"),
    ({"annotations": {"subscribe": ["a b"]}}, "/policy/annotations/subscribe/0"),
    ({"annotations": {"subscribe": ["orders.>.x"]}}, "/policy/annotations/subscribe/0"),
    ({"annotations": {"subscribe": ["orders*"]}}, "/policy/annotations/subscribe/0"),
    ({"annotations": {"subscribe": ["orders."]}}, "/policy/annotations/subscribe/0"),
    ({"annotations": {"subscribe": [""]}}, "/policy/annotations/subscribe/0"),
    ({"annotations": {"subscribe": ["a\tb"]}}, "/policy/annotations/subscribe/0"),
    ({"rules": [{"namespaces": ["a"], "annotations": {"publish": ["x}"]}}]}, "/policy/rules/0/annotations/publish/0"),
    # Wrong shapes.
    ({"annotations": ["a"]}, "/policy/annotations"),
    ("namespaces: {}", "/policy"),
]


@pytest.mark.parametrize("policy, where", SCHEMA_REFUSALS)
def test_schema_refuses_what_the_service_refuses(render_error, policy, where):
    assert f"at '{where}'" in render_error({"policy": policy})


SUBJECTS = [">", "*", "a.*.>", "{namespace}", "x-{name}_y.>", "$JS.API.>", "a.b-c_d.~", "é.ü"]


def test_schema_accepts_every_subject_form(render):
    r = render({"policy": {"annotations": {"publish": SUBJECTS, "subscribe": SUBJECTS}}})
    assert yaml.safe_load(policy_file(r))["annotations"]["publish"] == SUBJECTS


@pytest.mark.parametrize("mode", ["shared", "private", "responses"])
def test_inbox_mode(render, mode):
    r = render({"inboxMode": mode})
    assert r.env["INBOX_MODE"] == {"name": "INBOX_MODE", "value": mode}
    assert ("grants the response permission" in r.notes) == (mode == "responses")


def test_inbox_mode_is_an_enum(render_error):
    assert "at '/inboxMode'" in render_error({"inboxMode": "Shared"})


@pytest.mark.parametrize("enabled, value", [(True, "true"), (False, "false")])
def test_events(render, enabled, value):
    assert render({"events": {"enabled": enabled}}).env["SERVICEACCOUNT_EVENTS"]["value"] == value


def test_events_schema(render_error):
    assert "at '/events'" in render_error({"events": {"enabled": True, "namespace": "x"}})


# The real service on the rendered file


def readme_policy():
    """The `policy:` example of the chart README."""
    readme = (CHART_DIR / "README.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", readme, re.S):
        if block.startswith("policy:"):
            return yaml.safe_load(block)["policy"]
    raise AssertionError("the chart README has no policy example")


class Service:
    """The service binary on the chart's render of MINIMAL + values, the cluster stood in for
    (ServiceAccounts from a file, keys from the dev-signer) and no NATS server to reach: it
    keeps trying to connect while the tests look at everything before that."""

    def __init__(self, chart, work):
        self.chart, self.work = chart, work
        self.binary = kubelet.build_binary()
        self.started = []
        self.run([self.binary, "keys", "--dir", str(work / "keys")])
        self.run([self.binary, "dev-signer", "init", "--dir", str(work / "signer")])
        (work / "serviceaccounts.yaml").write_text("items: []\n")

    @staticmethod
    def run(argv):
        subprocess.run(argv, check=True, capture_output=True)

    def env(self, values, name):
        """The container's environment for a render, its volumes under work/name."""
        r = self.chart.render(merge(MINIMAL, values), name=RELEASE, namespace=NAMESPACE, is_install=True)
        objects = [d for p, m in r.items() if p.endswith(".yaml") for d in yaml.safe_load_all(m) if d]
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        config_maps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
        secrets = {"callout-keys": {"signing.key": (self.work / "keys" / "signing.nk").read_text()}}
        env = kubelet.kubelet_env_and_files(deployment, self.work / name, secrets, config_maps)
        env.update(
            NATS_URL=f"nats://127.0.0.1:{kubelet.free_port()}",
            SERVICE_ACCOUNTS_PATH=str(self.work / "serviceaccounts.yaml"),
            JWKS_PATH=str(self.work / "signer" / "jwks.json"),
            JWT_ISSUER="https://dev-signer.nats-k8s-oidc-callout.local",
            PORT=str(kubelet.free_port()),
        )
        return env

    def start(self, values, name):
        env = self.env(values, name)
        log = self.work / name / "service.log"
        with open(log, "w") as f:
            proc = subprocess.Popen([self.binary], env=env, stdout=f, stderr=subprocess.STDOUT)
        self.started.append(proc)
        return Running(proc, log, env)

    def start_up_error(self, policy_text):
        """What the service says when it will not start on this policy file."""
        env = self.env({"policy": {}}, "refusals")
        kubelet.write_volume(Path(env["POLICY_FILE"]).parent, {"policy.yaml": policy_text})
        done = subprocess.run([self.binary], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode != 0, f"the service started on:\n{policy_text}"
        return done.stderr

    def stop(self):
        for proc in self.started:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)


class Running:
    def __init__(self, proc, log, env):
        self.proc, self.log, self.env = proc, log, env

    def wait_log(self, pattern, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if re.search(pattern, text):
                return text
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not logged (exit {self.proc.poll()}):\n{self.log.read_text()}")

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.env['PORT']}/metrics", timeout=2) as r:
            return r.read().decode()


@pytest.fixture(scope="module")
def service(chart):
    work = Path(tempfile.mkdtemp(prefix="nats-callout-chart-policy."))
    s = Service(chart, work)
    yield s
    s.stop()
    shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("name", ["full", "readme", "empty", "subjects"])
def test_the_service_reads_the_rendered_policy(service, name):
    subjects = {"annotations": {"publish": SUBJECTS, "subscribe": SUBJECTS}}
    policy = {"full": POLICY, "readme": readme_policy(), "empty": {}, "subjects": subjects}[name]
    running = service.start({"policy": policy}, name)
    path = running.env["POLICY_FILE"]
    assert Path(path).is_symlink() and Path(path).read_text()
    accounts = ", ".join(r["account"] for r in policy.get("rules", []) if "account" in r) or "none"
    running.wait_log(
        rf"policy {re.escape(path)}: annotations granted only within its patterns; "
        rf"accounts named by rules: {re.escape(accounts)}"
    )
    assert "INBOX_MODE=shared" in running.log.read_text()


def test_the_service_re_reads_the_policy_after_an_upgrade(service):
    running = service.start({"policy": POLICY}, "upgrade")
    path = running.env["POLICY_FILE"]
    running.wait_log(r"policy .*: annotations granted only within its patterns")
    # `helm upgrade` with another policy: the kubelet writes the new ConfigMap data and swaps
    # ..data; nothing else about the pod changes (test_a_policy_change_does_not_roll_the_pods).
    changed = copy.deepcopy(POLICY)
    changed["rules"][0]["account"] = "ORDERS"
    r = service.chart.render(merge(MINIMAL, {"policy": changed}), name=RELEASE, namespace=NAMESPACE, is_install=False)
    new_text = yaml.safe_load(r["nats-k8s-oidc-callout/templates/policy.yaml"])["data"]["policy.yaml"]
    kubelet.write_volume(Path(path).parent, {"policy.yaml": new_text})
    running.wait_log(rf"policy {re.escape(path)} re-read \(generation 2\)")
    assert 'nats_callout_policy_reloads_total{result="success"} 1' in running.metrics()


@pytest.mark.parametrize("policy, where", SCHEMA_REFUSALS)
def test_the_service_refuses_what_the_schema_refuses(service, policy, where):
    # The schema mirrors the service: each document the chart refuses to render is one the
    # service would refuse to start on.
    error = service.start_up_error(yaml.safe_dump(policy))
    assert "POLICY_FILE: invalid policy " in error, error
