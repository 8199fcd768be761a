//! Operator mode (decentralized JWT accounts) without nsc: the JWT claims of operators, accounts
//! and users, the text files built from them, and the `keys operator` generator.

pub mod claims;
pub mod keys;
pub mod render;
