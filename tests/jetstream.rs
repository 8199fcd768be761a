//! JetStream without the response permission, on a real `nats-server` with JetStream: the least
//! grants docs/CLIENT_USAGE.md gives for a publisher, a pull consumer with acks and a key-value
//! bucket, bounded by an admin policy, run with nats-py (docs/examples/python/jetstream.py).
//! Deleting the stream, which `$JS.API.>` would have allowed, is refused.

mod support;

use std::process::Command;

use support::examples::{example_dir, python_with_nats_py, write_token};
use support::stack::{Stack, StackBuilder, JS_ADMIN_PASS, JS_ADMIN_USER};

/// The policy of CLIENT_USAGE.md's JetStream section.
const POLICY: &str = r#"
rules:
  - namespaces: ["shop"]
    annotations:
      publish:
        - "{namespace}.>"
        - "$JS.API.CONSUMER.MSG.NEXT.ORDERS.*"
        - "$JS.ACK.ORDERS.>"
        - "$JS.API.STREAM.INFO.KV_config"
        - "$JS.API.DIRECT.GET.KV_config.>"
        - "$KV.config.>"
"#;

/// Runs one role of the example as `ns/name` (the administrator for `setup`); returns its
/// success and its output.
fn run(s: &Stack, role: &str, ns: &str, name: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    write_token(&token_file, &s.token(ns, name));
    let out = Command::new(python_with_nats_py())
        .arg(example_dir("python").join("jetstream.py"))
        .arg(role)
        .env("NATS_URL", s.url())
        .env("NATS_TOKEN_FILE", &token_file)
        .env("NATS_NAMESPACE", ns)
        .env("NATS_USER", JS_ADMIN_USER)
        .env("NATS_PASSWORD", JS_ADMIN_PASS)
        .output()
        .expect("python runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_publisher_a_pull_consumer_and_a_kv_bucket_need_no_response_permission() {
    let s = StackBuilder::new()
        .jetstream()
        .policy(POLICY)
        .account("shop", "orders-api", &[])
        .account(
            "shop",
            "worker",
            &[(
                "nats.io/allowed-pub-subjects",
                "$JS.API.CONSUMER.MSG.NEXT.ORDERS.worker, $JS.ACK.ORDERS.worker.>",
            )],
        )
        .account(
            "shop",
            "settings",
            &[(
                "nats.io/allowed-pub-subjects",
                "$JS.API.STREAM.INFO.KV_config, $JS.API.DIRECT.GET.KV_config.>, $KV.config.>",
            )],
        )
        .account(
            "shop",
            "intruder",
            &[(
                "nats.io/allowed-pub-subjects",
                "$JS.API.>, $JS.API.STREAM.DELETE.ORDERS",
            )],
        )
        .start();
    let step = |role: &str, name: &str| {
        let (ok, out) = run(&s, role, "shop", name);
        assert!(ok, "{role} as shop/{name}:\n{out}\n{}", s.service.log());
        out
    };
    assert!(step("setup", "-").contains("ready"));
    assert!(step("publish", "orders-api").contains("published ORDERS 1"));
    assert!(step("consume", "worker").contains("consumed order-1 acked"));
    assert!(step("kv", "settings").contains("kv feature.x=on"));

    // The consumer acknowledged the message: nothing is left to deliver.
    let (ok, out) = run(&s, "consume", "shop", "worker");
    assert!(!ok && out.contains("failed: TimeoutError"), "{out}");

    // The entries outside the policy were dropped, so the stream cannot be deleted.
    let (ok, out) = run(&s, "delete-stream", "shop", "intruder");
    assert!(!ok, "{out}");
    // nats-py reports the server's -ERR in lower case.
    assert!(
        out.contains("permissions violation for publish to \"$js.api.stream.delete.orders\""),
        "{out}"
    );
    // Nor can the worker reach the bucket, nor the publisher the consumer.
    let (ok, out) = run(&s, "kv", "shop", "worker");
    assert!(
        !ok && out
            .contains("permissions violation for publish to \"$js.api.stream.info.kv_config\""),
        "{out}"
    );
    let (ok, out) = run(&s, "consume", "shop", "orders-api");
    assert!(
        !ok && out.contains(
            "permissions violation for publish to \"$js.api.consumer.msg.next.orders.worker\""
        ),
        "{out}"
    );
    assert!(
        s.service.metric(
            "nats_callout_dropped_annotation_entries_total{direction=\"pub\",cause=\"not_allowed_by_policy\"}"
        ) >= 2.0
    );
}
