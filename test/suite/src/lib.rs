//! The E2E suite lives in `tests/`; it is run by `cargo xtask e2e`.
