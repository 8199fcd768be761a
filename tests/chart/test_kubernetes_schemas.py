"""Every object the chart renders (four renders: minimal, everything on, the other branches,
operator mode), validated against the Kubernetes OpenAPI schemas shipped by
kubernetes-validate (strict: unknown fields are errors).

Versions: see VERSIONS; each render is made for the version it is checked against.
The Prometheus Operator and Grafana Alloy kinds are CRDs that no Kubernetes version has schemas
for: they are the only ones left out, by name.
"""

import kubernetes_validate
import pytest

from conftest import SIGNING_SEED, TOKEN, XKEY_SEED

# The oldest the pinned package ships (1.25: 1.24's schemas are not in it), the first with the
# PDB's unhealthyPodEvictionPolicy on by default, the first with ValidatingAdmissionPolicy v1, a
# current one and the newest. Each render is made for its version (`kubeVersion`).
VERSIONS = ["1.25.0", "1.27.0", "1.30.0", "1.32.0", kubernetes_validate.latest_version()]
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("monitoring.grafana.com/v1alpha2", "PodLogs"),
}

POLICY = {
    "namespaces": {"include": ["*"], "exclude": ["kube-*"]},
    "annotations": {"publish": ["shared.>"], "subscribe": ["shared.>", "{namespace}.{name}.>"]},
    "rules": [{"namespaces": ["payments"], "account": "PAYMENTS", "annotations": {"publish": ["orders.>"]}}],
}

EVERYTHING = {
    "imagePullSecrets": ["regcred", {"name": "other"}],
    "nats": {
        "url": "tls://a:4222,tls://b:4222",
        "signingKey": {"create": True, "content": SIGNING_SEED, "existingSecret": ""},
        "xkey": {"create": True, "content": XKEY_SEED},
        "token": TOKEN,
        "tls": {"existingSecret": "nats-tls", "clientCertificate": True, "required": True},
    },
    "jwt": {"issuer": "https://issuer.example", "audience": "nats-prod", "jwksUrl": "https://keys.example/jwks"},
    "config": {"userJwtMaxLifetime": "15m", "workers": 4, "queueSize": 100, "watchTimeoutSeconds": 120},
    "inboxMode": "private",
    "policy": POLICY,
    "admissionPolicy": {
        "enabled": True,
        "allowedGroups": ["platform-admins"],
        "validationActions": ["Warn", "Audit"],
        "failurePolicy": "Ignore",
        "namespaceSelector": {"matchLabels": {"nats.io/clients": "true"}},
    },
    "extraEnv": [{"name": "RUST_LOG", "value": "info"}],
    "secretEnv": {"A": "b"},
    "secretVolume": {"f.txt": "aGk="},
    "rbac": {"issuerDiscovery": True},
    # The token-request branch (a Role and its binding) and the sentinel's Secret volume; the
    # projected token is the minimal render's.
    "revocation": {"systemUrlSecret": {"existingSecret": "nats-sys-url"},
                   "systemCredentials": {"existingSecret": "nats-sys-creds"}},
    "selfCheck": {"token": "tokenRequest", "readiness": True, "interval": "30s",
                  "sentinelCreds": {"existingSecret": "nats-sentinel"}},
    # The pods rule of the ClusterRole, and both variables (for the extraEnv drift check).
    "podBinding": {"mode": "watch", "nonPodTokens": "accept"},
    "podDisruptionBudget": {"minAvailable": "50%"},
    "priorityClassName": "platform-critical",
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "nats-k8s-oidc-callout"}}}
    ],
    "networkPolicy": {
        "enabled": True,
        "apiServer": {"cidrs": ["10.0.0.1/32", "fd00::1/128"]},
        "extraEgress": [{"ports": [{"port": 443, "protocol": "TCP"}]}],
    },
    "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                "prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}},
    "logs": {"podLogs": {"enabled": True}},
    "extraObjects": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "extra"}, "data": {"a": "b"}}],
}

# The other branches: a creds file, no RBAC, an existing ServiceAccount, events and the PDB off.
ALTERNATIVE = {
    "nats": {"userCredentials": {"create": True, "content": "creds"}, "urlSecret": {"existingSecret": "nats-url"}},
    "rbac": {"create": False},
    "serviceAccount": {"create": False, "name": "existing"},
    "events": {"enabled": False},
    "podDisruptionBudget": {"enabled": False},
    "policy": {},
    "inboxMode": "responses",
}

# Operator mode: the callout account's key and the accounts' keys directory, from chart-created
# Secrets, a scoped signing key, and rules naming accounts by public key.
ACCOUNT = "A" + "B" * 55
OPERATOR = {
    "nats": {
        "account": ACCOUNT,
        "operatorMode": True,
        "signingKey": {"create": True, "content": SIGNING_SEED, "existingSecret": "", "scoped": True},
        "calloutSigningKey": {"create": True, "content": SIGNING_SEED},
        "accountSigningKeys": {"create": True, "files": {f"A{'C' * 55}.nk": SIGNING_SEED}},
        "xkey": {"create": True, "content": XKEY_SEED},
    },
    "policy": {"rules": [{"namespaces": ["payments"], "account": f"A{'C' * 55}"}]},
}

RENDERS = {"minimal": {}, "everything": EVERYTHING, "alternative": ALTERNATIVE, "operator": OPERATOR}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", list(RENDERS))
def test_every_object_matches_the_kubernetes_schema(render, name, version):
    skipped = set()
    values = {**RENDERS[name], "kubeVersion": version}
    if tuple(int(x) for x in version.split(".")[:2]) < (1, 30):
        values["admissionPolicy"] = {"enabled": False}  # refused at render before 1.30
    for obj in render(values).objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in CRD_KINDS:
            skipped.add(key)
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} at {list(e.path)}: {e.message}")
    if name == "everything":
        assert skipped == CRD_KINDS


def test_the_everything_render_has_every_kind(render):
    kinds = set(render(EVERYTHING).kinds())
    assert {
        "ConfigMap", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "NetworkPolicy",
        "Secret", "Deployment", "ClusterRole", "ClusterRoleBinding", "PodDisruptionBudget",
        "Service", "ServiceAccount", "Role", "RoleBinding",
    } <= kinds


def test_a_wrong_field_is_caught():
    # The validation really looks at the fields (strict: unknown ones are errors).
    vap = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "x"},
        "spec": {"failurePolicy": "Fail", "validation": []},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(vap, "1.30.0", strict=True)



def test_version_gated_fields_follow_the_cluster_version(render, render_error):
    def pdb(version):
        return render({"kubeVersion": version}).one("PodDisruptionBudget")["spec"]

    assert "unhealthyPodEvictionPolicy" not in pdb("1.25.6")
    assert "unhealthyPodEvictionPolicy" not in pdb("v1.26.0")
    assert pdb("1.27.0")["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb("1.32.3-eks-1234")["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    msg = render_error({"kubeVersion": "1.29.4", "admissionPolicy": {"enabled": True, "allowedGroups": ["a"]}})
    assert "admissionPolicy.enabled needs Kubernetes 1.30 or newer" in msg and "1.29.4" in msg
