"""ServiceMonitor, PodMonitor and PodLogs."""

from conftest import NAMESPACE


def test_off_by_default(render):
    r = render()
    assert not r.all("ServiceMonitor") and not r.all("PodMonitor") and not r.all("PodLogs")


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
