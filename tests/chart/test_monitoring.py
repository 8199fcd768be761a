"""ServiceMonitor, PodMonitor, PrometheusRule and PodLogs."""

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from conftest import FULLNAME, NAMESPACE

ROOT = Path(__file__).resolve().parents[2]


def test_off_by_default(render):
    r = render()
    assert not r.all("ServiceMonitor") and not r.all("PodMonitor") and not r.all("PodLogs")
    assert not r.all("PrometheusRule")


def test_service_monitor_selects_the_service(render):
    r = render(
        {
            "metrics": {
                "serviceMonitor": {
                    "enabled": True,
                    "namespace": "monitoring",
                    "labels": {"release": "kps"},
                    "annotations": {"note": "x"},
                    "interval": "15s",
                    "scrapeTimeout": "5s",
                    "relabelings": [{"action": "labeldrop", "regex": "pod"}],
                    "metricRelabelings": [{"action": "drop", "regex": "go_.*", "sourceLabels": ["__name__"]}],
                }
            }
        }
    )
    sm = r.one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["namespace"] == "monitoring"
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert sm["metadata"]["annotations"] == {"note": "x"}
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    svc = r.one("Service")
    selector = sm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= svc["metadata"]["labels"].items()
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "http" and ep["port"] in [p["name"] for p in svc["spec"]["ports"]]
    assert ep["path"] == "/metrics"
    assert ep["interval"] == "15s" and ep["scrapeTimeout"] == "5s"
    assert ep["relabelings"] == [{"action": "labeldrop", "regex": "pod"}]
    assert ep["metricRelabelings"][0]["action"] == "drop"


def test_pod_monitor_selects_the_pods(render):
    r = render({"metrics": {"podMonitor": {"enabled": True, "path": "/metrics", "interval": "1m"}}})
    pm = r.one("PodMonitor")
    assert pm["metadata"]["namespace"] == NAMESPACE
    pod_labels = r.deployment["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] == "http" and ep["port"] in [p["name"] for p in r.container["ports"]]
    assert ep["path"] == "/metrics" and ep["interval"] == "1m"


def test_pod_logs(render):
    stages = [{"cri": {}}]
    r = render({"logs": {"podLogs": {"enabled": True, "labels": {"instance": "primary"}, "pipelineStages": stages,
                                     "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}]}}})
    pl = r.one("PodLogs")
    assert pl["apiVersion"] == "monitoring.grafana.com/v1alpha2"  # Alloy; the Agent's v1alpha1 is end of life
    assert pl["metadata"]["labels"]["instance"] == "primary"
    pod_labels = r.deployment["spec"]["template"]["metadata"]["labels"]
    assert pl["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pl["spec"]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
    assert pl["spec"]["pipelineStages"] == stages
    assert pl["spec"]["relabelings"][0]["targetLabel"] == "node"


def test_the_chart_carries_the_documented_alert_rules_unchanged():
    chart_copy = ROOT / "helm" / "nats-k8s-oidc-callout" / "files" / "prometheus-rules.yaml"
    assert chart_copy.read_bytes() == (ROOT / "docs" / "alerts" / "prometheus-rules.yaml").read_bytes(), (
        "edit docs/alerts/prometheus-rules.yaml and copy it to the chart's files/"
    )


def test_prometheus_rule_is_the_documented_alerts_scoped_to_the_release(render, tmp_path):
    r = render({"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "kps"},
                                              "additionalAlertLabels": {"team": "platform"}}}})
    pr = r.one("PrometheusRule")
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    assert pr["metadata"]["labels"]["release"] == "kps"
    documented = yaml.safe_load((ROOT / "docs" / "alerts" / "prometheus-rules.yaml").read_text())
    names = lambda groups: [rule["alert"] for g in groups for rule in g["rules"]]  # noqa: E731
    assert names(pr["spec"]["groups"]) == names(documented["groups"])
    exprs = " ".join(rule["expr"] for g in pr["spec"]["groups"] for rule in g["rules"])
    assert f'namespace="{NAMESPACE}", deployment="{FULLNAME}"' in exprs
    assert f'namespace="{NAMESPACE}", pod=~"{FULLNAME}-[a-z0-9]+-[a-z0-9]+"' in exprs
    assert 'job="nats-k8s-oidc-callout"' not in exprs and 'deployment="nats-k8s-oidc-callout"' not in exprs
    for g in pr["spec"]["groups"]:
        for rule in g["rules"]:
            assert rule["labels"]["team"] == "platform" and rule["labels"]["severity"] in ("info", "warning", "critical")
    # What the Prometheus Operator hands to Prometheus is a valid rule file.
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/test installs it (tests/ops_docs.rs) before the pytest part"
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": pr["spec"]["groups"]}))
    out = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_dashboard_config_map_for_the_sidecar(render):
    import json

    assert not [c for c in render().all("ConfigMap") if c["metadata"]["name"] == f"{FULLNAME}-dashboard"]
    r = render({"metrics": {"grafanaDashboard": {"enabled": True, "namespace": "monitoring",
                                                "annotations": {"grafana_folder": "NATS"}}}})
    cm = r.one("ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "NATS"}
    dashboard = json.loads(cm["data"]["nats-k8s-oidc-callout.json"])
    shipped = json.loads((ROOT / "helm" / "nats-k8s-oidc-callout" / "files" / "grafana-dashboard.json").read_text())
    assert dashboard == shipped
    assert dashboard["uid"] == "nats-k8s-oidc-callout" and len(dashboard["panels"]) >= 10


def test_every_series_of_the_prometheus_rule_is_the_releases(render):
    # Two releases (or clusters) feeding one Prometheus must not alert on each other's metrics.
    pr = render({"metrics": {"prometheusRule": {"enabled": True}}}).one("PrometheusRule")
    unscoped = [
        (rule["alert"], m.group(0))
        for g in pr["spec"]["groups"]
        for rule in g["rules"]
        for m in re.finditer(r"(nats_callout_\w+|\bup|kube_\w+)(\{[^}]*\})?", rule["expr"])
        if not m.group(2) or f'namespace="{NAMESPACE}"' not in m.group(2)
    ]
    assert not unscoped, unscoped


def test_a_release_named_like_the_rule_files_names_gets_each_matcher_once(render):
    pr = render({"fullnameOverride": "nats-k8s-oidc-callout",
                 "metrics": {"prometheusRule": {"enabled": True}}}).one("PrometheusRule")
    for g in pr["spec"]["groups"]:
        for rule in g["rules"]:
            for selector in re.findall(r"\{[^}]*\}", rule["expr"]):
                assert selector.count("namespace=") <= 1, (rule["alert"], selector)
                assert selector.count("pod=~") <= 1, (rule["alert"], selector)


def test_every_dashboard_query_follows_the_namespace_variable():
    import json

    dashboard = json.loads((ROOT / "helm" / "nats-k8s-oidc-callout" / "files" / "grafana-dashboard.json").read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "namespace"]
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for m in re.finditer(r"(nats_callout_\w+)(\{[^}]*\})?", target["expr"]):
                assert m.group(2) and 'namespace=~"$namespace"' in m.group(2), (panel["title"], m.group(0))
