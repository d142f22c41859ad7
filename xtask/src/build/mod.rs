//! `cargo xtask prebuild-images` (docs/commands.md): every E2E image built exactly when one of
//! its inputs changed, never more at once than memory allows. [`prepare`] checks the engine,
//! compiles the binaries and plans; [`finish`] builds and writes `target/e2e/images.json`.

mod base;
pub mod compile;
mod plan;
mod schedule;
mod session;

pub use compile::CompileIn;
pub use plan::{tidy, Action, PlanItem};
pub use schedule::build_cmd_for;
pub use session::{load_images, Inputs, Session};

pub use crate::timeline::Activity;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{
    cmd::Cmd,
    engine::{Engine, ImageInfo},
    engine_images::EngineImages,
    facts::Env,
    fingerprint,
    images::{self, ImageSpec},
    memory,
    project::Project,
    report::Reporter,
};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BuildOptions {
    /// Run up to N image builds at once, while their memory caps fit the budget.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub jobs: usize,
    /// Memory all builds together may use, e.g. `6g` [default: available now, less a margin].
    #[arg(long, value_name = "SIZE", value_parser = |s: &str| images::parse_size(s).map_err(|e| format!("{e:#}")))]
    pub memory_budget: Option<u64>,
    /// Rebuild every image, even those whose fingerprinted tag exists (no layer cache).
    #[arg(long)]
    pub force: bool,
    /// The container engine that builds the images [default: podman, or docker when only it is installed].
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// Package release binaries (optimised: for load tests; slower to compile) instead of
    /// the `dev` profile's.
    #[arg(long)]
    pub release: bool,
    /// Where the workspace's binaries compile [default: this machine, or the engine when this
    /// machine cannot make binaries for the engine's platform].
    #[arg(long, value_enum, value_name = "WHERE")]
    pub compile_in: Option<CompileIn>,
    /// The images file [default: test/e2e/images.toml].
    #[arg(long, value_name = "PATH")]
    pub images_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct PrebuildArgs {
    /// Images to build (names from the images file); all of them when none is given.
    pub images: Vec<String>,
    #[command(flatten)]
    pub build: BuildOptions,
}

impl PrebuildArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        let reporter = &Reporter::new();
        let opts = &self.build;
        let session = &Session::open(project, opts, reporter, true)?;
        prebuild(Inputs { project, reporter, opts, session }, &self.images).map(drop)
    }
}

pub struct Prepared {
    pub env: Env,
    pub plan: Vec<PlanItem>,
    pub previous: Option<EngineImages>,
}

#[derive(Clone, Copy)]
pub enum Goal<'a> {
    /// Compile, then plan the named images (all when none is named) for a build.
    Build(&'a [String]),
    /// Plan with the binaries on disk, compiling nothing.
    DryRun,
    /// Compare this checkout with an archive whose manifest gives the base image's ID (so
    /// the engine need not have it); nothing will be built.
    Archive { base_image_id: &'a str },
}

/// Prerequisites, binaries, plan (each image's context staged, fingerprinted, looked up).
pub fn prepare(inputs: Inputs, goal: Goal) -> Result<Prepared> {
    let (names, base_image_id) = match goal {
        Goal::Build(names) => (names, None),
        Goal::DryRun => (&[][..], None),
        Goal::Archive { base_image_id } => (&[][..], Some(base_image_id)),
    };
    let reporter = inputs.reporter;
    let for_archive = base_image_id.is_some();
    let selected = inputs.session.images_file.select(names)?;
    let mut env = inputs.session.env(reporter, base_image_id)?;
    let binaries: Vec<&str> = selected.iter().filter_map(ImageSpec::binary).collect();
    let bin_dir = compile::binaries(inputs, &env, &binaries, !matches!(goal, Goal::DryRun))?;
    let previous = EngineImages::load(inputs.project);
    let plan = reporter.phase(
        if for_archive { "fingerprint this checkout" } else { "plan" },
        |reporter| {
            let force = inputs.opts.force;
            let previous = previous.as_ref();
            let plan = plan::make_plan(inputs.project, &env, &bin_dir, &selected, force, previous)?;
            let caps =
                plan.iter().filter(|i| !for_archive && !i.is_cached()).map(|i| i.spec.memory);
            if let Some(budget) = available_in_engine(&env, caps.max()) {
                env.budget = budget;
            }
            let tags = plan
                .iter()
                .map(|i| format!("{} {}", i.spec.name, fingerprint::tag(&i.fingerprint)));
            reporter.line(match for_archive {
                true => format!("  {}", tags.collect::<Vec<_>>().join(", ")),
                false => plan::describe_plan(&plan, &env, inputs.opts.jobs),
            });
            Ok(plan)
        },
    )?;
    // Only the images to build must fit: a cached one needs no memory, and a small engine's
    // free memory (page cache counts as used) shrinks after a few runs.
    let to_build = plan.iter().filter(|i| !for_archive && !i.is_cached());
    let caps: Vec<_> = to_build.map(|i| (i.spec.name.as_str(), i.spec.memory)).collect();
    let budget = &env.budget;
    let too_big = memory::too_big(&caps, budget.bytes);
    let list: Vec<_> =
        too_big.iter().map(|(name, cap)| format!("{name} (cap {})", memory::human(*cap))).collect();
    anyhow::ensure!(
        list.is_empty(),
        "the memory budget is {} ({}), and these images' caps alone exceed it: {}.\n  fix: lower their \
         `memory` in the images file, or give more with --memory-budget SIZE",
        memory::human(budget.bytes),
        budget.source,
        list.join(", ")
    );
    Ok(Prepared { env, plan, previous })
}

/// A remote engine's budget comes from `podman info`'s free memory, where page cache counts as
/// used: in a 2 GiB machine it fell from 1.5 GiB to under 600 MiB after a few builds, though
/// the kernel could have given most of the rest back. When the largest cap to build does not
/// fit that budget, the engine machine's `MemAvailable` is read in a container there (no more
/// than its memory: a container's `/proc` may show its host's) and the budget taken from it,
/// if larger. `None`: nothing to do, or nothing better learnt.
fn available_in_engine(env: &Env, largest_cap: Option<u64>) -> Option<memory::Budget> {
    let facts = &env.facts;
    let budget = &env.budget;
    if !facts.remote || largest_cap.is_none_or(|cap| cap <= budget.bytes) {
        return None;
    }
    let meminfo = env.engine().run_once(&env.base_image, &["cat", "/proc/meminfo"]).read().ok()?;
    let available = memory::parse_meminfo(&meminfo)?.min(facts.mem_total);
    let measured = memory::engine_available_budget(available);
    (measured.bytes > budget.bytes).then_some(measured)
}

pub fn prebuild(inputs: Inputs, names: &[String]) -> Result<EngineImages> {
    Ok(finish(inputs, prepare(inputs, Goal::Build(names))?, true)?.0)
}

/// Builds what the plan says, writes the images record, [`tidy`] (unless not asked: the
/// dev loop tidies once, at its end); also returns what the builds did over time (for the report).
pub fn finish(inputs: Inputs, prepared: Prepared, tidy: bool) -> Result<(EngineImages, Activity)> {
    let Prepared { env, plan, previous } = prepared;
    let (built, activity) = schedule::run(inputs, &env, &plan)?;
    // Images not selected this time keep their previous entry, so the file lists every image
    // (in the images file's order).
    let previous = previous.filter(|p| p.is_of(&env.facts)).map(|p| p.images).unwrap_or_default();
    let find = |spec: &ImageSpec| {
        built.iter().chain(&previous).find(|record| record.name == spec.name).cloned()
    };
    let mut engine_images = EngineImages::new(
        &env,
        inputs.session.images_file.images.iter().filter_map(find).collect(),
    );
    engine_images.built_now =
        plan.iter().filter(|i| !i.is_cached()).map(|i| i.spec.name.clone()).collect();
    engine_images.save(inputs.project)?;
    inputs
        .reporter
        .line(format!("wrote {}", inputs.project.display(&EngineImages::path(inputs.project))));
    if tidy && !engine_images.built_now.is_empty() {
        self::tidy(inputs.reporter, &engine_images);
    }
    Ok((engine_images, activity))
}

/// The plan of the named images, decided quietly (nothing compiled or printed): to know
/// early whether the images that package no binary of ours are already there.
pub fn plan_quietly(
    project: &Project,
    session: &Session,
    names: &[String],
) -> Result<Vec<PlanItem>> {
    let env = session.facts.env(None)?;
    let specs = session.images_file.select(names)?;
    let bin_dir = project.binaries_dir(false);
    plan::make_plan(project, &env, &bin_dir, &specs, false, EngineImages::load(project).as_ref())
}

/// The images record a plan would give, before anything is built (for `--dry-run`).
pub fn planned_engine_images(prepared: &Prepared) -> EngineImages {
    let unbuilt = ImageInfo { id: String::new(), size: 0, fingerprint: None };
    let images = prepared.plan.iter().map(|i| match &i.action {
        Action::Cached(image) => i.record(image),
        Action::Build { .. } => i.record(&unbuilt),
    });
    EngineImages::new(&prepared.env, images.collect())
}

fn run_spinning(reporter: &Reporter, cmd: &Cmd, log: &Path, name: &str, msg: &str) -> Result<()> {
    reporter.command(cmd);
    let bar = reporter.spinner(name, msg);
    let result = cmd.run_logged(log);
    reporter.finish(&bar);
    result
}

/// One `cargo build` of every binary the images package, in the `dev` profile that `cargo
/// test` shares (so the E2E suite reuses the compiled dependencies).
pub fn cargo_build(project: &Project, binaries: &[&str], jobs: usize, release: bool) -> Cmd {
    Cmd::new(Project::cargo())
        .args(["build", "--workspace", "--locked", "-j", &jobs.to_string()])
        .cwd(&project.root)
        .args(release.then_some("--release"))
        .args(binaries.iter().flat_map(|b| ["--bin", b]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cargo_build_for_every_binary_with_a_bounded_j() {
        let project = Project {
            root: "/repo".into(),
            target_dir: "/repo/target".into(),
            e2e_dir: "/repo/target/e2e".into(),
        };
        let cmd = cargo_build(&project, &["gateway", "data-storage"], 2, false);
        assert!(
            cmd.to_string()
                .ends_with("build --workspace --locked -j 2 --bin gateway --bin data-storage"),
            "{cmd}"
        );
    }
}
