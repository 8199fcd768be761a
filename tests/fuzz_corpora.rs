//! Replays every fuzz target's inputs (`fuzz/seeds/<target>/`, written by hand, and
//! `fuzz/corpus/<target>/`, what fuzzing kept) through the target's entry point on the stable
//! toolchain: an input that once crashed a
//! target, or that fuzzing found interesting, keeps being run by the test suite. The fuzzing
//! itself: `scripts/fuzz` (nightly, cargo-fuzz).

use std::fs;
use std::path::Path;

use nats_k8s_oidc_callout::fuzzing;

/// A target's name and entry point.
type Target = (&'static str, fn(&[u8]));

/// Every target, as named in `fuzz/Cargo.toml`, with its entry point.
const TARGETS: &[Target] = &[
    ("request", fuzzing::request),
    ("sealed_request", fuzzing::sealed_request),
    ("token", fuzzing::token),
    ("annotations", fuzzing::annotations),
    ("policy", fuzzing::policy),
    ("kubeconfig", fuzzing::kubeconfig),
    ("watch_line", fuzzing::watch_line),
];

#[test]
fn every_target_replays_its_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for (target, run) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "{target} is not a fuzz target"
        );
        let mut inputs = 0;
        for kind in ["seeds", "corpus"] {
            let dir = root.join(kind).join(target);
            for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.unwrap().path();
                run(&fs::read(&path).unwrap());
                inputs += 1;
            }
        }
        assert!(inputs > 0, "{target}: no inputs");
        eprintln!("{target}: {inputs} inputs replayed");
    }
    // No target of the manifest is left out here.
    let declared = manifest.matches("[[bin]]").count();
    assert_eq!(
        declared,
        TARGETS.len(),
        "fuzz/Cargo.toml declares {declared} targets"
    );
}
