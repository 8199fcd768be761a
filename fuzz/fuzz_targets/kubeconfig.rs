#![no_main]
//! Fuzz target: `nats_k8s_oidc_callout::fuzzing::kubeconfig`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nats_k8s_oidc_callout::fuzzing::kubeconfig(data);
});
