//! `cargo xtask dev` (docs/commands.md): the stack comes up once, the suite runs, and each
//! change is a cycle that syncs a binary or replaces only the changed pods, then reruns the suite.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    build::{self, BuildOptions, PlanItem},
    interrupt,
    project::Project,
    report::{secs, Reporter},
    run::{self, Run, RunOptions, Runtime},
    runtime::{
        self,
        step::{RealExec, Runner},
        RunId, Stack,
    },
};

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Where the stack runs (Kind: changed pods are replaced through kubectl).
    #[arg(long, value_enum, default_value_t = Runtime::Podman)]
    pub runtime: Runtime,
    /// Leave the stack running when the loop ends (Ctrl-C).
    #[arg(long)]
    pub keep: bool,
    /// How long to wait for the services to be ready, in seconds.
    #[arg(long, default_value = "120", value_name = "SECONDS", value_parser = run::seconds)]
    pub ready_timeout: Duration,
    /// Quiet time after the last change before a cycle starts, in milliseconds.
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub debounce: u64,
    #[command(flatten)]
    pub build: BuildOptions,
    /// Arguments for the test harness, after `--` (e.g. `-- dedup` to rerun matching tests).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

/// What the workspace watch looks at, relative to the root; and what it ignores.
pub const WATCHED: &[&str] = &[
    "services",
    "test/suite",
    "test/stack",
    "test/e2e",
    "docker",
    "Cargo.toml",
    "Cargo.lock",
    "Dockerfile.gateway",
];

/// Whether a changed path can change an image, a manifest or the suite.
pub fn relevant(root: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(root) else { return false };
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let editor_noise =
        name.starts_with('.') || ["~", ".swp", ".tmp"].iter().any(|end| name.ends_with(end));
    let in_target = rel.components().any(|c| c.as_os_str() == "target");
    !editor_noise && !in_target && WATCHED.iter().any(|w| rel.starts_with(w))
}

/// Whether a changed path is still a change after the quiet time: not a temporary file that an
/// editor or `sed -i` created and renamed away (`sedAb12Cd`, `.x.swp`, `x~`, `4913`).
fn is_change(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let digits = name.chars().all(|c| c.is_ascii_digit());
    let temp = name.starts_with("sed") || name.starts_with('.') || name.ends_with('~') || digits;
    p.exists() || p.parent().is_some_and(Path::exists) && !temp
}

/// Whether an event can change a file's content or the set of files: not reads (fingerprinting
/// opens every context file) nor metadata changes (an mtime changes no fingerprint).
pub fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{EventKind::*, ModifyKind};
    matches!(kind, Create(_) | Remove(_))
        || matches!(kind, Modify(m) if !matches!(m, ModifyKind::Metadata(_)))
}

impl DevArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        let DevArgs { runtime, keep, ready_timeout, debounce, build, test_args } = self;
        if runtime == Runtime::Kube {
            return Err(crate::problem::Problem::new(
                "`dev` replaces pods with images built on this machine, and a shared cluster (--runtime kube) pulls its images from a registry",
                "run `dev` on podman or Kind; against a shared cluster, run `cargo xtask e2e --runtime kube`",
            )
            .into());
        }
        let opts =
            RunOptions { runtime, keep, ready_timeout, build, test_args, ..Default::default() };
        let run = Run::open(project, opts, RunId::new(Some("dev")))?;
        let reporter = &run.reporter;
        run.require()?;
        let images = run.images(&|_| {})?;
        if let Some(jobs) = images.pending_suite {
            run::compile_suite(project, reporter, jobs)?;
        }
        let mut stack = runtime::stack(&run, &images.engine_images, None)?;
        reporter.line(format!("dev run {}", run.id));
        let plan = stack.plan(ready_timeout, vec![]);
        let (up, record) = runtime::execute(&*stack, reporter, project, &plan, stack.made());
        drop(plan);
        let outcome = up.and_then(|()| {
            // Each running image's fingerprint without its binary, to tell a binary-only change.
            let running = build::plan_quietly(project, &run.session, &[]);
            let running = running.map(|plan| running_of(&plan)).unwrap_or_default();
            let mut dev =
                Loop { run: &run, stack: &mut *stack, running, pending: None, suite_new: true };
            let passed = reporter.phase(crate::report::phase::SUITE, |_| Ok(dev.suite()))?;
            reporter.line(format!("suite {}", if passed { "passed" } else { "FAILED" }));
            dev.watch(Duration::from_millis(debounce))
        });
        if let Some(h) = crate::engine_images::EngineImages::load(project) {
            build::tidy(reporter, &h);
        }
        match (outcome, runtime::finish(&*stack, reporter, record.as_ref(), keep)) {
            // Ctrl-C is how the loop ends: once torn down (or kept), that is a success.
            (Err(_), Ok(())) if interrupt::interrupted() => {
                reporter.line("dev loop stopped");
                Ok(())
            }
            (Ok(()), t) => t,
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(t)) => Err(e.context(format!("and the teardown failed too: {t:#}"))),
        }
    }
}

struct Loop<'a> {
    run: &'a Run<'a>,
    stack: &'a mut dyn Stack,
    running: Running,
    /// A live update's plan, built once the loop is idle (unless a newer cycle's supersedes it).
    pending: Option<(build::Prepared, Instant)>,
    /// The suite was compiled since it was last packaged for the engine (if it runs there).
    suite_new: bool,
}

impl Loop<'_> {
    /// The suite against the stack, on this terminal: whether it passed. Where it runs in the
    /// engine, its image is packaged first when it was compiled anew, as `e2e` does.
    fn suite(&mut self) -> bool {
        let project = self.run.project;
        let reporter = &self.run.reporter;
        let stack = &*self.stack;
        if std::mem::take(&mut self.suite_new) {
            let dir = stack.dir().to_owned();
            let log = stack.log().to_owned();
            let mut runner = Runner { dir, log, exec: &mut RealExec, record: None };
            let packaged =
                stack.suite_steps(project).iter().try_for_each(|s| runner.step(reporter, s));
            if let Err(e) = packaged {
                reporter.line(format!("packaging the suite for the engine FAILED: {e:#}"));
                self.suite_new = true;
                return false;
            }
        }
        let suite = stack.suite(project, "e2e", &self.run.opts.test_args);
        reporter.command(&suite);
        suite.run_inherit().is_ok()
    }

    /// Watches until Ctrl-C; each batch of changes, quiet for `debounce`, is one cycle.
    fn watch(&mut self, debounce: Duration) -> Result<()> {
        use notify::Watcher;
        let project = self.run.project;
        let reporter = &self.run.reporter;
        let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(tx).context("starting the file watcher")?;
        for path in WATCHED.iter().map(|w| project.root.join(w)).filter(|p| p.exists()) {
            watcher
                .watch(&path, notify::RecursiveMode::Recursive)
                .with_context(|| format!("watching {}", path.display()))?;
        }
        let watched = WATCHED.join(", ");
        reporter.line(format!("watching {watched} for changes (Ctrl-C stops and tears down)"));
        let mut cycle = 0;
        loop {
            let mut changed = BTreeSet::new();
            let mut quiet_since: Option<Instant> = None;
            while quiet_since.is_none_or(|t| t.elapsed() < debounce) {
                interrupt::check()?;
                if quiet_since.is_none() {
                    self.record_images();
                }
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(Ok(event)) if changes_content(&event.kind) => {
                        for path in event.paths.into_iter().filter(|p| relevant(&project.root, p)) {
                            if changed.insert(path) {
                                quiet_since = Some(Instant::now());
                            }
                        }
                    }
                    Ok(Err(e)) => reporter.line(format!("watch error: {e}")),
                    Ok(Ok(_)) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        anyhow::bail!("the file watcher stopped")
                    }
                }
            }
            changed.retain(|p| is_change(p));
            let names: Vec<String> = changed.iter().map(|p| project.display(p)).collect();
            if names.is_empty() {
                continue;
            }
            cycle += 1;
            let started = Instant::now();
            let what = match names.len() {
                n if n > 3 => format!("{} (+{} more)", names[..3].join(", "), n - 3),
                _ => names.join(", "),
            };
            reporter.line(format!("changed: {what}"));
            let mut steps = Steps(reporter, Vec::new());
            let outcome = self.cycle(&names, &mut steps);
            let done = steps.1.join(", ");
            let took = secs(started.elapsed());
            let summary = match outcome {
                Ok(did) => format!("{did}; {done}; total {took}"),
                Err(stopped) if done.is_empty() => format!("{stopped} ({took})"),
                Err(stopped) => format!("{stopped} ({done})"),
            };
            reporter.line(format!("cycle {cycle}: changed {what}; {summary}"));
        }
    }

    /// One cycle: what it did, or (its error shown) where it stopped; the loop goes on.
    fn cycle(&mut self, changed: &[String], steps: &mut Steps) -> Result<String, String> {
        let project = self.run.project;
        let reporter = &self.run.reporter;
        let inputs = self.run.inputs();
        let prepared =
            steps.run("compile+plan", "compile or plan FAILED, the stack is unchanged", || {
                build::prepare(inputs, build::Goal::Build(&[]))
            })?;
        // What runs once this cycle's change is applied; recorded only when it is, so that a
        // change that failed is tried again by the next cycle, never taken as running.
        let applied = running_of(&prepared.plan);
        // Only binaries changed: each synced into its containers (docs/commands.md); the images
        // follow once the loop is idle.
        let synced = match binary_only_changes(&prepared.plan, &self.running) {
            Some(changed) => steps.run(
                "sync+restart",
                "syncing the binary FAILED, the stack is as it was",
                || self.stack.sync_binaries(project, reporter, &changed, &prepared.plan),
            )?,
            None => None,
        };
        let (did, restarted, record) = match synced {
            Some(synced) => (format!("synced {}", synced.join(", ")), true, Some(prepared)),
            None => {
                let rebuilt = list(&uncached(&prepared.plan));
                let (engine_images, _) =
                    steps.run("images", "image build FAILED, the stack is unchanged", || {
                        build::finish(inputs, prepared, false)
                    })?;
                let stopped = format!(
                    "rebuilt {rebuilt}; replacing FAILED, the rest of the stack is unchanged"
                );
                let replaced = steps.run("replace", &stopped, || {
                    self.stack.replace(project, reporter, &engine_images)
                })?;
                let did = format!("rebuilt {rebuilt}; replaced {}", list(&replaced));
                (did, !replaced.is_empty(), None)
            }
        };
        self.running.extend(applied);
        if restarted {
            let stopped = format!("{did}; NOT READY");
            let timeout = self.run.opts.ready_timeout;
            steps.run("ready", &stopped, || self.stack.wait_ready(reporter, timeout))?;
        }
        // Recompiled only when the change can touch it: a no-op cargo check costs 0.25 s.
        let passed = steps.run("suite", "suite compile FAILED, the stack is up", || {
            if crate::suite::touched_by(changed) {
                let jobs = self.run.session.facts.env(None).map_or(1, |e| e.cargo_jobs());
                crate::suite::compile_here(project, reporter, jobs)?;
                self.suite_new = true;
            }
            Ok(self.suite())
        })?;
        let live =
            if record.is_some() { " (binary only: process restarted in its pod)" } else { "" };
        self.pending = record.map(|p| (p, Instant::now()));
        Ok(format!("{did}{live}; suite {}", if passed { "passed" } else { "FAILED" }))
    }

    /// After a live update, once the loop is idle 500 ms: builds its plan's images (what now
    /// runs) and writes `images.json`, so `e2e` and later cycles find them built.
    fn record_images(&mut self) {
        let idle = |(_, t): &mut (_, Instant)| t.elapsed() >= Duration::from_millis(500);
        let Some((prepared, _)) = self.pending.take_if(idle) else { return };
        let t = Instant::now();
        let built = uncached(&prepared.plan);
        if built.is_empty() {
            return;
        }
        let done = build::finish(self.run.inputs(), prepared, false);
        let built = list(&built);
        let took = secs(t.elapsed());
        self.run.reporter.line(match done {
            Ok(_) => format!("  built {built} for the record in {took} (the stack kept running)"),
            Err(e) => format!("  building the image for the record FAILED: {e:#}"),
        });
    }
}

/// A cycle's steps: each that succeeded, in order, with its time (`compile+plan 1.2s`).
struct Steps<'a>(&'a Reporter, Vec<String>);

impl Steps<'_> {
    fn run<T>(
        &mut self,
        name: &str,
        stopped: &str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T, String> {
        let t = Instant::now();
        let out =
            f().inspect_err(|e| self.0.line(format!("{e:#}"))).map_err(|_| stopped.to_owned())?;
        self.1.push(format!("{name} {}", secs(t.elapsed())));
        Ok(out)
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".into()
    } else {
        items.join(", ")
    }
}

/// Each running image by name: its reference, and its fingerprint outside its binary.
type Running = BTreeMap<String, (String, String)>;

fn running_of(plan: &[PlanItem]) -> Running {
    let each =
        |i: &PlanItem| (i.spec.name.clone(), (i.reference.clone(), i.outside_binary.clone()));
    plan.iter().map(each).collect()
}

fn uncached(plan: &[PlanItem]) -> Vec<String> {
    plan.iter().filter(|i| !i.is_cached()).map(|i| i.spec.name.clone()).collect()
}

/// The images of `plan` not running (new, or back to an earlier one), if there are some and
/// each differs from the running one in its binary alone.
fn binary_only_changes<'a>(plan: &'a [PlanItem], running: &Running) -> Option<Vec<&'a PlanItem>> {
    let running = |i: &PlanItem| running.get(&i.spec.name);
    let changed: Vec<&PlanItem> = plan
        .iter()
        .filter(|i| running(i).map(|(reference, _)| reference) != Some(&i.reference))
        .collect();
    let binary_only = |i: &&PlanItem| {
        i.spec.binary().is_some() && running(i).map(|(_, o)| o) == Some(&i.outside_binary)
    };
    (!changed.is_empty() && changed.iter().all(binary_only)).then_some(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        manifests::Manifests,
        runtime::podman::{binary_destination, changed_pods, changed_secrets},
    };
    use std::collections::BTreeMap;

    #[test]
    fn only_sources_images_manifests_and_the_suite_count() {
        let root = Path::new("/r");
        assert!(relevant(root, Path::new("/r/services/gateway/src/api.rs")));
        assert!(relevant(root, Path::new("/r/Cargo.lock")));
        assert!(relevant(root, Path::new("/r/test/e2e/manifests/40-gateway.yaml")));
        assert!(!relevant(root, Path::new("/r/target/debug/gateway")));
        assert!(!relevant(root, Path::new("/r/services/gateway/src/.api.rs.swp")));
        assert!(!relevant(root, Path::new("/r/services/gateway/src/api.rs~")));
        assert!(!relevant(root, Path::new("/r/README.md")));
        assert!(!relevant(root, Path::new("/elsewhere/services/x")));
    }

    #[test]
    fn reads_and_mtimes_start_no_cycle() {
        use notify::event::{
            AccessKind, CreateKind, DataChange, EventKind, MetadataKind, ModifyKind,
        };
        assert!(!changes_content(&EventKind::Access(AccessKind::Any)));
        assert!(!changes_content(&EventKind::Modify(ModifyKind::Metadata(
            MetadataKind::WriteTime
        ))));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Data(DataChange::Any))));
        assert!(changes_content(&EventKind::Create(CreateKind::File)));
    }

    fn item(name: &str, binary: bool, tag: &str, outside: &str) -> build::PlanItem {
        build::PlanItem {
            spec: crate::images::ImageSpec {
                name: name.into(),
                repository: format!("localhost/e2e-{name}"),
                dockerfile: "d".into(),
                context: if binary {
                    crate::images::BuildContext::Binary(name.into())
                } else {
                    crate::images::BuildContext::Dir("c".into())
                },
                memory: 1,
                build_args: Default::default(),
            },
            context: "c".into(),
            fingerprint: tag.into(),
            outside_binary: outside.into(),
            reference: format!("localhost/e2e-{name}:{tag}"),
            action: build::Action::Build { reason: String::new() },
        }
    }

    #[test]
    fn only_a_change_of_binaries_alone_is_synced() {
        let running: Running =
            [("gateway", "g1", "G"), ("data-storage", "d1", "D"), ("redis", "r1", "r1")]
                .iter()
                .map(|(n, t, o)| (n.to_string(), (format!("localhost/e2e-{n}:{t}"), o.to_string())))
                .collect();
        let names = |v: Option<Vec<&build::PlanItem>>| {
            v.map(|v| v.iter().map(|i| i.spec.name.clone()).collect::<Vec<_>>())
        };
        let plan = |g: (&str, &str), reporter: (&str, &str)| {
            vec![
                item("gateway", true, g.0, g.1),
                item("data-storage", true, "d1", "D"),
                item("redis", false, reporter.0, reporter.1),
            ]
        };
        // The gateway's binary changed: synced.
        assert_eq!(
            names(binary_only_changes(&plan(("g2", "G"), ("r1", "r1")), &running)),
            Some(vec!["gateway".to_owned()])
        );
        // Nothing changed: nothing to sync.
        assert_eq!(names(binary_only_changes(&plan(("g1", "G"), ("r1", "r1")), &running)), None);
        // Its Dockerfile (or base image, ...) changed too: a new image and pod.
        assert_eq!(names(binary_only_changes(&plan(("g2", "G2"), ("r1", "r1")), &running)), None);
        // Redis changed beside it: everything the usual way.
        assert_eq!(names(binary_only_changes(&plan(("g2", "G"), ("r2", "r2")), &running)), None);
    }

    #[test]
    fn a_binary_goes_where_the_dockerfile_copies_it() {
        let gateway = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile.gateway"),
        )
        .unwrap();
        assert_eq!(
            binary_destination(&gateway, "gateway").as_deref(),
            Some("/usr/local/bin/gateway")
        );
        assert_eq!(
            binary_destination("FROM x\ncopy --chmod=0755 svc /opt/bin/\n", "svc").as_deref(),
            Some("/opt/bin/svc")
        );
        assert_eq!(binary_destination("COPY other /x\nCOPY a b c /d/\n", "svc"), None);
    }

    #[test]
    fn only_pods_whose_image_changed_are_replaced() {
        let m =
            Manifests::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/e2e/manifests"))
                .unwrap();
        let mut ports = 40000..;
        let old =
            m.render_podman(&BTreeMap::new(), "1", None, || Ok(ports.next().unwrap())).unwrap();
        let mut ports = 40000..;
        let pinned =
            [("localhost/e2e-gateway".to_owned(), "localhost/e2e-gateway:new".to_owned())].into();
        let new = m.render_podman(&pinned, "1", None, || Ok(ports.next().unwrap())).unwrap();
        let changed: Vec<&str> =
            changed_pods(&old, &new).iter().map(|&i| new.pods[i].base.as_str()).collect();
        assert_eq!(changed, ["gateway"]);
        assert!(changed_pods(&old, &old).is_empty());
        // A Secret edited (with a binary or alone): the pods that read it are created again.
        let mut edited = new.clone();
        edited.secrets[0].payload = edited.secrets[0].payload.replace('=', "A");
        assert_ne!(edited.secrets, new.secrets, "the test changed the payload");
        let changed: Vec<&str> =
            changed_pods(&new, &edited).iter().map(|&i| new.pods[i].base.as_str()).collect();
        assert_eq!(changed, ["postgres", "data-storage"]);
        assert_eq!(changed_secrets(&new, &edited), [&edited.secrets[0]]);
    }
}
