//! kubeconfig files for the service and for kubectl, and kubectl runs isolated from the machine's
//! own configuration.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A one-context kubeconfig for `server`, with these lines (without indentation) under the
/// cluster and the user; no user lines make an empty user.
pub fn kubeconfig(server: &str, cluster: &[String], user: &[String]) -> String {
    let mut text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster:\n    server: {server}\n"
    );
    for line in cluster {
        text.push_str(&format!("    {line}\n"));
    }
    text.push_str(
        "contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\nusers:\n- name: test\n  user:\n",
    );
    if user.is_empty() {
        text.push_str("    {}\n");
    }
    for line in user {
        text.push_str(&format!("    {line}\n"));
    }
    text
}

/// Writes `text` as `dir/name` and returns the path.
pub fn write_kubeconfig(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).expect("write kubeconfig");
    path
}

/// Fails the calling test unless kubectl can be run here (scripts/ensure-test-tools installs it).
pub fn require_kubectl() {
    let runs = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        runs,
        "kubectl is not on PATH: run scripts/ensure-test-tools (scripts/ensure-kubectl installs it)"
    );
}

/// kubectl with `--kubeconfig kubeconfig` and `home` as its HOME, so neither `KUBECONFIG` nor
/// `~/.kube` of the machine is read; add the arguments and run it.
pub fn kubectl(home: &Path, kubeconfig: &Path) -> Command {
    let mut c = Command::new("kubectl");
    c.env("HOME", home)
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(kubeconfig);
    c
}
