//! JetStream without the response permission, on a real `nats-server` with JetStream: the least
//! grants docs/CLIENT_USAGE.md gives for a publisher, a pull consumer with acks and a key-value
//! bucket, bounded by an admin policy, run with nats-py (docs/examples/python/jetstream.py).
//! Deleting the stream, which `$JS.API.>` would have allowed, is refused. And what no
//! permission can stop: JetStream delivers to whatever subject a request names.

mod support;

use std::process::Command;
use std::time::Duration;

use support::client::connect_token;
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

/// What no permission the service issues can stop, because the JetStream server itself does it:
/// it answers every request (an acknowledgement, a fetch, a stream's republish or a push
/// consumer's delivery) on the subject the request names, and nats-server checks no permission
/// for that subject; and a header can act on a whole stream. With JetStream in the account, a
/// namespace's subjects may so receive messages from any pod of the account, in every inbox
/// mode, and its keys in a shared bucket be purged (docs/CLIENT_USAGE.md, JetStream).
#[test]
#[allow(deprecated)] // nats::Connection: the sync client the test support uses
fn jetstream_reaches_across_the_namespaces_of_an_account_whatever_the_permissions() {
    let s = StackBuilder::new()
        .jetstream()
        .env("INBOX_MODE", "private")
        .policy(
            r#"
rules:
  - namespaces: ["shop"]
    annotations:
      publish: ["$JS.API.CONSUMER.MSG.NEXT.ORDERS.*", "$JS.ACK.ORDERS.>"]
  - namespaces: ["team-c"]
    annotations:
      publish:
        - "$JS.API.STREAM.CREATE.{namespace}"
        - "$JS.API.CONSUMER.CREATE.{namespace}.>"
        - "$KV.shared.{namespace}.>"
"#,
        )
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
            "team-c",
            "app",
            &[(
                "nats.io/allowed-pub-subjects",
                "$JS.API.STREAM.CREATE.team-c, $JS.API.CONSUMER.CREATE.team-c.>, $KV.shared.team-c.>",
            )],
        )
        .account("team-b", "app", &[])
        .start();
    let wait = Duration::from_secs(5);
    let connect = |ns: &str, name: &str| {
        connect_token(&s.url(), &s.token(ns, name))
            .unwrap_or_else(|e| panic!("{ns}/{name}: {e}\n{}", s.service.log()))
    };
    let admin = nats::Options::with_user_pass(JS_ADMIN_USER, JS_ADMIN_PASS)
        .connect(s.url())
        .expect("the JetStream administrator connects");
    // A request from `inbox` (the requester's own inbox prefix in private mode).
    let requests = std::sync::atomic::AtomicUsize::new(0);
    let api = |nc: &nats::Connection, inbox: &str, subject: &str, body: &str| {
        let n = requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reply_to = format!("{inbox}.{n}");
        let replies = nc.subscribe(&reply_to).unwrap();
        nc.publish_request(subject, &reply_to, body).unwrap();
        let reply = replies
            .next_timeout(wait)
            .unwrap_or_else(|e| panic!("{subject}: {e}"));
        let answer: serde_json::Value = serde_json::from_slice(&reply.data).unwrap();
        assert!(answer.get("error").is_none(), "{subject}: {answer}");
    };
    api(
        &admin,
        "_INBOX.admin",
        "$JS.API.STREAM.CREATE.ORDERS",
        r#"{"name":"ORDERS","subjects":["shop.orders.>"],"storage":"memory"}"#,
    );
    api(
        &admin,
        "_INBOX.admin",
        "$JS.API.CONSUMER.CREATE.ORDERS.worker",
        r#"{"stream_name":"ORDERS","config":{"durable_name":"worker","ack_policy":"explicit"}}"#,
    );
    let victim = connect("team-b", "app");
    let cmd = victim.nc.subscribe("team-b.cmd").unwrap();
    let everything = victim.nc.subscribe("team-b.secret").unwrap();
    victim.nc.flush().unwrap();
    let received = || {
        cmd.next_timeout(wait)
            .map(|m| String::from_utf8_lossy(&m.data).into_owned())
            .expect("team-b.cmd receives it")
    };

    // Any pod publishing to a stream's subject, with no annotation: the acknowledgement.
    let publisher = connect("shop", "orders-api");
    assert!(!publisher.can_publish("team-b.cmd"));
    publisher
        .nc
        .publish_request("shop.orders.new", "team-b.cmd", b"order")
        .unwrap();
    assert_eq!(received(), r#"{"stream":"ORDERS","seq":1}"#);

    // The worker's documented grants: a fetch delivers what it stored itself.
    let worker = connect("shop", "worker");
    assert!(!worker.can_publish("team-b.cmd"));
    worker
        .nc
        .publish("shop.orders.x", b"written by shop/worker")
        .unwrap();
    worker
        .nc
        .publish_request(
            "$JS.API.CONSUMER.MSG.NEXT.ORDERS.worker",
            "team-b.cmd",
            br#"{"batch":2}"#,
        )
        .unwrap();
    assert_eq!(received(), "order");
    assert_eq!(received(), "written by shop/worker");

    // A stream named after the namespace may capture and republish any subject of the account,
    // and a push consumer deliver anywhere: team-c reads team-b's messages and writes to it.
    let intruder = connect("team-c", "app");
    let copies = intruder.nc.subscribe("team-c.copy.>").unwrap();
    intruder.nc.flush().unwrap();
    assert!(!intruder.can_subscribe("team-b.secret"));
    api(
        &intruder.nc,
        "_INBOX.team-c.app",
        "$JS.API.STREAM.CREATE.team-c",
        r#"{"name":"team-c","subjects":["team-b.secret","team-c.out"],"storage":"memory",
            "republish":{"src":"team-b.>","dest":"team-c.copy.>"}}"#,
    );
    victim.nc.publish("team-b.secret", b"team-b only").unwrap();
    victim.nc.flush().unwrap();
    assert_eq!(everything.next_timeout(wait).unwrap().data, b"team-b only");
    let copy = copies.next_timeout(wait).expect("team-c receives a copy");
    assert_eq!(copy.data, b"team-b only");
    intruder
        .nc
        .publish("team-c.out", b"pushed by team-c")
        .unwrap();
    api(
        &intruder.nc,
        "_INBOX.team-c.app",
        "$JS.API.CONSUMER.CREATE.team-c.push",
        r#"{"stream_name":"team-c","config":{"name":"push","deliver_subject":"team-b.cmd",
            "filter_subject":"team-c.out","ack_policy":"none"}}"#,
    );
    assert_eq!(received(), "pushed by team-c");

    // A bucket shared by key prefix is not shared for writers: a publish to team-c's own key
    // with `Nats-Rollup: all` purges every key of the bucket, team-b's included.
    api(
        &admin,
        "_INBOX.admin",
        "$JS.API.STREAM.CREATE.KV_shared",
        r#"{"name":"KV_shared","subjects":["$KV.shared.>"],"storage":"memory",
            "max_msgs_per_subject":1,"allow_rollup_hdrs":true,"deny_delete":true}"#,
    );
    for key in ["a", "b"] {
        api(
            &admin,
            "_INBOX.admin",
            &format!("$KV.shared.team-b.{key}"),
            "team-b's",
        );
    }
    let mut rollup = nats::header::HeaderMap::new();
    rollup.insert("Nats-Rollup", "all");
    intruder
        .nc
        .publish_with_reply_or_headers("$KV.shared.team-c.k", None, Some(&rollup), b"only this")
        .unwrap();
    intruder.nc.flush().unwrap();
    let keys = || {
        let info = admin
            .request_timeout("$JS.API.STREAM.INFO.KV_shared", "", wait)
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.data).unwrap();
        info["state"]["messages"].as_u64().unwrap()
    };
    let deadline = std::time::Instant::now() + wait;
    while keys() != 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(keys(), 1, "team-b's keys are gone");
}
