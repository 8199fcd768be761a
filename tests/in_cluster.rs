//! The service exactly as the Helm chart's pod runs it: in-cluster mode, with nothing but the
//! chart's environment (`K8S_IN_CLUSTER=true`, no `JWT_ISSUER`, no `JWKS_URL`, no kubeconfig),
//! the API server found through `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT`, and the
//! projected volume's `token`, `ca.crt` and `namespace` at their fixed path
//! `/var/run/secrets/kubernetes.io/serviceaccount`.
//!
//! The fixed path is provided per service through a private mount namespace (`unshare`): a tmpfs
//! over `/var/run` and, on it, a read-only bind mount of a directory the test lays out as the
//! kubelet does (timestamped directory, `..data` symlink, `token -> ..data/token`). The host's
//! `/var/run` is never touched, and the test rotates the token the way the kubelet does, by
//! swapping `..data` in the host directory.
//!
//! Needs `unshare` (util-linux) and the right to create a mount namespace and mount in it (root or
//! CAP_SYS_ADMIN); without them the tests fail and say so.

mod support;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::client::{connect_token, is_authorization_violation};
use support::kube::{KubeEmulator, KubeEmulatorBuilder, RecordedRequest, RequestKind, TlsOptions};
use support::nats::{CalloutKeys, NatsServer, CLIENT_ACCOUNT};
use support::service::{Service, ServiceBuilder};
use support::tokens::{jwks, random_uuid, SigningKey, TokenBuilder};

/// Where a pod finds its service-account token, CA and namespace.
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The issuer the service assumes in cluster when discovery fails (src/config.rs).
const FALLBACK_ISSUER: &str = "https://kubernetes.default.svc";
/// The chart's namespace and ServiceAccount of the service.
const OWN_NAMESPACE: &str = "nats-system";
const OWN_ACCOUNT: &str = "nats-k8s-oidc-callout";
/// How long the service gets to become ready, and the API server's traffic to show up.
const WAIT: Duration = Duration::from_secs(15);

/// Run by `sh -c` inside the new mount namespace with `$1` = the host directory laid out as the
/// projected volume and the rest = the service binary. The tmpfs goes over `/var/run` (the path
/// the binary reads; mount follows the `/var/run -> /run` symlink where there is one), then the
/// volume is bind-mounted read-only at the fixed path, as the chart mounts it, and the command
/// runs as the chart's user: uid and gid 65532 (runAsUser, runAsGroup, fsGroup), no root.
const POD_MOUNTS: &str = r#"set -eu
sa=/var/run/secrets/kubernetes.io/serviceaccount
mount -t tmpfs -o mode=0755 tmpfs /var/run
mkdir -p "$sa"
mount --bind "$1" "$sa"
mount -o remount,bind,ro "$sa"
shift
exec setpriv --reuid=65532 --regid=65532 --clear-groups --inh-caps=-all -- "$@"
"#;

/// The chart's runAsUser, runAsGroup and fsGroup.
const POD_UID: u32 = 65532;

/// Gives `path` and everything below it, but `except`, to the pod's user, as the kubelet does
/// with fsGroup for the volumes it mounts (the seeds the chart mounts from Secrets, here the
/// builder's directory). The projected volume keeps its own ownership (root, group fsGroup).
fn give_to_pod_user(path: &Path, except: &Path) {
    if path == except {
        return;
    }
    std::os::unix::fs::chown(path, Some(POD_UID), Some(POD_UID)).expect("chown");
    if path.is_dir() && !path.is_symlink() {
        for entry in fs::read_dir(path).expect("read_dir") {
            give_to_pod_user(&entry.expect("dir entry").path(), except);
        }
    }
}

/// The argv that runs a command in a private mount namespace with `volume` at [`SA_DIR`]; the
/// command follows as the remaining arguments.
fn pod_mounts_argv(volume: &Path) -> Vec<String> {
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        POD_MOUNTS,
        "pod-mounts",
        volume.to_str().expect("utf8 path"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Fails the test, naming what is missing, unless a mount namespace with the pod's mounts can be
/// made here; also checks that the mounts stay private (the host sees nothing of them).
fn require_mount_namespaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = format!("probe-{}", random_uuid());
    let volume = ProjectedVolume::create(&dir.path().join("volume"), &marker, "ca", &marker);
    let argv = pod_mounts_argv(volume.dir());
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .arg("cat")
        .arg(format!("{SA_DIR}/namespace"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the in-cluster tests need `unshare` (util-linux) on PATH to give the service its \
                 own /var/run/secrets/kubernetes.io/serviceaccount: cannot run it: {e}"
            )
        });
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == marker,
        "the in-cluster tests need to create a mount namespace and mount a tmpfs and a bind mount \
         in it (`unshare --mount` as root or with CAP_SYS_ADMIN); the probe failed with {}:\n\
         stdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let host = fs::read_to_string(format!("{SA_DIR}/namespace")).unwrap_or_default();
    assert_ne!(host, marker, "the probe's mounts leaked into the host");
}

/// A directory laid out like the kubelet's projected volume: the files live in a timestamped
/// directory, `..data` points at it, and `token`, `ca.crt`, `namespace` point through `..data`.
/// An update writes a new timestamped directory and swaps `..data` atomically.
struct ProjectedVolume {
    dir: PathBuf,
    generation: u32,
    ca: String,
    namespace: String,
}

const VOLUME_FILES: [&str; 3] = ["token", "ca.crt", "namespace"];

impl ProjectedVolume {
    fn create(dir: &Path, token: &str, ca: &str, namespace: &str) -> ProjectedVolume {
        fs::create_dir_all(dir).expect("mkdir volume");
        let mut v = ProjectedVolume {
            dir: dir.to_path_buf(),
            generation: 0,
            ca: ca.to_string(),
            namespace: namespace.to_string(),
        };
        v.write(token);
        for name in VOLUME_FILES {
            symlink(format!("..data/{name}"), dir.join(name)).expect("symlink a volume file");
        }
        v
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a new generation with `token` and switches `..data` to it.
    fn write(&mut self, token: &str) {
        self.generation += 1;
        let name = format!("..2025_01_01_00_00_00.{:09}", self.generation);
        let data = self.dir.join(&name);
        fs::create_dir(&data).expect("mkdir generation");
        for (file, text) in [
            ("token", token),
            ("ca.crt", self.ca.as_str()),
            ("namespace", self.namespace.as_str()),
        ] {
            let path = data.join(file);
            fs::write(&path, text).expect("write a volume file");
            // defaultMode 288 (0440) and group fsGroup, as the chart and the kubelet set them:
            // the pod's user reads them through its group only.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o440)).expect("chmod");
            std::os::unix::fs::chown(&path, Some(0), Some(POD_UID)).expect("chown");
        }
        let tmp = self.dir.join("..data_tmp");
        symlink(&name, &tmp).expect("symlink ..data_tmp");
        fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        if self.generation > 1 {
            let old = format!("..2025_01_01_00_00_00.{:09}", self.generation - 1);
            fs::remove_dir_all(self.dir.join(old)).expect("remove the old generation");
        }
    }
}

/// The cluster (API emulator over TLS with its own issuer), a nats-server and the service in
/// its pod-like mount namespace.
struct Pod {
    api: KubeEmulator,
    key: SigningKey,
    issuer: String,
    nats: NatsServer,
    volume: ProjectedVolume,
    service: Service,
    /// The service's own API token, as the kubelet projected it.
    own_token: String,
}

impl Pod {
    /// Starts everything with the chart's environment plus `extra` and waits until ready.
    fn start(extra: &[(&str, &str)]) -> Pod {
        Pod::start_with(extra, |_| {})
    }

    /// Like [`Pod::start`], with `before` run on the API server just before the service starts.
    fn start_with(extra: &[(&str, &str)], before: impl FnOnce(&KubeEmulator)) -> Pod {
        require_mount_namespaces();
        let key = SigningKey::rs256_n(0);
        // Not the in-cluster default: tokens are accepted only if the issuer was discovered.
        let issuer = format!("https://oidc.in-cluster.test/{}", random_uuid());
        let api = KubeEmulatorBuilder::new()
            .tls(TlsOptions::new())
            .issuer(&issuer)
            .jwks(jwks(&[&key]))
            .build();
        api.create_service_account(OWN_NAMESPACE, OWN_ACCOUNT, &[]);
        api.create_service_account(
            "team-a",
            "app",
            &[("nats.io/allowed-pub-subjects", "shared.events")],
        );
        let own_token = own_token(&api, &key, &issuer);
        api.set_token(&own_token);

        // With an xkey, as the chart runs it when `nats.xkey` is set.
        let keys = CalloutKeys::new(true);
        let nats = NatsServer::start(&keys);
        let port = api.addr().port().to_string();
        let mut b = ServiceBuilder::new(&keys, &nats.service_url(), CLIENT_ACCOUNT)
            // Only what the chart sets (PORT comes from the builder: a free port, not 8080).
            .unset("RUST_LOG")
            .unset("WORKERS")
            // The chart's `logLevel`; the most verbose level is where a leaked token would show.
            .env("LOG_LEVEL", "debug")
            .env("K8S_IN_CLUSTER", "true")
            // What the kubelet sets in every container for the `kubernetes` Service.
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", &port);
        for (k, v) in extra {
            b = b.env(k, v);
        }
        let volume = ProjectedVolume::create(
            &b.dir().join("serviceaccount"),
            &own_token,
            api.ca_pem(),
            OWN_NAMESPACE,
        );
        let argv = pod_mounts_argv(volume.dir());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        before(&api);
        give_to_pod_user(b.dir(), volume.dir());
        let service = b.wrapper(&argv).spawn();
        service.wait_ready(WAIT);
        Pod {
            api,
            key,
            issuer,
            nats,
            volume,
            service,
            own_token,
        }
    }

    /// A client token for `ns/name` from this cluster (its issuer, signed with `key`).
    fn token_signed_by(&self, ns: &str, name: &str, key: &SigningKey) -> String {
        let uid = self.api.uid_of(ns, name).expect("the account exists");
        TokenBuilder::for_sa(ns, name, &uid)
            .issuer(&self.issuer)
            .sign(key)
    }

    fn token(&self, ns: &str, name: &str) -> String {
        self.token_signed_by(ns, name, &self.key)
    }

    /// Connects with `token`, panicking with the service's log when refused.
    fn connect(&self, who: &str, token: &str) -> support::client::Client {
        connect_token(&self.nats.url(), token).unwrap_or_else(|e| {
            panic!(
                "{who} should connect: {e}\nservice log:\n{}",
                self.service.log()
            )
        })
    }

    /// Asserts that the service's log shows none of these tokens, whole or the signature alone.
    fn assert_not_logged(&self, tokens: &[&str]) {
        let log = self.service.log();
        for token in tokens {
            let signature = token.rsplit('.').next().expect("a JWT");
            assert!(signature.len() > 20, "not a signed JWT: {token}");
            assert!(
                !log.contains(signature),
                "the log shows the service's API token:\n{log}"
            );
        }
    }
}

/// The service's own token as the kubelet projects it for the API server: its ServiceAccount,
/// audience = the API server's issuer, bound to a pod, a fresh `jti` each time.
fn own_token(api: &KubeEmulator, key: &SigningKey, issuer: &str) -> String {
    let uid = api
        .uid_of(OWN_NAMESPACE, OWN_ACCOUNT)
        .expect("the service's account exists");
    TokenBuilder::for_sa(OWN_NAMESPACE, OWN_ACCOUNT, &uid)
        .issuer(issuer)
        .audience(issuer)
        .expires_in(3600)
        .pod("nats-k8s-oidc-callout-6d5f8c7b9-x2x7q", &random_uuid())
        .sign(key)
}

fn describe(r: &RecordedRequest) -> String {
    format!(
        "{:?} {} {} auth={}",
        r.kind, r.status, r.path, r.authorization_present
    )
}

/// Waits until `cond` holds for the requests recorded after the first `mark`, and returns them.
fn requests_after(
    pod: &Pod,
    mark: usize,
    what: &str,
    cond: impl Fn(&[RecordedRequest]) -> bool,
) -> Vec<RecordedRequest> {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen: Vec<RecordedRequest> = pod.api.requests().into_iter().skip(mark).collect();
        if cond(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; requests: {:?}\nservice log:\n{}",
            seen.iter().map(describe).collect::<Vec<_>>(),
            pod.service.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_pod_discovers_its_issuer_and_keys_from_the_api_server_with_its_projected_token() {
    let started = Instant::now();
    let pod = Pod::start(&[]);
    eprintln!("ready after {:?}", started.elapsed());

    // It runs as the chart's user, not root: uid and gid 65532 (real, effective, saved, fs).
    let pid = pod.service.pid().expect("running");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let ids = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(ids("Uid:"), vec!["65532"; 4], "{status}");
    assert_eq!(ids("Gid:"), vec!["65532"; 4], "{status}");
    assert!(
        status.contains("nats-k8s-oidc-c"),
        "the pid is the service itself: {status}"
    );

    // The API server came from the kubelet's variables (https only), the issuer from discovery.
    let log = pod.service.log();
    assert!(
        log.contains(&format!("kubernetes api at {}", pod.api.url())),
        "the log names the API server found in the environment:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "accepting tokens from issuer \"{}\" for audience \"nats\"",
            pod.issuer
        )),
        "the log names the discovered issuer:\n{log}"
    );
    assert!(
        !log.contains("cannot read the issuer"),
        "discovery failed:\n{log}"
    );

    // Discovery, key set, list and watch all reached the API server over TLS verified with the
    // volume's ca.crt, each authenticated by the volume's token (the only one the emulator takes).
    let requests = pod.api.requests();
    let described: Vec<String> = requests.iter().map(describe).collect();
    for kind in [
        RequestKind::Discovery,
        RequestKind::Jwks,
        RequestKind::List,
        RequestKind::Watch,
    ] {
        assert!(
            requests
                .iter()
                .any(|r| r.kind == kind && r.status == 200 && r.authorization_present),
            "no authenticated {kind:?} served: {described:?}"
        );
    }
    assert!(
        requests
            .iter()
            .all(|r| r.status == 200 && r.authorization_present && !r.client_certificate),
        "every request carried the token and was served: {described:?}"
    );
    assert_eq!(
        pod.api.tls_handshake_failures(),
        0,
        "{:?}",
        pod.api.tls_errors()
    );

    // A client of the cluster gets its namespace and its annotation's subject, nothing else.
    let c = pod.connect("team-a/app", &pod.token("team-a", "app"));
    assert!(c.round_trip("team-a.check"), "team-a/app round trip");
    assert!(c.can_publish("shared.events"), "the annotation's subject");
    assert!(!c.can_publish("team-b.check"), "another namespace");
    assert!(!c.can_subscribe("team-b.>"), "another namespace");
    assert!(
        pod.service.decisions("allow", "granted") >= 1.0,
        "the grant is counted"
    );

    // A token of the in-cluster default issuer is refused: the discovered issuer is the one used.
    let before = pod.service.decisions("deny", "token_wrong_issuer");
    let uid = pod.api.uid_of("team-a", "app").expect("uid");
    let foreign = TokenBuilder::for_sa("team-a", "app", &uid)
        .issuer(FALLBACK_ISSUER)
        .sign(&pod.key);
    match connect_token(&pod.nats.url(), &foreign) {
        Ok(_) => panic!("a token of another issuer was let in"),
        Err(e) => assert!(is_authorization_violation(&e), "{e}"),
    }
    pod.service
        .wait_for("deny/token_wrong_issuer counted", WAIT, || {
            pod.service.decisions("deny", "token_wrong_issuer") > before
        });

    pod.assert_not_logged(&[&pod.own_token]);
    // The mounts were the service's alone.
    let host = fs::read_to_string(format!("{SA_DIR}/token")).unwrap_or_default();
    assert_ne!(
        host.trim(),
        pod.own_token,
        "the pod's token reached the host"
    );
    eprintln!("done after {:?}", started.elapsed());
}

#[test]
fn the_projected_token_is_re_read_when_the_kubelet_rotates_it() {
    let started = Instant::now();
    // The chart's `config.jwksMinRefetchInterval`, so a new signing key is fetched at once.
    let mut pod = Pod::start(&[("JWKS_MIN_REFETCH_INTERVAL", "1s")]);
    assert!(pod.api.wait_for_open_watches(1, WAIT), "a watch is open");
    let old_token = pod.own_token.clone();

    // The kubelet rotates the token (the API server accepts only the new one from now on) and
    // the cluster starts signing with a second key: the next client's token has an unknown kid,
    // so the service fetches the key set, is refused with the old token, re-reads the file and
    // retries with the new one.
    let mark = pod.api.requests().len();
    let new_token = own_token(&pod.api, &pod.key, &pod.issuer);
    assert_ne!(new_token, old_token);
    pod.volume.write(&new_token);
    pod.api.set_token(&new_token);
    pod.own_token = new_token.clone();
    let second = SigningKey::rs256_n(1);
    pod.api.set_jwks(jwks(&[&pod.key, &second]));
    std::thread::sleep(Duration::from_millis(1100)); // JWKS_MIN_REFETCH_INTERVAL since the start
    let c = pod.connect(
        "team-a/app with a token of the new key",
        &pod.token_signed_by("team-a", "app", &second),
    );
    assert!(c.round_trip("team-a.check"), "team-a/app round trip");
    let seen = requests_after(&pod, mark, "the key set fetched with the new token", |s| {
        s.iter()
            .any(|r| r.kind == RequestKind::Jwks && r.status == 200)
    });
    let refused = seen
        .iter()
        .position(|r| r.kind == RequestKind::Jwks && r.status == 401)
        .unwrap_or_else(|| panic!("the first fetch carried the old token: {seen:?}"));
    assert!(
        seen[refused..]
            .iter()
            .any(|r| r.kind == RequestKind::Jwks && r.status == 200),
        "retried with the re-read token: {seen:?}"
    );
    let log = pod.service.log();
    assert!(
        log.contains(&format!(
            "kubernetes api answered 401; re-reading the token file {SA_DIR}/token"
        )),
        "the log names the re-read:\n{log}"
    );

    // The watch opened before the rotation still delivers; a new watch uses the re-read token
    // at the first try (one token for all of the service's requests).
    pod.api
        .create_service_account("team-r", "after-rotation", &[]);
    pod.service
        .wait_for("the account created after the rotation", WAIT, || {
            pod.service.metric("nats_callout_serviceaccounts") >= 3.0
        });
    let mark = pod.api.requests().len();
    pod.api.close_watch_streams();
    let seen = requests_after(&pod, mark, "a new watch", |s| {
        s.iter()
            .any(|r| r.kind == RequestKind::Watch && r.status == 200)
    });
    assert!(
        seen.iter().all(|r| r.status != 401),
        "the new watch carried the re-read token: {:?}",
        seen.iter().map(describe).collect::<Vec<_>>()
    );
    let c = pod.connect(
        "team-r/after-rotation",
        &pod.token("team-r", "after-rotation"),
    );
    assert!(c.round_trip("team-r.check"), "team-r round trip");

    pod.assert_not_logged(&[&old_token, &new_token]);
    eprintln!("done after {:?}", started.elapsed());
}

/// The statuses the API server gave the discovery requests, in order.
fn discovery_statuses(api: &KubeEmulator) -> Vec<u16> {
    api.requests()
        .iter()
        .filter(|r| r.kind == RequestKind::Discovery)
        .map(|r| r.status)
        .collect()
}

#[test]
fn a_discovery_failure_at_start_is_retried_never_guessed() {
    // The API server stumbles on the first two discovery requests: the replica must wait for the
    // real issuer, not fall back to a default that would refuse every token of this cluster.
    let pod = Pod::start_with(&[], |api| {
        api.fail_next_of(RequestKind::Discovery, 2, 503, None)
    });
    let log = pod.service.log();
    assert!(
        log.contains("cannot read the issuer from the API server's discovery document")
            && log.contains("retrying in"),
        "the failures are logged with the retry:\n{log}"
    );
    assert!(
        log.contains(&format!("accepting tokens from issuer \"{}\"", pod.issuer)),
        "the discovered issuer is used:\n{log}"
    );
    assert_eq!(discovery_statuses(&pod.api), vec![503, 503, 200]);
    let c = pod.connect("team-a/app", &pod.token("team-a", "app"));
    assert!(c.round_trip("team-a.check"), "team-a/app round trip");
}

#[test]
fn an_api_server_without_discovery_falls_back_to_the_default_issuer_and_says_so() {
    // 404 is an answer, not a hiccup: asking again would not help, so the default is used.
    let pod = Pod::start_with(&[], |api| {
        api.fail_next_of(RequestKind::Discovery, 1, 404, None)
    });
    let log = pod.service.log();
    assert!(
        log.contains("the API server has no usable discovery document")
            && log.contains("set JWT_ISSUER"),
        "the fallback is explained:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "accepting tokens from issuer \"{FALLBACK_ISSUER}\""
        )),
        "{log}"
    );
    assert_eq!(
        discovery_statuses(&pod.api),
        vec![404],
        "a definitive answer is not asked again"
    );
}
