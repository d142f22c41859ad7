//! `cargo xtask doctor`: every prerequisite of a run, checked, each problem with its fix.
//! `e2e` runs the same checks first and stops before doing anything when one fails.

use std::path::Path;

use crate::{
    build::{self, BuildOptions, Handoff},
    cmd::Cmd,
    engine::{self, Engine},
    memory,
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
}

/// What the run at hand needs.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    pub engine: Option<Engine>,
    /// A Kind cluster: `kind` and `kubectl`.
    pub kind: bool,
    /// Loading this archive (so the base image is not needed, `zstd` is, and disk for it).
    pub archive: Option<std::path::PathBuf>,
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
            engine: self.opts.engine,
            kind: self.kind,
            archive: self.images,
        };
        let checks = run_checks(project, &self.opts, &needs);
        r.line(render(&checks));
        let failed = checks.iter().filter(|c| c.problem.is_some()).count();
        anyhow::ensure!(failed == 0, "{failed} check(s) failed: see the fixes above");
        Ok(())
    }
}

/// Runs every check the run needs; never stops at the first problem.
pub fn run_checks(project: &Project, opts: &BuildOptions, needs: &Needs) -> Vec<Check> {
    let mut checks = Vec::new();
    let engine = match Engine::detect(needs.engine) {
        Ok(e) => {
            checks.push(Check::ok("engine", format!("{} on PATH", e.program())));
            Some(e)
        }
        Err(err) => {
            let (problem, fix) = format!("{err:#}")
                .split_once("\n  fix: ")
                .map(|(p, f)| (p.to_owned(), f.to_owned()))
                .unwrap_or_default();
            checks.push(Check::fail("engine", problem, fix));
            None
        }
    };
    let images = build::load_images(project, opts);
    if let Some(engine) = engine {
        match engine.platform().read() {
            Ok(p) => checks.push(Check::ok("engine answers", engine::normalize_platform(&p))),
            Err(e) => checks.push(Check::fail(
                "engine answers",
                format!("{} does not answer: {e:#}", engine.program()),
                match engine {
                    Engine::Podman => "see shared/ENVIRONMENT.md; test/e2e/setup-podman.sh writes a working /etc/containers/containers.conf",
                    Engine::Docker => "start the daemon: `dockerd &` (test/e2e/setup-docker.sh does it)",
                },
            )),
        }
        if let Ok(images) = &images {
            let base_present = engine
                .inspect_image(&images.base_image)
                .succeeds()
                .unwrap_or(false);
            if needs.archive.is_none() {
                checks.push(if base_present {
                    Check::ok("base image", images.base_image.clone())
                } else {
                    Check::fail(
                        "base image",
                        format!("{} is not in {}'s image store", images.base_image, engine.program()),
                        "run test/e2e/setup-podman.sh (debootstrap, no registry needed), or set E2E_BASE_IMAGE to an image you have",
                    )
                });
            }
            if base_present {
                let run = engine.run_true(&images.base_image);
                checks.push(match run.read() {
                    Ok(_) => Check::ok("start a container", run.to_string()),
                    Err(e) => Check::fail(
                        "start a container",
                        format!("{} cannot start a container: {e:#}", engine.program()),
                        "see shared/ENVIRONMENT.md: runtime = \"runc\" and the ulimits in /etc/containers/containers.conf",
                    ),
                });
            }
        }
    }
    match &images {
        Ok(images) => {
            let biggest = images.images.iter().max_by_key(|i| i.memory);
            match (opts.budget(), biggest) {
                (Ok(memory::Budget { bytes: given, .. }), Some(big)) => {
                    checks.push(if big.memory <= given {
                        Check::ok("memory", format!("budget {} fits the largest cap ({} for {})", memory::human(given), memory::human(big.memory), big.name))
                    } else {
                        Check::fail(
                            "memory",
                            format!("budget {} is less than {}'s cap {}", memory::human(given), big.name, memory::human(big.memory)),
                            "free memory, lower that image's `memory` in test/e2e/images.toml, or pass --memory-budget",
                        )
                    });
                }
                (Err(e), _) => checks.push(Check::fail(
                    "memory",
                    format!("cannot read /proc/meminfo: {e:#}"),
                    "run on Linux",
                )),
                _ => {}
            }
        }
        Err(e) => checks.push(Check::fail(
            "images file",
            format!("{e:#}"),
            "fix test/e2e/images.toml (see the comment at its top)",
        )),
    }
    let need_disk = disk_needed(project, needs.archive.as_deref());
    match free_disk(&project.target_dir) {
        Some(free) if free >= need_disk => checks.push(Check::ok(
            "disk",
            format!(
                "{} free, {} needed",
                memory::human(free),
                memory::human(need_disk)
            ),
        )),
        Some(free) => checks.push(Check::fail(
            "disk",
            format!(
                "{} free under {}, about {} needed",
                memory::human(free),
                project.target_dir.display(),
                memory::human(need_disk)
            ),
            "free disk space (`podman image prune`, `cargo clean`)",
        )),
        None => {}
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

/// Free bytes on the filesystem of `dir` (or its nearest existing parent), from `df`.
fn free_disk(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|d| d.exists())?;
    let out = Cmd::new("df")
        .args(["--output=avail", "-B1"])
        .arg(existing.display().to_string())
        .read()
        .ok()?;
    out.lines().nth(1)?.trim().parse().ok()
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
    opts: &BuildOptions,
    needs: &Needs,
) -> anyhow::Result<()> {
    r.phase("doctor", |r| {
        let checks = run_checks(project, opts, needs);
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
