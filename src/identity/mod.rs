//! Service-account token validation and the JWKS store.
