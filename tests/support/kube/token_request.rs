//! The TokenRequest subresource, `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`,
//! as `kubectl create token` and the kubelet use it.
//!
//! The steps follow the API server's token REST storage in its order: the body's name and
//! namespace must match the path, the ServiceAccount must exist (404 otherwise), empty audiences
//! become the API server's own (the issuer, as `--api-audiences` defaults to it), an unset
//! `expirationSeconds` becomes 3600, then validation (`expirationSeconds` in [600, 2^32], else
//! 422 Invalid), then the bound object, then the expiry extension of pod-bound tokens for the API
//! audience requested with 3607 s. The answer is 201 with `status.token` and
//! `status.expirationTimestamp` (issue time + the requested seconds, unextended).
//!
//! Bodies come as JSON or, as kubectl 1.32 sends them, as Kubernetes protobuf (the `k8s\0`
//! envelope around a `runtime.Unknown`); only the fields a TokenRequest uses are decoded. The
//! answer is always JSON, which every client accepts.
//!
//! A `boundObjectRef` (Pod, Secret or Node) is taken at its word (its `uid`, or a fresh one when
//! it has none): the emulator stores no Secrets or Nodes, and does not look a bound Pod up in its
//! pod store either, so the "not found", "different serviceaccount" and uid-conflict answers of a
//! real server do not occur, and a pod-bound token carries no `node` claim.

use serde_json::{json, Value};

use super::super::tokens::{now_unix, random_uuid, SigningKey, TokenBuilder};
use super::http::Request;
use super::routing::{expect_kind, json_object_body, not_found, status_body, undecodable, Reply};
use super::state::{rfc3339, Resource, Shared, State};

/// `expirationSeconds` when the request leaves it unset (`SetDefaults_TokenRequestSpec`).
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest lifetime the API server accepts (10 minutes).
const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The longest lifetime the API server accepts (2^32 s).
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// The lifetime the kubelet asks for; pod-bound API tokens requested with it are extended.
const WARN_ONLY_EXPIRATION_SECONDS: i64 = 3607;
/// The extended lifetime (one year).
const EXTENDED_EXPIRATION_SECONDS: i64 = 24 * 365 * 3600;
const GROUP: &str = "authentication.k8s.io";
const KIND: &str = "TokenRequest";

/// Adds the public half of `key` to a `{"keys":[...]}` set unless a key with its `kid` is there.
/// Anything that is not such a set (a test serving a broken one on purpose) is left alone.
pub(super) fn publish_key(jwks: &mut Value, key: &SigningKey) {
    if let Some(keys) = jwks.get_mut("keys").and_then(Value::as_array_mut) {
        if !keys.iter().any(|k| k["kid"] == key.kid()) {
            keys.push(key.jwk());
        }
    }
}

/// Answers one authenticated `POST …/serviceaccounts/{name}/token`.
pub(super) fn create(
    shared: &Shared,
    st: &State,
    req: &Request,
    namespace: &str,
    name: &str,
) -> Reply {
    let body = match decode_body(req) {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    if let Err(reply) = expect_kind(&body, KIND) {
        return reply;
    }
    let meta = &body["metadata"];
    for (field, given, want, what) in [
        ("metadata.name", &meta["name"], name, "service account name"),
        (
            "metadata.namespace",
            &meta["namespace"],
            namespace,
            "service account namespace",
        ),
    ] {
        if let Some(given) = given.as_str().filter(|g| !g.is_empty() && *g != want) {
            return invalid(
                name,
                field,
                &format!("\"{given}\""),
                &format!("must match the {what} if specified"),
            );
        }
    }
    let Some(account) = st.object(Resource::ServiceAccounts, namespace, name) else {
        return not_found(Resource::ServiceAccounts, name);
    };
    let spec = &body["spec"];
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let api_audiences = vec![shared.issuer.clone()];
    if audiences.is_empty() {
        audiences = api_audiences.clone();
    }
    let requested = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION_SECONDS,
        v => match v.as_i64() {
            Some(secs) => secs,
            None => {
                return bad_request(&format!(
                    "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: \
                     spec.expirationSeconds: {v} is not an int64"
                ))
            }
        },
    };
    if requested < MIN_EXPIRATION_SECONDS {
        return invalid(
            "",
            "spec.expirationSeconds",
            &requested.to_string(),
            "may not specify a duration less than 10 minutes",
        );
    }
    if requested > MAX_EXPIRATION_SECONDS {
        return invalid(
            "",
            "spec.expirationSeconds",
            &requested.to_string(),
            "may not specify a duration larger than 2^32 seconds",
        );
    }
    let Some(key) = &st.token_signer else {
        return Reply::status(
            500,
            "InternalError",
            "Internal error occurred: the emulator has no token signer \
             (KubeEmulatorBuilder::token_signer or KubeEmulator::set_token_signer)",
        );
    };

    let now = now_unix();
    let mut claims = TokenBuilder::for_sa(namespace, name, &account.uid)
        .issuer(&shared.issuer)
        .audiences(audiences.iter().map(String::as_str).collect())
        .issued_at(now);
    let mut pod_bound = false;
    let bound = &spec["boundObjectRef"];
    if bound.is_object() {
        let kind = bound["kind"].as_str().unwrap_or_default();
        let api_version = bound["apiVersion"].as_str().unwrap_or_default();
        let object = bound["name"].as_str().unwrap_or_default();
        let uid = bound["uid"]
            .as_str()
            .filter(|u| !u.is_empty())
            .map(String::from)
            .unwrap_or_else(random_uuid);
        // The core group is `v1` (or empty); anything in a named group is not bindable.
        let core = !api_version.contains('/');
        match kind {
            "Pod" if core => {
                claims = claims.pod(object, &uid);
                pod_bound = true;
            }
            "Secret" if core => claims = claims.secret(object, &uid),
            "Node" if core => claims = claims.node(object, &uid),
            _ => {
                let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
                return bad_request(&format!(
                    "cannot bind token to object of type {group}/{version}, Kind={kind}"
                ));
            }
        }
    }
    let mut lifetime = requested;
    let kube_audience = audiences.iter().all(|a| api_audiences.contains(a));
    if pod_bound && requested == WARN_ONLY_EXPIRATION_SECONDS && kube_audience {
        claims = claims.warn_after(now + requested);
        lifetime = EXTENDED_EXPIRATION_SECONDS;
    }
    let token = claims.expires_at(now + lifetime).sign(key);

    let mut out_spec = json!({ "audiences": audiences, "expirationSeconds": requested });
    if bound.is_object() {
        out_spec["boundObjectRef"] = bound.clone();
    }
    let created = rfc3339(now as u64);
    Reply::json(
        201,
        json!({
            "kind": KIND,
            "apiVersion": format!("{GROUP}/v1"),
            "metadata": {
                "name": name,
                "namespace": namespace,
                "creationTimestamp": created,
            },
            "spec": out_spec,
            "status": {
                "token": token,
                "expirationTimestamp": rfc3339((now + requested) as u64),
            },
        }),
    )
}

fn bad_request(message: &str) -> Reply {
    Reply::status(400, "BadRequest", message)
}

/// A 422 Invalid Status for one field, the shape of `errors.NewInvalid(TokenRequest, name, …)`.
fn invalid(name: &str, field: &str, value: &str, detail: &str) -> Reply {
    let cause = format!("Invalid value: {value}: {detail}");
    let mut details = json!({
        "group": GROUP,
        "kind": KIND,
        "causes": [{ "reason": "FieldValueInvalid", "message": cause, "field": field }],
    });
    if !name.is_empty() {
        details["name"] = json!(name);
    }
    Reply::json(
        422,
        status_body(
            422,
            "Invalid",
            &format!("{KIND}.{GROUP} \"{name}\" is invalid: {field}: {cause}"),
            Some(details),
        ),
    )
}

/// The request body as the JSON form of a TokenRequest, from JSON or Kubernetes protobuf.
fn decode_body(req: &Request) -> Result<Value, Reply> {
    if req.content_type().starts_with(PROTOBUF) {
        return protobuf::token_request(&req.body).map_err(|why| undecodable(KIND, &why));
    }
    json_object_body(req, KIND, &format!("application/json, {PROTOBUF}"))
}

/// The protobuf content type of the Kubernetes API.
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// Just enough of the protobuf wire format for a TokenRequest (field numbers from
/// `k8s.io/api/authentication/v1/generated.proto` and `apimachinery`'s `runtime.Unknown`).
mod protobuf {
    use serde_json::{json, Map, Value};

    /// The four bytes before every protobuf-encoded Kubernetes object.
    const MAGIC: &[u8] = b"k8s\0";

    enum Field<'a> {
        Varint(u64),
        Bytes(&'a [u8]),
    }

    /// The fields of one message, in order, as (number, value); fixed-width fields are skipped.
    fn fields(mut buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let key = varint(&mut buf)?;
            let (number, wire) = (key >> 3, key & 7);
            match wire {
                0 => out.push((number, Field::Varint(varint(&mut buf)?))),
                2 => {
                    let len = usize::try_from(varint(&mut buf)?).map_err(|e| e.to_string())?;
                    if len > buf.len() {
                        return Err("truncated protobuf field".into());
                    }
                    let (value, rest) = buf.split_at(len);
                    out.push((number, Field::Bytes(value)));
                    buf = rest;
                }
                1 | 5 => {
                    let width = if wire == 1 { 8 } else { 4 };
                    buf = buf.get(width..).ok_or("truncated protobuf field")?;
                }
                other => return Err(format!("unsupported protobuf wire type {other}")),
            }
        }
        Ok(out)
    }

    fn varint(buf: &mut &[u8]) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first().ok_or("truncated protobuf varint")?;
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("protobuf varint too long".into())
    }

    fn text(bytes: &[u8]) -> Result<String, String> {
        String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
    }

    /// Decodes the envelope and the TokenRequest inside it into its JSON form.
    pub(super) fn token_request(body: &[u8]) -> Result<Value, String> {
        let unknown = body
            .strip_prefix(MAGIC)
            .ok_or("the protobuf body lacks the k8s envelope")?;
        let (mut kind, mut api_version, mut raw) = (String::new(), String::new(), None);
        for (number, field) in fields(unknown)? {
            match (number, field) {
                (1, Field::Bytes(type_meta)) => {
                    for (n, f) in fields(type_meta)? {
                        match (n, f) {
                            (1, Field::Bytes(v)) => api_version = text(v)?,
                            (2, Field::Bytes(v)) => kind = text(v)?,
                            _ => {}
                        }
                    }
                }
                (2, Field::Bytes(r)) => raw = Some(r),
                _ => {}
            }
        }
        let raw = raw.ok_or("the protobuf envelope carries no object")?;
        let mut request = Map::new();
        request.insert("apiVersion".into(), json!(api_version));
        request.insert("kind".into(), json!(kind));
        for (number, field) in fields(raw)? {
            match (number, field) {
                (1, Field::Bytes(meta)) => {
                    let mut m = Map::new();
                    for (n, f) in fields(meta)? {
                        match (n, f) {
                            (1, Field::Bytes(v)) => {
                                m.insert("name".into(), json!(text(v)?));
                            }
                            (3, Field::Bytes(v)) => {
                                m.insert("namespace".into(), json!(text(v)?));
                            }
                            _ => {}
                        }
                    }
                    request.insert("metadata".into(), Value::Object(m));
                }
                (2, Field::Bytes(spec)) => {
                    request.insert("spec".into(), token_request_spec(spec)?);
                }
                _ => {}
            }
        }
        Ok(Value::Object(request))
    }

    fn token_request_spec(spec: &[u8]) -> Result<Value, String> {
        let mut audiences = Vec::new();
        let mut s = Map::new();
        for (n, f) in fields(spec)? {
            match (n, f) {
                (1, Field::Bytes(v)) => audiences.push(json!(text(v)?)),
                (3, Field::Bytes(r)) => {
                    let mut b = Map::new();
                    for (n, f) in fields(r)? {
                        let key = match n {
                            1 => "kind",
                            2 => "apiVersion",
                            3 => "name",
                            4 => "uid",
                            _ => continue,
                        };
                        if let Field::Bytes(v) = f {
                            b.insert(key.into(), json!(text(v)?));
                        }
                    }
                    s.insert("boundObjectRef".into(), Value::Object(b));
                }
                // int64: negative values arrive as ten-byte two's complement varints.
                (4, Field::Varint(v)) => {
                    s.insert("expirationSeconds".into(), json!(v as i64));
                }
                _ => {}
            }
        }
        s.insert("audiences".into(), Value::Array(audiences));
        Ok(Value::Object(s))
    }
}
