//! `.dockerignore` / `.containerignore`: the files of a build context the engine is sent, so
//! only those count in a fingerprint. Docker's semantics: a pattern a line, `#` comments,
//! paths relative to the context root (leading `/` dropped), `*` and `?` within a path
//! element, `**` across any, `!` re-includes; the last match wins, and a matching directory
//! excludes everything under it.

use globset::{Glob, GlobBuilder, GlobMatcher};

#[derive(Default)]
pub struct Ignore {
    /// Each pattern, and whether it re-includes (`!`).
    rules: Vec<(GlobMatcher, bool)>,
}

impl Ignore {
    pub fn parse(text: &str) -> anyhow::Result<Ignore> {
        let mut rules = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (negated, pattern) =
                line.strip_prefix('!').map_or((false, line), |p| (true, p.trim()));
            // Like Go's `filepath.Clean`: no leading `/` or `./`, no trailing `/`.
            let parts: Vec<&str> =
                pattern.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
            let pattern = parts.join("/");
            if pattern.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(&pattern)
                .literal_separator(true)
                .build()
                .or_else(|_| Glob::new(&globset::escape(&pattern)))
                .map_err(|e| anyhow::anyhow!("bad ignore pattern {line:?}: {e}"))?;
            rules.push((glob.compile_matcher(), negated));
        }
        Ok(Ignore { rules })
    }

    /// Whether `path` (relative, `/`-separated) is left out of the context: the last rule
    /// that matches it or one of its parent directories decides.
    pub fn is_ignored(&self, path: &str) -> bool {
        let parents = path.match_indices('/').map(|(i, _)| &path[..i]);
        let hits = |g: &GlobMatcher| g.is_match(path) || parents.clone().any(|p| g.is_match(p));
        self.rules.iter().rev().find(|(g, _)| hits(g)).is_some_and(|(_, negated)| !negated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_semantics() {
        let ig = Ignore::parse(
            "# comment\n*.md\n!README.md\n/target\ndocs/**/*.png\ntemp?\n**/*.tmp\nbuild/\n",
        )
        .unwrap();
        assert!(ig.is_ignored("notes.md"));
        assert!(!ig.is_ignored("README.md"), "re-included by a later !");
        assert!(!ig.is_ignored("sub/notes.md"), "* does not cross /");
        assert!(ig.is_ignored("target"));
        assert!(ig.is_ignored("target/debug/gateway"), "a matched directory takes its contents");
        assert!(ig.is_ignored("docs/a/b/c.png"));
        assert!(ig.is_ignored("docs/c.png"), "** matches zero directories");
        assert!(ig.is_ignored("temp1"));
        assert!(!ig.is_ignored("temp12"));
        assert!(ig.is_ignored("deep/er/x.tmp"));
        assert!(ig.is_ignored("build/out.o"));
        assert!(!ig.is_ignored("src/main.rs"));
    }

    #[test]
    fn last_match_wins() {
        let ig = Ignore::parse("!keep.txt\n*.txt\n").unwrap();
        assert!(ig.is_ignored("keep.txt"));
        assert!(!Ignore::default().is_ignored("anything"));
    }
}
