#![no_main]
//! Fuzz target: `nats_k8s_oidc_callout::fuzzing::annotations`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nats_k8s_oidc_callout::fuzzing::annotations(data);
});
