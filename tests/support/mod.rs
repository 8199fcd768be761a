//! Shared test support: a Kubernetes API emulator, token minting, and nats-server / service harnesses.
#![allow(dead_code)]
