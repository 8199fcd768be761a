//! docs/DEPLOY.md step 6 for real: the guide's `kubectl create token` command, run by kubectl
//! against the Kubernetes API emulator's TokenRequest subresource, and the token it prints
//! presented to a real nats-server whose auth callout is the service.
//!
//! The ServiceAccount's annotations, the token command and the "without the audience" command
//! are read from the guide itself, so the test follows the guide when it changes.
//!
//! The Stack's emulator speaks plain HTTP, and kubectl (client-go's kubeconfig loader) sends no
//! credentials at all to an `http://` server, so the emulator is switched to serve without
//! authentication for kubectl, as an API server's old insecure port did; kubectl with a bearer
//! token over TLS is covered in tests/emulator.rs (`kubectl_creates_tokens_over_tls`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::client::connect_token;
use support::kubeconfig::{kubeconfig, kubectl, require_kubectl, write_kubeconfig};
use support::stack::{Stack, StackBuilder};
use support::tokens;

/// The guide's namespace and ServiceAccount.
const NAMESPACE: &str = "my-app";
const ACCOUNT: &str = "my-nats-client";

/// Step 6 of docs/DEPLOY.md, up to the next section.
fn guide_step_6() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/DEPLOY.md");
    let text = std::fs::read_to_string(path).expect("read docs/DEPLOY.md");
    let start = text.find("\n## 6. ").expect("DEPLOY.md has a step 6");
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

/// The annotations of the ServiceAccount in the step's YAML block.
fn guide_annotations(step: &str) -> Vec<(String, String)> {
    let yaml = step
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("step 6 has a yaml block");
    assert!(
        yaml.contains(&format!("name: {ACCOUNT}"))
            && yaml.contains(&format!("namespace: {NAMESPACE}")),
        "the yaml block is the ServiceAccount {NAMESPACE}/{ACCOUNT}:\n{yaml}"
    );
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "annotations:");
    let header = lines.next().expect("the ServiceAccount has annotations");
    let indent = header.len() - header.trim_start().len();
    lines
        .take_while(|l| l.len() - l.trim_start().len() > indent)
        .map(|l| {
            let (k, v) = l.trim().split_once(": ").expect("key: value");
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

/// The guide's command that captures a token, `TOKEN=$(kubectl …)`, as kubectl's arguments.
fn guide_token_command(step: &str) -> Vec<String> {
    let line = step
        .lines()
        .find(|l| l.contains("create token") && l.contains("$("))
        .expect("step 6 captures a token with $(kubectl … create token …)");
    let inner = &line[line.find("$(").expect("$(") + 2..line.rfind(')').expect(")")];
    kubectl_args(inner)
}

/// The command of the "token without the audience" bullet, as kubectl's arguments.
fn guide_token_command_without_audience(step: &str) -> Vec<String> {
    let line = step
        .lines()
        .find(|l| l.contains("without the audience"))
        .expect("step 6 shows a token without the audience");
    let command = line
        .split('`')
        .find(|part| part.contains("create token"))
        .expect("the bullet quotes the command");
    let args = kubectl_args(command);
    assert!(
        !args.iter().any(|a| a.starts_with("--audience")),
        "{args:?}"
    );
    args
}

fn kubectl_args(command: &str) -> Vec<String> {
    let mut words = command.split_whitespace();
    assert_eq!(words.next(), Some("kubectl"), "{command}");
    words.map(String::from).collect()
}

/// A kubeconfig pointing at the stack's emulator (no credentials: see the module comment).
fn write_emulator_kubeconfig(dir: &Path, server: &str) -> PathBuf {
    write_kubeconfig(dir, "kubeconfig", &kubeconfig(server, &[], &[]))
}

/// kubectl with `args`, isolated from the machine's own configuration.
fn run_kubectl(home: &Path, kubeconfig: &Path, args: &[String]) -> Output {
    kubectl(home, kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl")
}

/// The token kubectl printed; panics with its stderr and the emulator's requests otherwise.
fn printed_token(out: &Output, s: &Stack) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}\nrequests: {:?}",
        String::from_utf8_lossy(&out.stderr),
        s.api.requests()
    );
    let token = String::from_utf8(out.stdout.clone()).expect("utf8");
    let token = token.trim_end().to_string();
    assert_eq!(token.split('.').count(), 3, "a compact JWS: {token}");
    token
}

/// The stack of the guide: the annotated ServiceAccount, an emulator that issues tokens with the
/// cluster's key and (see the module docs) serves kubectl over plain HTTP.
fn guide_stack(step: &str) -> Stack {
    let annotations = guide_annotations(step);
    let annotations: Vec<(&str, &str)> = annotations
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let s = StackBuilder::new()
        .account(NAMESPACE, ACCOUNT, &annotations)
        .start();
    s.api.set_auth_required(false);
    s
}

#[test]
fn the_guides_token_command_gets_a_token_the_service_accepts() {
    require_kubectl();
    let step = guide_step_6();
    let annotations = guide_annotations(&step);
    assert_eq!(
        annotations
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        [
            "nats.io/allowed-pub-subjects",
            "nats.io/allowed-sub-subjects"
        ]
    );
    let s = guide_stack(&step);
    let home = tempfile::tempdir().expect("tempdir");
    let kubeconfig = write_emulator_kubeconfig(home.path(), &s.api.url());

    let command = guide_token_command(&step);
    let out = run_kubectl(home.path(), &kubeconfig, &command);
    let token = printed_token(&out, &s);
    let claims = tokens::claims_of(&token);
    assert_eq!(claims["aud"], serde_json::json!(["nats"]));
    assert_eq!(
        claims["sub"],
        format!("system:serviceaccount:{NAMESPACE}:{ACCOUNT}")
    );
    assert_eq!(
        claims["exp"].as_i64(),
        claims["iat"].as_i64().map(|i| i + 600)
    );
    let seen = s.api.requests_of(support::kube::RequestKind::TokenRequest);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].status, 201);

    // `nats … --token "$TOKEN" pub my-app.hello world`: published.
    let c = connect_token(&s.url(), &token)
        .unwrap_or_else(|e| panic!("the kubectl token connects: {e}\n{}", s.service.log()));
    assert!(c.can_publish("my-app.hello"), "publish to its namespace");
    assert!(c.round_trip("my-app.hello"), "pub/sub in its namespace");
    let log = s.service.log();
    let allowed = log
        .lines()
        .find(|l| l.contains(&format!("allowed {NAMESPACE}/{ACCOUNT} (client ")))
        .unwrap_or_else(|| panic!("the service logs the allowed client:\n{log}"));
    // "expires in 599s" for a ten-minute token, give or take the seconds the test took.
    let secs: u64 = allowed
        .split("expires in ")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the log line says when it expires: {allowed}"));
    assert!((570..=600).contains(&secs), "{allowed}");
    // The annotations add their subjects, and nothing else is granted.
    assert!(
        c.can_publish("shared.events.deployed"),
        "annotated publish subject"
    );
    let c = connect_token(&s.url(), &token).expect("connects again");
    assert!(
        c.can_subscribe("platform.announcements"),
        "annotated subscribe subject"
    );
    // `… pub other-team.hello world`: a permissions violation.
    let c = connect_token(&s.url(), &token).expect("connects again");
    assert!(
        !c.can_publish("other-team.hello"),
        "publish to another namespace"
    );
}

#[test]
fn tokens_without_the_audience_or_under_ten_minutes_are_refused() {
    require_kubectl();
    let step = guide_step_6();
    assert!(
        step.contains("reason=token_wrong_audience"),
        "the guide names the deny reason"
    );
    let s = guide_stack(&step);
    let home = tempfile::tempdir().expect("tempdir");
    let kubeconfig = write_emulator_kubeconfig(home.path(), &s.api.url());

    // Without --audience the API server's own audience (the issuer) goes in, for an hour.
    let out = run_kubectl(
        home.path(),
        &kubeconfig,
        &guide_token_command_without_audience(&step),
    );
    let token = printed_token(&out, &s);
    let claims = tokens::claims_of(&token);
    assert_eq!(claims["aud"], serde_json::json!([s.api.issuer()]));
    assert_eq!(
        claims["exp"].as_i64(),
        claims["iat"].as_i64().map(|i| i + 3600)
    );
    s.assert_denied(&token, "token_wrong_audience");
    let log = s.service.log();
    assert!(
        log.lines().any(
            |l| l.contains(&format!("denied {NAMESPACE}/{ACCOUNT} (claimed)"))
                && l.contains("audience not accepted (reason=token_wrong_audience)")
        ),
        "the service logs the denial as the guide says:\n{log}"
    );

    // The guide's command with a five-minute duration: the API server refuses it, kubectl
    // reports that and prints no token.
    let mut command = guide_token_command(&step);
    let duration = command
        .iter()
        .position(|a| a == "--duration")
        .expect("the guide's command has --duration");
    command[duration + 1] = "5m".into();
    let out = run_kubectl(home.path(), &kubeconfig, &command);
    assert!(!out.status.success(), "a five-minute token was issued");
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "error: failed to create token: TokenRequest.authentication.k8s.io \"\" is invalid: \
         spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 \
         minutes"
    );
    let statuses: Vec<u16> = s
        .api
        .requests_of(support::kube::RequestKind::TokenRequest)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [201, 422]);
}
