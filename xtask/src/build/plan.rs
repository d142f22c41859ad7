//! The plan: each image's build context staged and fingerprinted, its fingerprinted tag
//! looked up in the engine, and the decision (cached, or build and why).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::{
    engine::{EngineFacts, ImageInfo},
    engine_images::{EngineImages, ImageRecord},
    facts::Env,
    fingerprint::{self, Entry, EntryKind, HashCache},
    images::{self, BuildContext, ImageSpec},
    memory,
    project::Project,
    report::{table, Reporter},
};

#[derive(Debug, Clone)]
pub struct PlanItem {
    pub spec: ImageSpec,
    pub context: PathBuf,
    pub fingerprint: String,
    /// The fingerprint without the packaged binary's content (if any): unchanged when only the
    /// binary changed, which `dev` then syncs into the running container, keeping its pod.
    pub outside_binary: String,
    pub reference: String,
    pub action: Action,
}

impl PlanItem {
    pub fn record(&self, image: &ImageInfo) -> ImageRecord {
        ImageRecord {
            name: self.spec.name.clone(),
            repository: self.spec.repository.clone(),
            reference: self.reference.clone(),
            id: image.id.clone(),
            fingerprint: self.fingerprint.clone(),
            size: image.size,
        }
    }

    pub fn is_cached(&self) -> bool {
        matches!(self.action, Action::Cached(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The engine has the image with this fingerprint.
    Cached(ImageInfo),
    Build {
        reason: String,
    },
}

/// What `images.json` says of an image, for the reason a build is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded<'a> {
    Nothing,
    /// This engine's record: the fingerprint it was built with.
    Here(&'a str),
    /// The record is of another engine (named): it says nothing of this one.
    Elsewhere(&'a str),
}

fn recorded<'a>(
    previous: Option<&'a EngineImages>,
    engine: &EngineFacts,
    name: &str,
    other: &'a str,
) -> Recorded<'a> {
    match previous {
        None => Recorded::Nothing,
        Some(engine_images) if !engine_images.is_of(engine) => Recorded::Elsewhere(other),
        Some(engine_images) => engine_images
            .images
            .iter()
            .find(|i| i.name == name)
            .map_or(Recorded::Nothing, |i| Recorded::Here(&i.fingerprint)),
    }
}

/// Cached only when the fingerprinted tag exists *and* its label has the full fingerprint.
fn decide(force: bool, fp: &str, in_engine: Option<ImageInfo>, previous: Recorded) -> Action {
    let reason = match (force, in_engine, previous) {
        (true, ..) => "--force",
        (_, Some(image), _) if image.fingerprint.as_deref() == Some(fp) => {
            return Action::Cached(image)
        }
        (_, Some(_), _) => "its tag exists but without this fingerprint in its label",
        (_, None, Recorded::Here(built_with)) if built_with != fp => {
            "inputs changed since the last build"
        }
        (_, None, Recorded::Here(_)) => "built before, but no longer in the engine",
        (_, None, Recorded::Elsewhere(other)) => {
            let reason = format!("not built in this engine yet (images.json was of {other})");
            return Action::Build { reason };
        }
        (_, None, Recorded::Nothing) => "not built yet",
    };
    Action::Build { reason: reason.into() }
}

pub(super) fn make_plan(
    project: &Project,
    env: &Env,
    bin_dir: &Path,
    specs: &[ImageSpec],
    force: bool,
    previous: Option<&EngineImages>,
) -> Result<Vec<PlanItem>> {
    let mut cache = HashCache::load(&project.e2e_dir.join("hash-cache.json"));
    let mut items = Vec::new();
    for spec in specs {
        let context = stage_context(project, spec, bin_dir, &mut cache)?;
        let entries = fingerprint::scan_context(&context, &mut cache)?;
        let name = &spec.name;
        let path = &spec.dockerfile;
        let dockerfile = std::fs::read(project.root.join(path))
            .with_context(|| format!("image {name}: reading its Dockerfile {path}"))?;
        let args = &spec.build_args;
        let base = &env.base_image_id;
        let fingerprint_of = |context: &[Entry]| {
            fingerprint::fingerprint(&dockerfile, context, args, base, &env.facts.platform)
        };
        let fp = fingerprint_of(&entries);
        let mut blanked = entries.clone();
        let binary = blanked.iter_mut().filter(|e| spec.binary() == Some(e.path.as_str()));
        binary.for_each(|e| e.kind = EntryKind::File { sha256: String::new() });
        let outside_binary = fingerprint_of(&blanked);
        items.push(PlanItem {
            spec: spec.clone(),
            context,
            reference: format!("{}:{}", spec.repository, fingerprint::tag(&fp)),
            fingerprint: fp,
            outside_binary,
            action: Action::Build { reason: String::new() },
        });
    }
    cache.save()?;
    let found = crate::parallel::in_parallel(&items, |item| env.engine().image(&item.reference));
    let other = previous.map(EngineImages::engine_name).unwrap_or_default();
    for (item, in_engine) in items.iter_mut().zip(found) {
        let record = recorded(previous, &env.facts, &item.spec.name, &other);
        item.action = decide(force, &item.fingerprint, in_engine, record);
    }
    Ok(items)
}

/// The plan as a person reads it: what is cached, what will be built and why, how many at once.
pub fn describe_plan(plan: &[PlanItem], env: &Env, jobs: usize) -> String {
    let budget = &env.budget;
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|i| {
            let (state, why) = match &i.action {
                Action::Cached(_) => ("cached", "fingerprint matches"),
                Action::Build { reason } => ("build", reason.as_str()),
            };
            let name = i.spec.name.clone();
            let cap = images::podman_size(i.spec.memory);
            vec![name, fingerprint::tag(&i.fingerprint), state.into(), cap, why.into()]
        })
        .collect();
    let caps: Vec<u64> = plan.iter().filter(|i| !i.is_cached()).map(|i| i.spec.memory).collect();
    let uncapped = env.facts.isolation.no_memory_caps().filter(|_| !caps.is_empty());
    let uncapped = uncapped.map(|why| {
        format!(
            "\n  memory caps: the engine cannot enforce them ({why}): each build runs alone, \
             without --memory (`cargo xtask doctor` says how to get them)"
        )
    });
    format!(
        "plan:\n{}\n  memory budget: {} ({})\n  {}{}",
        table(&["image", "tag", "action", "cap", "why"], &rows),
        memory::human(budget.bytes),
        budget.source,
        concurrency(&caps, env.build_jobs(jobs), budget.bytes),
        uncapped.unwrap_or_default()
    )
}

fn concurrency(caps: &[u64], jobs: usize, budget: u64) -> String {
    let to_build = caps.len();
    let at_once = memory::max_parallel(caps, budget, jobs).min(to_build);
    let jobs = jobs.max(1);
    match (to_build, jobs) {
        (0, _) => "nothing to build: every image is cached".into(),
        (_, 1) => format!("{to_build} to build, one at a time (the default; --jobs N allows more while their caps fit the budget)"),
        _ if at_once < jobs.min(to_build) => format!("{to_build} to build, at most {at_once} at once: --jobs {jobs}, but only {at_once} of their caps fit the budget together"),
        _ => format!("{to_build} to build, up to {at_once} at once (--jobs {jobs}; their caps fit the budget)"),
    }
}

/// An image's build context: its directory, or a staged one holding only its binary (the
/// engine is sent megabytes, not the target directory), rewritten only when it changed.
fn stage_context(
    project: &Project,
    spec: &ImageSpec,
    bin_dir: &Path,
    cache: &mut HashCache,
) -> Result<PathBuf> {
    let name = &spec.name;
    let bin = match &spec.context {
        BuildContext::Dir(dir) => {
            let path = project.root.join(dir);
            anyhow::ensure!(path.is_dir(), "image {name}: context directory {dir} does not exist");
            return Ok(path);
        }
        BuildContext::Binary(bin) => bin,
    };
    let src = bin_dir.join(bin);
    let src_meta = std::fs::metadata(&src).with_context(|| {
        let src = project.display(&src);
        format!("image {name}: binary {src} was not built (is `{bin}` a binary of this workspace?)")
    })?;
    let dir = project.e2e_dir.join("context").join(&spec.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dst = dir.join(bin);
    let same = match std::fs::metadata(&dst) {
        Ok(meta) => cache.digest(&src, &src_meta)? == cache.digest(&dst, &meta)?,
        Err(_) => false,
    };
    if !same {
        let tmp = dir.join(format!(".{bin}.tmp"));
        std::fs::copy(&src, &tmp)
            .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
        std::fs::rename(&tmp, &dst)?;
    }
    // Only the binary belongs in this context.
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path != dst {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(dir)
}

/// How many older tags of each image are kept (other worktrees build other fingerprints).
pub const KEEP_OLDER: usize = 2;

/// The references in `listing` (newest first, as the engines list images) of a handed-off
/// repository, beyond its current tag and the `KEEP_OLDER` newest others.
pub fn superseded(listing: &str, engine_images: &EngineImages) -> Vec<String> {
    let current: BTreeMap<&str, &str> = engine_images
        .images
        .iter()
        .map(|i| (i.repository.as_str(), i.reference.as_str()))
        .collect();
    let mut kept: BTreeMap<&str, usize> = BTreeMap::new();
    let repository = crate::manifests::repository;
    let ours = listing
        .lines()
        .map(str::trim)
        .filter(|l| current.get(repository(l)).is_some_and(|c| c != l));
    let beyond = ours.filter(|l| {
        let count = kept.entry(repository(l)).or_insert(0);
        *count += 1;
        *count > KEEP_OLDER
    });
    beyond.map(str::to_owned).collect()
}

/// Removes the recorded images' older fingerprint tags beyond the [`KEEP_OLDER`]
/// newest, so rebuilds do not fill the disk; other repositories are never touched.
pub fn tidy(reporter: &Reporter, engine_images: &EngineImages) {
    let Ok(listing) = engine_images.engine.list_fingerprinted().read() else { return };
    let old = superseded(&listing, engine_images);
    for reference in &old {
        let _ = engine_images.engine.untag(reference).read();
    }
    if !old.is_empty() {
        reporter.line(format!("removed {} superseded image tag(s): {}", old.len(), old.join(", ")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn freshness_needs_the_tag_and_the_matching_label() {
        let fp = "f".repeat(64);
        let found = |label: Option<&str>| {
            Some(ImageInfo {
                id: "id1".to_owned(),
                size: 10,
                fingerprint: label.map(str::to_owned),
            })
        };
        assert_eq!(
            decide(false, &fp, found(Some(&fp)), Recorded::Nothing),
            Action::Cached(found(Some(&fp)).unwrap())
        );
        assert!(
            matches!(decide(true, &fp, found(Some(&fp)), Recorded::Nothing), Action::Build { reason } if reason == "--force")
        );
        assert!(
            matches!(decide(false, &fp, found(None), Recorded::Nothing), Action::Build { reason } if reason.contains("label"))
        );
        assert!(matches!(
            decide(false, &fp, found(Some("other")), Recorded::Nothing),
            Action::Build { .. }
        ));
        assert!(
            matches!(decide(false, &fp, None, Recorded::Here("old")), Action::Build { reason } if reason.contains("inputs changed"))
        );
        assert!(
            matches!(decide(false, &fp, None, Recorded::Nothing), Action::Build { reason } if reason == "not built yet")
        );
    }

    /// A record describes one engine: another engine (the rig after local runs, say) is told
    /// as new, not as having lost its images; going back finds the record again.
    #[test]
    fn the_record_counts_only_for_the_engine_it_names() {
        let facts = |at: &str| crate::engine::EngineFacts {
            engine: crate::engine::Engine::Podman,
            version: "4.3.1".into(),
            platform: "linux/amd64".into(),
            cpus: 2,
            mem_total: 2 << 30,
            mem_free: None,
            remote: at != crate::engine::THIS_MACHINE,
            at: at.into(),
            store: None,
            isolation: Default::default(),
        };
        let record = EngineImages {
            engine: crate::engine::Engine::Podman,
            at: crate::engine::THIS_MACHINE.into(),
            platform: "linux/amd64".into(),
            base_image: String::new(),
            base_image_id: String::new(),
            images: vec![ImageRecord {
                name: "gateway".into(),
                repository: "localhost/e2e-gateway".into(),
                reference: "localhost/e2e-gateway:aaaa".into(),
                id: "id".into(),
                fingerprint: "aaaa".into(),
                size: 1,
            }],
            built_now: vec![],
        };
        let name = record.engine_name();
        assert_eq!(name, "podman at this machine (linux/amd64)");
        let local = facts(crate::engine::THIS_MACHINE);
        let rig = facts("unix:///run/e2e-rig/podman.sock");
        let fp = "b".repeat(64);
        assert_eq!(recorded(Some(&record), &local, "gateway", &name), Recorded::Here("aaaa"));
        assert_eq!(recorded(Some(&record), &local, "redis", &name), Recorded::Nothing);
        assert_eq!(recorded(None, &rig, "gateway", ""), Recorded::Nothing);
        let elsewhere = recorded(Some(&record), &rig, "gateway", &name);
        assert_eq!(elsewhere, Recorded::Elsewhere(name.as_str()));
        assert_eq!(
            decide(false, &fp, None, elsewhere),
            Action::Build {
                reason: "not built in this engine yet (images.json was of podman at this machine (linux/amd64))".into()
            }
        );
        // Another platform of the same engine is another record too.
        let arm = crate::engine::EngineFacts { platform: "linux/arm64".into(), ..local.clone() };
        assert!(matches!(recorded(Some(&record), &arm, "gateway", &name), Recorded::Elsewhere(_)));
    }

    #[test]
    fn only_older_tags_of_our_repositories_are_superseded() {
        let record = |name: &str, tag: &str| ImageRecord {
            name: name.into(),
            repository: format!("localhost/e2e-{name}"),
            reference: format!("localhost/e2e-{name}:{tag}"),
            id: String::new(),
            fingerprint: String::new(),
            size: 0,
        };
        let engine_images = EngineImages {
            engine: crate::engine::Engine::Podman,
            at: String::new(),
            platform: String::new(),
            base_image: String::new(),
            base_image_id: String::new(),
            images: vec![record("gateway", "new"), record("redis", "r1")],
            built_now: vec![],
        };
        let listing = "localhost/e2e-gateway:new\nlocalhost/e2e-gateway:o1\nlocalhost/e2e-redis:r1\nlocalhost/e2e-gateway:o2\nlocalhost/other:x\nlocalhost/e2e-gateway:o3\nlocalhost/e2e-gateway:o4\n";
        assert_eq!(
            superseded(listing, &engine_images),
            ["localhost/e2e-gateway:o3", "localhost/e2e-gateway:o4"],
            "the two newest older tags stay"
        );
    }

    #[test]
    fn concurrency_is_explained() {
        assert!(concurrency(&[], 4, GIB).contains("every image is cached"));
        assert!(concurrency(&[GIB, GIB], 1, 10 * GIB).contains("one at a time"));
        assert!(concurrency(&[GIB, GIB, GIB], 3, 2 * GIB).contains("at most 2 at once"));
        assert!(concurrency(&[GIB, GIB], 4, 10 * GIB).contains("up to 2 at once"));
    }
}
