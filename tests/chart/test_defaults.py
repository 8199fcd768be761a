"""The default render: kinds, production defaults, pod hardening, env."""

import helm_python as helm

import pytest

from conftest import CHART_DIR, FULLNAME, IMAGE, MINIMAL, NAMESPACE, RELEASE

SELECTOR = {"app.kubernetes.io/name": "nats-k8s-oidc-callout", "app.kubernetes.io/instance": RELEASE}


def _lint_problems(values):
    report = helm.lint(str(CHART_DIR), values, strict=True, namespace=NAMESPACE)
    bad = [m for m in report["messages"] if m["severity"] >= 2]
    return report["errors"], bad


def test_lint_strict_clean_with_minimal_values():
    errors, bad = _lint_problems(MINIMAL)
    assert errors == [] and bad == []


def test_lint_strict_clean_with_everything_on():
    values = {
        "nats": {
            "account": "APP",
            "signingKey": {"create": True, "content": "SAAX"},
            "xkey": {"create": True, "content": "SXAX"},
            "token": "t",
        },
        "networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.1/32"]}},
        "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
        "logs": {"podLogs": {"enabled": True}},
        "secretEnv": {"A": "b"},
        "secretVolume": {"f.txt": "aGk="},
        "rbac": {"issuerDiscovery": True},
        "inboxMode": "private",
        "policy": {"namespaces": {"exclude": ["kube-*"]}, "rules": [{"namespaces": ["payments"], "account": "PAY"}]},
        "admissionPolicy": {"enabled": True, "allowedGroups": ["platform-admins"]},
    }
    errors, bad = _lint_problems(values)
    assert errors == [] and bad == []


def test_lint_reports_a_schema_violation():
    # The lint really validates: a wrong type is an error.
    errors, _ = _lint_problems({"nats": {"account": "APP"}, "replicaCount": "two"})
    assert any("/replicaCount" in e for e in errors)


def test_default_kinds(render):
    r = render()
    assert r.kinds() == sorted(
        ["Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "PodDisruptionBudget"]
    )
    # An existing Secret is used: the chart creates none.
    assert r.all("Secret") == []
    assert "APP" in r.notes


def test_names_and_labels(render):
    r = render()
    for obj in r.objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "nats-k8s-oidc-callout"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "nats-k8s-oidc-callout-0.1.0"
    d = r.deployment
    assert d["metadata"]["name"] == FULLNAME
    assert d["metadata"]["namespace"] == NAMESPACE
    assert d["spec"]["selector"]["matchLabels"] == SELECTOR
    assert r.one("Service")["spec"]["selector"] == SELECTOR


def test_fullname_is_trimmed_to_63(render):
    r = render({"fullnameOverride": "x" * 63 + "-"})
    assert r.deployment["metadata"]["name"] == "x" * 63
    long_release = render({"nameOverride": "n" * 70})
    assert len(long_release.deployment["metadata"]["name"]) <= 63


def test_replicas_pdb_and_soft_anti_affinity(render):
    r = render()
    assert r.deployment["spec"]["replicas"] == 2
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": {"matchLabels": SELECTOR},
    }
    anti = r.pod["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"] == {"matchLabels": SELECTOR}
    strategy = r.deployment["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_affinity_value_replaces_the_default(render):
    custom = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    r = render({"affinity": custom})
    assert r.pod["affinity"] == custom


def test_pdb_min_available_wins_and_pdb_can_be_off(render):
    r = render({"podDisruptionBudget": {"minAvailable": "50%"}})
    assert r.one("PodDisruptionBudget")["spec"]["minAvailable"] == "50%"
    assert "maxUnavailable" not in r.one("PodDisruptionBudget")["spec"]
    assert render({"podDisruptionBudget": {"enabled": False}}).all("PodDisruptionBudget") == []


def test_pdb_unhealthy_pod_eviction_policy(render):
    spec = render({"podDisruptionBudget": {"unhealthyPodEvictionPolicy": "IfHealthyBudget"}}).one("PodDisruptionBudget")["spec"]
    assert spec["unhealthyPodEvictionPolicy"] == "IfHealthyBudget"
    for unset in ("", None):
        spec = render({"podDisruptionBudget": {"unhealthyPodEvictionPolicy": unset}}).one("PodDisruptionBudget")["spec"]
        assert "unhealthyPodEvictionPolicy" not in spec
        assert spec["maxUnavailable"] == 1


def test_probes(render):
    c = render().container
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_security_contexts_and_resources(render):
    r = render()
    psc = r.pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 65532 and psc["runAsGroup"] == 65532 and psc["fsGroup"] == 65532
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = r.container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    res = r.container["resources"]
    assert res["requests"] == {"cpu": "50m", "memory": "64Mi"}
    assert res["limits"] == {"memory": "256Mi"}
    assert r.pod["terminationGracePeriodSeconds"] == 30


def test_service_account_token_is_projected_not_automounted(render):
    r = render()
    assert r.one("ServiceAccount")["automountServiceAccountToken"] is False
    assert r.pod["automountServiceAccountToken"] is False
    assert r.pod["serviceAccountName"] == FULLNAME
    mount = r.mount("serviceaccount-token")
    assert mount["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert mount["readOnly"] is True
    projected = r.volume("serviceaccount-token")["projected"]
    assert projected["defaultMode"] == 0o440
    token, ca, ns = projected["sources"]
    # No audience: the token is for the API server itself.
    assert token == {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}
    assert ca == {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}
    assert ns["downwardAPI"]["items"] == [
        {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
    ]


def test_env_names_and_values(render):
    r = render()
    env = r.env
    assert list(env) == [
        "NATS_URL",
        "NATS_ACCOUNT",
        "NATS_SIGNING_KEY_FILE",
        "INBOX_MODE",
        "SERVICEACCOUNT_EVENTS",
        "SELF_CHECK_INTERVAL",
        "SELF_CHECK_SERVICE_ACCOUNT",
        "SELF_CHECK_TOKEN_FILE",
        "LOG_LEVEL",
        "PORT",
        "K8S_IN_CLUSTER",
    ]
    assert env["NATS_URL"]["value"] == "nats://nats:4222"
    assert env["INBOX_MODE"]["value"] == "shared"
    assert env["SERVICEACCOUNT_EVENTS"]["value"] == "true"
    assert env["NATS_ACCOUNT"]["value"] == "APP"
    assert env["LOG_LEVEL"]["value"] == "info"
    assert env["PORT"]["value"] == "8080"
    assert env["K8S_IN_CLUSTER"]["value"] == "true"
    # Every env value is a string (Kubernetes refuses numbers and booleans).
    assert all(isinstance(e["value"], str) for e in env.values() if "value" in e)


def test_jwt_and_config_only_when_set(render):
    env = render(
        {
            "nats": {"url": "tls://a:4222, tls://b:4222"},
            "jwt": {"issuer": "https://issuer.example", "audience": "nats-prod", "jwksUrl": "https://keys.example/jwks"},
            "config": {
                "userJwtMaxLifetime": "15m",
                "jwtLeeway": "30s",
                "jwksMinRefetchInterval": "2m",
                "jwksRefetchWait": "1s",
                "workers": 8,
                "queueSize": 4096,
                "tokenCacheSize": 0,
                "shutdownTimeout": "12s",
                "watchTimeoutSeconds": 120,
            },
            "logLevel": "debug",
            "httpAddress": "::",
        }
    ).env
    expected = {
        "NATS_URL": "tls://a:4222, tls://b:4222",
        "JWT_ISSUER": "https://issuer.example",
        "JWT_AUDIENCE": "nats-prod",
        "JWKS_URL": "https://keys.example/jwks",
        "USER_JWT_MAX_LIFETIME": "15m",
        "JWT_LEEWAY": "30s",
        "JWKS_MIN_REFETCH_INTERVAL": "2m",
        "JWKS_REFETCH_WAIT": "1s",
        "WORKERS": "8",
        "QUEUE_SIZE": "4096",
        "TOKEN_CACHE_SIZE": "0",
        "SHUTDOWN_TIMEOUT": "12s",
        "WATCH_TIMEOUT_SECONDS": "120",
        "LOG_LEVEL": "debug",
        "HTTP_ADDRESS": "::",
    }
    for name, value in expected.items():
        assert env[name] == {"name": name, "value": value}
    defaults = render().env
    for name in expected:
        if name not in ("NATS_URL", "LOG_LEVEL"):
            assert name not in defaults


def test_log_level_off(render):
    assert render({"logLevel": "off"}).env["LOG_LEVEL"]["value"] == "off"


@pytest.mark.parametrize(
    "config, grace, env",
    [
        # The bounds themselves are accepted.
        ({"jwtLeeway": "0", "userJwtMaxLifetime": "10s", "shutdownTimeout": "0s", "jwksMinRefetchInterval": "1000ms", "jwksRefetchWait": "0s"}, 5,
         {"JWT_LEEWAY": "0", "USER_JWT_MAX_LIFETIME": "10s", "SHUTDOWN_TIMEOUT": "0s", "JWKS_MIN_REFETCH_INTERVAL": "1000ms", "JWKS_REFETCH_WAIT": "0s"}),
        ({"jwtLeeway": "5m", "userJwtMaxLifetime": "168h", "shutdownTimeout": "300", "jwksMinRefetchInterval": "1h", "jwksRefetchWait": "2000ms"}, 305,
         {"JWT_LEEWAY": "5m", "USER_JWT_MAX_LIFETIME": "168h", "SHUTDOWN_TIMEOUT": "300", "JWKS_MIN_REFETCH_INTERVAL": "1h", "JWKS_REFETCH_WAIT": "2000ms"}),
        # Leading zeros count for nothing (as in the service).
        ({"userJwtMaxLifetime": "00000000000000000060s"}, 30, {"USER_JWT_MAX_LIFETIME": "00000000000000000060s"}),
        # Grace period exactly SHUTDOWN_TIMEOUT + 5s, default and explicit.
        ({}, 15, {}),
        ({"shutdownTimeout": "20s"}, 25, {"SHUTDOWN_TIMEOUT": "20s"}),
        ({"shutdownTimeout": "500ms"}, 6, {"SHUTDOWN_TIMEOUT": "500ms"}),
    ],
)
def test_durations_in_range(render, config, grace, env):
    r = render({"config": config, "terminationGracePeriodSeconds": grace})
    assert r.pod["terminationGracePeriodSeconds"] == grace
    for name, value in env.items():
        assert r.env[name]["value"] == value


def test_service(render):
    svc = render({"service": {"annotations": {"a": "b"}}}).one("Service")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert svc["metadata"]["annotations"] == {"a": "b"}


def test_image_tag_and_digest(render):
    assert render().container["image"] == f"{IMAGE}:0.1.0"
    assert render().container["imagePullPolicy"] == "IfNotPresent"
    assert render({"image": {"tag": "0.2.0"}}).container["image"].endswith(":0.2.0")
    digest = "sha256:" + "ab" * 32
    img = render({"image": {"tag": "0.2.0", "digest": digest}}).container["image"]
    assert img == f"{IMAGE}@{digest}"
