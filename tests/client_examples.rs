//! The client examples of docs/examples (Python, Node, Rust) run for real against a real
//! nats-server, the service binary and the Kubernetes API emulator, with tokens that live four
//! seconds:
//!
//! - a client whose token file is rewritten every second (the kubelet's rotation, compressed)
//!   keeps exchanging messages across the disconnect each token's expiry causes: every reconnect
//!   succeeds only because the example read the file again;
//! - the same example with a file nobody refreshes is refused (`token_expired`) after its first
//!   session ends: what a client that kept the first token would get;
//! - `--count N` stops the example by itself, SIGTERM stops it cleanly.
//!
//! The Go example is not run: there is no Go toolchain on these machines.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::examples::{
    example_dir, node_with_nats, python_with_nats_py, require_tool, rust_example_binary,
    write_token, Example, TokenRotator,
};
use support::stack::{Stack, StackBuilder};
use support::tokens::TokenBuilder;

/// Lifetime of every short token (the API server's minimum is 600 s; the service has none).
const TOKEN_LIFETIME_SECS: i64 = 4;
/// How often the "kubelet" writes a fresh token.
const ROTATE_EVERY: Duration = Duration::from_secs(1);
/// Time for an example to start and connect (an interpreter start included).
const START: Duration = Duration::from_secs(15);
/// Time for two token lifetimes and the reconnects after them.
const TWO_ROTATIONS: Duration = Duration::from_secs(25);
/// Time for an example to stop after SIGTERM.
const STOP: Duration = Duration::from_secs(10);

fn stack() -> Stack {
    StackBuilder::new()
        // Expiry exactly at `exp`, so a stale token is refused the moment it lapses.
        .env("JWT_LEEWAY", "0s")
        .account("team-c", "stale", &[])
        .start()
}

/// Index of the `n`th (1-based) line equal to `line`.
fn nth(lines: &[String], line: &str, n: usize) -> Option<usize> {
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.as_str() == line)
        .nth(n - 1)
        .map(|(i, _)| i)
}

fn is_refusal(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("authorization violation") || l.contains("authorization_violation")
}

/// The example printed `stopped`, and no message after it (event callbacks, which some
/// libraries run on tasks of their own, may still print).
fn assert_stopped(e: &Example) {
    let lines = e.lines();
    let at = nth(&lines, "stopped", 1).unwrap_or_else(|| panic!("no `stopped`\n{}", e.output()));
    assert!(
        !lines[at..].iter().any(|l| l.starts_with("received ")),
        "messages after `stopped`\n{}",
        e.output()
    );
}

/// Runs the scenario of this file's header for one example; `command` makes a fresh command
/// line for it with extra arguments appended.
fn exercise(lang: &str, command: impl Fn(&[&str]) -> Command) {
    let s = stack();
    let dir = tempfile::tempdir().expect("tempdir");
    let uid = |ns: &str, name: &str| s.api.uid_of(ns, name).expect("account exists");
    let received = "received team-a.greetings: ";

    // A client whose projected token the kubelet keeps rotating.
    let rotated_file = dir.path().join("rotated-token");
    let rotator = TokenRotator::start(
        &rotated_file,
        &s.key,
        "team-a",
        "app",
        &uid("team-a", "app"),
        TOKEN_LIFETIME_SECS,
        ROTATE_EVERY,
    );
    // A client whose file is never refreshed (another account, so each refusal is its own).
    let stale_file = dir.path().join("stale-token");
    write_token(
        &stale_file,
        &TokenBuilder::for_sa("team-c", "stale", &uid("team-c", "stale"))
            .expires_in(TOKEN_LIFETIME_SECS)
            .sign(&s.key),
    );
    // A client with a long-lived token that stops by itself after three messages.
    let counted_file = dir.path().join("long-token");
    write_token(&counted_file, &s.token("team-a", "app"));

    let granted_before = s.service.decisions("allow", "granted");
    let expired_before = s.service.decisions("deny", "token_expired");
    let started = Instant::now();
    let url = s.url();
    let run = |what: &str, file: &Path, ns: &str, args: &[&str]| {
        Example::start(&format!("{lang} {what}"), command(args), &url, file, ns)
    };
    let mut rotated = run("(rotated token)", &rotated_file, "team-a", &[]);
    let mut stale = run("(stale token)", &stale_file, "team-c", &[]);
    let mut counted = run("(--count 3)", &counted_file, "team-a", &["--count", "3"]);
    let context = |e: &Example| {
        format!(
            "{}\nservice log:\n{}\nnats-server log:\n{}",
            e.output(),
            s.service.log(),
            s.nats.log()
        )
    };

    // Connected, subscribed and published: it receives its own greetings.
    assert!(
        rotated.wait_until(START, |l| {
            l.iter().any(|x| x == "connected")
                && l.iter()
                    .any(|x| x.starts_with(received) && x.ends_with(&format!("from {lang}")))
        }),
        "{lang}: no connect and round trip\n{}",
        context(&rotated)
    );

    // --count: exits 0 by itself after three messages.
    let status = counted
        .wait_exit(START)
        .unwrap_or_else(|| panic!("{lang}: --count 3 did not stop\n{}", context(&counted)));
    let lines = counted.lines();
    assert!(
        status.success(),
        "{lang}: --count 3 exit {status}\n{}",
        context(&counted)
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with(received)).count(),
        3,
        "{lang}: --count 3\n{}",
        counted.output()
    );
    assert_stopped(&counted);

    // Each token ends its session after 4 s; a session after the second one still exchanges
    // messages, with tokens read from the file since.
    assert!(
        rotated.wait_until(TWO_ROTATIONS, |l| {
            nth(l, "reconnected", 2).is_some_and(|i| l[i..].iter().any(|x| x.starts_with(received)))
        }),
        "{lang}: no two reconnects with messages after them\n{}",
        context(&rotated)
    );
    let reconnect_time = started.elapsed();
    assert!(
        rotated.count("disconnected") >= 2,
        "{lang}: sessions ended by expiry\n{}",
        rotated.output()
    );
    assert!(
        !rotated.lines().iter().any(|l| is_refusal(l)),
        "{lang}: the rotated client was refused\n{}",
        context(&rotated)
    );

    // The stale client: refused for its expired token, again and again, never back in.
    s.service.wait_for(
        &format!("{lang}: two token_expired refusals of the stale client"),
        Duration::from_secs(15),
        || s.service.decisions("deny", "token_expired") >= expired_before + 2.0,
    );
    let stale_lines = stale.lines();
    assert_eq!(stale.count("connected"), 1, "{}", stale.output());
    assert!(stale.count("disconnected") >= 1, "{}", stale.output());
    assert_eq!(
        stale.count("reconnected"),
        0,
        "{lang}: stale client back in\n{}",
        stale.output()
    );
    assert!(
        stale_lines.iter().any(|l| is_refusal(l)),
        "{lang}: the refusal is reported\n{}",
        stale.output()
    );

    // Sessions: the stale one, the counted one, and at least three of the rotated client.
    let granted = s.service.decisions("allow", "granted") - granted_before;
    assert!(granted >= 5.0, "{lang}: {granted} grants");
    assert!(rotator.written() >= 6, "the token file was rewritten");

    for e in [&mut rotated, &mut stale] {
        let status = e
            .terminate(STOP)
            .unwrap_or_else(|| panic!("{lang}: no exit after SIGTERM\n{}", e.output()));
        assert!(status.success(), "{lang}: exit {status}\n{}", e.output());
        assert_stopped(e);
    }
    eprintln!("{}\n{}", rotated.output(), stale.output());
    eprintln!(
        "{lang}: two reconnects with fresh tokens after {:.1}s, {granted} sessions granted, \
         whole scenario {:.1}s",
        reconnect_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn python_example_rereads_the_token_file_at_every_connect() {
    let python = python_with_nats_py();
    let script = example_dir("python").join("client.py");
    exercise("python", |args| {
        let mut c = Command::new(python);
        c.arg("-u").arg(&script).args(args);
        c
    });
}

#[test]
fn node_example_rereads_the_token_file_at_every_connect() {
    let node = node_with_nats();
    let dir = example_dir("node");
    exercise("node", |args| {
        let mut c = Command::new(node);
        c.arg("client.mjs").args(args).current_dir(&dir);
        c
    });
}

#[test]
fn rust_example_rereads_the_token_file_at_every_connect() {
    let binary = rust_example_binary();
    exercise("rust", |args| {
        let mut c = Command::new(&binary);
        c.args(args);
        c
    });
}

/// The `sh` block that follows `<!-- client-usage:check-snippet -->` in docs/CLIENT_USAGE.md.
fn check_snippet() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CLIENT_USAGE.md"))
        .expect("read docs/CLIENT_USAGE.md");
    let after = doc
        .split_once("<!-- client-usage:check-snippet -->")
        .expect("the marker of the check snippet")
        .1;
    let body = after
        .split_once("```sh\n")
        .expect("an sh block after the marker")
        .1;
    body.split_once("```")
        .expect("the end of the sh block")
        .0
        .to_string()
}

#[test]
fn the_guides_check_from_a_pod_tells_accepted_from_refused() {
    require_tool("python3", "run the check snippet of docs/CLIENT_USAGE.md");
    let s = stack();
    let dir = tempfile::tempdir().expect("tempdir");
    let snippet = check_snippet();
    let check = |token: &str| {
        let file = dir.path().join("token");
        write_token(&file, token);
        let out = Command::new("sh")
            .arg("-c")
            .arg(&snippet)
            .env("NATS_URL", s.url())
            .env("NATS_TOKEN_FILE", &file)
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "the check failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(check(&s.token("team-a", "app")), "accepted");
    let expired_before = s.service.decisions("deny", "token_expired");
    let uid = s.api.uid_of("team-a", "app").expect("account exists");
    let expired = TokenBuilder::for_sa("team-a", "app", &uid)
        .expires_in(-120)
        .sign(&s.key);
    assert_eq!(check(&expired), "-ERR 'Authorization Violation'");
    s.service
        .wait_for("the refusal counted", Duration::from_secs(10), || {
            s.service.decisions("deny", "token_expired") > expired_before
        });
}
