//! `.dockerignore` / `.containerignore`: which files of a build context the engine is sent,
//! so that only those count in an image's fingerprint.
//!
//! Semantics as Docker documents them: one pattern a line, `#` comments, paths relative to
//! the context root (a leading `/` is dropped), `*` and `?` within one path element, `**`
//! across any number of them, `!` re-includes; the last matching line wins, and a pattern
//! that matches a directory excludes everything under it.

use globset::{Glob, GlobMatcher};

pub struct Ignore {
    rules: Vec<(GlobMatcher, bool)>,
}

impl Ignore {
    pub fn none() -> Ignore {
        Ignore { rules: Vec::new() }
    }

    pub fn parse(text: &str) -> anyhow::Result<Ignore> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negated, pattern) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let pattern = clean(pattern);
            if pattern.is_empty() {
                continue;
            }
            let glob = globset::GlobBuilder::new(&pattern)
                .literal_separator(true)
                .build()
                .or_else(|_| Glob::new(&globset::escape(&pattern)))
                .map_err(|e| anyhow::anyhow!("bad ignore pattern {line:?}: {e}"))?;
            rules.push((glob.compile_matcher(), negated));
        }
        Ok(Ignore { rules })
    }

    /// Whether `path` (relative, `/`-separated) is left out of the context.
    pub fn is_ignored(&self, path: &str) -> bool {
        let mut ignored = false;
        for (glob, negated) in &self.rules {
            if matches_self_or_parent(glob, path) {
                ignored = !negated;
            }
        }
        ignored
    }
}

fn matches_self_or_parent(glob: &GlobMatcher, path: &str) -> bool {
    if glob.is_match(path) {
        return true;
    }
    path.match_indices('/')
        .any(|(i, _)| glob.is_match(&path[..i]))
}

/// Like Go's `filepath.Clean` on a pattern: no leading `/` or `./`, no trailing `/`.
fn clean(pattern: &str) -> String {
    let parts: Vec<&str> = pattern
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    parts.join("/")
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
        assert!(
            ig.is_ignored("target/debug/gateway"),
            "a matched directory takes its contents"
        );
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
        assert!(!Ignore::none().is_ignored("anything"));
    }
}
