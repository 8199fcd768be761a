"""The ValidatingAdmissionPolicy that keeps nats.io/ annotations to the allowed groups.

Its CEL is evaluated for real with cel-python (a Python CEL implementation, not an API server) on
admission-request-shaped inputs: `object`, `oldObject` (null on CREATE), `request.operation` and
`request.userInfo.groups`, with the policy's variables evaluated in order as `variables.<name>`.
What this cannot show is the API server's own type checking and cost estimation of the
expressions; they use standard CEL only for that reason. One known difference: cel-python's
has() is true whenever its argument evaluates, so has(oldObject.metadata...) on a null oldObject
is false there but an error in cel-go; the guard that keeps CREATE away from oldObject is
therefore checked on the text.
"""

import celpy
import pytest

from conftest import NAMESPACE, RELEASE

ALLOWED = ["platform-admins", "system:masters"]
APP_TEAM = ["system:authenticated", "team-a-developers"]
PLATFORM = ["system:authenticated", "platform-admins"]
PUB = "nats.io/allowed-pub-subjects"
SUB = "nats.io/allowed-sub-subjects"
CEL = celpy.Environment()


def enabled(**extra):
    return {"admissionPolicy": {"enabled": True, "allowedGroups": ALLOWED, **extra}}


class Admission:
    """The rendered policy and binding, applied to one request as the API server would apply
    them: matched by resource and operation, then the variables, then every validation."""

    def __init__(self, rendered):
        self.policy = rendered.one("ValidatingAdmissionPolicy")
        self.binding = rendered.one("ValidatingAdmissionPolicyBinding")
        spec = self.policy["spec"]
        self.variables = [(v["name"], self.compile(v["expression"])) for v in spec.get("variables", [])]
        self.validations = [(self.compile(v["expression"]), v) for v in spec["validations"]]

    @staticmethod
    def compile(expression):
        return CEL.program(CEL.compile(expression))

    def matches(self, request):
        return any(
            "" in rule["apiGroups"]
            and request["resource"]["resource"] in rule["resources"]
            and request.get("subResource", "") == ""
            and request["operation"] in rule["operations"]
            for rule in self.policy["spec"]["matchConstraints"]["resourceRules"]
        )

    def review(self, request, obj, old):
        """None when admitted, else the message of the failed validation."""
        if not self.matches(request):
            return None
        activation = {
            "request": celpy.json_to_cel(request),
            "object": celpy.json_to_cel(obj),
            "oldObject": celpy.json_to_cel(old),
        }
        variables = {}
        for name, program in self.variables:
            activation["variables"] = celpy.celtypes.MapType(
                {celpy.celtypes.StringType(k): v for k, v in variables.items()}
            )
            value = program.evaluate(activation)
            assert not isinstance(value, celpy.CELEvalError), f"variable {name}: {value}"
            variables[name] = value
        activation["variables"] = celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): v for k, v in variables.items()}
        )
        for program, validation in self.validations:
            result = program.evaluate(activation)
            # An evaluation error is not a pass: failurePolicy decides, and the tests want none.
            assert isinstance(result, celpy.celtypes.BoolType), f"{validation['expression']}: {result!r}"
            if not result:
                return validation["message"]
        return None


def service_account(annotations=None, name="app", **extra):
    meta = {"name": name, "namespace": "team-a", **extra}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}


def request(operation, groups, sub_resource=""):
    user = {"username": "someone", "uid": "u-1"}
    if groups is not None:
        user["groups"] = groups
    req = {
        "operation": operation,
        "resource": {"group": "", "version": "v1", "resource": "serviceaccounts"},
        "namespace": "team-a",
        "name": "app",
        "userInfo": user,
    }
    if sub_resource:
        req["subResource"] = sub_resource
    return req


@pytest.fixture(scope="module")
def admission(render):
    return Admission(render(enabled()))


def create(admission, annotations, groups=APP_TEAM):
    return admission.review(request("CREATE", groups), service_account(annotations), None)


def update(admission, old, new, groups=APP_TEAM, **new_meta):
    return admission.review(
        request("UPDATE", groups), service_account(new, **new_meta), service_account(old)
    )


# CREATE


def test_create_without_annotations_passes(admission):
    assert create(admission, None) is None
    assert create(admission, {}) is None


def test_create_with_other_annotations_passes(admission):
    # Only the nats.io/ prefix is guarded: look-alike keys grant nothing in the service.
    assert create(admission, {"example.com/owner": "team-a", "x.nats.io/y": "1", "nats.io.example/z": "2"}) is None


@pytest.mark.parametrize("key", [PUB, SUB, "nats.io/anything-else"])
def test_create_with_a_nats_annotation_is_refused(admission, key):
    message = create(admission, {key: "orders.>"})
    assert message and "platform-admins, system:masters" in message


def test_create_with_nats_annotations_by_an_allowed_group_passes(admission):
    assert create(admission, {PUB: "orders.>", SUB: "orders.>"}, groups=PLATFORM) is None


def test_system_masters_is_allowed_by_default(render):
    default = Admission(render({"admissionPolicy": {"enabled": True}}))
    assert default.review(request("CREATE", ["system:masters"]), service_account({PUB: "x"}), None) is None
    assert default.review(request("CREATE", PLATFORM), service_account({PUB: "x"}), None)


# UPDATE


def test_update_adding_a_nats_annotation_is_refused(admission):
    assert update(admission, {"a": "1"}, {"a": "1", PUB: "orders.>"})
    assert update(admission, None, {SUB: "orders.>"})


def test_update_changing_a_nats_annotation_is_refused(admission):
    assert update(admission, {PUB: "orders.>"}, {PUB: "orders.>, payments.>"})
    # Emptying the value is a change too.
    assert update(admission, {PUB: "orders.>"}, {PUB: ""})


def test_update_removing_a_nats_annotation_is_refused(admission):
    assert update(admission, {PUB: "orders.>", SUB: "orders.>"}, {SUB: "orders.>"})
    # Every annotation gone: the new object has no annotations field at all.
    assert update(admission, {PUB: "orders.>"}, None)
    assert update(admission, {PUB: "orders.>"}, {})


def test_update_not_touching_nats_annotations_passes(admission):
    nats = {PUB: "orders.>", SUB: "orders.>, shared.>"}
    # Another annotation added, changed and removed; labels and the rest of the object changed.
    assert update(admission, nats, {**nats, "example.com/owner": "team-a"}) is None
    assert update(admission, {**nats, "example.com/owner": "a"}, {**nats, "example.com/owner": "b"}) is None
    assert update(admission, {**nats, "example.com/owner": "a"}, nats) is None
    assert update(admission, nats, dict(nats), labels={"app": "x"}) is None
    # A ServiceAccount that never had any.
    assert update(admission, None, None, labels={"app": "x"}) is None
    assert update(admission, None, {"example.com/owner": "a"}) is None


def test_update_of_nats_annotations_by_an_allowed_group_passes(admission):
    assert update(admission, {PUB: "a.>"}, {PUB: "b.>"}, groups=PLATFORM) is None
    assert update(admission, {PUB: "a.>"}, None, groups=["system:masters"]) is None


def test_a_requester_without_groups_is_not_allowed(admission):
    assert admission.review(request("CREATE", None), service_account({PUB: "x"}), None)
    assert admission.review(request("CREATE", None), service_account({"a": "b"}), None) is None


def test_no_allowed_group_means_nobody(render):
    frozen = Admission(render({"admissionPolicy": {"enabled": True, "allowedGroups": []}}))
    message = frozen.review(request("CREATE", ["system:masters"]), service_account({PUB: "x"}), None)
    assert message and "only nobody may" in message
    assert frozen.review(request("CREATE", ["system:masters"]), service_account({"a": "b"}), None) is None


def test_group_names_are_quoted_as_cel_strings(render):
    # A quote or backslash in a group name stays inside its string literal.
    odd = ['we"ird', "back\\slash", "ünïcode"]
    checked = Admission(render({"admissionPolicy": {"enabled": True, "allowedGroups": odd}}))
    for group in odd:
        assert checked.review(request("CREATE", [group]), service_account({PUB: "x"}), None) is None
    assert checked.review(request("CREATE", ["we"]), service_account({PUB: "x"}), None)


# What the policy matches, and the binding


def test_only_create_and_update_of_serviceaccounts_are_checked(admission):
    (rule,) = admission.policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule == {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["serviceaccounts"],
    }
    # `kubectl create token` is a CREATE on the token subresource: not matched.
    token = request("CREATE", APP_TEAM, sub_resource="token")
    assert admission.review(token, {"kind": "TokenRequest"}, None) is None
    # DELETE is not matched either.
    assert admission.review(request("DELETE", APP_TEAM), None, service_account({PUB: "x"})) is None


def test_old_object_is_read_only_on_update(admission):
    # On CREATE oldObject is null, and selecting a field of null is an error in cel-go (the
    # API server would then apply failurePolicy to every CREATE). `false && x` never evaluates x.
    readers = [v for v in admission.policy["spec"]["variables"] if "oldObject" in v["expression"]]
    assert [v["name"] for v in readers] == ["oldAnnotations"]
    assert readers[0]["expression"].startswith('request.operation == "UPDATE" && ')
    for v in admission.policy["spec"]["validations"]:
        assert "oldObject" not in v["expression"]


def test_policy_and_binding_defaults(render):
    r = render(enabled())
    policy, binding = r.one("ValidatingAdmissionPolicy"), r.one("ValidatingAdmissionPolicyBinding")
    name = f"{RELEASE}-nats-k8s-oidc-callout-{NAMESPACE}-nats-annotations"
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert policy["metadata"]["name"] == binding["metadata"]["name"] == name
    # Cluster-scoped: no namespace.
    assert "namespace" not in policy["metadata"] and "namespace" not in binding["metadata"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert [v["reason"] for v in policy["spec"]["validations"]] == ["Forbidden"]
    assert binding["spec"] == {"policyName": name, "validationActions": ["Deny"]}


def test_binding_options(render):
    selector = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["sandbox"]}]}
    r = render(enabled(validationActions=["Warn", "Audit"], failurePolicy="Ignore", namespaceSelector=selector))
    assert r.one("ValidatingAdmissionPolicy")["spec"]["failurePolicy"] == "Ignore"
    spec = r.one("ValidatingAdmissionPolicyBinding")["spec"]
    assert spec["validationActions"] == ["Warn", "Audit"]
    assert spec["matchResources"] == {"namespaceSelector": selector}


def test_off_by_default(render):
    assert render().all("ValidatingAdmissionPolicy") == []
    assert render().all("ValidatingAdmissionPolicyBinding") == []


@pytest.mark.parametrize(
    "values, where",
    [
        ({"validationActions": ["Deny", "Warn"]}, "/admissionPolicy/validationActions"),
        ({"validationActions": []}, "/admissionPolicy/validationActions"),
        ({"validationActions": ["Refuse"]}, "/admissionPolicy/validationActions/0"),
        ({"failurePolicy": "Retry"}, "/admissionPolicy/failurePolicy"),
        ({"allowedGroups": [""]}, "/admissionPolicy/allowedGroups/0"),
        ({"allowedGroups": ["a", "a"]}, "/admissionPolicy/allowedGroups"),
        ({"allowedGroup": ["a"]}, "/admissionPolicy"),
    ],
)
def test_schema_refuses_bad_options(render_error, values, where):
    assert where in render_error({"admissionPolicy": {"enabled": True, **values}})
