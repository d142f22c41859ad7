//! Configuration from environment variables.

use std::net::SocketAddr;

use anyhow::Context;

#[derive(Debug, Clone)]
pub struct Config {
    /// `LISTEN_ADDR`, default `0.0.0.0:8080`.
    pub listen_addr: SocketAddr,
    /// `POSTGRES_HOST` (default `postgres`), `POSTGRES_PORT` (5432).
    pub pg_host: String,
    pub pg_port: u16,
    /// `POSTGRES_USER`, `POSTGRES_PASSWORD`, `POSTGRES_DB`: required.
    pub pg_user: String,
    pub pg_password: String,
    pub pg_database: String,
    /// `POSTGRES_POOL_SIZE`, default 16.
    pub pool_size: usize,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let required = |key: &str| {
            get(key)
                .filter(|v| !v.is_empty())
                .with_context(|| format!("environment variable {key} is required"))
        };
        let parsed = |key: &str, default: &str| -> anyhow::Result<String> {
            Ok(get(key)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned()))
        };
        Ok(Config {
            listen_addr: parsed("LISTEN_ADDR", "0.0.0.0:8080")?
                .parse()
                .context("LISTEN_ADDR must look like 0.0.0.0:8080")?,
            pg_host: parsed("POSTGRES_HOST", "postgres")?,
            pg_port: parsed("POSTGRES_PORT", "5432")?
                .parse()
                .context("POSTGRES_PORT must be a port number")?,
            pg_user: required("POSTGRES_USER")?,
            pg_password: required("POSTGRES_PASSWORD")?,
            pg_database: required("POSTGRES_DB")?,
            pool_size: parsed("POSTGRES_POOL_SIZE", "16")?
                .parse()
                .context("POSTGRES_POOL_SIZE must be a positive number")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_apply_and_credentials_are_required() {
        let c = Config::from_lookup(lookup(&[
            ("POSTGRES_USER", "u"),
            ("POSTGRES_PASSWORD", "p"),
            ("POSTGRES_DB", "d"),
        ]))
        .unwrap();
        assert_eq!(c.listen_addr.port(), 8080);
        assert_eq!(c.pg_host, "postgres");
        assert_eq!(c.pg_port, 5432);

        let err = Config::from_lookup(lookup(&[("POSTGRES_USER", "u")])).unwrap_err();
        assert!(err.to_string().contains("POSTGRES_PASSWORD"), "{err}");
    }

    #[test]
    fn bad_port_is_named() {
        let err = Config::from_lookup(lookup(&[
            ("POSTGRES_USER", "u"),
            ("POSTGRES_PASSWORD", "p"),
            ("POSTGRES_DB", "d"),
            ("POSTGRES_PORT", "fifty"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("POSTGRES_PORT"), "{err}");
    }
}
