//! The NATS side: the connection and worker pool, request decoding, response building and the
//! NATS JWT codec.

pub mod connection;
mod denial_log;
pub mod jwt;
pub mod request;
pub mod response;
pub mod service;
pub mod wire;
