//! ServiceAccount and Pod lists: pages with `limit`/`continue` at one collection
//! resourceVersion, the resourceVersion / resourceVersionMatch semantics of the api-concepts
//! table, 410 for expired continue tokens and compacted history, 504 for a resourceVersion the
//! store never reaches, and the 400/422 answers to options the API server refuses.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use parking_lot::MutexGuard;
use serde_json::{json, Map, Value};

use super::http::Request;
use super::routing::{status_body, Reply};
use super::state::{IssuedContinue, Representation, Resource, Shared, State, CONTINUE_TOKEN_TTL};

/// How long a request for a future resourceVersion waits before answering 504.
const TOO_LARGE_RV_WAIT: Duration = Duration::from_secs(1);

/// The continue token format of the apiserver: base64 of `{"v","rv","start"}`.
fn encode_continue(rv: u64, last_key: &(String, String)) -> String {
    let start = format!("{}/{}\u{0}", last_key.0, last_key.1);
    let token = json!({ "v": "meta.k8s.io/v1", "rv": rv, "start": start });
    URL_SAFE_NO_PAD.encode(token.to_string())
}

/// The resourceVersion of a continue token and the key its page ended at, if it is one.
fn decode_continue(token: &str) -> Option<(u64, (String, String))> {
    let bytes = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    if value["v"] != "meta.k8s.io/v1" {
        return None;
    }
    let start = value["start"].as_str()?.strip_suffix('\u{0}')?;
    let (namespace, name) = start.split_once('/')?;
    Some((
        value["rv"].as_u64()?,
        (namespace.to_string(), name.to_string()),
    ))
}

/// A list of `resource`, all namespaces or one.
pub(super) fn list(
    shared: &Shared,
    st: &mut MutexGuard<'_, State>,
    req: &Request,
    resource: Resource,
    namespace: Option<&str>,
    repr: Representation,
) -> Reply {
    let limit = match req.param("limit").filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n > 0 => Some(n as usize),
            Ok(_) => None,
            Err(_) => return Reply::status(400, "BadRequest", &format!("invalid limit: {l:?}")),
        },
    };
    let rv_param = req.param("resourceVersion").unwrap_or("");
    let rv_match = req.param("resourceVersionMatch").unwrap_or("");

    if let Some(token) = req.param("continue").filter(|c| !c.is_empty()) {
        if !rv_param.is_empty() {
            return Reply::status(
                400,
                "BadRequest",
                "specifying resource version is not allowed when using continue",
            );
        }
        let Some((rv, start)) = decode_continue(token) else {
            return Reply::status(
                400,
                "BadRequest",
                "continue key is not valid: incorrect encoded start resourceVersion",
            );
        };
        // A token of another kind's list is not one this list issued.
        let issued = st
            .continues
            .get(token)
            .filter(|c| c.resource == resource && c.issued.elapsed() < CONTINUE_TOKEN_TTL)
            .map(|c| c.remaining);
        let Some(remaining) = issued else {
            return Reply::status(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list \
                 result. You can start a new list without the continue parameter.",
            );
        };
        let page = Page {
            resource,
            namespace,
            rv,
            after: Some(start),
            limit,
            remaining: Some(remaining),
        };
        return list_page(st, page, repr);
    }

    if rv_param.is_empty() && !rv_match.is_empty() {
        return invalid_list_options(
            "resourceVersionMatch",
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        );
    }
    if !rv_match.is_empty() && rv_match != "NotOlderThan" && rv_match != "Exact" {
        return invalid_list_options(
            "resourceVersionMatch",
            &format!(
                "Unsupported value: \"{rv_match}\": supported values: \"Exact\", \"NotOlderThan\""
            ),
        );
    }
    if rv_param.is_empty() {
        return list_current(st, resource, namespace, limit, repr);
    }
    let Ok(requested) = rv_param.parse::<u64>() else {
        return invalid_rv(rv_param);
    };
    if requested == 0 {
        if rv_match == "Exact" {
            return invalid_list_options(
                "resourceVersionMatch",
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            );
        }
        // Served from the watch cache: the whole list, limit ignored.
        return list_current(st, resource, namespace, None, repr);
    }
    if !wait_for_rv(shared, st, requested) {
        return too_large_rv(st, requested);
    }
    let exact = rv_match == "Exact" || (rv_match.is_empty() && limit.is_some());
    if !exact {
        return list_current(st, resource, namespace, limit, repr);
    }
    if st.too_old(requested) {
        let message = st.too_old_message(rv_param);
        return Reply::status(410, "Expired", &message);
    }
    let page = Page {
        resource,
        namespace,
        rv: requested,
        after: None,
        limit,
        remaining: None,
    };
    list_page(st, page, repr)
}

/// A list of the current state.
fn list_current(
    st: &mut State,
    resource: Resource,
    namespace: Option<&str>,
    limit: Option<usize>,
    repr: Representation,
) -> Reply {
    let page = Page {
        resource,
        namespace,
        rv: st.rv,
        after: None,
        limit,
        remaining: None,
    };
    list_page(st, page, repr)
}

/// Which page of a list to answer.
struct Page<'a> {
    /// The kind of object listed.
    resource: Resource,
    /// The namespace listed, or none for all.
    namespace: Option<&'a str>,
    /// The list's resourceVersion (a continued list keeps its first page's).
    rv: u64,
    /// The key the previous page ended at (none for a first page).
    after: Option<(String, String)>,
    limit: Option<usize>,
    /// How many items follow `after` (known from the continue token; counted on a first page).
    remaining: Option<usize>,
}

/// One page of a list, with a continue token when more items remain. A list that asked for
/// one object's metadata gets the 406 of the API server, whose transform runs after the list.
fn list_page(st: &mut State, page: Page<'_>, repr: Representation) -> Reply {
    let Page {
        resource,
        namespace,
        rv,
        after,
        limit,
        remaining,
    } = page;
    let list_kind = format!("{}List", resource.kind());
    if let Representation::Metadata { .. } = repr {
        return Reply::status(
            406,
            "NotAcceptable",
            &format!(
                "you requested PartialObjectMetadata, but the requested object is a list \
                 (*core.{list_kind})"
            ),
        );
    }
    let limit = limit.unwrap_or(usize::MAX);
    let (items, last, total) = {
        let mut objects = st.objects_after(resource, rv, after.as_ref(), namespace);
        let page: Vec<_> = objects.by_ref().take(limit).collect();
        let items: Vec<Value> = page.iter().map(|a| a.render(repr, false)).collect();
        let last = page.last().map(|a| a.key());
        // The rest is only counted on a first page: later pages know it from their token.
        let total = match remaining {
            Some(n) => n,
            None => page.len() + objects.count(),
        };
        (items, last, total)
    };
    let remaining = total.saturating_sub(items.len());
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    if let (true, Some(last)) = (remaining > 0, last) {
        let token = encode_continue(rv, &last);
        st.continues.insert(
            token.clone(),
            IssuedContinue {
                resource,
                rv,
                issued: Instant::now(),
                remaining,
            },
        );
        meta.insert("continue".into(), json!(token));
        meta.insert("remainingItemCount".into(), json!(remaining));
    }
    let (kind, api_version) = match repr {
        Representation::Full => (list_kind.as_str(), "v1"),
        _ => ("PartialObjectMetadataList", repr.meta_api_version()),
    };
    // The metadata list is built by appending to a nil slice: no items is `null`.
    let items = match repr {
        Representation::MetadataList { .. } if items.is_empty() => Value::Null,
        _ => Value::Array(items),
    };
    Reply::json(
        200,
        json!({
            "kind": kind,
            "apiVersion": api_version,
            "metadata": Value::Object(meta),
            "items": items,
        }),
    )
}

/// A 422 Invalid Status about one list option.
fn invalid_list_options(field: &str, detail: &str) -> Reply {
    invalid_list_options_all(&[(field.to_string(), detail.to_string())])
}

/// A 422 Invalid Status about ListOptions, the shape the apiserver uses for bad list/watch options.
pub(super) fn invalid_list_options_all(errors: &[(String, String)]) -> Reply {
    let forbidden = |d: &str| {
        if d.starts_with("Unsupported value") {
            ("FieldValueNotSupported", d.to_string())
        } else {
            ("FieldValueForbidden", format!("Forbidden: {d}"))
        }
    };
    let causes: Vec<Value> = errors
        .iter()
        .map(|(field, d)| {
            let (reason, message) = forbidden(d);
            json!({ "reason": reason, "message": message, "field": field })
        })
        .collect();
    let described: Vec<String> = errors
        .iter()
        .map(|(field, d)| format!("{field}: {}", forbidden(d).1))
        .collect();
    let summary = if described.len() == 1 {
        described[0].clone()
    } else {
        format!("[{}]", described.join(", "))
    };
    Reply::json(
        422,
        status_body(
            422,
            "Invalid",
            &format!("ListOptions.meta.k8s.io \"\" is invalid: {summary}"),
            Some(json!({ "group": "meta.k8s.io", "kind": "ListOptions", "causes": causes })),
        ),
    )
}

/// The 400 for a resourceVersion that is not a number.
pub(super) fn invalid_rv(rv: &str) -> Reply {
    Reply::status(
        400,
        "BadRequest",
        &format!("resourceVersion: Invalid value: \"{rv}\": invalid resource version"),
    )
}

/// Waits (bounded) for the store to reach `rv`, as the watch cache does; false if it never did.
pub(super) fn wait_for_rv(shared: &Shared, st: &mut MutexGuard<'_, State>, rv: u64) -> bool {
    let deadline = Instant::now() + TOO_LARGE_RV_WAIT;
    while st.rv < rv {
        if shared.wake.wait_until(st, deadline).timed_out() {
            return st.rv >= rv;
        }
    }
    true
}

/// The 504 for a resourceVersion the store has not reached, with `Retry-After: 1`.
pub(super) fn too_large_rv(st: &State, requested: u64) -> Reply {
    Reply::json(
        504,
        status_body(
            504,
            "Timeout",
            &format!(
                "Timeout: Too large resource version: {requested}, current: {}",
                st.rv
            ),
            Some(json!({
                "causes": [{ "reason": "ResourceVersionTooLarge",
                             "message": "Too large resource version" }],
                "retryAfterSeconds": 1,
            })),
        ),
    )
    .with_header("Retry-After", "1".into())
}
