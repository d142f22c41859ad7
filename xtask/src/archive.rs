//! `cargo xtask save-images` / `load-images`: one verified archive of every E2E image (and its
//! manifest `<archive>.json`), so CI builds images once and test jobs only load them. What is
//! saved, checked and refused: docs/commands.md.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    build::{self, Action, BuildOptions, Goal, Inputs, Session},
    cmd::{Cmd, Pipeline},
    engine::Engine,
    engine_images::{EngineImages, ImageRecord},
    fingerprint,
    fsx::{self, temp_beside, Pending},
    interrupt,
    memory::human,
    project::Project,
    registry,
    report::{secs, Reporter},
};

pub const FORMAT: &str = "e2e-images-archive/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    None,
}

/// `<archive>.json`: the archive's checks and origin, and the record of its images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The archive's file name (it sits beside the manifest).
    pub archive: String,
    pub sha256: String,
    pub size: u64,
    pub compression: Compression,
    pub tool: String,
    pub commit: String,
    pub created_unix: u64,
    #[serde(flatten)]
    pub engine_images: EngineImages,
}

pub fn manifest_path(archive: &Path) -> PathBuf {
    let mut name = archive.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

#[derive(clap::Args, Debug)]
pub struct SaveArgs {
    /// Where to write the archive [default: target/e2e/images.tar.zst, or .tar without compression].
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Compression::Zstd)]
    pub compress: Compression,
    /// Build missing or stale images first, instead of stopping.
    #[arg(long)]
    pub build: bool,
    /// Also push each image to REGISTRY/PREFIX under its fingerprint tag (e.g. localhost:5000/e2e).
    #[arg(long, value_name = "REGISTRY/PREFIX")]
    pub push: Option<String>,
    #[command(flatten)]
    pub opts: BuildOptions,
}

impl SaveArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        let reporter = &Reporter::new();
        // The images to save are the ones the last prebuild handed off, in its engine.
        let recorded = EngineImages::load(project).map(|h| h.engine);
        let opts = &BuildOptions { engine: self.opts.engine.or(recorded), ..self.opts };
        let session = &Session::open(project, opts, reporter, false)?;
        let inputs = Inputs { project, reporter, opts, session };
        if self.build {
            build::prebuild(inputs, &[])?;
        }
        let mut engine_images = fresh_engine_images(inputs)?;
        in_start_order(&mut engine_images.images, &session.images_file.infrastructure());
        let name = if self.compress == Compression::Zstd { "images.tar.zst" } else { "images.tar" };
        let output = self.output.unwrap_or_else(|| project.e2e_dir.join(name));
        let manifest = reporter
            .phase("save images", |_| save(inputs, &engine_images, &output, self.compress))?;
        if let Some(prefix) = &self.push {
            reporter.phase("push images", |reporter| {
                registry::push(project, reporter, &engine_images, prefix)
            })?;
        }
        reporter.line(format!("archive:  {}", output.display()));
        reporter.line(format!("manifest: {}", manifest_path(&output).display()));
        let count = engine_images.images.len();
        let size = human(manifest.size);
        let sha = &manifest.sha256[..16];
        let sum = human(engine_images.images.iter().map(|i| i.size).sum());
        reporter.line(format!("{count} images, {size} (the images together: {sum}), sha256 {sha}"));
        Ok(())
    }
}

/// The record of the images, checked: every image in the engine, with the fingerprint the sources give now.
fn fresh_engine_images(inputs: Inputs) -> Result<EngineImages> {
    let engine_images = EngineImages::load(inputs.project).with_context(|| {
        format!(
            "no {} yet.\n  fix: run `cargo xtask prebuild-images` first, or `cargo xtask save-images --build`",
            inputs.project.display(&EngineImages::path(inputs.project))
        )
    })?;
    let prepared = build::prepare(inputs, Goal::Build(&[]))?;
    let mut problems = Vec::new();
    let mut images = Vec::new();
    for item in &prepared.plan {
        let recorded = engine_images.images.iter().find(|i| i.name == item.spec.name);
        let problem = match (&item.action, recorded) {
            (Action::Build { reason }, _) => reason.as_str(),
            (_, None) => "not in images.json",
            (_, Some(listed)) if listed.fingerprint != item.fingerprint => {
                "images.json lists an older build"
            }
            (Action::Cached(image), _) => {
                images.push(item.record(image));
                continue;
            }
        };
        problems.push(format!("{}: {problem}", item.spec.name));
    }
    anyhow::ensure!(
        problems.is_empty(),
        "these images do not match the current sources:\n  {}\n  fix: run `cargo xtask prebuild-images` first, or pass --build",
        problems.join("\n  ")
    );
    let base_image = engine_images.base_image;
    let base_image_id = engine_images.base_image_id;
    Ok(EngineImages { base_image, base_image_id, ..EngineImages::new(&prepared.env, images) })
}

/// Writes the archive and its manifest, each renamed into place only when complete: an
/// interrupted save leaves nothing that looks complete.
pub fn save(
    inputs: Inputs,
    engine_images: &EngineImages,
    output: &Path,
    compression: Compression,
) -> Result<Manifest> {
    let start = Instant::now();
    let project = inputs.project;
    let reporter = inputs.reporter;
    fsx::create_parent(output)?;
    anyhow::ensure!(
        compression == Compression::None || which::which("zstd").is_ok(),
        "zstd is not installed.\n  fix: `apt-get install zstd`, or pass --compress none"
    );
    // Removed if anything stops the save before it is renamed into place.
    let tmp_archive = Pending(temp_beside(output));
    let refs: Vec<String> = engine_images.images.iter().map(|i| i.reference.clone()).collect();
    let log = project.logs_dir().join("save-images.log");
    let _ = std::fs::remove_file(&log);
    let tmp = tmp_archive.path();
    let save = match compression {
        Compression::Zstd => engine_images.engine.save(&refs, None).pipe(
            Cmd::new("zstd").args(["-T0", "-3", "-q", "-f", "-o"]).arg(tmp.display().to_string()),
        ),
        Compression::None => Pipeline(vec![engine_images.engine.save(&refs, Some(tmp))]),
    };
    reporter.line(format!("  $ {save}"));
    save.run_logged(&log).context("saving the images")?;
    interrupt::check()?;
    let size = std::fs::metadata(tmp)?.len();
    let name = output.file_name().context("the output needs a file name")?;
    let manifest = Manifest {
        format: FORMAT.into(),
        archive: name.to_string_lossy().into(),
        sha256: fingerprint::file_sha256(tmp)?,
        size,
        compression,
        tool: format!("xtask {}", env!("CARGO_PKG_VERSION")),
        commit: commit(project),
        created_unix: std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_secs()),
        engine_images: engine_images.clone(),
    };
    // An old manifest must never sit beside a new archive.
    let _ = std::fs::remove_file(manifest_path(output));
    tmp_archive.persist(output)?;
    fsx::write_json(&manifest_path(output), &manifest)?;
    let count = engine_images.images.len();
    let took = secs(start.elapsed());
    let size = human(size);
    reporter.line(format!("  saved {count} images in {took} ({size})"));
    Ok(manifest)
}

/// The save (and so load) order: first the images that package no binary of ours (`e2e
/// --images` starts them once loaded: docs/run.md), each group in the images file's order.
pub fn in_start_order(images: &mut [ImageRecord], infrastructure: &[&str]) {
    images.sort_by_key(|i| !infrastructure.contains(&i.name.as_str()));
}

/// The commit's full hash, with `-dirty` when tracked files have changes (tags are not used).
fn commit(project: &Project) -> String {
    let describe = ["describe", "--always", "--dirty", "--abbrev=40", "--exclude=*"];
    let hash = Cmd::new("git").args(describe).cwd(&project.root).read();
    hash.map_or("unknown".into(), |h| h.trim().to_owned())
}

/// The manifest beside the archive, read and parsed, not checked against the archive.
pub fn read_manifest(archive: &Path) -> Result<Manifest> {
    let file = manifest_path(archive).display().to_string();
    let text = std::fs::read(manifest_path(archive)).with_context(|| {
        format!("no manifest {file} beside the archive (an incomplete save, or not made by `cargo xtask save-images`)")
    })?;
    let manifest: Manifest =
        serde_json::from_slice(&text).with_context(|| format!("{file} is not a valid manifest"))?;
    let format = &manifest.format;
    anyhow::ensure!(format == FORMAT, "{file} has format {format:?}, expected {FORMAT:?}");
    Ok(manifest)
}

/// Checks the manifest and the archive's size and SHA-256; loads nothing.
pub fn verify(archive: &Path) -> Result<Manifest> {
    let manifest = read_manifest(archive)?;
    let file = archive.display();
    let size = std::fs::metadata(archive).with_context(|| format!("reading {file}"))?.len();
    let again = "Nothing was loaded.\n  fix: download or save it again";
    anyhow::ensure!(
        size == manifest.size,
        "{file} is {size} bytes but its manifest says {}: the archive is truncated or was replaced. {again}",
        manifest.size
    );
    let sha = fingerprint::file_sha256(archive)?;
    anyhow::ensure!(
        sha == manifest.sha256,
        "{file} is corrupted: its SHA-256 is {sha}, its manifest says {}. {again}",
        manifest.sha256
    );
    Ok(manifest)
}

/// The images of the archive whose fingerprints differ from the current checkout's.
pub fn stale_images(manifest: &Manifest, current: &BTreeMap<String, String>) -> Vec<String> {
    let images = &manifest.engine_images.images;
    let tag = fingerprint::tag;
    let differ = images.iter().filter_map(|i| match current.get(&i.name) {
        Some(fp) if *fp == i.fingerprint => None,
        Some(fp) => Some(format!(
            "{}: archive {} but this checkout gives {}",
            i.name,
            tag(&i.fingerprint),
            tag(fp)
        )),
        None => Some(format!("{}: not in this checkout's images file", i.name)),
    });
    let missing = current
        .keys()
        .filter(|name| !images.iter().any(|i| &i.name == *name))
        .map(|name| format!("{name}: missing from the archive"));
    differ.chain(missing).collect()
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["archive", "registry"])))]
pub struct LoadArgs {
    /// The archive written by `cargo xtask save-images` (its manifest is `<archive>.json`).
    pub archive: Option<PathBuf>,
    /// Pull this checkout's images from REGISTRY/PREFIX (pushed by `save-images --push`) instead.
    #[arg(long, value_name = "REGISTRY/PREFIX")]
    pub registry: Option<String>,
    /// Load even when the archive's fingerprints differ from this checkout's.
    #[arg(long)]
    pub allow_stale: bool,
    #[command(flatten)]
    pub opts: BuildOptions,
}

impl LoadArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        let reporter = &Reporter::new();
        let opts = &self.opts;
        let inputs = Inputs {
            project,
            reporter,
            opts,
            session: &Session::open(project, opts, reporter, false)?,
        };
        match (&self.archive, &self.registry) {
            (Some(archive), _) => load(inputs, archive, self.allow_stale, &|_| {}),
            (None, Some(prefix)) => registry::pull(inputs, prefix),
            (None, None) => unreachable!("clap requires one"),
        }
        .map(drop)
    }
}

/// Verifies, compares with the checkout, loads, checks the image IDs; the record of the images.
/// `arrived` hears of each image as soon as it is in (when the load is a pull per image).
pub fn load(
    inputs: Inputs,
    archive: &Path,
    allow_stale: bool,
    arrived: &(dyn Fn(&str) + Sync),
) -> Result<EngineImages> {
    let reporter = inputs.reporter;
    let manifest = reporter.phase("verify archive", |reporter| {
        let manifest = verify(archive)?;
        let count = manifest.engine_images.images.len();
        let size = human(manifest.size);
        let sha = &manifest.sha256[..16];
        let commit = &manifest.commit;
        let tool = &manifest.tool;
        reporter.line(format!(
            "  {count} images, {size}, sha256 {sha} matches; saved from commit {commit} by {tool}"
        ));
        Ok(manifest)
    })?;
    let images = &manifest.engine_images.images;
    let base_image_id = &manifest.engine_images.base_image_id;
    let engine = inputs.session.facts.env(Some(base_image_id))?.engine();
    let loading = Loading::of(inputs.project, inputs.session, engine, archive, &manifest);
    // The unpacked archive is removed once the load is over, however it ends.
    let _unpacked = Pending(unpacked_path(inputs.project));
    let log = inputs.project.logs_dir().join("load-images.log");
    let _ = std::fs::remove_file(&log);
    // The unpacking asks nothing of the engine: it runs beside the checkout's fingerprints.
    let (prepared, unpacking) = std::thread::scope(|s| {
        let unpacking = s.spawn(|| loading.unpack(reporter, &log));
        let prepared = build::prepare(inputs, Goal::Archive { base_image_id });
        (prepared, unpacking.join().expect("no panic"))
    });
    let prepared = prepared?;
    let current: BTreeMap<String, String> =
        prepared.plan.iter().map(|i| (i.spec.name.clone(), i.fingerprint.clone())).collect();
    let stale = stale_images(&manifest, &current);
    if !stale.is_empty() {
        let list = stale.join("\n  ");
        anyhow::ensure!(
            allow_stale,
            "the archive does not match this checkout:\n  {list}\n  fix: make a new archive \
             (`cargo xtask prebuild-images && cargo xtask save-images`), run `cargo xtask e2e` without \
             --images to build here, or pass --allow-stale to test the archive's images anyway"
        );
        let bar = "!".repeat(72);
        reporter.line(&bar);
        reporter.line("WARNING: --allow-stale: these images do NOT match this checkout:");
        reporter.line(format!("  {list}"));
        reporter.line("The tests will run against the archive's images, not against your sources.");
        reporter.line(&bar);
    }
    reporter.phase("load images", |reporter| {
        let present =
            |i: &ImageRecord| engine.image(&i.reference).is_some_and(|found| found.id == i.id);
        if images.iter().all(present) {
            reporter.line("  every image is already loaded, with the archive's image IDs");
            return Ok(());
        }
        let start = Instant::now();
        unpacking.context("unpacking the archive")?;
        loading.load(reporter, &log, arrived).context("loading the archive")?;
        let missing: Vec<&str> =
            images.iter().filter(|i| !present(i)).map(|i| i.reference.as_str()).collect();
        anyhow::ensure!(
            missing.is_empty(),
            "after loading, these images are missing or have other IDs: {}",
            missing.join(", ")
        );
        reporter.line(format!("  loaded {} images in {}", images.len(), secs(start.elapsed())));
        Ok(())
    })?;
    Ok(EngineImages { engine, at: prepared.env.facts.at.clone(), ..manifest.engine_images })
}

/// The images' references in the waves they load in: the infrastructure's, then the others.
fn waves<'a>(images: &'a [ImageRecord], infrastructure: &[&str]) -> [Vec<&'a str>; 2] {
    let references = |infra: bool| {
        let of_group = |i: &&ImageRecord| infrastructure.contains(&i.name.as_str()) == infra;
        images.iter().filter(of_group).map(|i| i.reference.as_str()).collect()
    };
    [references(true), references(false)]
}

/// Where a compressed archive is unpacked for a local podman's pulls, removed after them.
fn unpacked_path(project: &Project) -> PathBuf {
    temp_beside(&project.e2e_dir.join("images.tar"))
}

/// How an archive goes into the engine.
#[derive(Debug)]
pub enum Loading {
    /// One `load` of the archive's stream: docker's, and a remote podman's (the archive is on
    /// this machine; the engine reads what it is sent).
    Stream(Pipeline),
    /// A local podman reads the archive itself: unpacked first when compressed, then a `podman
    /// pull docker-archive:ARCHIVE:REFERENCE` of each image, wave after wave (the
    /// infrastructure's images at once, then the others at once), each reading only its own
    /// layers. One `podman load` of the same unpacked archive took 2.8-3.1 s here; the pulls
    /// 1.9-2.1 s, the infrastructure's done after 1.4-1.7 s (docs/measurements.md).
    PerImage { unpack: Option<Cmd>, waves: Vec<Vec<(String, Cmd)>> },
}

impl Loading {
    /// The load of `archive` (its manifest `manifest`) as `session`'s engine takes it.
    pub fn of(
        project: &Project,
        session: &Session,
        engine: Engine,
        archive: &Path,
        manifest: &Manifest,
    ) -> Loading {
        let waves = waves(&manifest.engine_images.images, &session.images_file.infrastructure());
        let unpacked = unpacked_path(project);
        let remote = session.remote();
        Loading::new(engine, remote, archive, manifest.compression, &unpacked, &waves)
    }

    /// `waves`: the images' references, in the waves they load in. `unpacked`: where a
    /// compressed archive is unpacked for a local podman (the caller removes it).
    pub fn new(
        engine: Engine,
        remote: bool,
        archive: &Path,
        compression: Compression,
        unpacked: &Path,
        waves: &[Vec<&str>],
    ) -> Loading {
        let path = archive.display().to_string();
        // docker-archive:PATH:REFERENCE splits at the first colon: a path with one streams.
        if engine == Engine::Docker || remote || path.contains(':') {
            return Loading::Stream(load_cmd(engine, archive, compression));
        }
        let (unpack, tar) = match compression {
            Compression::Zstd => {
                let unpacked = unpacked.display().to_string();
                let unpack = Cmd::new("zstd").args(["-d", "-q", "-f", "-o", &unpacked, &path]);
                (Some(unpack), unpacked)
            }
            Compression::None => (None, path),
        };
        let pull = |reference: &&str| {
            let from = format!("docker-archive:{tar}:{reference}");
            (reference.to_string(), Cmd::new("podman").args(["pull", "-q"]).arg(from))
        };
        let waves = waves.iter().filter(|w| !w.is_empty());
        let waves = waves.map(|wave| wave.iter().map(pull).collect()).collect();
        Loading::PerImage { unpack, waves }
    }

    /// The commands, a line each (the waves' commands run at once).
    pub fn lines(&self) -> Vec<String> {
        match self {
            Loading::Stream(load) => vec![load.to_string()],
            Loading::PerImage { unpack, waves } => {
                let waves = waves.iter().enumerate().flat_map(|(n, wave)| {
                    let at_once = if wave.len() > 1 { ", at once" } else { "" };
                    wave.iter().map(move |(_, pull)| format!("{pull}  # wave {}{at_once}", n + 1))
                });
                unpack.iter().map(ToString::to_string).chain(waves).collect()
            }
        }
    }

    /// The unpacking, when there is one, its output appended to `log`.
    fn unpack(&self, reporter: &Reporter, log: &Path) -> Result<()> {
        let Loading::PerImage { unpack: Some(unpack), .. } = self else { return Ok(()) };
        reporter.line(format!("  $ {unpack}"));
        unpack.run_logged(log)
    }

    /// The load after [`Loading::unpack`], its output appended to `log`; `arrived` hears of
    /// each image pulled.
    fn load(&self, reporter: &Reporter, log: &Path, arrived: &(dyn Fn(&str) + Sync)) -> Result<()> {
        match self {
            Loading::Stream(load) => {
                reporter.line(format!("  $ {load}"));
                load.run_logged(log)
            }
            Loading::PerImage { waves, .. } => {
                for wave in waves {
                    wave.iter().for_each(|(_, pull)| reporter.line(format!("  $ {pull}")));
                    let pulled = crate::parallel::in_parallel(wave, |(reference, pull)| {
                        pull.run_logged(log).map(|()| arrived(reference))
                    });
                    pulled.into_iter().collect::<Result<Vec<()>>>()?;
                    interrupt::check()?;
                }
                Ok(())
            }
        }
    }
}

fn load_cmd(engine: Engine, archive: &Path, compression: Compression) -> Pipeline {
    let load = Cmd::new(engine.program()).arg("load");
    let archive = archive.display().to_string();
    match compression {
        Compression::Zstd => Cmd::new("zstd").args(["-d", "-c", "-q"]).arg(archive).pipe(load),
        Compression::None => Pipeline(vec![load.args(["--input".to_owned(), archive])]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, fp: &str) -> ImageRecord {
        ImageRecord {
            name: name.into(),
            repository: format!("localhost/e2e-{name}"),
            reference: format!("localhost/e2e-{name}:{}", &fp[..16]),
            id: "id".into(),
            fingerprint: fp.into(),
            size: 1,
        }
    }

    #[test]
    fn the_infrastructure_is_saved_first_each_group_in_file_order() {
        let names = |images: &[ImageRecord]| -> Vec<String> {
            images.iter().map(|i| i.name.clone()).collect()
        };
        let fp = "f".repeat(64);
        let mut images: Vec<ImageRecord> = ["gateway", "data-storage", "postgres", "redis"]
            .iter()
            .map(|n| record(n, &fp))
            .collect();
        in_start_order(&mut images, &["postgres", "redis"]);
        assert_eq!(names(&images), ["postgres", "redis", "gateway", "data-storage"]);
        in_start_order(&mut images, &[]);
        assert_eq!(names(&images), ["postgres", "redis", "gateway", "data-storage"]);
    }

    #[test]
    fn staleness_names_every_differing_image() {
        let archived_fp = "a".repeat(64);
        let changed_fp = "b".repeat(64);
        let manifest = Manifest {
            format: FORMAT.into(),
            archive: "x".into(),
            sha256: String::new(),
            size: 0,
            compression: Compression::Zstd,
            tool: String::new(),
            commit: String::new(),
            created_unix: 0,
            engine_images: EngineImages {
                engine: Engine::Podman,
                at: String::new(),
                platform: "linux/amd64".into(),
                base_image: String::new(),
                base_image_id: String::new(),
                images: vec![record("gateway", &archived_fp), record("redis", &archived_fp)],
                built_now: Vec::new(),
            },
        };
        let same: BTreeMap<String, String> =
            [("gateway".into(), archived_fp.clone()), ("redis".into(), archived_fp.clone())].into();
        assert!(stale_images(&manifest, &same).is_empty());
        let changed: BTreeMap<String, String> = [
            ("gateway".into(), changed_fp.clone()),
            ("postgres".into(), archived_fp.clone()),
            ("redis".into(), archived_fp.clone()),
        ]
        .into();
        let stale = stale_images(&manifest, &changed);
        assert_eq!(stale.len(), 2, "{stale:?}");
        assert!(stale[0].starts_with(
            "gateway: archive aaaaaaaaaaaaaaaa but this checkout gives bbbbbbbbbbbbbbbb"
        ));
        assert_eq!(stale[1], "postgres: missing from the archive");
    }

    /// A manifest as earlier versions wrote it (the images record's fields inline, no `at`) reads,
    /// and one written now has those fields at the top level still.
    #[test]
    fn manifests_keep_their_fields_at_the_top_level() {
        let json = r#"{"format":"e2e-images-archive/v1","archive":"images.tar.zst",
            "sha256":"ab","size":7,"compression":"zstd","engine":"podman",
            "platform":"linux/amd64","base_image":"localhost/e2e-base:bookworm",
            "base_image_id":"b1","tool":"xtask 0.1.0","commit":"c0","created_unix":1,
            "images":[]}"#;
        let manifest: Manifest = serde_json::from_str(json).unwrap();
        let engine_images = &manifest.engine_images;
        assert_eq!(
            (engine_images.engine, engine_images.at.as_str()),
            (Engine::Podman, "this machine")
        );
        assert_eq!(
            (engine_images.base_image_id.as_str(), manifest.compression),
            ("b1", Compression::Zstd)
        );
        let back = serde_json::to_value(&manifest).unwrap();
        for key in ["format", "sha256", "size", "engine", "platform", "base_image_id", "images"] {
            assert!(back.get(key).is_some(), "{key} missing from {back}");
        }
        assert!(back.get("built_now").is_none() && back.get("handoff").is_none(), "{back}");
    }

    #[test]
    fn a_local_podman_pulls_each_image_from_the_archive_infrastructure_first() {
        let images: Vec<ImageRecord> =
            ["postgres", "gateway", "redis"].iter().map(|n| record(n, &"f".repeat(64))).collect();
        let waves = waves(&images, &["postgres", "redis"]);
        let tmp = Path::new("/p/target/e2e/.images.tar.tmp-1");
        let lines = |engine, remote, archive: &str, compression| {
            Loading::new(engine, remote, Path::new(archive), compression, tmp, &waves).lines()
        };
        let pull = |tar: &str, name: &str, wave: &str| {
            let reference = format!("localhost/e2e-{name}:ffffffffffffffff");
            format!("podman pull -q docker-archive:{tar}:{reference}  # wave {wave}")
        };
        assert_eq!(
            lines(Engine::Podman, false, "/a/i.tar.zst", Compression::Zstd),
            [
                "zstd -d -q -f -o /p/target/e2e/.images.tar.tmp-1 /a/i.tar.zst".to_owned(),
                pull(tmp.to_str().unwrap(), "postgres", "1, at once"),
                pull(tmp.to_str().unwrap(), "redis", "1, at once"),
                pull(tmp.to_str().unwrap(), "gateway", "2"),
            ]
        );
        assert_eq!(
            lines(Engine::Podman, false, "/a/i.tar", Compression::None)[0],
            pull("/a/i.tar", "postgres", "1, at once"),
            "an unpacked archive is read where it is"
        );
        let streamed = ["zstd -d -c -q /a/i.tar.zst | podman load"];
        assert_eq!(lines(Engine::Podman, true, "/a/i.tar.zst", Compression::Zstd), streamed);
        assert_eq!(
            lines(Engine::Docker, false, "/a/i.tar.zst", Compression::Zstd),
            ["zstd -d -c -q /a/i.tar.zst | docker load"]
        );
        assert_eq!(
            lines(Engine::Podman, false, "/a:b/i.tar", Compression::None),
            ["podman load --input /a:b/i.tar"],
            "docker-archive:PATH:REFERENCE cannot name a path with a colon"
        );
    }

    #[test]
    fn save_and_load_commands() {
        let refs = vec!["localhost/e2e-a:1".to_owned(), "localhost/e2e-b:2".to_owned()];
        assert_eq!(
            Engine::Podman.save(&refs, None).to_string(),
            "podman save --multi-image-archive localhost/e2e-a:1 localhost/e2e-b:2"
        );
        assert_eq!(
            Engine::Docker.save(&refs, Some(Path::new("o.tar"))).to_string(),
            "docker save --output o.tar localhost/e2e-a:1 localhost/e2e-b:2"
        );
        assert_eq!(
            load_cmd(Engine::Podman, Path::new("i.tar.zst"), Compression::Zstd).to_string(),
            "zstd -d -c -q i.tar.zst | podman load"
        );
        assert_eq!(
            load_cmd(Engine::Podman, Path::new("i.tar"), Compression::None).to_string(),
            "podman load --input i.tar"
        );
        assert_eq!(
            manifest_path(Path::new("target/e2e/images.tar.zst")),
            PathBuf::from("target/e2e/images.tar.zst.json")
        );
    }
}
