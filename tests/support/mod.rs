//! Shared test support: a Kubernetes API emulator, token minting, and nats-server / service harnesses.
#![allow(dead_code)]

pub mod client;
pub mod examples;
pub mod kube;
pub mod kubeconfig;
pub mod nats;
pub mod operator;
pub mod service;
pub mod stack;
pub mod tokens;
pub mod volume;
