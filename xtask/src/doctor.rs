//! `cargo xtask doctor`: every prerequisite of a run, checked, each problem with its fix.
//! `e2e` runs the same checks first and stops before doing anything when one fails.

use std::path::{Path, PathBuf};

use crate::{
    build::{BuildOptions, Session},
    engine::{Engine, EngineFacts},
    engine_images::EngineImages,
    isolation::Isolation,
    manifests::Manifests,
    memory::{self, human},
    problem::{Problem, PODMAN_DOCS},
    project::Project,
    report::Reporter,
};

/// A check's outcome: what was found, a problem the run goes on with (slower or less safe), or
/// a problem that stops it; each problem with its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub result: Result<String, Problem>,
    /// A problem that does not stop a run: `result` is what the run does about it.
    pub warning: Option<Problem>,
}

impl Check {
    fn new(name: &'static str, result: Result<String, Problem>) -> Check {
        Check { name, result, warning: None }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// A Kind cluster: `kind`.
    pub kind: bool,
    /// A Kubernetes cluster, Kind's or another: `kubectl`.
    pub kubectl: bool,
    /// Loading this archive (so the base image is not needed, `zstd` is, and disk for it).
    pub archive: Option<PathBuf>,
    /// Prove the engine can start a container (`doctor` does; `e2e` learns it from the run).
    pub start_container: bool,
}

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Check for a Kind run too (kind and kubectl).
    #[arg(long)]
    pub kind: bool,
    /// Check for loading this archive.
    #[arg(long, value_name = "ARCHIVE")]
    pub images: Option<PathBuf>,
    #[command(flatten)]
    pub opts: BuildOptions,
}

impl DoctorArgs {
    pub fn run(self, project: &Project) -> anyhow::Result<()> {
        let reporter = Reporter::new();
        let needs = Needs {
            kind: self.kind,
            kubectl: self.kind,
            archive: self.images,
            start_container: true,
        };
        let session = Session::open(project, &self.opts, &reporter, false)?;
        let checks = run_checks(project, &session, &needs);
        reporter.line(render(&checks));
        let failed = checks.iter().filter(|c| c.result.is_err()).count();
        anyhow::ensure!(failed == 0, "{failed} check(s) failed: see the fixes above");
        Ok(())
    }
}

/// Judges the session's facts (the engine asked again only to start a container when
/// `needs.start_container`); never stops at the first problem.
pub fn run_checks(project: &Project, session: &Session, needs: &Needs) -> Vec<Check> {
    let facts = &session.facts;
    let archive = needs.archive.as_deref();
    let engine = facts.engine.as_ref().ok();
    let remote = engine.is_some_and(|f| f.remote);
    let kind = "install kind (https://kind.sigs.k8s.io), e.g. `go install sigs.k8s.io/kind@latest`";
    let kubectl = "apt-get install kubernetes-client (Debian), or see https://kubernetes.io/docs/tasks/tools/";
    let host_disk = remote.then(|| crate::facts::free_disk(&project.target_dir)).flatten();
    let dir = project.display(&project.target_dir);
    let zstd = archive.is_some() || which::which("zstd").is_ok();
    let start = needs.start_container && facts.base.is_some();
    let base = &facts.base_image;
    let checks = [
        ("engine", Some(facts.engine.as_ref().map(describe).map_err(Problem::clone))),
        (
            "base image",
            engine.filter(|_| archive.is_none()).map(|f| {
                facts.base.as_ref().map(|_| base.clone()).ok_or_else(|| facts.missing_base(f))
            }),
        ),
        ("start a container", engine.filter(|_| start).map(|f| start_container(f, base))),
    ];
    let rest = [
        (
            "host memory",
            facts.host_budget.as_ref().ok().filter(|_| remote).map(|host| {
                Ok(format!("{} for the host's cargo build ({})", human(host.bytes), host.source))
            }),
        ),
        ("stack memory", engine.and_then(|f| stack_memory_check(project, f))),
        ("disk", engine.map(|f| disk_check(f, disk_needed(project, archive)))),
        (
            "host disk",
            host_disk.map(|free| {
                Ok(format!("{} free under {dir} on this machine (binaries, archives)", human(free)))
            }),
        ),
        (
            "archive",
            archive.map(|a| {
                a.is_file().then(|| a.display().to_string()).ok_or_else(|| {
                    Problem::new(
                        format!("{} does not exist", a.display()),
                        "download it, or make it with `cargo xtask save-images`",
                    )
                })
            }),
        ),
        ("zstd", zstd.then(|| tool("zstd", "apt-get install zstd"))),
        ("kind", needs.kind.then(|| tool("kind", kind))),
        ("kubectl", needs.kubectl.then(|| tool("kubectl", kubectl))),
    ];
    let present = |(name, result): (_, Option<_>)| Some(Check::new(name, result?));
    // The memory check (it may warn rather than fail) after the engine and its base image.
    let memory = memory_check(session, engine);
    let rest = rest.into_iter().filter_map(present);
    let checks = checks.into_iter().filter_map(present).chain(memory).chain(rest);
    let isolation = engine.map(|f| (&f.isolation, f.remote));
    let caps = isolation.and_then(|(isolation, remote)| {
        let budget = session.facts.budget.as_ref().map_or(0, |b| b.bytes);
        let why = isolation.no_memory_caps()?;
        let did = Isolation::uncapped_builds(budget);
        let warning = Some(isolation.caps_problem(&why, remote));
        Some(Check { name: "memory caps", result: Ok(did), warning })
    });
    let store = isolation.and_then(|(isolation, _)| {
        let warning = isolation.slow_store()?;
        let result = Ok(isolation.describe());
        Some(Check { name: "store driver", result, warning: Some(warning) })
    });
    checks.chain(caps).chain(store).collect()
}

fn describe(engine: &EngineFacts) -> String {
    let at = match engine.remote {
        true => format!("{}, on its own machine (remote or VM)", engine.at),
        false => engine.at.clone(),
    };
    let program = engine.engine.program();
    let version = &engine.version;
    let platform = &engine.platform;
    let cpus = engine.cpus;
    let memory = human(engine.mem_total);
    let isolation = engine.isolation.describe();
    format!("{program} {version} ({platform}) at {at}: {cpus} CPUs, {memory} memory; {isolation}")
}

/// Whether the engine starts a container of the base image.
fn start_container(engine: &EngineFacts, base: &str) -> Result<String, Problem> {
    let run = engine.engine.run_true(base);
    let fix = format!(
        "runtime = \"runc\" and the ulimits in /etc/containers/containers.conf; see {PODMAN_DOCS}"
    );
    let what = |e| format!("{} cannot start a container: {e:#}", engine.engine.program());
    run.read().map(|_| run.to_string()).map_err(|e| Problem::new(what(e), fix))
}

fn tool(tool: &str, fix: &str) -> Result<String, Problem> {
    let missing = Problem::new(format!("{tool} is not installed (not found on PATH)"), fix);
    which::which(tool).map(|p| p.display().to_string()).map_err(|_| missing)
}

/// The engine machine's budget against the largest image cap, with that engine's fix, and how
/// many builds it lets run at once. A budget below a cap is a warning, not a stop: only an
/// image to build needs memory (a run that builds it is refused when it plans), and a small
/// engine's free memory shrinks as its page cache grows, though nothing runs there.
fn memory_check(session: &Session, engine: Option<&EngineFacts>) -> Option<Check> {
    let images = &session.images_file.images;
    let (budget, largest) = match (&session.facts.budget, images.iter().max_by_key(|i| i.memory)) {
        (Ok(budget), Some(largest)) => (budget, largest),
        (Err(problem), _) => return Some(Check::new("memory", Err(problem.clone()))),
        _ => return None,
    };
    let caps: Vec<u64> = images.iter().map(|i| i.memory).collect();
    let at_once = memory::max_parallel(&caps, budget.bytes, usize::MAX);
    let uncapped = engine.is_some_and(|f| !f.isolation.caps_hold());
    let jobs = match uncapped {
        true => "builds run one at a time, as the engine cannot enforce their caps".to_owned(),
        false => format!(
            "with this budget, `--jobs N` runs at most {at_once} build(s) at once (one at a time by default)"
        ),
    };
    let bytes = human(budget.bytes);
    let source = &budget.source;
    let cap = human(largest.memory);
    let name = &largest.name;
    if largest.memory <= budget.bytes {
        let fits =
            format!("budget {bytes} ({source}) fits the largest cap ({cap} for {name}); {jobs}");
        return Some(Check::new("memory", Ok(fits)));
    }
    let fix = match engine {
        Some(engine) if engine.remote && engine.engine == Engine::Podman => {
            "give the engine's machine more memory: `podman machine stop && podman machine set --memory 4096 && \
             podman machine start` (podman machine), or free memory there; or lower that image's `memory` in \
             test/e2e/images.toml"
        }
        _ => "free memory, lower that image's `memory` in test/e2e/images.toml, or pass --memory-budget",
    };
    let what = format!("budget {bytes} ({source}) is less than {name}'s cap {cap}");
    let so = format!(
        "runs that build nothing go on; a build of {name} (or of any image whose cap exceeds the budget) is refused when the run plans it"
    );
    let warning = Problem::new(what, format!("{fix}; meanwhile {jobs}"));
    Some(Check { name: "memory", result: Ok(so), warning: Some(warning) })
}

/// The manifests' memory requests against the engine's memory: a stack that cannot fit is
/// refused before anything starts, naming its pods. `None` when no pod requests memory.
fn stack_memory_check(project: &Project, engine: &EngineFacts) -> Option<Result<String, Problem>> {
    let dir = project.manifests_dir();
    let shown = project.display(&dir);
    let requests = match Manifests::load(&dir).and_then(|m| m.memory_requests()) {
        Ok(requests) if requests.is_empty() => return None,
        Ok(requests) => requests,
        Err(e) => return Some(Err(Problem::new(format!("{shown}: {e:#}"), "fix the manifest"))),
    };
    let total: u64 = requests.iter().map(|(_, bytes)| bytes).sum();
    let sum = human(total);
    let memory = human(engine.mem_total);
    let pods = requests.len();
    let Some(over) = memory::requests_over(&requests, engine.mem_total) else {
        return Some(Ok(format!(
            "the {pods} pod(s) that request memory ask {sum} of the engine's {memory}"
        )));
    };
    let named: Vec<String> =
        over.iter().map(|(pod, bytes)| format!("{pod} {}", human(*bytes))).collect();
    let what = format!(
        "the pods in {shown} request {sum} of memory, more than the engine's {memory}: {}",
        named.join(", ")
    );
    let machine = match engine.remote && engine.engine == Engine::Podman {
        true => "give the engine's machine more memory (`podman machine stop && podman machine set --memory 4096 && podman machine start`)",
        false => "run the stack on a machine with more memory",
    };
    let fix =
        format!("lower those pods' resources.requests.memory, or run fewer of them; or {machine}");
    Some(Err(Problem::new(what, fix)))
}

/// The engine's store (a podman machine's or remote engine's disk, not this machine's)
/// against what the run needs.
pub fn disk_check(engine: &EngineFacts, need: u64) -> Result<String, Problem> {
    let program = engine.engine.program();
    let Some((path, free)) = engine.store.as_ref().and_then(|s| Some((&s.path, s.free?))) else {
        let path = engine.store.as_ref().map(|s| format!(" ({})", s.path)).unwrap_or_default();
        let at = &engine.at;
        return Ok(format!(
            "{program} at {at} does not say how much room its image store has{path}: not checked"
        ));
    };
    let machine = match engine.remote {
        true => format!("the engine's machine ({})", engine.at),
        false => "this machine".to_owned(),
    };
    let free_text = human(free);
    let need_text = human(need);
    // `about`: a shortfall is judged on an estimate of the need.
    let said = |about: &str| {
        format!(
            "{free_text} free in the engine's store {path} on {machine}, {about}{need_text} needed"
        )
    };
    if free >= need {
        return Ok(said(""));
    }
    let fix = if engine.remote && engine.engine == Engine::Podman {
        "free room in the engine: `podman system prune` (`podman system df` shows what is reclaimable), or give \
         its machine a bigger disk: `podman machine stop && podman machine set --disk-size 100 && podman machine start`"
            .to_owned()
    } else {
        format!("`{program} system prune` (`{program} system df` shows what is reclaimable), or free room on that filesystem")
    };
    Err(Problem::new(said("about "), fix))
}

/// Disk a run needs: the archive three times over (archive, unpacked stream, image store),
/// else the images' sizes from the last build, else 2 GiB.
fn disk_needed(project: &Project, archive: Option<&Path>) -> u64 {
    if let Some(meta) = archive.and_then(|a| std::fs::metadata(a).ok()) {
        return meta.len() * 3;
    }
    EngineImages::load(project)
        .map(|h| h.images.iter().map(|i| i.size).sum::<u64>())
        .filter(|s| *s > 0)
        .unwrap_or(2 << 30)
}

/// The checks as a person reads them: a line each, then the fixes.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::from("doctor:\n");
    for check in checks {
        let name = check.name;
        out.push_str(&match (&check.result, &check.warning) {
            (Ok(detail), None) => format!("  ok    {name:<18} {detail}\n"),
            (Ok(detail), Some(warning)) => format!(
                "  WARN  {name:<18} {}\n        so: {detail}\n        fix: {}\n",
                warning.what, warning.fix
            ),
            (Err(problem), _) => {
                format!("  FAIL  {name:<18} {}\n        fix: {}\n", problem.what, problem.fix)
            }
        });
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(remote: bool, at: &str, free: Option<u64>) -> EngineFacts {
        EngineFacts {
            engine: Engine::Podman,
            version: "4.3.1".into(),
            platform: "linux/amd64".into(),
            cpus: 2,
            mem_total: 2 << 30,
            mem_free: None,
            remote,
            at: at.into(),
            store: Some(crate::engine::Store { path: "/var/lib/containers/storage".into(), free }),
            isolation: Default::default(),
        }
    }

    /// A budget below the largest cap warns and lets the run go on (seen: a 2 GiB engine's
    /// free memory fell below PostgreSQL's cap after one cold run, and every warm run and
    /// `dev`, which build nothing, stopped at the doctor).
    #[test]
    fn a_budget_below_a_cap_warns_and_does_not_stop_a_run() {
        const MIB: u64 = 1 << 20;
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/e2e/images.toml"),
        )
        .unwrap();
        let budget = |mib| crate::memory::Budget { bytes: mib * MIB, source: "free".into() };
        let session = |mib| Session {
            images_file: crate::images::ImagesFile::parse(&text, None).unwrap(),
            facts: crate::facts::Facts {
                engine: Ok(facts(true, "ssh://core@127.0.0.1:2224", None)),
                base_image: "localhost/e2e-base:bookworm".into(),
                base: None,
                offline_base: None,
                budget: Ok(budget(mib)),
                host_budget: Ok(budget(4096)),
            },
        };
        let low = memory_check(&session(739), None).unwrap();
        assert!(low.result.is_ok(), "{low:?}");
        let warning = low.warning.as_ref().expect("a warning");
        assert_eq!(warning.what, "budget 739 MiB (free) is less than postgres's cap 768 MiB");
        assert!(render(&[low]).starts_with("doctor:\n  WARN  memory"));
        let fits = memory_check(&session(1024), None).unwrap();
        assert!(fits.result.is_ok() && fits.warning.is_none(), "{fits:?}");
    }

    /// The disk judged is the engine's store, named with its machine; the fix fits the engine.
    #[test]
    fn the_disk_is_the_engines_store() {
        const GIB: u64 = 1 << 30;
        let rig = facts(true, "unix:///run/e2e-rig/podman.sock", Some(3 * GIB));
        let ok = disk_check(&rig, GIB);
        assert!(ok.is_ok(), "{ok:?}");
        assert_eq!(
            ok.unwrap(),
            "3.0 GiB free in the engine's store /var/lib/containers/storage on the engine's machine \
             (unix:///run/e2e-rig/podman.sock), 1.0 GiB needed"
        );
        let full = disk_check(&rig, 4 * GIB).unwrap_err();
        assert!(full.what.contains("about 4.0 GiB needed"), "{full:?}");
        assert!(full.fix.contains("podman machine set --disk-size"), "{}", full.fix);
        assert!(full.fix.contains("podman system prune"), "{}", full.fix);
        let local = disk_check(&facts(false, "this machine", Some(GIB / 2)), GIB).unwrap_err();
        assert!(local.what.contains("on this machine"));
        assert!(!local.fix.contains("podman machine"), "{}", local.fix);
        // An engine that cannot tell: said so, and not the host's disk instead.
        let unknown = disk_check(&facts(true, "ssh://vm", None), GIB);
        assert!(unknown.is_ok(), "{unknown:?}");
        let detail = unknown.unwrap();
        assert!(detail.contains("does not say how much room"), "{detail}");
    }

    #[test]
    fn render_shows_each_problem_with_its_fix() {
        let text = render(&[
            Check::new("engine", Ok("podman on PATH".into())),
            Check::new("kind", Err(Problem::new("kind is not installed", "install kind"))),
        ]);
        assert!(text.contains("ok    engine"), "{text}");
        assert!(
            text.contains(
                "FAIL  kind               kind is not installed\n        fix: install kind"
            ),
            "{text}"
        );
    }
}
