"""Values the chart refuses, each with a message naming the value to fix."""

import pytest

from conftest import IMAGE, MINIMAL, TOKEN

NO_SIGNING = {"image": {"repository": IMAGE}, "nats": {"account": "APP"}}
NO_ACCOUNT = {"image": {"repository": IMAGE}, "nats": {"signingKey": {"existingSecret": "keys"}}}
IMAGE_MESSAGE = (
    "image.repository is required: no public image is published; build one with "
    "scripts/build-image and push it to your registry (docs/DEPLOY.md step 1)"
)


def test_missing_account(render_error):
    msg = render_error(base=NO_ACCOUNT)
    assert "nats.account is required" in msg


@pytest.mark.parametrize("account", ["", "   ", "\t \n"])
def test_blank_account(render_error, account):
    msg = render_error({"nats": {"account": account}})
    assert "nats.account is required" in msg


def test_the_system_account_is_refused(render_error):
    # As the service refuses NATS_ACCOUNT=$SYS: clients there read operators' $SYS answers.
    assert "at '/nats/account'" in render_error({"nats": {"account": "$SYS"}})


def test_missing_image_repository(render_error):
    # The chart's own default: no repository.
    assert IMAGE_MESSAGE in render_error(base={"nats": MINIMAL["nats"]})
    for blank in ("", "  "):
        assert IMAGE_MESSAGE in render_error({"image": {"repository": blank}})


def test_existing_service_account_needs_a_name(render_error):
    for values in ({"serviceAccount": {"create": False}}, {"serviceAccount": {"create": False, "name": ""}}):
        msg = render_error(values)
        assert "serviceAccount.create is false" in msg and "serviceAccount.name is empty" in msg
    # Also without RBAC: the pods would still run as the namespace's default ServiceAccount.
    msg = render_error({"serviceAccount": {"create": False}, "rbac": {"create": False}})
    assert "serviceAccount.name is empty" in msg


@pytest.mark.parametrize(
    "key",
    ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version", "helm.sh/chart"],
)
def test_pod_labels_must_not_set_chart_labels(render_error, key):
    msg = render_error({"podLabels": {"team": "platform", key: "other"}})
    assert f"podLabels must not set {key}" in msg


@pytest.mark.parametrize(
    "key, value, bound",
    [
        ("jwtLeeway", "301s", "JWT_LEEWAY from 0s to 5m"),
        ("jwtLeeway", "6m", "JWT_LEEWAY from 0s to 5m"),
        ("jwtLeeway", "1h", "JWT_LEEWAY from 0s to 5m"),
        ("userJwtMaxLifetime", "9", "USER_JWT_MAX_LIFETIME from 10s to 7 days"),
        ("userJwtMaxLifetime", "9999ms", "USER_JWT_MAX_LIFETIME from 10s to 7 days"),
        ("userJwtMaxLifetime", "169h", "USER_JWT_MAX_LIFETIME from 10s to 7 days"),
        ("shutdownTimeout", "301", "SHUTDOWN_TIMEOUT from 0s to 300s"),
        ("jwksMinRefetchInterval", "500ms", "JWKS_MIN_REFETCH_INTERVAL from 1s to 1h"),
        ("jwksMinRefetchInterval", "61m", "JWKS_MIN_REFETCH_INTERVAL from 1s to 1h"),
        ("jwksRefetchWait", "2001ms", "JWKS_REFETCH_WAIT from 0s to 2s"),
        ("jwksRefetchWait", "3s", "JWKS_REFETCH_WAIT from 0s to 2s"),
        # Too many digits to be anything but out of range (and never an int64 overflow).
        ("jwtLeeway", "99999999999999999999s", "JWT_LEEWAY from 0s to 5m"),
        ("userJwtMaxLifetime", "1000000000000ms", "USER_JWT_MAX_LIFETIME from 10s to 7 days"),
    ],
)
def test_duration_out_of_range(render_error, key, value, bound):
    # A long grace period, so only the bound itself can fail.
    msg = render_error({"config": {key: value}, "terminationGracePeriodSeconds": 3600})
    assert f'config.{key}="{value}"' in msg
    assert bound in msg


@pytest.mark.parametrize(
    "grace, shutdown, least",
    [(14, None, 15), (0, None, 15), (24, "20s", 25), (60, "1m", 65), (5, "1ms", 6)],
)
def test_grace_period_shorter_than_shutdown(render_error, grace, shutdown, least):
    values = {"terminationGracePeriodSeconds": grace}
    if shutdown:
        values["config"] = {"shutdownTimeout": shutdown}
    msg = render_error(values)
    assert f"terminationGracePeriodSeconds={grace} is too short for config.shutdownTimeout={shutdown or '10s (the service default)'}:" in msg
    assert f"at least {least}" in msg


def test_missing_signing_key(render_error):
    msg = render_error(base=NO_SIGNING)
    assert "nats.signingKey.existingSecret" in msg and "nats.signingKey.create" in msg


def test_signing_key_create_without_content(render_error):
    msg = render_error({"nats": {"signingKey": {"existingSecret": "", "create": True}}})
    assert "nats.signingKey.content is empty" in msg


def test_signing_key_create_and_existing_secret(render_error):
    msg = render_error({"nats": {"signingKey": {"create": True, "content": "SAX"}}})
    assert "nats.signingKey" in msg and "not both" in msg


def test_content_without_create(render_error):
    msg = render_error({"nats": {"xkey": {"content": "SXA"}}})
    assert "nats.xkey.create is false" in msg


def test_token_and_creds_together(render_error):
    msg = render_error({"nats": {"token": TOKEN, "userCredentials": {"existingSecret": "login"}}})
    assert "nats.userCredentials and nats.token" in msg
    assert TOKEN not in msg
    msg = render_error({"nats": {"tokenSecret": {"existingSecret": "t"}, "userCredentials": {"existingSecret": "login"}}})
    assert "nats.userCredentials and nats.token" in msg


def test_token_and_token_secret_together(render_error):
    msg = render_error({"nats": {"token": TOKEN, "tokenSecret": {"existingSecret": "t"}}})
    assert "nats.token and nats.tokenSecret.existingSecret" in msg


@pytest.mark.parametrize(
    "url",
    [
        "nats://user:pa55word@nats:4222",
        "tls://a:4222,nats://tok3n@b:4222",
        "wss://user:pa55word@nats.example:443",
        # Not even a NATS scheme: still the credentials message, never a schema error echoing the value.
        "http://user:pa55word@nats:4222",
        "user:pa55word@nats:4222",
    ],
)
def test_url_with_credentials(render_error, url):
    msg = render_error({"nats": {"url": url}})
    assert "nats.url must not hold credentials" in msg
    assert "nats.urlSecret.existingSecret" in msg
    assert "pa55word" not in msg and "tok3n" not in msg  # the message never echoes them


@pytest.mark.parametrize("url", ["ws://nats:8080", "nats://a:4222,wss://b:443"])
def test_a_websocket_url_is_refused_at_render(render_error, url):
    # The service speaks NATS over TCP only and would refuse it at start-up.
    msg = render_error({"nats": {"url": url}})
    assert "nats" in msg and "url" in msg and "pattern" in msg, msg


def test_at_most_one_nats_login(render_error):
    msg = render_error(
        {"nats": {"nkeySeed": {"existingSecret": "n"}, "tokenSecret": {"existingSecret": "t"}}}
    )
    assert "nats.nkeySeed, nats.token (or nats.tokenSecret) are all set" in msg, msg


def test_a_client_certificate_needs_its_secret(render_error):
    msg = render_error({"nats": {"tls": {"clientCertificate": True}}})
    assert "nats.tls.existingSecret is empty" in msg, msg


def test_url_and_url_secret_together(render_error):
    msg = render_error({"nats": {"url": "nats://a:4222", "urlSecret": {"existingSecret": "u"}}})
    assert "nats.url and nats.urlSecret.existingSecret" in msg


def test_pdb_without_a_bound(render_error):
    msg = render_error({"podDisruptionBudget": {"maxUnavailable": None}})
    assert "podDisruptionBudget.maxUnavailable" in msg


@pytest.mark.parametrize(
    "values, where, what",
    [
        ({"replicaCount": "two"}, "/replicaCount", "want integer"),
        ({"replicaCount": -1}, "/replicaCount", "minimum"),
        ({"logLevel": "verbose"}, "/logLevel", "must be one of"),
        ({"logLevel": "OFF"}, "/logLevel", "must be one of"),
        ({"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled", "want boolean"),
        ({"networkPolicy": {"natsPort": 70000}}, "/networkPolicy/natsPort", "maximum"),
        ({"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.1"]}}}, "/networkPolicy/apiServer/cidrs/0", "pattern"),
        ({"networkPolicy": {"apiServer": {"cidrs": ["10.0.0/24"]}}}, "/networkPolicy/apiServer/cidrs/0", "pattern"),
        ({"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.1/33"]}}}, "/networkPolicy/apiServer/cidrs/0", "pattern"),
        ({"networkPolicy": {"apiServer": {"cidrs": ["1.2.3.4.5/32"]}}}, "/networkPolicy/apiServer/cidrs/0", "pattern"),
        ({"networkPolicy": {"apiServer": {"cidrs": ["fd00::1"]}}}, "/networkPolicy/apiServer/cidrs/0", "pattern"),
        ({"networkPolicy": {"apiServer": {"cidrs": ["fd00::/129"]}}}, "/networkPolicy/apiServer/cidrs/0", "pattern"),
        ({"networkPolicy": {"apiServer": {"cidrs": ["abcd/64"]}}}, "/networkPolicy/apiServer/cidrs/0", "pattern"),
        ({"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.0/8", "api.example/32"]}}}, "/networkPolicy/apiServer/cidrs/1", "pattern"),
        ({"replicas": 2}, "", "'replicas' not allowed"),
        ({"nats": {"acount": "APP"}}, "/nats", "'acount' not allowed"),
        ({"nats": {"signingKey": {"existingSecretKeyy": "seed"}}}, "/nats/signingKey", "'existingSecretKeyy' not allowed"),
        ({"jwt": {"jwksUrl": "http://keys.example/jwks"}}, "/jwt/jwksUrl", "pattern"),
        ({"jwt": {"issuer": "kubernetes.default.svc"}}, "/jwt/issuer", "pattern"),
        ({"nats": {"url": "http://nats:4222"}}, "/nats/url", "pattern"),
        ({"config": {"jwtLeeway": "1 minute"}}, "/config/jwtLeeway", "pattern"),
        ({"config": {"workers": 0}}, "/config/workers", "minimum"),
        ({"config": {"workers": 257}}, "/config/workers", "maximum"),
        ({"config": {"workers": 2.5}}, "/config/workers", "want null or integer"),
        ({"config": {"queueSize": 0}}, "/config/queueSize", "minimum"),
        ({"config": {"tokenCacheSize": -1}}, "/config/tokenCacheSize", "minimum"),
        ({"config": {"tokenCacheSize": 1000001}}, "/config/tokenCacheSize", "maximum"),
        ({"config": {"watchTimeoutSeconds": 9}}, "/config/watchTimeoutSeconds", "minimum"),
        ({"config": {"watchTimeoutSeconds": 3601}}, "/config/watchTimeoutSeconds", "maximum"),
        ({"config": {"shutdownTimeout": "1d"}}, "/config/shutdownTimeout", "pattern"),
        ({"podDisruptionBudget": {"unhealthyPodEvictionPolicy": "Never"}}, "/podDisruptionBudget/unhealthyPodEvictionPolicy", "must be one of"),
        ({"config": {"unknown": 1}}, "/config", "'unknown' not allowed"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "must be one of"),
        ({"image": {"digest": "latest"}}, "/image/digest", "pattern"),
        ({"service": {"type": "ExternalName"}}, "/service/type", "must be one of"),
        ({"podDisruptionBudget": {"maxUnavailable": "one"}}, "/podDisruptionBudget/maxUnavailable", ""),
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval", "pattern"),
        ({"metrics": {"podMonitor": {"enable": True}}}, "/metrics/podMonitor", "'enable' not allowed"),
        ({"rbac": {"issuerDiscovery": "true"}}, "/rbac/issuerDiscovery", "want boolean"),
        ({"selfCheck": {"interval": "often"}}, "/selfCheck/interval", "pattern"),
        ({"selfCheck": {"readiness": "yes"}}, "/selfCheck/readiness", "want boolean"),
        ({"selfCheck": {"enable": True}}, "/selfCheck", "'enable' not allowed"),
        ({"selfCheck": {"token": "file"}}, "/selfCheck/token", "must be one of"),
        ({"revocation": {"systemUrl": "nats://sys:pw@nats:4222"}}, "/revocation", "'systemUrl' not allowed"),
        ({"podBinding": {"mode": "tokenreview"}}, "/podBinding/mode", "must be one of"),
        # A bare `off` in a values file is YAML's boolean false, not the mode.
        ({"podBinding": {"mode": False}}, "/podBinding/mode", "want string"),
        ({"podBinding": {"nonPodTokens": "maybe"}}, "/podBinding/nonPodTokens", "must be one of"),
        ({"podBinding": {"enabled": True}}, "/podBinding", "'enabled' not allowed"),
        ({"resources": []}, "/resources", "want object"),
        ({"extraEnv": {"A": "b"}}, "/extraEnv", "want array"),
        ({"secretEnv": {"BAD NAME": "x"}}, "/secretEnv", "'BAD NAME' not allowed"),
        ({"secretVolume": {"ca.pem": "not base64!"}}, "/secretVolume/ca.pem", "pattern"),
    ],
)
def test_schema_refusals(render_error, values, where, what):
    msg = render_error(values)
    assert "values don't meet the specifications of the schema" in msg
    assert f"at '{where}'" in msg
    assert what in msg


def test_minimal_values_render(render):
    # The base of every failure above is itself valid.
    assert render(base=MINIMAL).deployment


@pytest.mark.parametrize("address", ["localhost", "0.0.0.0 ", "http://[::]"])
def test_http_address_is_an_ip_address(render_error, address):
    assert "httpAddress" in render_error({"httpAddress": address})


@pytest.mark.parametrize("name", ["NATS_URL", "LOG_LEVEL", "NATS_CREDS_FILE", "TOKEN_CACHE_SIZE", "POD_BINDING", "NON_POD_TOKENS"])
def test_extra_env_cannot_set_what_the_chart_sets(render_error, name):
    msg = render_error({"extraEnv": [{"name": "RUST_LOG", "value": "info"}, {"name": name, "value": "x"}]})
    assert f"extraEnv[1] sets {name}, which the chart sets from its values" in msg, msg


def test_extra_env_names_appear_once(render_error):
    msg = render_error({"extraEnv": [{"name": "RUST_LOG", "value": "a"}, {"name": "RUST_LOG", "value": "b"}]})
    assert "extraEnv[1] sets RUST_LOG a second time" in msg, msg


def test_every_variable_the_chart_sets_is_refused_in_extra_env(render, render_error):
    # Against drift: each name of a render with (nearly) everything on is on the refused list.
    from test_kubernetes_schemas import EVERYTHING, OPERATOR

    for values in (EVERYTHING, OPERATOR, {"httpAddress": "0.0.0.0", "config": {"jwtLeeway": "30s"}}):
        for name in render(values).env:
            if name == "RUST_LOG":  # EVERYTHING's own extraEnv entry
                continue
            msg = render_error({"extraEnv": [{"name": name, "value": "x"}]})
            assert f"sets {name}, which the chart sets" in msg, (name, msg)


def test_a_tls_secret_nothing_is_taken_from_is_refused(render_error):
    msg = render_error({"nats": {"tls": {"existingSecret": "t", "caKey": ""}}})
    assert "nothing is taken from it" in msg, msg
