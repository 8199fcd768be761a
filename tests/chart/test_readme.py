"""The chart README against the chart: its values table covers values.yaml (and nothing else),
its install commands render, and the files it points to exist."""

import json
import re
import shlex

import pytest
import yaml

from conftest import CHART_DIR, NAMESPACE, merge

ROOT = CHART_DIR.parents[1]
README = (CHART_DIR / "README.md").read_text()
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())


def leaves(tree, prefix=""):
    """Dotted paths of values.yaml down to scalars, lists and empty maps."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from leaves(value, path + ".")
        else:
            yield path, value


def table_rows():
    """(paths the row's first cell names, default cell) for every row of the values table."""
    table = README.split("## Values", 1)[1]
    rows = []
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        names = re.findall(r"`([^`]+)`", cells[0])
        first = names[0].removesuffix(".*")
        parent = first.rsplit(".", 1)[0] + "." if "." in first else ""
        paths = [first] + [n.removesuffix(".*") if "." in n else parent + n for n in names[1:]]
        rows.append((paths, cells[1]))
    return rows


ROWS = table_rows()


def covering_row(path):
    for paths, default in ROWS:
        for p in paths:
            if path == p or path.startswith(p + "."):
                return p, default
    return None, None


def test_table_was_parsed():
    assert len(ROWS) > 30


@pytest.mark.parametrize("path, default", list(leaves(VALUES)))
def test_every_value_is_in_the_table(path, default):
    named, default_cell = covering_row(path)
    assert named, f"{path} is missing from the README values table"
    # A value named on its own shows its default (scalars that have one).
    if named == path and isinstance(default, (bool, int, str)) and default != "":
        shown = json.dumps(default) if isinstance(default, bool) else str(default)
        assert f"`{shown}`" in default_cell, f"{path}: default {shown!r} not in {default_cell!r}"


def test_every_table_entry_is_a_value():
    known = [p for p, _ in leaves(VALUES)]
    for paths, _ in ROWS:
        for p in paths:
            assert any(k == p or k.startswith(p + ".") for k in known), f"README names {p}, which values.yaml lacks"


def test_required_image_and_log_levels_in_the_table():
    assert covering_row("image.repository")[1].startswith("**required**")
    _, levels = covering_row("logLevel")
    row = next(line for line in README.splitlines() if line.startswith("| `logLevel`"))
    for level in SCHEMA["properties"]["logLevel"]["enum"]:
        assert f"`{level}`" in row, level
    assert levels == "`info`"


def helm_installs():
    """The `helm install` commands of the README's sh blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            if cmd.startswith("helm install"):
                commands.append(shlex.split(cmd))
    return commands


INSTALLS = helm_installs()


def install_values(argv):
    values = {}
    for flag, arg in zip(argv, argv[1:]):
        if flag not in ("--set", "--set-file"):
            continue
        key, value = arg.split("=", 1)
        if flag == "--set-file":
            value = f"content of {value}"
        elif value in ("true", "false"):
            value = value == "true"
        tree = value
        for part in reversed(key.split(".")):
            tree = {part: tree}
        values = merge(values, tree)
    return values


def test_readme_has_install_commands():
    assert len(INSTALLS) == 2


@pytest.mark.parametrize("argv", INSTALLS, ids=["existing-secrets", "chart-secrets"])
def test_install_command_renders_with_a_nats_login(chart, argv):
    assert argv[argv.index("-n") + 1] == NAMESPACE
    values = install_values(argv)
    assert values["image"]["repository"] == "registry.example.com/platform/nats-k8s-oidc-callout"
    assert values["nats"]["account"] == "APPS"
    files = chart.render(values, name=argv[2], namespace=NAMESPACE, is_install=True)
    deployment = yaml.safe_load(files["nats-k8s-oidc-callout/templates/deployment.yaml"])
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    # Under auth_callout the service must log in as a user of auth_users: here from the URL Secret.
    assert env["NATS_URL"]["valueFrom"] == {"secretKeyRef": {"name": "nats-callout-url", "key": "url"}}
    assert "NATS_XKEY_SEED_FILE" in env


def test_keys_command_and_secret_names_match_the_deploy_guide():
    assert "keys --dir ./callout-keys --auth-user callout --auth-account AUTH" in README
    assert "create secret generic nats-callout-url" in README
    assert "--from-file=signing.key=./callout-keys/signing.nk --from-file=xkey.seed=./callout-keys/xkey.nk" in README


def test_referenced_repository_files_exist():
    for path in re.findall(r"(?:tests|scripts|docs)/[\w./-]*\w", README):
        assert (ROOT / path).exists(), path
    assert "tests/requirements.txt" in README
