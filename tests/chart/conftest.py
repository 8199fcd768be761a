"""Renders the chart offline with helm-python-sdk and parses every manifest."""

import copy
import json
from pathlib import Path

import helm_python as helm
import pytest
import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "nats-k8s-oidc-callout"
RELEASE = "cb"
NAMESPACE = "nats-auth"
FULLNAME = f"{RELEASE}-nats-k8s-oidc-callout"

# The least a user must give: the image, the account and a signing key.
IMAGE = "registry.example.com/platform/nats-k8s-oidc-callout"
MINIMAL = {"image": {"repository": IMAGE}, "nats": {"account": "APP", "signingKey": {"existingSecret": "callout-keys"}}}

# Fake secrets (seed-shaped, never real keys) whose every occurrence the tests look for.
SIGNING_SEED = "SAAFAKESIGNINGSEEDFORTHECHARTTESTSONLYXXXXXXXXXXXXXXXXXXX"
XKEY_SEED = "SXAFAKECURVESEEDFORTHECHARTTESTSONLYYYYYYYYYYYYYYYYYYYYYY"
CREDS = "-----BEGIN NATS USER JWT-----\nfake.user.jwt\n------END NATS USER JWT------\nSUAFAKEUSERSEED\n"
TOKEN = "s3cr3t-token-for-chart-tests"


def merge(base, override):
    """Deep merge of two values trees (override wins; dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class Rendered:
    """The parsed objects of one render."""

    def __init__(self, files):
        self.files = files
        self.notes = files.get("nats-k8s-oidc-callout/templates/NOTES.txt", "")
        self.objects = []
        for path, text in sorted(files.items()):
            if not path.endswith(".yaml"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc is not None:
                    self.objects.append(doc)

    def kinds(self):
        return sorted(o["kind"] for o in self.objects)

    def all(self, kind):
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind, name=None):
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}: {self.kinds()}"
        return found[0]

    @property
    def deployment(self):
        return self.one("Deployment")

    @property
    def pod(self):
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self):
        containers = self.pod["containers"]
        assert len(containers) == 1
        return containers[0]

    @property
    def env(self):
        """Env entries by name (the entries themselves, to see value vs valueFrom)."""
        entries = self.container.get("env", [])
        names = [e["name"] for e in entries]
        assert len(names) == len(set(names)), f"duplicate env names: {names}"
        return {e["name"]: e for e in entries}

    def volume(self, name):
        vols = [v for v in self.pod.get("volumes", []) if v["name"] == name]
        assert len(vols) == 1, f"volume {name}: {[v['name'] for v in self.pod.get('volumes', [])]}"
        return vols[0]

    def mount(self, name):
        mounts = [m for m in self.container.get("volumeMounts", []) if m["name"] == name]
        assert len(mounts) == 1, f"mount {name}"
        return mounts[0]


@pytest.fixture(scope="session")
def chart():
    c = helm.Chart.load(str(CHART_DIR))
    yield c
    c.close()


@pytest.fixture(scope="session")
def render(chart):
    """render(values, base=MINIMAL) -> Rendered; identical values are rendered once."""
    cache = {}

    def _render(values=None, base=MINIMAL):
        vals = merge(base, values)
        key = json.dumps(vals, sort_keys=True)
        if key not in cache:
            files = chart.render(vals, name=RELEASE, namespace=NAMESPACE, is_install=True)
            cache[key] = Rendered(files)
        return cache[key]

    return _render


@pytest.fixture(scope="session")
def render_error(chart):
    """render_error(values, base=MINIMAL) -> the message of the error the render raises."""

    def _render_error(values=None, base=MINIMAL):
        vals = merge(base, values)
        with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as info:
            chart.render(vals, name=RELEASE, namespace=NAMESPACE, is_install=True)
        return str(info.value)

    return _render_error
