//! An image's fingerprint: a SHA-256 over everything that determines the image, so its tag
//! changes exactly when an input does (the inputs: docs/commands.md, "Content-addressed").
//! Modification times never count.

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dockerignore::Ignore;

/// Bump when the encoding below changes, so old tags stop matching.
const VERSION: &str = "e2e-image-fingerprint-v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative, `/`-separated.
    pub path: String,
    /// Permission bits (`0o755`), plus the kind below.
    pub mode: u32,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File { sha256: String },
    Dir,
    Symlink { target: String },
}

/// The fingerprint of a build, as 64 hex digits; every part length-prefixed, so no two inputs
/// collide.
pub fn fingerprint(
    dockerfile: &[u8],
    context: &[Entry],
    build_args: &BTreeMap<String, String>,
    base_image_id: &str,
    platform: &str,
) -> String {
    let mut hasher = Sha256::new();
    let mut put = |label: &str, bytes: &[u8]| {
        hasher.update(label.as_bytes());
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    put("version", VERSION.as_bytes());
    put("platform", platform.as_bytes());
    put("base", base_image_id.as_bytes());
    put("dockerfile", dockerfile);
    for (name, value) in build_args {
        put("arg", name.as_bytes());
        put("value", value.as_bytes());
    }
    for entry in context {
        put("path", entry.path.as_bytes());
        put("mode", &entry.mode.to_be_bytes());
        match &entry.kind {
            EntryKind::File { sha256 } => put("file", sha256.as_bytes()),
            EntryKind::Dir => put("dir", b""),
            EntryKind::Symlink { target } => put("symlink", target.as_bytes()),
        }
    }
    format!("{:x}", hasher.finalize())
}

pub fn tag(fingerprint: &str) -> String {
    fingerprint[..16].to_owned()
}

/// Lists a build context as the engine would send it, in path order.
pub fn scan_context(dir: &Path, cache: &mut HashCache) -> Result<Vec<Entry>> {
    let mut ignore = Ignore::default();
    let names = [".containerignore", ".dockerignore"];
    if let Some(file) = names.map(|f| dir.join(f)).into_iter().find(|p| p.is_file()) {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        ignore = Ignore::parse(&text).with_context(|| format!("in {}", file.display()))?;
    }
    let mut entries = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(parent) = dirs.pop() {
        let items = std::fs::read_dir(&parent);
        for item in items.with_context(|| format!("reading {}", parent.display()))? {
            let path = item?.path();
            let relative = path.strip_prefix(dir)?.to_string_lossy().replace('\\', "/");
            if ignore.is_ignored(&relative) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path)?;
            let kind = if meta.file_type().is_symlink() {
                EntryKind::Symlink { target: std::fs::read_link(&path)?.to_string_lossy().into() }
            } else if meta.is_dir() {
                dirs.push(path.clone());
                EntryKind::Dir
            } else {
                EntryKind::File { sha256: cache.digest(&path, &meta)? }
            };
            entries.push(Entry { path: relative, mode: meta.permissions().mode() & 0o7777, kind });
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

/// Content digests remembered by (size, mtime, inode), so an unchanged 20 MB binary is not
/// read on every run; a changed mtime only means reading it again (the digest stays).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HashCache {
    entries: HashMap<PathBuf, Cached>,
    #[serde(skip)]
    path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cached {
    len: u64,
    mtime_ns: i128,
    ino: u64,
    sha256: String,
}

impl HashCache {
    pub fn load(path: &Path) -> HashCache {
        let bytes = std::fs::read(path).unwrap_or_default();
        let cache: HashCache = serde_json::from_slice(&bytes).unwrap_or_default();
        HashCache { path: path.to_owned(), ..cache }
    }

    pub fn save(&self) -> Result<()> {
        crate::fsx::write_atomic(&self.path, serde_json::to_vec(self)?)
    }

    pub fn digest(&mut self, path: &Path, meta: &std::fs::Metadata) -> Result<String> {
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        let len = meta.len();
        let ino = meta.ino();
        let same = |c: &&Cached| (c.len, c.mtime_ns, c.ino) == (len, mtime_ns, ino);
        if let Some(cached) = self.entries.get(path).filter(same) {
            return Ok(cached.sha256.clone());
        }
        let sha256 = file_sha256(path)?;
        self.entries.insert(path.to_owned(), Cached { len, mtime_ns, ino, sha256: sha256.clone() });
        Ok(sha256)
    }
}

pub fn file_sha256(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let copied =
        std::fs::File::open(path).and_then(|mut file| std::io::copy(&mut file, &mut hasher));
    copied.with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Inputs {
        dir: PathBuf,
    }

    impl Inputs {
        fn new(name: &str) -> Inputs {
            let dir = std::env::temp_dir().join(format!("xtask-fp-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("sub")).unwrap();
            std::fs::write(dir.join("app.sh"), "echo hi\n").unwrap();
            std::fs::write(dir.join("sub/conf"), "a=1\n").unwrap();
            Inputs { dir }
        }

        fn fp(&self) -> String {
            self.fp_with(&BTreeMap::new(), "sha256:base1", "linux/amd64", b"FROM x\n")
        }

        fn fp_with(
            &self,
            args: &BTreeMap<String, String>,
            base: &str,
            platform: &str,
            dockerfile: &[u8],
        ) -> String {
            let entries = scan_context(&self.dir, &mut HashCache::default()).unwrap();
            fingerprint(dockerfile, &entries, args, base, platform)
        }
    }

    impl Drop for Inputs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn content_changes_change_the_fingerprint() {
        let context = Inputs::new("content");
        let before = context.fp();
        assert_eq!(before, context.fp(), "stable");
        std::fs::write(context.dir.join("sub/conf"), "a=2\n").unwrap();
        assert_ne!(before, context.fp(), "one byte of content");
    }

    #[test]
    fn mode_new_files_and_renames_change_it() {
        let context = Inputs::new("mode");
        let before = context.fp();
        std::fs::set_permissions(
            context.dir.join("app.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let after_mode = context.fp();
        assert_ne!(before, after_mode, "mode");
        std::fs::write(context.dir.join("new"), "").unwrap();
        let after_new = context.fp();
        assert_ne!(after_mode, after_new, "a new empty file");
        std::fs::rename(context.dir.join("new"), context.dir.join("renamed")).unwrap();
        assert_ne!(after_new, context.fp(), "a rename");
    }

    #[test]
    fn mtime_alone_changes_nothing() {
        let context = Inputs::new("mtime");
        let before = context.fp();
        let file = std::fs::File::options().write(true).open(context.dir.join("app.sh")).unwrap();
        file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
            .unwrap();
        assert_eq!(before, context.fp());
    }

    #[test]
    fn ignored_files_do_not_count() {
        let context = Inputs::new("ignore");
        std::fs::write(context.dir.join(".dockerignore"), "*.log\nsub/cache\n").unwrap();
        let before = context.fp();
        std::fs::write(context.dir.join("debug.log"), "noise").unwrap();
        std::fs::create_dir_all(context.dir.join("sub/cache")).unwrap();
        std::fs::write(context.dir.join("sub/cache/x"), "noise").unwrap();
        assert_eq!(before, context.fp(), "ignored files");
        std::fs::write(context.dir.join("debug.txt"), "signal").unwrap();
        assert_ne!(before, context.fp(), "a file that is not ignored");
    }

    #[test]
    fn containerignore_wins_over_dockerignore() {
        let context = Inputs::new("containerignore");
        std::fs::write(context.dir.join(".dockerignore"), "*.log\n").unwrap();
        std::fs::write(context.dir.join(".containerignore"), "*.txt\n").unwrap();
        let before = context.fp();
        std::fs::write(context.dir.join("x.txt"), "ignored").unwrap();
        assert_eq!(before, context.fp());
        std::fs::write(context.dir.join("x.log"), "counted").unwrap();
        assert_ne!(before, context.fp());
    }

    #[test]
    fn args_base_platform_and_dockerfile_count() {
        let context = Inputs::new("args");
        let none = BTreeMap::new();
        let base = context.fp_with(&none, "sha256:base1", "linux/amd64", b"FROM x\n");
        let args: BTreeMap<String, String> = [("BASE_IMAGE".to_owned(), "x".to_owned())].into();
        assert_ne!(
            base,
            context.fp_with(&args, "sha256:base1", "linux/amd64", b"FROM x\n"),
            "build arg"
        );
        assert_ne!(
            base,
            context.fp_with(&none, "sha256:base2", "linux/amd64", b"FROM x\n"),
            "base image ID"
        );
        assert_ne!(
            base,
            context.fp_with(&none, "sha256:base1", "linux/arm64", b"FROM x\n"),
            "platform"
        );
        assert_ne!(
            base,
            context.fp_with(&none, "sha256:base1", "linux/amd64", b"FROM y\n"),
            "Dockerfile"
        );
    }

    #[test]
    fn a_symlinks_target_counts() {
        let context = Inputs::new("symlink");
        std::os::unix::fs::symlink("app.sh", context.dir.join("link")).unwrap();
        let before = context.fp();
        std::fs::remove_file(context.dir.join("link")).unwrap();
        std::os::unix::fs::symlink("sub/conf", context.dir.join("link")).unwrap();
        assert_ne!(before, context.fp(), "a symlink's target, not the file it names");
    }

    #[test]
    fn hash_cache_reuses_digests_but_sees_changes() {
        let context = Inputs::new("cache");
        let file = context.dir.join("app.sh");
        let mut cache = HashCache::default();
        let first = cache.digest(&file, &std::fs::metadata(&file).unwrap()).unwrap();
        assert_eq!(first, file_sha256(&file).unwrap());
        std::fs::write(&file, "echo changed\n").unwrap();
        let second = cache.digest(&file, &std::fs::metadata(&file).unwrap()).unwrap();
        assert_ne!(first, second);
    }
}
