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

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::{
    cmd::{Cmd, CmdError},
    diagnose::{self, Cause},
    engine::{self, BuildCmd, Engine, FINGERPRINT_LABEL},
    fingerprint::{self, HashCache, Inputs},
    images::{self, BuildContext, ImageSpec, Images},
    interrupt,
    memory::{self, Budget},
    project::Project,
    report::{secs, table, Reporter},
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
    /// The images file [default: test/e2e/images.toml].
    #[arg(long, value_name = "PATH")]
    pub images_file: Option<PathBuf>,
}

impl BuildOptions {
    /// The memory builds may use: `--memory-budget`, else what is available now less a margin.
    pub fn budget(&self) -> anyhow::Result<Budget> {
        Ok(match self.memory_budget {
            Some(bytes) => Budget {
                bytes,
                source: "--memory-budget".into(),
            },
            None => memory::default_budget(&memory::read()?),
        })
    }
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
        prebuild(project, &r, &self.build, &self.images)?;
        Ok(())
    }
}

/// `target/e2e/images.json`: what was built, for `e2e` and `save-images`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handoff {
    pub engine: Engine,
    pub platform: String,
    pub base_image: String,
    pub base_image_id: String,
    pub images: Vec<ImageRecord>,
    /// The images this run built (not written to the file).
    #[serde(skip, default)]
    pub built_now: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub repository: String,
    /// `repository:tag`, the tag being the fingerprint's first 16 hex digits.
    pub reference: String,
    pub id: String,
    pub fingerprint: String,
    pub size: u64,
}

impl Handoff {
    pub fn path(project: &Project) -> PathBuf {
        project.e2e_dir().join("images.json")
    }

    pub fn load(project: &Project) -> Option<Handoff> {
        serde_json::from_slice(&std::fs::read(Handoff::path(project)).ok()?).ok()
    }

    fn save(&self, project: &Project) -> anyhow::Result<()> {
        let path = Handoff::path(project);
        std::fs::create_dir_all(path.parent().expect("target/e2e"))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// Each image repository mapped to the reference that was built.
    pub fn pinned(&self) -> BTreeMap<String, String> {
        self.images
            .iter()
            .map(|i| (i.repository.clone(), i.reference.clone()))
            .collect()
    }
}

/// What the engine and the machine offer this run.
pub struct Env {
    pub engine: Engine,
    pub base_image: String,
    pub base_image_id: String,
    pub platform: String,
}

pub fn load_images(project: &Project, opts: &BuildOptions) -> anyhow::Result<Images> {
    let file = opts
        .images_file
        .clone()
        .unwrap_or_else(|| project.images_file());
    Images::load(&file, std::env::var("E2E_BASE_IMAGE").ok())
}

/// Everything decided before a build starts.
pub struct Prepared {
    pub images: Images,
    pub env: Env,
    pub budget: Budget,
    pub plan: Vec<PlanItem>,
    pub previous: Option<Handoff>,
}

/// Steps 1 to 3: prerequisites, binaries, plan. `base_image_id` given (from an archive's
/// manifest) means the base image need not be in the engine, and that the plan is only
/// compared with the archive, never built.
pub fn prepare(
    project: &Project,
    r: &Reporter,
    opts: &BuildOptions,
    names: &[String],
    base_image_id: Option<&str>,
) -> anyhow::Result<Prepared> {
    prepare_with(project, r, opts, names, base_image_id, true)
}

/// [`prepare`], optionally without compiling (a dry run plans with the binaries on disk).
pub fn prepare_with(
    project: &Project,
    r: &Reporter,
    opts: &BuildOptions,
    names: &[String],
    base_image_id: Option<&str>,
    compile: bool,
) -> anyhow::Result<Prepared> {
    let images = load_images(project, opts)?;
    let selected = images.select(names)?;
    let env = check_prerequisites(opts.engine, &images, base_image_id, r)?;
    let budget = opts.budget()?;
    let too_big = memory::too_big(
        selected.iter().map(|s| (s.name.as_str(), s.memory)),
        budget.bytes,
    );
    if !too_big.is_empty() {
        let list: Vec<String> = too_big
            .iter()
            .map(|(n, c)| format!("{n} (cap {})", memory::human(*c)))
            .collect();
        anyhow::bail!(
            "the memory budget is {} ({}), and these images' caps alone exceed it: {}.\n  fix: lower their \
             `memory` in the images file, or give more with --memory-budget SIZE",
            memory::human(budget.bytes),
            budget.source,
            list.join(", ")
        );
    }

    let binaries: Vec<&str> = selected.iter().filter_map(ImageSpec::binary).collect();
    if !binaries.is_empty() && compile {
        let cpus = memory::cpus();
        let jobs = memory::cargo_jobs(budget.bytes, cpus);
        r.phase("compile service binaries", |r| {
            let cmd = cargo_build(project, &binaries, jobs);
            r.line(format!(
                "  cargo -j {jobs}: {cpus} CPUs, {} budget at {} a rustc job",
                memory::human(budget.bytes),
                memory::human(memory::RUSTC_JOB)
            ));
            r.command(&cmd);
            cmd.run_logged(&project.logs_dir().join("cargo-build.log"))
                .context("compiling the service binaries")
        })?;
    }

    let previous = Handoff::load(project);
    let for_archive = base_image_id.is_some();
    let plan = r.phase(
        if for_archive {
            "fingerprint this checkout"
        } else {
            "plan"
        },
        |r| {
            let plan = make_plan(project, &env, &selected, opts.force, previous.as_ref())?;
            if for_archive {
                let tags: Vec<String> = plan
                    .iter()
                    .map(|i| format!("{} {}", i.spec.name, fingerprint::tag(&i.fingerprint)))
                    .collect();
                r.line(format!("  {}", tags.join(", ")));
            } else {
                r.line(describe_plan(&plan, opts.jobs, &budget));
            }
            Ok(plan)
        },
    )?;
    Ok(Prepared {
        images,
        env,
        budget,
        plan,
        previous,
    })
}

/// Builds the named images (all when `names` is empty) as the module doc says.
pub fn prebuild(
    project: &Project,
    r: &Reporter,
    opts: &BuildOptions,
    names: &[String],
) -> anyhow::Result<Handoff> {
    let prepared = prepare(project, r, opts, names, None)?;
    finish(project, r, opts, prepared)
}

/// Steps 4 and 5: build what the plan says, then write the handoff.
pub fn finish(
    project: &Project,
    r: &Reporter,
    opts: &BuildOptions,
    prepared: Prepared,
) -> anyhow::Result<Handoff> {
    let Prepared {
        images,
        env,
        budget,
        plan,
        previous,
    } = prepared;
    let outcomes = r.phase("build images", |r| {
        Ok(execute(project, r, &env, &plan, opts.jobs, &budget))
    })?;
    r.line(format!("images:\n{}", outcome_table(&plan, &outcomes)));
    let failures: Vec<&String> = outcomes
        .values()
        .filter_map(|o| o.result.as_ref().err())
        .collect();
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(|f| format!("- {f}")).collect();
        anyhow::bail!(
            "{} image build(s) failed:\n{}",
            failures.len(),
            list.join("\n")
        );
    }
    interrupt::check()?;

    let mut records: Vec<ImageRecord> = Vec::new();
    for item in &plan {
        let (id, size) = match &item.action {
            Action::Cached { id, size } => (id.clone(), *size),
            Action::Build { .. } => {
                let o = outcomes
                    .get(&item.spec.name)
                    .and_then(|o| o.result.as_ref().ok())
                    .context("a build without an outcome")?;
                o.clone()
            }
        };
        records.push(item.record(id, size));
    }
    // Images not selected this time keep their previous entry, so the file lists every image.
    if let Some(prev) = previous.filter(|p| p.engine == env.engine) {
        for old in prev.images {
            if !records.iter().any(|r| r.name == old.name)
                && images.images.iter().any(|i| i.name == old.name)
            {
                records.push(old);
            }
        }
    }
    let order = |name: &str| {
        images
            .images
            .iter()
            .position(|i| i.name == name)
            .unwrap_or(usize::MAX)
    };
    records.sort_by_key(|r| order(&r.name));
    let handoff = Handoff {
        engine: env.engine,
        platform: env.platform,
        base_image: env.base_image,
        base_image_id: env.base_image_id,
        images: records,
        built_now: plan
            .iter()
            .filter(|i| matches!(i.action, Action::Build { .. }))
            .map(|i| i.spec.name.clone())
            .collect(),
    };
    handoff.save(project)?;
    r.line(format!(
        "wrote {}",
        project.display(&Handoff::path(project))
    ));
    if plan
        .iter()
        .any(|i| matches!(i.action, Action::Build { .. }))
    {
        prune_superseded(r, &handoff);
    }
    Ok(handoff)
}

/// Removes the older fingerprint tags of the images just handed off, beyond the
/// `KEEP_OLDER` newest, so a day of rebuilds does not fill the disk. Other repositories are
/// never touched.
fn prune_superseded(r: &Reporter, handoff: &Handoff) {
    let Ok(listing) = handoff.engine.list_fingerprinted().read() else {
        return;
    };
    let old = superseded(&listing, handoff);
    for reference in &old {
        let _ = handoff.engine.untag(reference).read();
    }
    if !old.is_empty() {
        r.line(format!(
            "removed {} superseded image tag(s): {}",
            old.len(),
            old.join(", ")
        ));
    }
}

/// How many older tags of each image are kept (other checkouts or worktrees of the same
/// repository build other binaries, so other fingerprints; they keep theirs).
pub const KEEP_OLDER: usize = 2;

/// The references in `listing` (newest first, as the engines list images) of a handed-off
/// repository, beyond its current tag and the `KEEP_OLDER` newest others.
pub fn superseded(listing: &str, handoff: &Handoff) -> Vec<String> {
    let current: BTreeMap<&str, &str> = handoff
        .images
        .iter()
        .map(|i| (i.repository.as_str(), i.reference.as_str()))
        .collect();
    let mut kept: BTreeMap<&str, usize> = BTreeMap::new();
    let mut old = Vec::new();
    for l in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let repo = crate::manifests::repository(l);
        match current.get(repo) {
            Some(cur) if cur != &l => {
                let n = kept.entry(repo).or_insert(0);
                if *n < KEEP_OLDER {
                    *n += 1;
                } else {
                    old.push(l.to_owned());
                }
            }
            _ => {}
        }
    }
    old
}

/// Stops before anything runs when the engine or the base image is missing, naming the fix.
pub fn check_prerequisites(
    requested: Option<Engine>,
    images: &Images,
    given_base_id: Option<&str>,
    r: &Reporter,
) -> anyhow::Result<Env> {
    r.phase("check prerequisites", |r| {
        let engine = Engine::detect(requested)?;
        // Both calls at once: together they show the engine runs and its image store answers.
        let (platform, base) = std::thread::scope(|s| {
            let platform = s.spawn(|| engine.platform().read());
            let base = match given_base_id {
                Some(id) => Some((id.to_owned(), 0, None)),
                None => engine.inspect_image(&images.base_image).read().ok().and_then(|o| engine::parse_inspect(&o)),
            };
            (platform.join().expect("no panic"), base)
        });
        let platform = engine::normalize_platform(&platform.with_context(|| {
            format!(
                "{} is installed but does not answer.\n  fix: {}",
                engine.program(),
                match engine {
                    Engine::Podman => "see shared/ENVIRONMENT.md; `test/e2e/setup-podman.sh` writes a working /etc/containers/containers.conf",
                    Engine::Docker => "start the daemon (`dockerd &`) and check `docker version`",
                }
            )
        })?);
        let Some((base_id, _, _)) = base else {
            anyhow::bail!(
                "the base image {base} is not in {engine}'s image store.\n  fix: run `test/e2e/setup-podman.sh` \
                 (makes it with debootstrap, no registry needed), or set E2E_BASE_IMAGE to an image you have \
                 (e.g. `{engine} pull docker.io/library/debian:bookworm-slim` where a registry is reachable)",
                base = images.base_image,
                engine = engine.program()
            );
        };
        r.line(format!(
            "  {} answers ({platform}); base image {} {} ({})",
            engine.program(),
            images.base_image,
            if given_base_id.is_some() { "as the archive recorded it" } else { "is present" },
            &base_id[..12.min(base_id.len())]
        ));
        Ok(Env { engine, base_image: images.base_image.clone(), base_image_id: base_id, platform })
    })
}

/// One `cargo build` for every binary the images package, in the workspace's `dev` profile
/// (the one `cargo test` shares, so the E2E suite reuses the compiled dependencies).
pub fn cargo_build(project: &Project, binaries: &[&str], jobs: usize) -> Cmd {
    let mut c = Cmd::new(Project::cargo())
        .args(["build", "--workspace", "--locked", "-j", &jobs.to_string()])
        .cwd(&project.root);
    for b in binaries {
        c = c.arg("--bin").arg(*b);
    }
    c
}

#[derive(Debug, Clone)]
pub struct PlanItem {
    pub spec: ImageSpec,
    pub context: PathBuf,
    pub fingerprint: String,
    pub reference: String,
    pub action: Action,
}

impl PlanItem {
    /// The handoff entry of this image, once the engine has it with this ID and size.
    pub fn record(&self, id: String, size: u64) -> ImageRecord {
        ImageRecord {
            name: self.spec.name.clone(),
            repository: self.spec.repository.clone(),
            reference: self.reference.clone(),
            id,
            fingerprint: self.fingerprint.clone(),
            size,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Cached { id: String, size: u64 },
    Build { reason: String },
}

/// The freshness decision. An image is cached only when its fingerprinted tag exists *and*
/// carries the same full fingerprint in its label: the tag's existence alone is not enough.
pub fn decide(
    force: bool,
    fingerprint: &str,
    in_engine: Option<(String, u64, Option<String>)>,
    previous: Option<&str>,
) -> Action {
    let build = |reason: &str| Action::Build {
        reason: reason.to_owned(),
    };
    if force {
        return build("--force");
    }
    match in_engine {
        Some((id, size, Some(label))) if label == fingerprint => Action::Cached { id, size },
        Some(_) => build("its tag exists but without this fingerprint in its label"),
        None => match previous {
            Some(p) if p != fingerprint => build("inputs changed since the last build"),
            Some(_) => build("built before, but no longer in the engine"),
            None => build("not built yet"),
        },
    }
}

fn make_plan(
    project: &Project,
    env: &Env,
    specs: &[ImageSpec],
    force: bool,
    previous: Option<&Handoff>,
) -> anyhow::Result<Vec<PlanItem>> {
    let mut cache = HashCache::load(&project.e2e_dir().join("hash-cache.json"));
    let mut items = Vec::new();
    for spec in specs {
        let context = stage_context(project, spec, &mut cache)?;
        let entries = fingerprint::scan_context(&context, &mut cache)?;
        let dockerfile_path = project.root.join(&spec.dockerfile);
        let dockerfile = std::fs::read(&dockerfile_path).with_context(|| {
            format!(
                "image {}: reading its Dockerfile {}",
                spec.name, spec.dockerfile
            )
        })?;
        let fp = fingerprint::fingerprint(&Inputs {
            dockerfile: &dockerfile,
            context: &entries,
            build_args: &spec.build_args,
            base_image_id: &env.base_image_id,
            platform: &env.platform,
        });
        let reference = format!("{}:{}", spec.repository, fingerprint::tag(&fp));
        items.push(PlanItem {
            spec: spec.clone(),
            context,
            fingerprint: fp,
            reference,
            action: Action::Build {
                reason: String::new(),
            },
        });
    }
    cache.save()?;
    // Look every tag up at once: each engine call costs tens of milliseconds.
    let found: Vec<Option<(String, u64, Option<String>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .iter()
            .map(|item| {
                s.spawn(|| {
                    env.engine
                        .inspect_image(&item.reference)
                        .read()
                        .ok()
                        .and_then(|o| engine::parse_inspect(&o))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(None))
            .collect()
    });
    for (item, in_engine) in items.iter_mut().zip(found) {
        let prev = previous
            .filter(|p| p.engine == env.engine)
            .and_then(|p| p.images.iter().find(|i| i.name == item.spec.name))
            .map(|i| i.fingerprint.as_str());
        item.action = decide(force, &item.fingerprint, in_engine, prev);
    }
    Ok(items)
}

/// The plan as a person reads it: what is cached, what will be built and why, how many at once.
pub fn describe_plan(plan: &[PlanItem], jobs: usize, budget: &Budget) -> String {
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|i| {
            let (state, why) = match &i.action {
                Action::Cached { .. } => ("cached".to_owned(), "fingerprint matches".to_owned()),
                Action::Build { reason } => ("build".to_owned(), reason.clone()),
            };
            vec![
                i.spec.name.clone(),
                fingerprint::tag(&i.fingerprint),
                state,
                images::podman_size(i.spec.memory),
                why,
            ]
        })
        .collect();
    let caps: Vec<u64> = plan
        .iter()
        .filter(|i| matches!(i.action, Action::Build { .. }))
        .map(|i| i.spec.memory)
        .collect();
    let mut out = format!(
        "plan:\n{}\n",
        table(&["image", "tag", "action", "cap", "why"], &rows)
    );
    out.push_str(&format!(
        "  memory budget: {} ({})\n",
        memory::human(budget.bytes),
        budget.source
    ));
    out.push_str(&format!("  {}", concurrency(&caps, jobs, budget.bytes)));
    out
}

/// One line on how many builds will run at once, and why.
pub fn concurrency(caps: &[u64], jobs: usize, budget: u64) -> String {
    if caps.is_empty() {
        return "nothing to build: every image is cached".into();
    }
    let n = caps.len();
    let at_once = memory::max_parallel(caps, budget, jobs).min(n);
    let jobs = jobs.max(1);
    if jobs == 1 {
        format!("{n} to build, one at a time (the default; --jobs N allows more while their caps fit the budget)")
    } else if at_once < jobs.min(n) {
        format!("{n} to build, at most {at_once} at once: --jobs {jobs}, but only {at_once} of their caps fit the budget together")
    } else {
        format!("{n} to build, up to {at_once} at once (--jobs {jobs}; their caps fit the budget)")
    }
}

/// The build context of an image: its directory, or a staged directory holding only the
/// binary it packages (so the engine is sent megabytes, not the target directory). The
/// staged copy is rewritten only when the binary's content changed.
fn stage_context(
    project: &Project,
    spec: &ImageSpec,
    cache: &mut HashCache,
) -> anyhow::Result<PathBuf> {
    match &spec.context {
        BuildContext::Dir(dir) => {
            let path = project.root.join(dir);
            anyhow::ensure!(
                path.is_dir(),
                "image {}: context directory {dir} does not exist",
                spec.name
            );
            Ok(path)
        }
        BuildContext::Binary(bin) => {
            let src = project.binary(bin);
            let src_meta = std::fs::metadata(&src).with_context(|| {
                format!(
                    "image {}: binary {} was not built (is `{bin}` a binary of this workspace?)",
                    spec.name,
                    project.display(&src)
                )
            })?;
            let dir = project.e2e_dir().join("context").join(&spec.name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let dst = dir.join(bin);
            let same = match std::fs::metadata(&dst) {
                Ok(dst_meta) => cache.digest(&src, &src_meta)? == cache.digest(&dst, &dst_meta)?,
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
    }
}

/// What happened to one build.
struct Outcome {
    /// `(image ID, size)` or the failure, explained.
    result: Result<(String, u64), String>,
    took: Duration,
    peak: Option<u64>,
}

/// Runs the builds the plan asks for, admitting each only while it fits; after a failure
/// no new build starts, running ones finish, and every failure is reported.
fn execute(
    project: &Project,
    r: &Reporter,
    env: &Env,
    plan: &[PlanItem],
    jobs: usize,
    budget: &Budget,
) -> HashMap<String, Outcome> {
    let mut queue: VecDeque<&PlanItem> = plan
        .iter()
        .filter(|i| matches!(i.action, Action::Build { .. }))
        .collect();
    let mut outcomes = HashMap::new();
    if queue.is_empty() {
        r.line("  nothing to build");
        return outcomes;
    }
    let overall = r.overall(queue.len() as u64, "images");
    let sampler = Sampler::start();
    let (tx, rx) = mpsc::channel::<(String, Outcome)>();
    std::thread::scope(|s| {
        let mut running: Vec<(String, u64)> = Vec::new();
        // For each running build, the most builds that ran at once while it did.
        let mut crowd: HashMap<String, usize> = HashMap::new();
        let mut stopping = false;
        loop {
            while !stopping && !interrupt::interrupted() {
                let Some(next) = queue.front() else { break };
                let caps: Vec<u64> = running.iter().map(|(_, c)| *c).collect();
                if !memory::admit(&caps, next.spec.memory, budget.bytes, jobs) {
                    break;
                }
                let item = queue.pop_front().expect("peeked");
                running.push((item.spec.name.clone(), item.spec.memory));
                for (name, _) in &running {
                    let n = crowd.entry(name.clone()).or_insert(0);
                    *n = (*n).max(running.len());
                }
                let tx = tx.clone();
                let sampler = &sampler;
                s.spawn(move || {
                    let outcome = build_one(project, r, env.engine, item, sampler);
                    let _ = tx.send((item.spec.name.clone(), outcome));
                });
            }
            if running.is_empty() {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok((name, mut outcome)) => {
                    running.retain(|(n, _)| *n != name);
                    overall.inc(1);
                    if let Err(why) = &outcome.result {
                        let at_once = crowd.get(&name).copied().unwrap_or(1);
                        outcome.result = Err(explain(project, plan, &name, why, at_once));
                        if !stopping && (!running.is_empty() || !queue.is_empty()) {
                            r.line(format!(
                                "  {name} failed: starting no new builds; waiting for {} running",
                                running.len()
                            ));
                        }
                        stopping = true;
                    }
                    outcomes.insert(name, outcome);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    });
    sampler.stop();
    r.finish(&overall);
    outcomes
}

/// The message for a failed build. `raw` is `oom:<step>` or `other:<step>|<error>`.
fn explain(project: &Project, plan: &[PlanItem], name: &str, raw: &str, at_once: usize) -> String {
    let item = plan.iter().find(|i| i.spec.name == name);
    let cap = item.map_or("?".into(), |i| images::podman_size(i.spec.memory));
    let log = project.display(&build_log(project, name));
    match raw.split_once(':') {
        Some(("oom", step)) => format!(
            "image {name} was killed for running out of memory: its build hit its memory cap of {cap}{} \
             with {at_once} build(s) running.\n  fix: raise `memory` for {name} in the images file, or lower --jobs.\n  log: {log}",
            if step.is_empty() { String::new() } else { format!(" at `{step}`") }
        ),
        Some(("other", rest)) => {
            let (step, error) = rest.split_once('|').unwrap_or(("", rest));
            format!(
                "image {name} failed{}: {error}",
                if step.is_empty() { String::new() } else { format!(" at `{step}`") }
            )
        }
        _ => format!("image {name}: {raw}"),
    }
}

fn build_log(project: &Project, name: &str) -> PathBuf {
    project.logs_dir().join(format!("build-{name}.log"))
}

/// The engine command that builds a planned image, labelled with its fingerprint.
pub fn build_cmd_for(project: &Project, engine: Engine, item: &PlanItem) -> Cmd {
    let mut labels = BTreeMap::new();
    labels.insert(FINGERPRINT_LABEL.to_owned(), item.fingerprint.clone());
    let dockerfile = project.root.join(&item.spec.dockerfile);
    let no_cache = matches!(&item.action, Action::Build { reason } if reason == "--force");
    engine.build(&BuildCmd {
        reference: item.reference.clone(),
        dockerfile: &dockerfile,
        context: &item.context,
        memory: images::podman_size(item.spec.memory),
        build_args: item.spec.build_args.clone(),
        labels,
        no_cache,
    })
}

fn build_one(
    project: &Project,
    r: &Reporter,
    engine: Engine,
    item: &PlanItem,
    sampler: &Sampler,
) -> Outcome {
    let start = Instant::now();
    let spec = &item.spec;
    let cmd = build_cmd_for(project, engine, item);
    let log = build_log(project, &spec.name);
    let _ = std::fs::remove_file(&log);
    r.line(format!(
        "  building {} (cap {})",
        spec.name,
        images::podman_size(spec.memory)
    ));
    r.command(&cmd);
    let bar = r.spinner(&spec.name, "building");
    let result = cmd.run_logged(&log);
    r.finish(&bar);
    let took = start.elapsed();
    let peak = sampler.peak_since(start);
    let result = match result {
        Ok(()) => match engine
            .inspect_image(&item.reference)
            .read()
            .ok()
            .and_then(|o| engine::parse_inspect(&o))
        {
            Some((id, size, _)) => {
                r.line(format!("  built {} in {}", item.reference, secs(took)));
                Ok((id, size))
            }
            None => Err(format!(
                "other:|the build succeeded but {} is not in the engine",
                item.reference
            )),
        },
        Err(err) => {
            let code = err.downcast_ref::<CmdError>().and_then(|e| e.code);
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let d = diagnose::diagnose(code, &text);
            let step = d.step.unwrap_or_default();
            Err(match d.cause {
                Cause::OutOfMemory => format!("oom:{step}"),
                Cause::Other => format!("other:{step}|{err:#}"),
            })
        }
    };
    Outcome { result, took, peak }
}

fn outcome_table(plan: &[PlanItem], outcomes: &HashMap<String, Outcome>) -> String {
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|item| {
            let name = item.spec.name.clone();
            match (&item.action, outcomes.get(&name)) {
                (Action::Cached { size, .. }, _) => {
                    vec![
                        name,
                        "cached".into(),
                        "-".into(),
                        memory::human(*size),
                        "-".into(),
                    ]
                }
                (Action::Build { .. }, Some(o)) => vec![
                    name,
                    if o.result.is_ok() {
                        "built".into()
                    } else {
                        "FAILED".into()
                    },
                    secs(o.took),
                    o.result
                        .as_ref()
                        .map_or("-".into(), |(_, size)| memory::human(*size)),
                    o.peak.map_or("-".into(), memory::human),
                ],
                (Action::Build { .. }, None) => vec![
                    name,
                    "not started".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ],
            }
        })
        .collect();
    format!(
        "{}\n  (peak memory: the machine's memory in use above its level when the build started, sampled every 100 ms)",
        table(&["image", "result", "time", "size", "peak memory"], &rows)
    )
}

/// Samples the machine's memory in use every 100 ms while builds run.
struct Sampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start() -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if let Some(used) = memory::used_now() {
                    s.lock().unwrap().push((Instant::now(), used));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler { samples, stop }
    }

    /// The highest use since `start`, above the use at `start`.
    fn peak_since(&self, start: Instant) -> Option<u64> {
        let samples = self.samples.lock().unwrap();
        let base = samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= start)
            .or_else(|| samples.first())?
            .1;
        let peak = samples
            .iter()
            .filter(|(t, _)| *t >= start)
            .map(|(_, u)| *u)
            .max()?;
        Some(peak.saturating_sub(base))
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn one_cargo_build_for_every_binary_with_a_bounded_j() {
        let project = Project {
            root: "/repo".into(),
            target_dir: "/repo/target".into(),
            e2e_dir: "/repo/target/e2e".into(),
        };
        let c = cargo_build(&project, &["gateway", "data-storage"], 2);
        assert!(
            c.to_string()
                .ends_with("build --workspace --locked -j 2 --bin gateway --bin data-storage"),
            "{c}"
        );
    }

    #[test]
    fn freshness_needs_the_tag_and_the_matching_label() {
        let fp = "f".repeat(64);
        let found = |label: Option<&str>| Some(("id1".to_owned(), 10, label.map(str::to_owned)));
        assert_eq!(
            decide(false, &fp, found(Some(&fp)), None),
            Action::Cached {
                id: "id1".into(),
                size: 10
            }
        );
        assert!(
            matches!(decide(true, &fp, found(Some(&fp)), None), Action::Build { reason } if reason == "--force")
        );
        assert!(
            matches!(decide(false, &fp, found(None), None), Action::Build { reason } if reason.contains("label"))
        );
        assert!(matches!(
            decide(false, &fp, found(Some("other")), None),
            Action::Build { .. }
        ));
        assert!(
            matches!(decide(false, &fp, None, Some("old")), Action::Build { reason } if reason.contains("inputs changed"))
        );
        assert!(
            matches!(decide(false, &fp, None, None), Action::Build { reason } if reason == "not built yet")
        );
    }

    #[test]
    fn only_older_tags_of_our_repositories_are_superseded() {
        let rec = |name: &str, tag: &str| ImageRecord {
            name: name.into(),
            repository: format!("localhost/e2e-{name}"),
            reference: format!("localhost/e2e-{name}:{tag}"),
            id: String::new(),
            fingerprint: String::new(),
            size: 0,
        };
        let handoff = Handoff {
            engine: Engine::Podman,
            platform: String::new(),
            base_image: String::new(),
            base_image_id: String::new(),
            images: vec![rec("gateway", "new"), rec("redis", "r1")],
            built_now: vec![],
        };
        let listing = "localhost/e2e-gateway:new\nlocalhost/e2e-gateway:o1\nlocalhost/e2e-redis:r1\nlocalhost/e2e-gateway:o2\nlocalhost/other:x\nlocalhost/e2e-gateway:o3\nlocalhost/e2e-gateway:o4\n";
        assert_eq!(
            superseded(listing, &handoff),
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

    #[test]
    fn oom_failures_say_what_to_change() {
        let project = Project {
            root: "/repo".into(),
            target_dir: "/repo/target".into(),
            e2e_dir: "/repo/target/e2e".into(),
        };
        let msg = explain(&project, &[], "postgres", "oom:RUN apt-get install", 2);
        assert!(
            msg.contains("postgres") && msg.contains("out of memory"),
            "{msg}"
        );
        assert!(
            msg.contains("at `RUN apt-get install`") && msg.contains("2 build(s) running"),
            "{msg}"
        );
        assert!(
            msg.contains("raise `memory` for postgres") && msg.contains("lower --jobs"),
            "{msg}"
        );
        let other = explain(
            &project,
            &[],
            "redis",
            "other:COPY x /x|`podman build` failed",
            1,
        );
        assert!(other.contains("redis failed at `COPY x /x`"), "{other}");
    }
}
