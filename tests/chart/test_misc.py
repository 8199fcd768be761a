"""RBAC, ServiceAccount, extraObjects and the pod passthroughs."""

from conftest import FULLNAME, NAMESPACE

SA_RULE = {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "list", "watch"]}
DISCOVERY_RULE = {"nonResourceURLs": ["/openid/v1/jwks", "/.well-known/openid-configuration"], "verbs": ["get"]}
# Events go to every ServiceAccount's namespace: cluster-wide, and create only.
EVENTS_RULE = {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}


def test_rbac_on(render):
    r = render()
    role = r.one("ClusterRole")
    assert role["rules"] == [SA_RULE, EVENTS_RULE]
    binding = r.one("ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]


def test_rbac_issuer_discovery(render):
    assert render({"rbac": {"issuerDiscovery": True}}).one("ClusterRole")["rules"] == [SA_RULE, EVENTS_RULE, DISCOVERY_RULE]


def test_rbac_without_events(render):
    assert render({"events": {"enabled": False}}).one("ClusterRole")["rules"] == [SA_RULE]


def test_rbac_off(render):
    r = render({"rbac": {"create": False}})
    assert r.all("ClusterRole") == [] and r.all("ClusterRoleBinding") == []
    assert "rbac.create is false" in r.notes
    assert "create on events" in r.notes
    assert "create on events" not in render({"rbac": {"create": False}, "events": {"enabled": False}}).notes


# The pod binding check: list + watch of every pod, nothing else (no get, no other resource).
PODS_RULE = {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}


def test_pod_binding_off_by_default_with_no_pod_access(render):
    for r in (render(), render({"podBinding": {"mode": "off", "nonPodTokens": ""}})):
        assert "POD_BINDING" not in r.env and "NON_POD_TOKENS" not in r.env
        assert r.one("ClusterRole")["rules"] == [SA_RULE, EVENTS_RULE]
        assert not any("pods" in rule.get("resources", []) for rule in r.one("ClusterRole")["rules"])


def test_pod_binding_watch_sets_the_mode_and_grants_list_and_watch_on_pods(render):
    r = render({"podBinding": {"mode": "watch"}})
    assert r.env["POD_BINDING"] == {"name": "POD_BINDING", "value": "watch"}
    # The service's own default (refuse with watch) stands unless asked otherwise.
    assert "NON_POD_TOKENS" not in r.env
    assert r.one("ClusterRole")["rules"] == [SA_RULE, EVENTS_RULE, PODS_RULE]
    everything = render({"podBinding": {"mode": "watch"}, "events": {"enabled": False}, "rbac": {"issuerDiscovery": True}})
    assert everything.one("ClusterRole")["rules"] == [SA_RULE, PODS_RULE, DISCOVERY_RULE]
    # No namespaced Role gets pods either.
    assert all("pods" not in rule.get("resources", []) for role in r.all("Role") for rule in role["rules"])


def test_non_pod_tokens_is_passed_when_set(render):
    assert render({"podBinding": {"nonPodTokens": "accept"}}).env["NON_POD_TOKENS"] == {"name": "NON_POD_TOKENS", "value": "accept"}
    r = render({"podBinding": {"mode": "watch", "nonPodTokens": "accept"}})
    assert r.env["NON_POD_TOKENS"]["value"] == "accept" and r.env["POD_BINDING"]["value"] == "watch"
    r = render({"podBinding": {"nonPodTokens": "refuse"}})
    assert r.env["NON_POD_TOKENS"]["value"] == "refuse" and "POD_BINDING" not in r.env
    # Refusing tokens bound to no pod needs no pod access.
    assert r.one("ClusterRole")["rules"] == [SA_RULE, EVENTS_RULE]


def test_pod_binding_without_rbac_says_what_to_grant(render):
    r = render({"rbac": {"create": False}, "podBinding": {"mode": "watch"}})
    assert r.all("ClusterRole") == []
    assert "list/watch on pods" in r.notes
    assert "list/watch on pods" not in render({"rbac": {"create": False}}).notes


TOKEN_RULE = {"apiGroups": [""], "resources": ["serviceaccounts/token"], "resourceNames": [FULLNAME], "verbs": ["create"]}
CHECK_TOKEN = "/etc/nats-k8s-oidc-callout/self-check-token/token"


def test_self_check_on_by_default_with_a_projected_token_and_no_rbac(render):
    r = render()
    env = r.env
    assert env["SELF_CHECK_INTERVAL"]["value"] == "60s"
    assert env["SELF_CHECK_SERVICE_ACCOUNT"]["value"] == f"{NAMESPACE}/{FULLNAME}"
    assert env["SELF_CHECK_TOKEN_FILE"]["value"] == CHECK_TOKEN
    assert "SELF_CHECK_READINESS" not in env
    assert r.mount("self-check-token")["mountPath"] == "/etc/nats-k8s-oidc-callout/self-check-token"
    # The workloads' audience, the shortest lifetime, bound to the pod by the kubelet.
    sources = r.volume("self-check-token")["projected"]["sources"]
    assert sources == [{"serviceAccountToken": {"path": "token", "audience": "nats", "expirationSeconds": 600}}]
    assert r.all("Role") == [] and r.all("RoleBinding") == []
    # jwt.audience is followed.
    other = render({"jwt": {"audience": "nats-prod"}}).volume("self-check-token")["projected"]["sources"]
    assert other[0]["serviceAccountToken"]["audience"] == "nats-prod"


def test_self_check_by_token_request_has_a_role_for_its_own_token_only(render):
    r = render({"selfCheck": {"token": "tokenRequest"}})
    assert "SELF_CHECK_TOKEN_FILE" not in r.env
    assert all(v["name"] != "self-check-token" for v in r.pod.get("volumes", []))
    role = r.one("Role")
    # Namespaced, create only, on the chart's own ServiceAccount only: a Role cannot mint tokens
    # for any other ServiceAccount of the namespace.
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [TOKEN_RULE]
    binding = r.one("RoleBinding")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    # The ClusterRole does not grant tokens.
    assert all("serviceaccounts/token" not in rule.get("resources", []) for rule in r.one("ClusterRole")["rules"])


def test_self_check_names_an_existing_service_account_and_gates_readiness_when_asked(render):
    r = render({
        "serviceAccount": {"create": False, "name": "callout-sa"},
        "selfCheck": {"readiness": True, "interval": "5m", "token": "tokenRequest"},
    })
    assert r.env["SELF_CHECK_SERVICE_ACCOUNT"]["value"] == f"{NAMESPACE}/callout-sa"
    assert r.env["SELF_CHECK_INTERVAL"]["value"] == "5m"
    assert r.env["SELF_CHECK_READINESS"]["value"] == "true"
    assert r.one("Role")["rules"][0]["resourceNames"] == ["callout-sa"]


def test_revocation_takes_the_system_url_from_its_secret_only(render):
    assert "NATS_SYSTEM_URL" not in render().env
    r = render({"revocation": {"systemUrlSecret": {"existingSecret": "nats-sys-url"}}})
    assert r.env["NATS_SYSTEM_URL"] == {
        "name": "NATS_SYSTEM_URL",
        "valueFrom": {"secretKeyRef": {"name": "nats-sys-url", "key": "url"}},
    }


def test_revocation_in_operator_mode_mounts_the_system_users_creds(render_error, render):
    r = render({"revocation": {"systemUrlSecret": {"existingSecret": "nats-sys-url"},
                               "systemCredentials": {"existingSecret": "nats-sys-creds"}}})
    assert r.env["NATS_SYSTEM_CREDS_FILE"]["value"] == "/etc/nats-k8s-oidc-callout/system/sys.creds"
    assert r.mount("system-creds")["mountPath"] == "/etc/nats-k8s-oidc-callout/system"
    assert r.volume("system-creds")["secret"]["items"] == [{"key": "sys.creds", "path": "sys.creds"}]
    assert "NATS_SYSTEM_CREDS_FILE" not in render().env
    msg = render_error({"revocation": {"systemCredentials": {"existingSecret": "nats-sys-creds"}}})
    assert "revocation.systemCredentials needs revocation.systemUrlSecret" in msg


def test_self_check_off(render):
    r = render({"selfCheck": {"enabled": False, "token": "tokenRequest"}})
    assert not any(name.startswith("SELF_CHECK_") for name in r.env)
    assert r.all("Role") == [] and r.all("RoleBinding") == []
    assert all(v["name"] != "self-check-token" for v in r.pod.get("volumes", []))
    # Without rbac.create the notes say what to grant, for the token request only.
    assert "serviceaccounts/token" in render({"rbac": {"create": False}, "selfCheck": {"token": "tokenRequest"}}).notes
    assert "serviceaccounts/token" not in render({"rbac": {"create": False}}).notes


def test_self_check_presents_the_sentinel_from_a_secret(render):
    r = render({"selfCheck": {"sentinelCreds": {"existingSecret": "nats-sentinel"}}})
    assert r.env["SELF_CHECK_CREDS_FILE"]["value"] == "/etc/nats-k8s-oidc-callout/self-check/sentinel.creds"
    assert r.mount("self-check-sentinel")["mountPath"] == "/etc/nats-k8s-oidc-callout/self-check"
    secret = r.volume("self-check-sentinel")["secret"]
    assert secret["secretName"] == "nats-sentinel"
    assert secret["items"] == [{"key": "sentinel.creds", "path": "sentinel.creds"}]
    assert "SELF_CHECK_CREDS_FILE" not in render().env
    off = render({"selfCheck": {"enabled": False, "sentinelCreds": {"existingSecret": "nats-sentinel"}}})
    assert "SELF_CHECK_CREDS_FILE" not in off.env
    assert all(v["name"] != "self-check-sentinel" for v in off.pod.get("volumes", []))


def test_service_account_not_created(render):
    r = render({"serviceAccount": {"create": False, "name": "callout-sa"}})
    assert r.all("ServiceAccount") == []
    assert r.pod["serviceAccountName"] == "callout-sa"
    assert r.pod["automountServiceAccountToken"] is False
    assert r.one("ClusterRoleBinding")["subjects"][0]["name"] == "callout-sa"


def test_service_account_not_created_without_rbac(render):
    r = render({"serviceAccount": {"create": False, "name": "callout-sa"}, "rbac": {"create": False}})
    assert r.pod["serviceAccountName"] == "callout-sa"
    assert "ServiceAccount callout-sa yourself" in r.notes


def test_service_account_name_and_annotations(render):
    r = render({"serviceAccount": {"name": "custom", "annotations": {"eks.amazonaws.com/role-arn": "arn"}}})
    sa = r.one("ServiceAccount")
    assert sa["metadata"]["name"] == "custom"
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn"}
    assert r.pod["serviceAccountName"] == "custom"


def test_extra_objects_map_and_string_are_templated(render):
    r = render(
        {
            "extraObjects": [
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "{{ .Release.Name }}-extra"}, "data": {"ns": "{{ .Release.Namespace }}"}},
                'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ include "nats-k8s-oidc-callout.fullname" . }}-str\ndata:\n  account: {{ .Values.nats.account | quote }}\n',
            ]
        }
    )
    m = r.one("ConfigMap", "cb-extra")
    assert m["data"] == {"ns": NAMESPACE}
    s = r.one("ConfigMap", f"{FULLNAME}-str")
    assert s["data"] == {"account": "APP"}


def test_pod_passthroughs(render):
    values = {
        "extraEnv": [{"name": "RUST_LOG", "value": "nats_k8s_oidc_callout=debug"},
                     {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}],
        "envFrom": [{"configMapRef": {"name": "more-env"}}],
        "extraVolumes": [{"name": "tmp", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "imagePullSecrets": ["regcred", {"name": "other"}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}],
        "priorityClassName": "system-cluster-critical",
        "podLabels": {"team": "platform"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        "terminationGracePeriodSeconds": 45,
        "replicaCount": 3,
    }
    r = render(values)
    env = r.env
    assert env["RUST_LOG"]["value"] == "nats_k8s_oidc_callout=debug"
    assert env["FROM_CM"]["valueFrom"] == {"configMapKeyRef": {"name": "cm", "key": "k"}}
    assert r.container["envFrom"] == [{"configMapRef": {"name": "more-env"}}]
    assert r.volume("tmp") == {"name": "tmp", "emptyDir": {}}
    assert r.mount("tmp") == {"name": "tmp", "mountPath": "/tmp"}
    # The built-in volumes stay.
    assert r.volume("serviceaccount-token") and r.volume("signing-key")
    assert r.pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other"}]
    assert r.pod["topologySpreadConstraints"] == values["topologySpreadConstraints"]
    assert r.pod["priorityClassName"] == "system-cluster-critical"
    assert r.deployment["spec"]["template"]["metadata"]["labels"]["team"] == "platform"
    assert r.pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert r.pod["tolerations"] == values["tolerations"]
    assert r.pod["terminationGracePeriodSeconds"] == 45
    assert r.deployment["spec"]["replicas"] == 3
