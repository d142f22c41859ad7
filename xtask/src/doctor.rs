//! `cargo xtask doctor`: every prerequisite of a run, checked, each problem with its fix.
//! `e2e` runs the same checks first and stops before doing anything when one fails.

use std::path::{Path, PathBuf};

use crate::{
    build::{BuildOptions, Session},
    engine::{Engine, EngineFacts},
    handoff::Handoff,
    images::ImageSpec,
    memory::{self, human, Budget},
    problem::{Problem, PODMAN_DOCS},
    project::Project,
    report::Reporter,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub problem: Option<String>,
    pub detail: String,
    pub fix: String,
}

impl Check {
    fn new(name: &str, result: Result<String, Problem>) -> Check {
        let name = name.into();
        match result {
            Ok(detail) => Check { name, problem: None, detail, fix: String::new() },
            Err(p) => Check { name, problem: Some(p.what), detail: String::new(), fix: p.fix },
        }
    }

    fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check::new(name, Ok(detail.into()))
    }

    fn fail(name: &str, problem: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(name, Err(Problem::new(problem, fix)))
    }
}

/// What the run at hand needs.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// A Kind cluster: `kind` and `kubectl`.
    pub kind: bool,
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
        let r = Reporter::new();
        let needs = Needs { kind: self.kind, archive: self.images, start_container: true };
        let session = Session::open(project, &self.opts, &r, false)?;
        let checks = run_checks(project, &session, &needs);
        r.line(render(&checks));
        let failed = checks.iter().filter(|c| c.problem.is_some()).count();
        anyhow::ensure!(failed == 0, "{failed} check(s) failed: see the fixes above");
        Ok(())
    }
}

/// Judges the session's facts (the engine asked again only to start a container when
/// `needs.start_container`); never stops at the first problem.
pub fn run_checks(project: &Project, session: &Session, needs: &Needs) -> Vec<Check> {
    let facts = &session.facts;
    let mut checks = Vec::new();
    let engine = facts.engine.as_ref();
    match engine {
        Ok(f) => {
            let at = match f.remote {
                true => format!("{}, on its own machine (remote or VM)", f.at),
                false => f.at.clone(),
            };
            let (program, version, platform) = (f.engine.program(), &f.version, &f.platform);
            let (cpus, memory) = (f.cpus, human(f.mem_total));
            checks.push(Check::ok(
                "engine",
                format!("{program} {version} ({platform}) at {at}: {cpus} CPUs, {memory} memory"),
            ));
            if needs.archive.is_none() {
                let base = facts.base.as_ref().map(|_| facts.base_image.clone());
                checks.push(Check::new("base image", base.ok_or_else(|| facts.missing_base(f))));
            }
            if needs.start_container && facts.base.is_some() {
                let run = f.engine.run_true(&facts.base_image);
                let fix = format!("runtime = \"runc\" and the ulimits in /etc/containers/containers.conf; see {PODMAN_DOCS}");
                let started = run.read().map(|_| run.to_string()).map_err(|e| {
                    Problem::new(format!("{program} cannot start a container: {e:#}"), fix)
                });
                checks.push(Check::new("start a container", started));
            }
        }
        Err(p) => checks.push(Check::new("engine", Err(p.clone()))),
    }
    let images = &session.images.images;
    match (&facts.budget, images.iter().max_by_key(|i| i.memory)) {
        (Ok(budget), Some(big)) => {
            let mut check = memory_check(budget, big, engine.ok());
            let caps: Vec<u64> = images.iter().map(|i| i.memory).collect();
            let at_once = memory::max_parallel(&caps, budget.bytes, usize::MAX);
            let jobs = format!(
                "with this budget, `--jobs N` runs at most {at_once} build(s) at once (one at a time by default)"
            );
            match check.problem {
                Some(_) => check.fix = format!("{}; meanwhile {jobs}", check.fix),
                None => check.detail = format!("{}; {jobs}", check.detail),
            }
            checks.push(check);
        }
        (Err(p), _) => checks.push(Check::new("memory", Err(p.clone()))),
        _ => {}
    }
    let remote = engine.is_ok_and(|f| f.remote);
    if let (Ok(host), true) = (&facts.host_budget, remote) {
        let (bytes, source) = (human(host.bytes), &host.source);
        let detail = format!("{bytes} for the host's cargo build ({source})");
        checks.push(Check::ok("host memory", detail));
    }
    if let Ok(f) = engine {
        checks.push(disk_check(f, disk_needed(project, needs.archive.as_deref())));
    }
    if let Some(free) = remote.then(|| crate::facts::free_disk(&project.target_dir)).flatten() {
        let (free, dir) = (human(free), project.display(&project.target_dir));
        let detail = format!("{free} free under {dir} on this machine (binaries, archives)");
        checks.push(Check::ok("host disk", detail));
    }
    if let Some(archive) = &needs.archive {
        let (shown, fix) =
            (archive.display(), "download it, or make it with `cargo xtask save-images`");
        let found = archive.is_file().then(|| shown.to_string());
        let found = found.ok_or_else(|| Problem::new(format!("{shown} does not exist"), fix));
        checks.push(Check::new("archive", found));
    }
    let zstd = needs.archive.is_some() || which::which("zstd").is_ok();
    let kind = "install kind (https://kind.sigs.k8s.io), e.g. `go install sigs.k8s.io/kind@latest`";
    let kubectl = "apt-get install kubectl, or see https://kubernetes.io/docs/tasks/tools/";
    let tools = [
        ("zstd", "apt-get install zstd", zstd),
        ("kind", kind, needs.kind),
        ("kubectl", kubectl, needs.kind),
    ];
    for (tool, fix, _) in tools.into_iter().filter(|t| t.2) {
        let missing = Problem::new(format!("{tool} is not installed (not found on PATH)"), fix);
        let found = which::which(tool).map(|p| p.display().to_string()).map_err(|_| missing);
        checks.push(Check::new(tool, found));
    }
    checks
}

/// The engine machine's budget against the largest image cap, with that engine's fix.
fn memory_check(budget: &Budget, big: &ImageSpec, engine: Option<&EngineFacts>) -> Check {
    let (bytes, source, cap, name) =
        (human(budget.bytes), &budget.source, human(big.memory), &big.name);
    if big.memory <= budget.bytes {
        let detail = format!("budget {bytes} ({source}) fits the largest cap ({cap} for {name})");
        return Check::ok("memory", detail);
    }
    let fix = match engine {
        Some(f) if f.remote && f.engine == Engine::Podman => {
            "give the engine's machine more memory: `podman machine stop && podman machine set --memory 4096 && \
             podman machine start` (podman machine), or free memory there; or lower that image's `memory` in \
             test/e2e/images.toml"
        }
        _ => "free memory, lower that image's `memory` in test/e2e/images.toml, or pass --memory-budget",
    };
    let what = format!("budget {bytes} ({source}) is less than {name}'s cap {cap}");
    Check::fail("memory", what, fix)
}

/// The engine's store (a podman machine's or remote engine's disk, not this machine's)
/// against what the run needs.
pub fn disk_check(f: &EngineFacts, need: u64) -> Check {
    let program = f.engine.program();
    let Some((path, free)) = f.store.as_ref().and_then(|s| Some((&s.path, s.free?))) else {
        let path = f.store.as_ref().map(|s| format!(" ({})", s.path)).unwrap_or_default();
        let at = &f.at;
        let detail = format!(
            "{program} at {at} does not say how much room its image store has{path}: not checked"
        );
        return Check::ok("disk", detail);
    };
    let machine = match f.remote {
        true => format!("the engine's machine ({})", f.at),
        false => "this machine".to_owned(),
    };
    let (free_text, need_text) = (human(free), human(need));
    // `about`: a shortfall is judged on an estimate of the need.
    let said = |about: &str| {
        format!(
            "{free_text} free in the engine's store {path} on {machine}, {about}{need_text} needed"
        )
    };
    if free >= need {
        return Check::ok("disk", said(""));
    }
    let fix = if f.remote && f.engine == Engine::Podman {
        "free room in the engine: `podman system prune` (`podman system df` shows what is reclaimable), or give \
         its machine a bigger disk: `podman machine stop && podman machine set --disk-size 100 && podman machine start`"
            .to_owned()
    } else {
        format!("`{program} system prune` (`{program} system df` shows what is reclaimable), or free room on that filesystem")
    };
    Check::fail("disk", said("about "), fix)
}

/// Disk a run needs: the archive three times over (archive, unpacked stream, image store),
/// else the images' sizes from the last build, else 2 GiB.
fn disk_needed(project: &Project, archive: Option<&Path>) -> u64 {
    if let Some(meta) = archive.and_then(|a| std::fs::metadata(a).ok()) {
        return meta.len() * 3;
    }
    Handoff::load(project)
        .map(|h| h.images.iter().map(|i| i.size).sum::<u64>())
        .filter(|s| *s > 0)
        .unwrap_or(2 << 30)
}

/// The checks as a person reads them: a line each, then the fixes.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::from("doctor:\n");
    for c in checks {
        out.push_str(&match &c.problem {
            None => format!("  ok    {:<18} {}\n", c.name, c.detail),
            Some(p) => format!("  FAIL  {:<18} {p}\n        fix: {}\n", c.name, c.fix),
        });
    }
    out.trim_end().to_owned()
}

/// For `e2e`: the same checks, stopping the run before anything happens when one fails.
pub fn require(
    project: &Project,
    r: &Reporter,
    session: &Session,
    needs: &Needs,
) -> anyhow::Result<()> {
    r.phase("doctor", |r| {
        let checks = run_checks(project, session, needs);
        anyhow::ensure!(
            checks.iter().all(|c| c.problem.is_none()),
            "a prerequisite is missing; nothing was done.\n{}",
            render(&checks)
        );
        r.line(format!("  {} checks passed", checks.len()));
        Ok(())
    })
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
        }
    }

    /// The disk judged is the engine's store, named with its machine; the fix fits the engine.
    #[test]
    fn the_disk_is_the_engines_store() {
        const GIB: u64 = 1 << 30;
        let rig = facts(true, "unix:///run/e2e-rig/podman.sock", Some(3 * GIB));
        let ok = disk_check(&rig, GIB);
        assert_eq!(ok.problem, None);
        assert_eq!(
            ok.detail,
            "3.0 GiB free in the engine's store /var/lib/containers/storage on the engine's machine \
             (unix:///run/e2e-rig/podman.sock), 1.0 GiB needed"
        );
        let full = disk_check(&rig, 4 * GIB);
        assert!(full.problem.as_deref().unwrap().contains("about 4.0 GiB needed"), "{full:?}");
        assert!(full.fix.contains("podman machine set --disk-size"), "{}", full.fix);
        assert!(full.fix.contains("podman system prune"), "{}", full.fix);
        let local = disk_check(&facts(false, "this machine", Some(GIB / 2)), GIB);
        assert!(local.problem.unwrap().contains("on this machine"));
        assert!(!local.fix.contains("podman machine"), "{}", local.fix);
        // An engine that cannot tell: said so, and not the host's disk instead.
        let unknown = disk_check(&facts(true, "ssh://vm", None), GIB);
        assert_eq!(unknown.problem, None);
        assert!(unknown.detail.contains("does not say how much room"), "{}", unknown.detail);
    }

    #[test]
    fn render_shows_each_problem_with_its_fix() {
        let text = render(&[
            Check::ok("engine", "podman on PATH"),
            Check::fail("kind", "kind is not installed", "install kind"),
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
