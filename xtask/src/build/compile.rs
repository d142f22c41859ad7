//! Where the workspace's binaries compile: on this machine (one `cargo build`), or in the
//! engine, in one build of the images file's `[builder]` (when and why: docs/remote-engine.md).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use super::Inputs;
use crate::{
    cmd::Cmd,
    engine::{BuildCmd, FINGERPRINT_LABEL},
    facts::Env,
    fingerprint::{self, HashCache},
    images::{podman_size, Builder},
    memory,
    problem::Problem,
    project::Project,
    quirks,
    report::secs,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompileIn {
    /// On this machine, with `cargo build`.
    Host,
    /// In the engine, in one build of the images file's `[builder]`.
    Engine,
}

/// `os/arch` of the binaries this machine's cargo makes.
pub fn host_platform() -> String {
    let os = std::env::consts::OS;
    let arch = std::env::consts::ARCH;
    crate::engine::normalize_platform(&format!("{os}/{arch}"))
}

/// As asked, else here when this machine makes binaries the engine's platform runs, else in
/// the engine.
pub fn resolve(asked: Option<CompileIn>, host: &str, engine: &str) -> CompileIn {
    asked.unwrap_or(if host == engine { CompileIn::Host } else { CompileIn::Engine })
}

/// Compiles the binaries the images package, here or in the engine, and returns their
/// directory; without `compile` (a dry run), only the directory.
pub fn binaries(inputs: Inputs, env: &Env, binaries: &[&str], compile: bool) -> Result<PathBuf> {
    let project = inputs.project;
    let opts = inputs.opts;
    let host = host_platform();
    let platform = &env.facts.platform;
    let no_binaries = binaries.is_empty();
    if no_binaries || resolve(opts.compile_in, &host, platform) == CompileIn::Host {
        if compile && !no_binaries {
            let jobs = env.cargo_jobs();
            inputs.reporter.phase("compile service binaries", |reporter| {
                let cmd = super::cargo_build(project, binaries, jobs, opts.release);
                reporter.line(format!(
                    "  cargo -j {jobs}: {} CPUs here, the host's budget {} ({}) at {} a rustc job",
                    memory::cpus(),
                    memory::human(env.host_budget.bytes),
                    env.host_budget.source,
                    memory::human(memory::RUSTC_JOB)
                ));
                reporter.command(&cmd);
                cmd.run_logged(&project.logs_dir().join("cargo-build.log"))
                    .context("compiling the service binaries")
            })?;
        }
        return Ok(project.binaries_dir(opts.release));
    }
    let builder = inputs.session.images_file.builder.as_ref().ok_or_else(|| {
        Problem::new(
            format!("the binaries must compile in the engine ({platform} cannot run this machine's {host}), but the images file has no [builder]"),
            "add a [builder] section to test/e2e/images.toml (see the comment there)",
        )
    })?;
    if !compile {
        return Ok(project.e2e_dir.join("engine-bin"));
    }
    inputs.reporter.phase("compile service binaries", |_| in_engine(inputs, env, builder, binaries))
}

/// The workspace's files that the compile reads (the services embed their OpenAPI
/// documents from `docs/openapi`).
const SOURCES: &[&str] = &[
    "Cargo.toml",
    "Cargo.lock",
    ".cargo",
    "docs/openapi",
    "services",
    "test/suite",
    "test/stack",
    "xtask/Cargo.toml",
    "xtask/src",
];

/// Stages the sources afresh into `target/e2e/context/builder` (hard links where possible),
/// with the host's CA bundle when it has one.
pub fn stage_sources(project: &Project) -> Result<PathBuf> {
    let dir = project.e2e_dir.join("context").join("builder");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for source in SOURCES {
        copy_tree(&project.root.join(source), &dir.join(source))?;
    }
    let ca_bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if ca_bundle.is_file() {
        std::fs::copy(ca_bundle, dir.join("ca-certificates.crt"))?;
    }
    Ok(dir)
}

/// Hard links (else copies) of every file under `from`, `target` directories left out.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(from) else { return Ok(()) };
    if meta.is_dir() && from.file_name().is_some_and(|n| n != "target") {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if meta.is_file() {
        std::fs::create_dir_all(to.parent().context("a file has a parent")?)?;
        if std::fs::hard_link(from, to).is_err() {
            std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    Ok(())
}

/// The compile's memory cap and cargo's `--jobs` in the engine: at most the engine's whole
/// budget (it runs alone, before any image build); needing more, it is OOM-killed and said so.
pub fn limits(builder_cap: u64, budget: u64, engine_cpus: usize) -> (u64, usize) {
    let cap = builder_cap.min(budget);
    (cap, memory::cargo_jobs(cap, engine_cpus))
}

/// The compile in the engine: the builder build (skipped when its fingerprinted tag is
/// there), then the binaries copied out. Returns their directory (with `suite/`, the suite's
/// test binaries).
pub fn in_engine(
    inputs: Inputs,
    env: &Env,
    builder: &Builder,
    binaries: &[&str],
) -> Result<PathBuf> {
    let project = inputs.project;
    let reporter = inputs.reporter;
    let engine = env.engine();
    let program = engine.program();
    let platform = &env.facts.platform;
    let (cap, jobs) = limits(builder.memory, env.budget.bytes, env.facts.cpus);
    let builder_image = engine.image(&builder.image).ok_or_else(|| {
        Problem::new(
            format!("the builder image {} is not in {program}'s image store", builder.image),
            format!(
                "`{program} pull {}` where a registry answers, or `test/e2e/make-builder-image.sh` and \
                 E2E_BUILDER_IMAGE=localhost/e2e-rust:<version> on a machine without one",
                builder.image
            ),
        )
    })?;
    let context = stage_sources(project)?;
    let mut cache = HashCache::load(&project.e2e_dir.join("hash-cache.json"));
    let entries = fingerprint::scan_context(&context, &mut cache)?;
    cache.save()?;
    let dockerfile = project.root.join(&builder.dockerfile);
    let bin_flags = binaries.iter().map(|b| format!("--bin {b}")).collect::<Vec<_>>().join(" ");
    let mut build_args: BTreeMap<_, _> =
        [("BUILDER_IMAGE".to_owned(), builder.image.clone()), ("BINARIES".to_owned(), bin_flags)]
            .into();
    let text =
        std::fs::read(&dockerfile).with_context(|| format!("reading {}", builder.dockerfile))?;
    let fp = fingerprint::fingerprint(&text, &entries, &build_args, &builder_image.id, platform);
    let reference = format!("localhost/e2e-builder:{}", fingerprint::tag(&fp));
    let bin_dir = project.e2e_dir.join("engine-bin");
    let log = project.logs_dir().join("build-builder.log");
    let cached =
        engine.image(&reference).is_some_and(|i| i.fingerprint.as_deref() == Some(fp.as_str()));
    if cached && std::fs::read_to_string(bin_dir.join(".fingerprint")).is_ok_and(|f| f == fp) {
        reporter.line(format!("  compiled in the engine before: {reference}"));
        return Ok(bin_dir);
    }
    if !cached {
        // How many rustc run at once changes no output: not part of the fingerprint.
        build_args.insert("JOBS".to_owned(), jobs.to_string());
        let mut build = engine.build(&BuildCmd {
            reference: reference.clone(),
            dockerfile: &dockerfile,
            context: &context,
            memory: env.cap(cap),
            build_args,
            labels: [(FINGERPRINT_LABEL.to_owned(), fp.clone())].into(),
            no_cache: false,
        });
        let facts = &env.facts;
        let own_tmpdir = project.e2e_dir.join("buildah-tmp");
        let rootless = facts.isolation.rootless;
        if let Some(dir) =
            quirks::build_cache_tmpdir(&facts.version, rootless, facts.remote, &own_tmpdir)
        {
            std::fs::create_dir_all(dir)?;
            build = build.env("TMPDIR", dir.display().to_string());
        }
        let asks = podman_size(builder.memory);
        let note = format!(" (the engine's budget; [builder] memory asks {asks})");
        let capped = match env.cap(cap) {
            Some(cap) => format!("capped at {cap}"),
            None => {
                format!("not capped (the engine cannot enforce it; sized for {})", podman_size(cap))
            }
        };
        reporter.line(format!(
            "  compiling in the engine ({platform}), {capped}{}, cargo --jobs {jobs} ({} a rustc job, {} CPUs there)",
            if cap < builder.memory { note.as_str() } else { "" },
            memory::human(memory::RUSTC_JOB),
            env.facts.cpus
        ));
        let start = std::time::Instant::now();
        let result = super::run_spinning(reporter, &build, &log, "compile", "in the engine");
        result.context("compiling the workspace in the engine")?;
        reporter.line(format!("  compiled in the engine in {}", secs(start.elapsed())));
    }
    // The binaries come back through the engine's API, as a tar on the client's stdout that
    // tar unpacks here: `podman cp` into a folder unpacks in the client itself, by re-running
    // its own executable as `buildah-copier`, which fails where podman runs through a loader
    // (the twin's podman 5 on this Debian 12 host: "buildah-copier: missing program name").
    let _ = std::fs::remove_dir_all(&bin_dir);
    std::fs::create_dir_all(&bin_dir)?;
    let container = format!("e2e-extract-{}", std::process::id());
    let create = Cmd::new(program).args(["create", "--name", &container, &reference, "true"]);
    let cp = Cmd::new(program).args(["cp", &format!("{container}:/out/."), "-"]);
    let untar = Cmd::new("tar").args(["-x", "-C", &bin_dir.to_string_lossy()]);
    let copy_out = (|| {
        reporter.command(&create);
        create.run_logged(&log)?;
        let cp = cp.pipe(untar);
        reporter.line(format!("  $ {cp}"));
        cp.run_logged(&log)
    })();
    let _ = Cmd::new(program).args(["rm", "--force", &container]).survives_interrupt().read();
    copy_out.context("copying the binaries out of the engine")?;
    std::fs::write(bin_dir.join(".fingerprint"), &fp)?;
    Ok(bin_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_compile_where_they_can_run() {
        assert_eq!(resolve(None, "linux/amd64", "linux/amd64"), CompileIn::Host);
        assert_eq!(resolve(None, "darwin/arm64", "linux/arm64"), CompileIn::Engine);
        assert_eq!(
            resolve(Some(CompileIn::Engine), "linux/amd64", "linux/amd64"),
            CompileIn::Engine
        );
        assert_eq!(resolve(Some(CompileIn::Host), "darwin/arm64", "linux/arm64"), CompileIn::Host);
        assert!(host_platform().contains('/'));
    }

    #[test]
    fn the_compile_in_the_engine_fits_its_machine() {
        const GIB: u64 = 1 << 30;
        // podman machine's 2 GB VM with 4 CPUs: the whole budget, one rustc.
        assert_eq!(limits(2 * GIB, 1_400 << 20, 4), (1_400 << 20, 1));
        // A roomy engine: the [builder] cap, as many rustc as it holds and CPUs allow.
        assert_eq!(limits(4 * GIB, 12 * GIB, 8), (4 * GIB, 2));
        assert_eq!(limits(4 * GIB, 12 * GIB, 1), (4 * GIB, 1));
    }

    #[test]
    fn the_sources_are_staged_without_target_dirs() {
        let root = std::env::temp_dir().join(format!("xtask-compile-{}", std::process::id()));
        std::fs::create_dir_all(root.join("services/a/src")).unwrap();
        std::fs::create_dir_all(root.join("services/a/target")).unwrap();
        std::fs::write(root.join("services/a/src/main.rs"), "fn main() {}").unwrap();
        std::fs::write(root.join("services/a/target/x"), "junk").unwrap();
        std::fs::write(root.join("Cargo.toml"), "[workspace]").unwrap();
        let project = Project {
            root: root.clone(),
            target_dir: root.join("target"),
            e2e_dir: root.join("target/e2e"),
        };
        let dir = stage_sources(&project).unwrap();
        assert!(dir.join("services/a/src/main.rs").is_file());
        assert!(dir.join("Cargo.toml").is_file());
        assert!(!dir.join("services/a/target").exists());
        std::fs::remove_dir_all(root).unwrap();
    }
}
