"""The NetworkPolicy: default ingress/egress rules, selectors, replacement, API server CIDRs."""

import pytest

from conftest import RELEASE

SELECTOR = {"app.kubernetes.io/name": "nats-k8s-oidc-callout", "app.kubernetes.io/instance": RELEASE}
DNS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
NODE_LOCAL_DNS_PEER = {"ipBlock": {"cidr": "169.254.20.10/32"}}
NODE_LOCAL_DNS_PODS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "node-local-dns"}},
}
NATS_PEER = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "nats"}}}


def policy(render, np=None):
    return render({"networkPolicy": {"enabled": True, **(np or {})}}).one("NetworkPolicy")["spec"]


def rule_with_port(rules, port, protocol="TCP"):
    found = [r for r in rules if {"protocol": protocol, "port": port} in r.get("ports", [])]
    assert len(found) == 1, f"one rule for {protocol}/{port}: {rules}"
    return found[0]


def test_off_by_default(render):
    assert render().all("NetworkPolicy") == []


def test_default_rules(render):
    spec = policy(render)
    assert spec["podSelector"] == {"matchLabels": SELECTOR}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": "http"}]}]
    egress = spec["egress"]
    assert len(egress) == 3
    dns = rule_with_port(egress, 53, "UDP")
    assert {"protocol": "TCP", "port": 53} in dns["ports"]
    # No cluster to look kube-dns up in (a render without one): the selectors only.
    assert dns["to"] == [DNS_PEER, NODE_LOCAL_DNS_PEER, NODE_LOCAL_DNS_PODS]
    nats = rule_with_port(egress, 4222)
    assert nats["to"] == [NATS_PEER]
    api = rule_with_port(egress, 443)
    assert api["ports"] == [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}]
    assert "to" not in api  # no CIDRs given: any destination on the API server ports


def test_selectors_ports_and_api_cidrs(render):
    node_local = [{"ipBlock": {"cidr": "169.254.20.10/32"}}]
    nats_peer = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nats"}}, "podSelector": {"matchLabels": {"app": "nats"}}}]
    spec = policy(
        render,
        {
            "natsPort": 4333,
            "natsSelector": nats_peer,
            "dnsSelector": node_local,
            "apiServer": {"ports": [6443], "cidrs": ["10.0.0.10/32", "10.0.0.11/32"]},
        },
    )
    egress = spec["egress"]
    assert rule_with_port(egress, 53, "UDP")["to"] == node_local
    assert rule_with_port(egress, 4333)["to"] == nats_peer
    api = rule_with_port(egress, 6443)
    assert api["ports"] == [{"protocol": "TCP", "port": 6443}]
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.10/32"}}, {"ipBlock": {"cidr": "10.0.0.11/32"}}]
    assert not [r for r in egress if {"protocol": "TCP", "port": 4222} in r.get("ports", [])]


@pytest.mark.parametrize(
    "ips, cidrs",
    [(["10.96.0.10"], ["10.96.0.10/32"]), (["10.96.0.10", "fd00:10:96::a"], ["10.96.0.10/32", "fd00:10:96::a/128"])],
)
def test_the_kube_dns_cluster_ip_is_allowed_for_node_local_dns_in_iptables_mode(render, ips, cidrs):
    dns = rule_with_port(policy(render, {"dnsServiceIP": ips})["egress"], 53, "UDP")
    assert dns["to"] == [DNS_PEER, NODE_LOCAL_DNS_PEER, NODE_LOCAL_DNS_PODS] + [{"ipBlock": {"cidr": c}} for c in cidrs]


@pytest.mark.parametrize("ip", ["10.96.0.10/32", "999.1.1.1", ":", "kube-dns"])
def test_a_dns_service_ip_that_is_no_address_is_refused(render_error, ip):
    msg = render_error({"networkPolicy": {"enabled": True, "dnsServiceIP": [ip]}})
    assert "dnsServiceIP" in msg, msg


def test_empty_dns_selector_allows_port_53_anywhere(render):
    dns = rule_with_port(policy(render, {"dnsSelector": []})["egress"], 53, "UDP")
    assert dns == {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}


@pytest.mark.parametrize("cidr", ["10.0.0.0/8", "192.168.1.10/32", "0.0.0.0/0", "fd00::1/128", "2001:db8::/32", "::/0", "::ffff:10.0.0.1/128"])
def test_api_server_cidr_shapes_accepted(render, cidr):
    api = rule_with_port(policy(render, {"apiServer": {"cidrs": [cidr]}})["egress"], 443)
    assert api["to"] == [{"ipBlock": {"cidr": cidr}}]


def test_notes_mention_dns_only_with_the_policy(render):
    notes = render({"networkPolicy": {"enabled": True}}).notes
    assert "DNS: the default networkPolicy.dnsSelector allows kube-dns and NodeLocal DNSCache (169.254.20.10 and its pods)" in notes
    assert "DNS:" not in render().notes


def test_empty_nats_selector_allows_any_destination(render):
    nats = rule_with_port(policy(render, {"natsSelector": []})["egress"], 4222)
    assert "to" not in nats


def test_custom_ingress_and_egress_replace_the_defaults(render):
    ingress = [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}], "ports": [{"port": 8080}]}]
    egress = [{"to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}]}]
    spec = policy(render, {"ingress": ingress, "egress": egress})
    assert spec["ingress"] == ingress
    assert spec["egress"] == egress


def test_extra_egress_is_appended(render):
    jwks = {"to": [{"ipBlock": {"cidr": "203.0.113.7/32"}}], "ports": [{"protocol": "TCP", "port": 443}]}
    spec = policy(render, {"extraEgress": [jwks]})
    assert len(spec["egress"]) == 4 and spec["egress"][-1] == jwks
    custom = policy(render, {"egress": [{"to": []}], "extraEgress": [jwks]})
    assert custom["egress"] == [{"to": []}, jwks]
