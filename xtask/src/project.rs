//! Where things are: the workspace root and the files the xtask reads and writes.

use std::path::{Path, PathBuf};

use anyhow::Context;

pub struct Project {
    pub root: PathBuf,
    pub target_dir: PathBuf,
    /// `target/e2e`, or `$E2E_DIR`: logs, staged contexts, the images record (images.json), runs.
    pub e2e_dir: PathBuf,
}

impl Project {
    /// Anchors once to the workspace root, whatever directory `cargo xtask` was run from.
    pub fn locate() -> anyhow::Result<Project> {
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
        let root = (manifest_dir.parent())
            .context("the xtask crate has no parent directory")?
            .to_path_buf();
        // A directory named by an environment variable, relative to the root.
        let given = |var, default: PathBuf| std::env::var_os(var).map_or(default, |d| root.join(d));
        let target_dir = given("CARGO_TARGET_DIR", root.join("target"));
        let e2e_dir = given("E2E_DIR", target_dir.join("e2e"));
        Ok(Project { root, target_dir, e2e_dir })
    }

    /// A shell at the root for plain sequential steps (xshell's `cmd!`, never a shell string);
    /// one per thread, as a Shell is not shared between threads.
    pub fn shell(&self) -> anyhow::Result<xshell::Shell> {
        let sh = xshell::Shell::new()?;
        sh.change_dir(&self.root);
        Ok(sh)
    }

    /// `test/e2e/manifests`, or `$E2E_MANIFESTS` (relative to the root): another stack.
    pub fn manifests_dir(&self) -> PathBuf {
        let given = std::env::var_os("E2E_MANIFESTS").filter(|d| !d.is_empty());
        given.map_or_else(|| self.root.join("test/e2e/manifests"), |d| self.root.join(d))
    }

    /// The manifests this checkout ships, whatever `$E2E_MANIFESTS` says.
    pub fn shipped_manifests(&self) -> PathBuf {
        self.root.join("test/e2e/manifests")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.e2e_dir.join("logs")
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.e2e_dir.join("runs")
    }

    /// The directory cargo puts binaries in: the `dev` profile's, or `--release`'s.
    pub fn binaries_dir(&self, release: bool) -> PathBuf {
        self.target_dir.join(if release { "release" } else { "debug" })
    }

    /// A path relative to the root, for messages.
    pub fn display(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).unwrap_or(path).display().to_string()
    }

    /// The cargo that runs us (`$CARGO`), so the same toolchain builds everything.
    pub fn cargo() -> String {
        std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
    }
}
