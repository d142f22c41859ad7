//! The E2E suite lives in `tests/e2e.rs`; `cargo xtask e2e` runs it against real services.
