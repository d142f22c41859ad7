//! `cargo xtask doctor`: every prerequisite of a run, checked, each problem with its fix.
//! `e2e` runs the same checks first and stops before doing anything when one fails.

use std::path::Path;

use crate::{
    build::{BuildOptions, Session},
    engine::{Engine, EngineFacts},
    handoff::Handoff,
    memory,
    problem::Problem,
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
    fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            problem: None,
            detail: detail.into(),
            fix: String::new(),
        }
    }

    fn fail(name: &str, problem: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            problem: Some(problem.into()),
            detail: String::new(),
            fix: fix.into(),
        }
    }

    fn problem(name: &str, p: &Problem) -> Check {
        Check::fail(name, p.what.clone(), p.fix.clone())
    }
}

/// What the run at hand needs.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// A Kind cluster: `kind` and `kubectl`.
    pub kind: bool,
    /// Loading this archive (so the base image is not needed, `zstd` is, and disk for it).
    pub archive: Option<std::path::PathBuf>,
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
    pub images: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub opts: BuildOptions,
}

impl DoctorArgs {
    pub fn run(self, project: &Project) -> anyhow::Result<()> {
        let r = Reporter::new();
        let needs = Needs {
            kind: self.kind,
            archive: self.images,
            start_container: true,
        };
        let session = Session::open(project, &self.opts, &r, false)?;
        let checks = run_checks(project, &session, &needs);
        r.line(render(&checks));
        let failed = checks.iter().filter(|c| c.problem.is_some()).count();
        anyhow::ensure!(failed == 0, "{failed} check(s) failed: see the fixes above");
        Ok(())
    }
}

/// Judges the facts the session gathered (nothing is asked of the engine again, but for
/// starting a container when `needs.start_container`); never stops at the first problem.
pub fn run_checks(project: &Project, session: &Session, needs: &Needs) -> Vec<Check> {
    let facts = &session.facts;
    let mut checks = Vec::new();
    match &facts.engine {
        Ok(f) => {
            checks.push(Check::ok(
                "engine",
                format!(
                    "{} {} ({}) at {}: {} CPUs, {} memory",
                    f.engine.program(),
                    f.version,
                    f.platform,
                    if f.remote {
                        format!("{}, on its own machine (remote or VM)", f.at)
                    } else {
                        f.at.clone()
                    },
                    f.cpus,
                    memory::human(f.mem_total)
                ),
            ));
            let base = match (&facts.base, &needs.archive) {
                (_, Some(_)) => None,
                (Some(_), None) => Some(Check::ok("base image", facts.base_image.clone())),
                (None, None) => Some(Check::problem("base image", &facts.missing_base(f))),
            };
            checks.extend(base);
            if needs.start_container && facts.base.is_some() {
                let run = f.engine.run_true(&facts.base_image);
                checks.push(match run.read() {
                    Ok(_) => Check::ok("start a container", run.to_string()),
                    Err(e) => Check::fail(
                        "start a container",
                        format!("{} cannot start a container: {e:#}", f.engine.program()),
                        format!(
                            "runtime = \"runc\" and the ulimits in /etc/containers/containers.conf; see {}",
                            crate::problem::PODMAN_DOCS
                        ),
                    ),
                });
            }
        }
        Err(p) => checks.push(Check::problem("engine", p)),
    }
    let biggest = session.images.images.iter().max_by_key(|i| i.memory);
    match (&facts.budget, biggest) {
        (Ok(budget), Some(big)) => {
            let mut check = memory_check(budget, big, facts.engine.as_ref().ok());
            let caps: Vec<u64> = session.images.images.iter().map(|i| i.memory).collect();
            let at_once = memory::max_parallel(&caps, budget.bytes, usize::MAX);
            let jobs = format!(
                "with this budget, `--jobs N` runs at most {at_once} build(s) at once (one at a time by default)"
            );
            if check.problem.is_some() {
                check.fix = format!("{}; meanwhile {jobs}", check.fix);
            } else {
                check.detail = format!("{}; {jobs}", check.detail);
            }
            checks.push(check);
        }
        (Err(p), _) => checks.push(Check::problem("memory", p)),
        _ => {}
    }
    if let Ok(host) = &facts.host_budget {
        if facts.engine.as_ref().is_ok_and(|f| f.remote) {
            checks.push(Check::ok(
                "host memory",
                format!(
                    "{} for the host's cargo build ({})",
                    memory::human(host.bytes),
                    host.source
                ),
            ));
        }
    }
    let need_disk = disk_needed(project, needs.archive.as_deref());
    if let Ok(f) = &facts.engine {
        checks.push(disk_check(f, need_disk));
        if f.remote {
            if let Some(free) = crate::facts::free_disk(&project.target_dir) {
                checks.push(Check::ok(
                    "host disk",
                    format!(
                        "{} free under {} on this machine (binaries, archives)",
                        memory::human(free),
                        project.display(&project.target_dir)
                    ),
                ));
            }
        }
    }
    if needs.archive.is_some() || which::which("zstd").is_ok() {
        checks.push(match which::which("zstd") {
            Ok(_) => Check::ok("zstd", "on PATH"),
            Err(_) => Check::fail("zstd", "zstd is not installed", "apt-get install zstd"),
        });
    }
    if let Some(archive) = &needs.archive {
        checks.push(if archive.is_file() {
            Check::ok("archive", archive.display().to_string())
        } else {
            Check::fail(
                "archive",
                format!("{} does not exist", archive.display()),
                "download it, or make it with `cargo xtask save-images`",
            )
        });
    }
    if needs.kind {
        for (tool, fix) in [
            ("kind", "install kind (https://kind.sigs.k8s.io), e.g. `go install sigs.k8s.io/kind@latest`"),
            ("kubectl", "apt-get install kubectl, or see https://kubernetes.io/docs/tasks/tools/"),
        ] {
            checks.push(match which::which(tool) {
                Ok(p) => Check::ok(tool, p.display().to_string()),
                Err(_) => Check::fail(tool, format!("{tool} is not installed (not found on PATH)"), fix),
            });
        }
    }
    checks
}

/// The engine machine's memory against the largest image cap (plus the margin the budget
/// keeps), with the fix for that engine when it is too small.
fn memory_check(
    budget: &memory::Budget,
    big: &crate::images::ImageSpec,
    engine: Option<&crate::engine::EngineFacts>,
) -> Check {
    if big.memory <= budget.bytes {
        return Check::ok(
            "memory",
            format!(
                "budget {} ({}) fits the largest cap ({} for {})",
                memory::human(budget.bytes),
                budget.source,
                memory::human(big.memory),
                big.name
            ),
        );
    }
    let fix = match engine {
        Some(f) if f.remote && f.engine == crate::engine::Engine::Podman => {
            "give the engine's machine more memory: `podman machine stop && podman machine set --memory 4096 && \
             podman machine start` (podman machine), or free memory there; or lower that image's `memory` in \
             test/e2e/images.toml"
                .to_owned()
        }
        _ => "free memory, lower that image's `memory` in test/e2e/images.toml, or pass --memory-budget".to_owned(),
    };
    Check::fail(
        "memory",
        format!(
            "budget {} ({}) is less than {}'s cap {}",
            memory::human(budget.bytes),
            budget.source,
            big.name,
            memory::human(big.memory)
        ),
        fix,
    )
}

/// The engine's store against what the run needs: its disk is where images, loads and
/// builds go (a podman machine's or a remote engine's, not this machine's).
pub fn disk_check(f: &EngineFacts, need: u64) -> Check {
    let machine = if f.remote {
        format!("the engine's machine ({})", f.at)
    } else {
        "this machine".to_owned()
    };
    let Some((path, free)) = f.store.as_ref().and_then(|s| Some((&s.path, s.free?))) else {
        return Check::ok(
            "disk",
            format!(
                "{} at {} does not say how much room its image store has{}: not checked",
                f.engine.program(),
                f.at,
                f.store
                    .as_ref()
                    .map(|s| format!(" ({})", s.path))
                    .unwrap_or_default()
            ),
        );
    };
    let said = format!(
        "{} free in the engine's store {path} on {machine}, {} needed",
        memory::human(free),
        memory::human(need)
    );
    if free >= need {
        return Check::ok("disk", said);
    }
    let program = f.engine.program();
    let fix = if f.remote && f.engine == Engine::Podman {
        "free room in the engine: `podman system prune` (`podman system df` shows what is reclaimable), or give \
         its machine a bigger disk: `podman machine stop && podman machine set --disk-size 100 && podman machine start`"
            .to_owned()
    } else {
        format!("`{program} system prune` (`{program} system df` shows what is reclaimable), or free room on that filesystem")
    };
    Check::fail("disk", said.replace(", ", ", about "), fix)
}

/// Disk a run needs: the archive three times over (archive, unpacked stream, image store),
/// else the images' sizes from the last build, else 2 GiB.
fn disk_needed(project: &Project, archive: Option<&Path>) -> u64 {
    if let Some(size) = archive
        .and_then(|a| std::fs::metadata(a).ok())
        .map(|m| m.len())
    {
        return size * 3;
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
        match &c.problem {
            None => out.push_str(&format!("  ok    {:<18} {}\n", c.name, c.detail)),
            Some(p) => out.push_str(&format!(
                "  FAIL  {:<18} {p}\n        fix: {}\n",
                c.name, c.fix
            )),
        }
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
        let failed: Vec<&Check> = checks.iter().filter(|c| c.problem.is_some()).collect();
        if failed.is_empty() {
            r.line(format!("  {} checks passed", checks.len()));
            return Ok(());
        }
        anyhow::bail!(
            "a prerequisite is missing; nothing was done.\n{}",
            render(&checks)
        )
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
            store: Some(crate::engine::Store {
                path: "/var/lib/containers/storage".into(),
                free,
            }),
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
        assert!(
            full.problem
                .as_deref()
                .unwrap()
                .contains("about 4.0 GiB needed"),
            "{full:?}"
        );
        assert!(
            full.fix.contains("podman machine set --disk-size"),
            "{}",
            full.fix
        );
        assert!(full.fix.contains("podman system prune"), "{}", full.fix);
        let local = disk_check(&facts(false, "this machine", Some(GIB / 2)), GIB);
        assert!(local.problem.unwrap().contains("on this machine"));
        assert!(!local.fix.contains("podman machine"), "{}", local.fix);
        // An engine that cannot tell: said so, and not the host's disk instead.
        let unknown = disk_check(&facts(true, "ssh://vm", None), GIB);
        assert_eq!(unknown.problem, None);
        assert!(
            unknown.detail.contains("does not say how much room"),
            "{}",
            unknown.detail
        );
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
