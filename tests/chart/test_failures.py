"""Values the chart refuses, each with a message naming the value to fix."""

import pytest

from conftest import MINIMAL, TOKEN

NO_SIGNING = {"nats": {"account": "APP"}}


def test_missing_account(render_error):
    msg = render_error(base={"nats": {"signingKey": {"existingSecret": "keys"}}})
    assert "nats.account is required" in msg


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
        ({"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled", "want boolean"),
        ({"networkPolicy": {"natsPort": 70000}}, "/networkPolicy/natsPort", "maximum"),
        ({"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.1"]}}}, "/networkPolicy/apiServer/cidrs/0", "pattern"),
        ({"replicas": 2}, "", "'replicas' not allowed"),
        ({"nats": {"acount": "APP"}}, "/nats", "'acount' not allowed"),
        ({"nats": {"signingKey": {"existingSecretKeyy": "seed"}}}, "/nats/signingKey", "'existingSecretKeyy' not allowed"),
        ({"jwt": {"jwksUrl": "http://keys.example/jwks"}}, "/jwt/jwksUrl", "pattern"),
        ({"jwt": {"issuer": "kubernetes.default.svc"}}, "/jwt/issuer", "pattern"),
        ({"nats": {"url": "http://nats:4222"}}, "/nats/url", "pattern"),
        ({"config": {"jwtLeeway": "1 minute"}}, "/config/jwtLeeway", "pattern"),
        ({"config": {"workers": 0}}, "/config/workers", "minimum"),
        ({"config": {"unknown": 1}}, "/config", "'unknown' not allowed"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "must be one of"),
        ({"image": {"digest": "latest"}}, "/image/digest", "pattern"),
        ({"service": {"type": "ExternalName"}}, "/service/type", "must be one of"),
        ({"podDisruptionBudget": {"maxUnavailable": "one"}}, "/podDisruptionBudget/maxUnavailable", ""),
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval", "pattern"),
        ({"metrics": {"podMonitor": {"enable": True}}}, "/metrics/podMonitor", "'enable' not allowed"),
        ({"rbac": {"issuerDiscovery": "true"}}, "/rbac/issuerDiscovery", "want boolean"),
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
