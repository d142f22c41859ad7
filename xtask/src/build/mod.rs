//! `cargo xtask prebuild-images`: every E2E image built exactly when one of its inputs
//! changed, and never more builds at once than memory allows.
//!
//! 1. check the engine and the base image;
//! 2. compile the service binaries once on the host, with a `-j` that fits the budget;
//! 3. plan: stage each build context, fingerprint it, and look the fingerprinted tag up in
//!    the engine (cached when it exists and carries the same fingerprint label);
//! 4. build what is not cached, admitting a build only while the running builds' memory caps
//!    and its own fit the budget (and no more than `--jobs`);
//! 5. write `target/e2e/images.json`, the handoff that `e2e` (and `save-images`) read.

pub mod compile;
mod plan;
mod schedule;

pub use compile::CompileIn;
pub use plan::{Action, PlanItem};
pub use schedule::{build_cmd_for, Activity};

use std::path::PathBuf;

use crate::{
    cmd::Cmd,
    engine::{Engine, EngineFacts, ImageInfo},
    facts::{Env, Facts},
    fingerprint,
    handoff::Handoff,
    images::{self, ImageSpec, Images},
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
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
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

fn parse_size_arg(s: &str) -> Result<u64, String> {
    images::parse_size(s).map_err(|e| format!("{e:#}"))
}

#[derive(clap::Args, Debug)]
pub struct PrebuildArgs {
    /// Images to build (names from the images file); all of them when none is given.
    pub images: Vec<String>,
    #[command(flatten)]
    pub build: BuildOptions,
}

impl PrebuildArgs {
    pub fn run(self, project: &Project) -> anyhow::Result<()> {
        let r = Reporter::new();
        let session = Session::open(project, &self.build, &r, true)?;
        prebuild(project, &r, &self.build, &session, &self.images).map(drop)
    }
}

/// What every image command starts from, read and asked once: the images file, and the
/// facts of the engine and the machine.
pub struct Session {
    pub images: Images,
    pub facts: Facts,
}

impl Session {
    /// Reads the images file and asks the engine for its facts, as the run's first phase
    /// (over ssh, each answer takes seconds). With `provision`, a base image the engine
    /// lacks is pulled or made first (see [`provision_base`]).
    pub fn open(
        project: &Project,
        opts: &BuildOptions,
        r: &Reporter,
        provision: bool,
    ) -> anyhow::Result<Session> {
        let images = load_images(project, opts)?;
        // The one place the engine is decided (as asked, else podman, else docker).
        let engine = Engine::detect(opts.engine);
        let candidates: Vec<&str> = std::iter::once(images.base_image.as_str())
            .chain(images.offline_base_image.as_deref())
            .collect();
        let mut facts = r.phase("ask the engine", |r| {
            if let Ok(e) = engine {
                let at = crate::engine::given_at(e).map(|a| format!(" at {a}"));
                r.line(format!(
                    "  asking {}{}: its platform, memory, CPUs, store and base image",
                    e.program(),
                    at.unwrap_or_default()
                ));
            }
            Ok(Facts::gather(engine.clone(), &candidates, opts.memory_budget))
        })?;
        if let (true, None, Ok(f)) = (provision, &facts.base, &facts.engine) {
            if let Some(made) = provision_base(project, r, f, &images) {
                facts.base = f.engine.image(&made);
                facts.base_image = made;
            }
        }
        let images = match facts.base_image != images.base_image {
            true => Images::load(&images_file(project, opts), Some(facts.base_image.clone()))?,
            false => images,
        };
        Ok(Session { images, facts })
    }

    /// The engine runs on another machine (a VM, a remote host).
    pub fn remote(&self) -> bool {
        self.facts.engine.as_ref().is_ok_and(|f| f.remote)
    }

    /// The facts to go on with, printed once: the engine, its machine, the base image.
    pub fn env(&self, r: &Reporter, base_image_id: Option<&str>) -> anyhow::Result<Env> {
        r.phase("check prerequisites", |r| {
            let env = self.facts.env(base_image_id)?;
            let f = &env.facts;
            r.line(format!(
                "  {} {} answers ({}, {}, {} CPUs, {} memory); base image {} {} ({})",
                f.engine.program(),
                f.version,
                f.platform,
                if f.remote { "remote" } else { "local" },
                f.cpus,
                memory::human(f.mem_total),
                env.base_image,
                match base_image_id {
                    Some(_) => "as the archive recorded it",
                    None => "is present",
                },
                &env.base_image_id[..12.min(env.base_image_id.len())]
            ));
            Ok(env)
        })
    }
}

fn images_file(project: &Project, opts: &BuildOptions) -> PathBuf {
    opts.images_file.clone().unwrap_or_else(|| project.images_file())
}

pub fn load_images(project: &Project, opts: &BuildOptions) -> anyhow::Result<Images> {
    Images::load(&images_file(project, opts), std::env::var("E2E_BASE_IMAGE").ok())
}

/// When the engine has neither base image: the configured one, pulled; else the offline one,
/// made with debootstrap on this machine (`test/e2e/make-base-image.sh`) and imported into
/// the engine (a remote engine's store, through its API). `None` when neither worked
/// (doctor then says so).
pub fn provision_base(
    project: &Project,
    r: &Reporter,
    engine: &EngineFacts,
    images: &Images,
) -> Option<String> {
    let log = project.logs_dir().join("base-image.log");
    let program = engine.engine.program();
    let pull = Cmd::new(program).args(["pull", &images.base_image]);
    r.line(format!(
        "the base image {} is not in {program} at {}: pulling it into that engine's store",
        images.base_image, engine.at
    ));
    r.command(&pull);
    if pull.run_logged(&log).is_ok() {
        return Some(images.base_image.clone());
    }
    let offline = images.offline_base_image.as_deref()?;
    if engine.engine != Engine::Podman {
        return None;
    }
    let script = project.root.join("test/e2e/make-base-image.sh");
    let make = Cmd::new("bash").arg(script.display().to_string()).arg(offline);
    r.line(format!(
        "no registry answers: making {offline} with debootstrap on this machine (about a minute) and importing it into {}",
        base_destination(engine)
    ));
    r.command(&make);
    match make.run_logged(&log) {
        Ok(()) => Some(offline.to_owned()),
        Err(e) => {
            r.line(format!("could not make {offline}: {e:#}"));
            None
        }
    }
}

/// Where a base image made on this machine goes: the engine's own store.
pub fn base_destination(engine: &EngineFacts) -> String {
    match engine.remote {
        true => format!(
            "the engine at {} through its API (its own store; nothing goes into this machine's)",
            engine.at
        ),
        false => "this machine's podman".to_owned(),
    }
}

/// Everything decided before a build starts.
pub struct Prepared {
    pub images: Images,
    pub env: Env,
    pub plan: Vec<PlanItem>,
    pub previous: Option<Handoff>,
}

/// Steps 1 to 3: prerequisites, binaries, plan. `base_image_id` given (from an archive's
/// manifest) means the base image need not be in the engine, and that the plan is only
/// compared with the archive, never built. Without `compile`, it plans with the binaries on
/// disk (a dry run).
pub fn prepare(
    project: &Project,
    r: &Reporter,
    opts: &BuildOptions,
    session: &Session,
    names: &[String],
    base_image_id: Option<&str>,
    compile: bool,
) -> anyhow::Result<Prepared> {
    let selected = session.images.select(names)?;
    let env = session.env(r, base_image_id)?;
    let budget = &env.budget;
    let binaries: Vec<&str> = selected.iter().filter_map(ImageSpec::binary).collect();
    let builder = session.images.builder.as_ref();
    let bin_dir = compile::binaries(project, r, opts, &env, builder, &binaries, compile)?;
    let previous = Handoff::load(project);
    let for_archive = base_image_id.is_some();
    let phase = if for_archive { "fingerprint this checkout" } else { "plan" };
    let plan = r.phase(phase, |r| {
        let previous = previous.as_ref();
        let plan = plan::make_plan(project, &env, &bin_dir, &selected, opts.force, previous)?;
        let tags =
            plan.iter().map(|i| format!("{} {}", i.spec.name, fingerprint::tag(&i.fingerprint)));
        r.line(match for_archive {
            true => format!("  {}", tags.collect::<Vec<_>>().join(", ")),
            false => plan::describe_plan(&plan, opts.jobs, budget),
        });
        Ok(plan)
    })?;
    // Only the images to build must fit: a cached one needs no memory, and a small engine's
    // free memory (page cache counts as used) shrinks after a few runs.
    let to_build = plan.iter().filter(|i| !for_archive && !i.is_cached());
    let too_big =
        memory::too_big(to_build.map(|i| (i.spec.name.as_str(), i.spec.memory)), budget.bytes);
    if !too_big.is_empty() {
        let list = too_big.iter().map(|(n, c)| format!("{n} (cap {})", memory::human(*c)));
        anyhow::bail!(
            "the memory budget is {} ({}), and these images' caps alone exceed it: {}.\n  fix: lower their \
             `memory` in the images file, or give more with --memory-budget SIZE",
            memory::human(budget.bytes),
            budget.source,
            list.collect::<Vec<_>>().join(", ")
        );
    }
    let images = session.images.clone();
    Ok(Prepared { images, env, plan, previous })
}

/// Builds the named images (all when `names` is empty) as the module doc says.
pub fn prebuild(
    project: &Project,
    r: &Reporter,
    opts: &BuildOptions,
    session: &Session,
    names: &[String],
) -> anyhow::Result<Handoff> {
    let prepared = prepare(project, r, opts, session, names, None, true)?;
    Ok(finish(project, r, opts, prepared)?.0)
}

/// Steps 4 and 5: build what the plan says, then write the handoff. Also returns what the
/// builds did over time (for the run's report).
pub fn finish(
    project: &Project,
    r: &Reporter,
    opts: &BuildOptions,
    prepared: Prepared,
) -> anyhow::Result<(Handoff, Activity)> {
    finish_with(project, r, opts, prepared, true)
}

/// [`finish`]; without `tidy`, superseded tags stay (the dev loop tidies once, at its end,
/// rather than removing an image in every cycle).
pub fn finish_with(
    project: &Project,
    r: &Reporter,
    opts: &BuildOptions,
    prepared: Prepared,
    tidy: bool,
) -> anyhow::Result<(Handoff, Activity)> {
    let (built, activity) = schedule::run(project, r, &prepared.env, &prepared.plan, opts.jobs)?;
    let env = &prepared.env;
    // Images not selected this time keep their previous entry, so the file lists every image
    // (in the images file's order).
    let previous = prepared.previous.filter(|p| p.is_of(&env.facts));
    let previous = previous.map(|p| p.images).unwrap_or_default();
    let records =
        prepared.images.images.iter().filter_map(|spec| {
            built.iter().chain(&previous).find(|r| r.name == spec.name).cloned()
        });
    let mut handoff = Handoff::new(env, records.collect());
    handoff.built_now =
        prepared.plan.iter().filter(|i| !i.is_cached()).map(|i| i.spec.name.clone()).collect();
    handoff.save(project)?;
    r.line(format!("wrote {}", project.display(&Handoff::path(project))));
    if tidy && !handoff.built_now.is_empty() {
        self::tidy(r, &handoff);
    }
    Ok((handoff, activity))
}

/// The plan of the named images, decided quietly (nothing compiled, nothing printed): to
/// know early whether the images that package no binary of ours are already there.
pub fn plan_quietly(
    project: &Project,
    session: &Session,
    names: &[String],
) -> anyhow::Result<Vec<PlanItem>> {
    let env = session.facts.env(None)?;
    let specs = session.images.select(names)?;
    let bin_dir = project.binaries_dir(false);
    plan::make_plan(project, &env, &bin_dir, &specs, false, Handoff::load(project).as_ref())
}

/// Removes the older fingerprint tags of the images just handed off, beyond the
/// [`plan::KEEP_OLDER`] newest, so a day of rebuilds does not fill the disk. Other
/// repositories are never touched.
pub fn tidy(r: &Reporter, handoff: &Handoff) {
    let Ok(listing) = handoff.engine.list_fingerprinted().read() else {
        return;
    };
    let old = plan::superseded(&listing, handoff);
    for reference in &old {
        let _ = handoff.engine.untag(reference).read();
    }
    if !old.is_empty() {
        r.line(format!("removed {} superseded image tag(s): {}", old.len(), old.join(", ")));
    }
}

/// The handoff a plan would give, before anything is built (for `--dry-run`).
pub fn planned_handoff(prepared: &Prepared) -> Handoff {
    let images = prepared.plan.iter().map(|i| match &i.action {
        Action::Cached(image) => i.record(image),
        Action::Build { .. } => i.record(&ImageInfo {
            id: String::new(),
            size: 0,
            fingerprint: Some(i.fingerprint.clone()),
        }),
    });
    Handoff::new(&prepared.env, images.collect())
}

/// `f` of every item, all at once (an engine call costs tens of milliseconds here, seconds
/// over ssh), in the items' order.
pub fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    std::thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|i| s.spawn(|| f(i))).collect();
        handles.into_iter().map(|h| h.join().expect("no panic")).collect()
    })
}

/// One `cargo build` for every binary the images package, in the workspace's `dev` profile
/// (the one `cargo test` shares, so the E2E suite reuses the compiled dependencies).
pub fn cargo_build(project: &Project, binaries: &[&str], jobs: usize, release: bool) -> Cmd {
    let release = release.then_some("--release");
    Cmd::new(Project::cargo())
        .args(["build", "--workspace", "--locked", "-j", &jobs.to_string()])
        .cwd(&project.root)
        .args(release)
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
        let c = cargo_build(&project, &["gateway", "data-storage"], 2, false);
        assert!(
            c.to_string()
                .ends_with("build --workspace --locked -j 2 --bin gateway --bin data-storage"),
            "{c}"
        );
    }
}
