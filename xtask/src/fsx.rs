//! Files a reader never sees half of: written beside the target, renamed into place when done.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// `dir/.name.tmp-<pid>`: beside the target, so the rename stays on one filesystem.
pub fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

pub fn create_parent(path: &Path) -> anyhow::Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else { return Ok(()) };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Writes `contents` to `path` atomically (creating the parent directory).
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> anyhow::Result<()> {
    create_parent(path)?;
    let tmp = Pending(temp_beside(path));
    std::fs::write(tmp.path(), contents)
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path)
}

pub fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    write_atomic(path, serde_json::to_vec_pretty(value)?)
}

/// Writes a file only its owner can read (secrets on their way to the engine).
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut open = std::fs::OpenOptions::new();
    let f = open.write(true).create(true).truncate(true).mode(0o600).open(path);
    let mut f = f.with_context(|| format!("writing {}", path.display()))?;
    Ok(f.write_all(contents.as_bytes())?)
}

/// A temporary file that is removed when dropped, unless persisted (renamed away) first.
pub struct Pending(pub PathBuf);

impl Pending {
    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn persist(self, dest: &Path) -> anyhow::Result<()> {
        std::fs::rename(&self.0, dest).with_context(|| format!("writing {}", dest.display()))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_leave_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("xtask-fsx-{}", std::process::id()));
        let file = dir.join("a.json");
        write_json(&file, &serde_json::json!({"a": 1})).unwrap();
        assert!(std::fs::read_to_string(&file).unwrap().contains("\"a\": 1"));
        let names: Vec<_> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        {
            let p = Pending(dir.join("unfinished"));
            std::fs::write(p.path(), "x").unwrap();
        }
        assert!(!dir.join("unfinished").exists(), "dropped before persist: removed");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
