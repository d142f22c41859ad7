//! A failure a person can act on: what is wrong, and the fix. Errors carry it as a value
//! (`anyhow` keeps it downcastable), `doctor` prints it, and nothing parses it back from text.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

impl Problem {
    pub fn new(what: impl Into<String>, fix: impl Into<String>) -> Problem {
        Problem { what: what.into(), fix: fix.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n  fix: {}", self.what, self.fix)
    }
}

impl std::error::Error for Problem {}

/// Where users read how to make podman work on their machine (part of this repository).
pub const PODMAN_DOCS: &str = "docs/podman.md";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_survives_anyhow_context_as_a_value() {
        let err = anyhow::Error::new(Problem::new("podman is missing", "install it"))
            .context("checking the engine");
        let p = err.downcast_ref::<Problem>().expect("still a Problem");
        assert_eq!(p.fix, "install it");
        assert_eq!(
            Problem::new("a", "b").to_string(),
            "a\n  fix: b",
            "printed as before: the problem, then its fix"
        );
    }
}
