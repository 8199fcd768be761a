//! The Events collection of a namespace, `POST /api/v1/namespaces/{ns}/events`, as the API
//! server creates a core/v1 Event.
//!
//! The steps follow the API server in its order: the body is decoded (JSON only here); its
//! namespace must be the path's (400 BadRequest otherwise; an empty one is filled in); a
//! `generateName` without a name gets a random suffix; then the Event strategy's validation,
//! which for core/v1 is the legacy one (`legacyValidateEvent`: without `eventTime` the
//! involvedObject's namespace must be the Event's, which is how a missing involvedObject is
//! refused; with one, the reporting fields are required and bounded); then the object metadata
//! (a name or generateName is required, and it must be a valid path segment); each failing stage
//! answers 422 Invalid with its field causes. A name already taken answers 409 AlreadyExists;
//! otherwise the Event is stored with a uid, the next global resourceVersion and a
//! creationTimestamp, and returned with 201.
//!
//! Only create is emulated (the service never reads Events); tests read what was stored through
//! [`KubeEmulator::events`](super::KubeEmulator::events).

use serde_json::{json, Value};

use super::super::tokens::random_uuid;
use super::http::Request;
use super::routing::{json_object_body, status_body, Reply};
use super::state::{rfc3339_now, State};

const KIND: &str = "Event";
/// The limits `legacyValidateEvent` applies to Events that carry an `eventTime`.
const REPORTING_INSTANCE_LIMIT: usize = 128;
const ACTION_LIMIT: usize = 128;
const REASON_LIMIT: usize = 128;
const NOTE_LIMIT: usize = 1024;
/// The characters of a generated name suffix (`utilrand.String`: no vowels, no look-alikes).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// One field error, as `field.Error` prints it.
struct FieldError {
    field: &'static str,
    /// `None`: a required value is missing; `Some(v)`: `v` is invalid.
    value: Option<String>,
    detail: String,
}

impl FieldError {
    fn required(field: &'static str, detail: &str) -> FieldError {
        FieldError {
            field,
            value: None,
            detail: detail.to_string(),
        }
    }

    fn invalid(field: &'static str, value: &str, detail: &str) -> FieldError {
        FieldError {
            field,
            value: Some(value.to_string()),
            detail: detail.to_string(),
        }
    }

    /// `Invalid value: "x": detail` or `Required value[: detail]`.
    fn body(&self) -> String {
        match &self.value {
            Some(v) => format!("Invalid value: {}: {}", json!(v), self.detail),
            None if self.detail.is_empty() => "Required value".to_string(),
            None => format!("Required value: {}", self.detail),
        }
    }

    fn reason(&self) -> &'static str {
        match self.value {
            Some(_) => "FieldValueInvalid",
            None => "FieldValueRequired",
        }
    }
}

/// Answers one authenticated and authorized `POST /api/v1/namespaces/{namespace}/events`.
pub(super) fn create(st: &mut State, req: &Request, namespace: &str) -> Reply {
    let mut event = match json_object_body(req, KIND, "application/json") {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    if !event["metadata"].is_object() {
        event["metadata"] = json!({});
    }
    let meta = &mut event["metadata"];
    match meta["namespace"].as_str().filter(|ns| !ns.is_empty()) {
        Some(ns) if ns != namespace => return Reply::status(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        ),
        _ => meta["namespace"] = json!(namespace),
    }
    let generate_name = text(&meta["generateName"]).to_string();
    if text(&meta["name"]).is_empty() && !generate_name.is_empty() {
        meta["name"] = json!(format!("{generate_name}{}", random_suffix()));
    }
    let name = text(&meta["name"]).to_string();

    let errors = legacy_validation(&event, namespace);
    if !errors.is_empty() {
        return invalid(&name, &errors);
    }
    let errors = metadata_validation(&name, &generate_name);
    if !errors.is_empty() {
        return invalid(&name, &errors);
    }
    if st.events.iter().any(|e| {
        text(&e["metadata"]["namespace"]) == namespace && text(&e["metadata"]["name"]) == name
    }) {
        return Reply::json(
            409,
            status_body(
                409,
                "AlreadyExists",
                &format!("events \"{name}\" already exists"),
                Some(json!({ "name": name, "kind": "events" })),
            ),
        );
    }
    // Events share the one resourceVersion sequence of every object (etcd's revision); no
    // ServiceAccount watch sees them.
    st.rv += 1;
    let meta = &mut event["metadata"];
    meta["uid"] = json!(random_uuid());
    meta["resourceVersion"] = json!(st.rv.to_string());
    meta["creationTimestamp"] = json!(rfc3339_now());
    event["kind"] = json!(KIND);
    event["apiVersion"] = json!("v1");
    st.events.push(event.clone());
    Reply::json(201, event)
}

/// A string field, or `""` when it is missing or not a string.
fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// `legacyValidateEvent`, which every core/v1 Event must pass.
fn legacy_validation(event: &Value, namespace: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let involved_namespace = text(&event["involvedObject"]["namespace"]);
    let mismatch = || {
        FieldError::invalid(
            "involvedObject.namespace",
            involved_namespace,
            "does not match event.namespace",
        )
    };
    if event["eventTime"].is_null() {
        // An Event about a cluster-scoped object lives in "" (or "default", for old clients).
        let fits = if involved_namespace.is_empty() {
            namespace.is_empty() || namespace == "default"
        } else {
            namespace == involved_namespace
        };
        if !fits {
            errors.push(mismatch());
        }
    } else {
        if involved_namespace.is_empty() && namespace != "default" && namespace != "kube-system" {
            errors.push(mismatch());
        }
        for (field, json_field, limit) in [
            ("reportingController", "reportingComponent", None),
            (
                "reportingInstance",
                "reportingInstance",
                Some(REPORTING_INSTANCE_LIMIT),
            ),
            ("action", "action", Some(ACTION_LIMIT)),
            ("reason", "reason", Some(REASON_LIMIT)),
        ] {
            let value = text(&event[json_field]);
            if value.is_empty() {
                errors.push(FieldError::required(field, ""));
            } else if let Some(limit) = limit.filter(|l| value.len() > *l) {
                errors.push(FieldError::invalid(
                    field,
                    "",
                    &format!("can have at most {limit} characters"),
                ));
            }
        }
        if text(&event["message"]).len() > NOTE_LIMIT {
            errors.push(FieldError::invalid(
                "message",
                "",
                &format!("can have at most {NOTE_LIMIT} characters"),
            ));
        }
    }
    if !is_dns_subdomain(namespace) {
        errors.push(FieldError::invalid(
            "namespace",
            namespace,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character",
        ));
    }
    errors
}

/// `ValidateObjectMetaAccessor` with the path-segment name rule the API server applies to
/// Events.
fn metadata_validation(name: &str, generate_name: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (field, value, prefix) in [
        ("metadata.generateName", generate_name, true),
        ("metadata.name", name, false),
    ] {
        if value.is_empty() {
            continue;
        }
        if !prefix && (value == "." || value == "..") {
            errors.push(FieldError::invalid(
                field,
                value,
                &format!("may not be '{value}'"),
            ));
        }
        for bad in ["/", "%"] {
            if value.contains(bad) {
                errors.push(FieldError::invalid(
                    field,
                    value,
                    &format!("may not contain '{bad}'"),
                ));
            }
        }
    }
    if name.is_empty() {
        errors.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    }
    errors
}

/// The 422 Invalid for `errors`, the shape of `errors.NewInvalid(Event, name, errs)`.
fn invalid(name: &str, errors: &[FieldError]) -> Reply {
    let printed: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.body()))
        .collect();
    let summary = match printed.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let causes: Vec<Value> = errors
        .iter()
        .map(|e| json!({ "reason": e.reason(), "message": e.body(), "field": e.field }))
        .collect();
    Reply::json(
        422,
        status_body(
            422,
            "Invalid",
            &format!("{KIND} \"{name}\" is invalid: {summary}"),
            Some(json!({ "name": name, "kind": KIND, "causes": causes })),
        ),
    )
}

/// Whether `s` is a lowercase RFC 1123 subdomain of at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && !s.is_empty()
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            b.first().is_some_and(alnum)
                && b.last().is_some_and(alnum)
                && b.iter().all(|c| alnum(c) || *c == b'-')
        })
}

/// Five characters for a generated name, as the API server appends to `generateName`.
fn random_suffix() -> String {
    (0..5)
        .map(|_| char::from(SUFFIX_ALPHABET[fastrand::usize(..SUFFIX_ALPHABET.len())]))
        .collect()
}
