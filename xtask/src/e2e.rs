//! `cargo xtask e2e`: ask the engine, prerequisites, images (infrastructure meanwhile), stack,
//! readiness, suite, fault tests, teardown, report: [`run`] is that list.

use std::time::{Duration, Instant};

use crate::{
    archive,
    build::{self, Action},
    engine_images::ImageRecord,
    fingerprint,
    memory::human,
    project::Project,
    report::{phase, secs, Reporter, RunReport},
    run::{ImageSource, Run, RunImages, RunOptions},
    runtime::{self, step, RunId},
    suite,
    timeline::{self, Span, SpanState, Timeline},
};
use anyhow::{Context, Result};

/// `cargo xtask e2e`, phase by phase.
pub fn run(options: RunOptions, project: &Project) -> Result<()> {
    if let Some(run) = &options.down {
        let only = Some(run.as_str()).filter(|s| !s.is_empty());
        return runtime::down(project, &Reporter::new(), only);
    }
    let id = RunId::new(options.cluster_name.as_deref());
    let run = Run::open(project, options, id)?;
    let opts = &run.opts;
    let reporter = &run.reporter;
    if opts.dry_run {
        return dry_run(&run);
    }
    run.require()?;
    let early = runtime::early_start(&run);
    let (images, record) = runtime::images_beside(&run, early.as_deref())?;
    let stack = runtime::stack(&run, &images.engine_images, early)?;
    reporter.line(format!("run {} (files in {})", stack.id(), project.display(stack.dir())));
    if let Some(line) = stack.where_it_runs() {
        reporter.line(line);
    }
    let (outcome, record) = run.beside_suite_compile(images.pending_suite, |gate| {
        let plan = stack.plan(opts.ready_timeout, runtime::tests(opts, project, &*stack, gate));
        runtime::execute(&*stack, reporter, project, &plan, record.or_else(|| stack.made()))
    });
    let outcome = match (outcome, runtime::finish(&*stack, reporter, record.as_ref(), opts.keep)) {
        (Ok(()), t) => t.context("E2E passed but the teardown failed"),
        (Err(e), Ok(())) => Err(e.context("E2E failed")),
        (Err(e), Err(t)) => {
            Err(e.context(format!("E2E failed, and the teardown failed too: {t:#}")))
        }
    };
    // A Ctrl-C that came after the suite (in the teardown, which went to its end) still ends
    // the run as interrupted: whoever pressed it asked for the command to stop.
    let outcome = outcome.and_then(|()| {
        let interrupted = crate::interrupt::check();
        interrupted
            .context("the suite passed and the stack is torn down, but the run was interrupted")
    });
    write_report(&run, &images, &outcome)?;
    outcome
}

/// `report.json`, and `report.html` with the `timeline.json` it is made from, in the run's
/// directory: the phases, a span per image (builds as they ran; cached and loaded images as
/// marks at the start of their phase), the builds' memory samples.
fn write_report(run: &Run, images: &RunImages, outcome: &Result<()>) -> Result<()> {
    let Run { opts, source, project, reporter, session, id, .. } = run;
    let dir = id.dir(project);
    let engine_images = &images.engine_images;
    let spans = reporter.phase_spans();
    reporter.line(format!("phases:\n{}", reporter.summary()));
    let ms = |s: f64| (s * 1000.0).round() / 1000.0;
    let built = engine_images.built_now.len();
    let archive = source.archive();
    let report = RunReport {
        run: id.to_string(),
        runtime: clap::ValueEnum::to_possible_value(&opts.runtime).map(|v| v.get_name().to_owned()),
        passed: outcome.is_ok(),
        error: outcome.as_ref().err().map(|e| format!("{e:#}")),
        phases: spans.iter().map(|p| (p.name.clone(), ms(p.end_s - p.start_s))).collect(),
        images_cached: engine_images.images.len().saturating_sub(built),
        images_built: built,
        bytes_loaded: archive.and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len()),
        first_test_s: spans.iter().find(|p| p.name == phase::SUITE).map(|p| ms(p.start_s)),
    };
    crate::fsx::write_json(&dir.join("report.json"), &report)?;
    let not_built = if archive.is_some() { SpanState::Loaded } else { SpanState::Cached };
    let at = spans.iter().find(|p| phase::IMAGES.contains(&p.name.as_str()));
    let (from, to) = at.map_or((0.0, 0.0), |p| (p.start_s, p.end_s));
    let activity = &images.activity;
    let ran = |at: Instant, took: Duration| {
        (reporter.offset(at), reporter.offset(at) + took.as_secs_f64())
    };
    let span = |i: &ImageRecord| {
        let (start_s, end_s, state, detail) =
            match activity.builds.iter().find(|b| b.image == i.name) {
                Some(b) => {
                    let (start, end) = ran(b.started, b.took);
                    let state = if b.ok { SpanState::Built } else { SpanState::Failed };
                    (start, end, state, format!("{} (cap {})", secs(b.took), human(b.cap)))
                }
                None => {
                    let built = engine_images.built_now.contains(&i.name);
                    let state = if built { SpanState::Built } else { not_built };
                    let end = if state == SpanState::Loaded { to } else { from };
                    (from, end, state, format!("{state:?}").to_lowercase())
                }
            };
        Span { name: i.name.clone(), start_s, end_s, state, detail }
    };
    let caps = activity.builds.iter().map(|b| {
        let (start_s, end_s) = ran(b.started, b.took);
        timeline::Cap { image: b.image.clone(), start_s, end_s, cap_bytes: b.cap }
    });
    let sample = |&(t, used_bytes): &(Instant, u64)| timeline::Sample {
        t_s: reporter.offset(t),
        used_bytes,
    };
    let t = Timeline {
        title: format!("cargo xtask e2e: run {id}"),
        outcome: match &report.error {
            None => "passed".to_owned(),
            Some(e) => format!("FAILED: {}", e.lines().next().unwrap_or("")),
        },
        total_s: reporter.offset(Instant::now()),
        phases: spans,
        images: engine_images.images.iter().map(span).collect(),
        memory: activity.memory.iter().map(sample).collect(),
        budget_bytes: session.facts.budget.as_ref().ok().map(|b| b.bytes),
        caps: caps.collect(),
    };
    crate::fsx::write_atomic(&dir.join("report.html"), timeline::render_html(&t))?;
    crate::fsx::write_json(&dir.join("timeline.json"), &t)?;
    let json = project.display(&dir.join("report.json"));
    reporter.line(format!("report: {json} (and report.html beside it)"));
    if outcome.is_ok() {
        reporter.line("E2E passed");
    }
    Ok(())
}

/// Prints, in order and without running any, the run's commands: the images as planned, the
/// stack's phases (the values a run executes), the teardown.
fn dry_run(run: &Run) -> Result<()> {
    let Run { opts, source, project, session, .. } = run;
    let mut lines: Vec<String> = Vec::new();
    let registry = match source {
        ImageSource::Registry(prefix) => Some(prefix),
        _ => None,
    };
    let engine_images = match source.archive() {
        Some(path) => {
            let m = archive::verify(path)?;
            let env = session.facts.env(Some(&m.engine_images.base_image_id))?;
            let loading = archive::Loading::of(project, session, env.engine(), path, &m);
            lines.push("# after verifying the archive's SHA-256:".into());
            lines.extend(loading.lines());
            crate::engine_images::EngineImages {
                engine: env.engine(),
                at: env.facts.at.clone(),
                ..m.engine_images
            }
        }
        None => {
            let env = session.facts.env(None)?;
            let engine = env.engine();
            let binaries: Vec<&str> = session
                .images_file
                .images
                .iter()
                .filter_map(crate::images::ImageSpec::binary)
                .collect();
            let release = opts.build.release;
            lines.push(
                build::cargo_build(project, &binaries, env.cargo_jobs(), release).to_string(),
            );
            let prepared = build::prepare(run.inputs(), build::Goal::DryRun).context(
                "a dry run plans with the binaries on disk: run `cargo build` once first",
            )?;
            lines.extend(prepared.plan.iter().map(|item| match (&item.action, registry) {
                (Action::Cached(_), _) => {
                    format!("# {} is cached: {}", item.spec.name, item.reference)
                }
                (Action::Build { .. }, Some(prefix)) => format!(
                    "{} pull {prefix}/{}:{}  # then tagged {}",
                    engine.program(),
                    item.spec.name,
                    fingerprint::tag(&item.fingerprint),
                    item.reference,
                ),
                (Action::Build { reason }, _) => {
                    format!("{}  # {reason}", build::build_cmd_for(project, &env, item))
                }
            }));
            build::planned_engine_images(&prepared)
        }
    };
    lines.push(suite::compile(project, 1).to_string());
    let early = runtime::early_start(run);
    if let Some(early) = &early {
        let first = match source {
            ImageSource::Archive { .. } => {
                "# while the archive loads (its first images are these):"
            }
            _ => "# while the service binaries compile and their images build:",
        };
        lines.splice(0..0, [first.to_owned()].into_iter().chain(step::print(&early.plan_early())));
    }
    let stack = runtime::stack(run, &engine_images, early)?;
    lines.extend(step::print(
        &stack.plan(opts.ready_timeout, runtime::tests(opts, project, &*stack, None)),
    ));
    lines.extend(stack.failure_commands());
    let keep = if opts.keep { "  # skipped: --keep" } else { "" };
    lines.extend(stack.final_record().teardown().concat().iter().map(|c| format!("{c}{keep}")));
    println!("{}", lines.join("\n"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build::BuildOptions, engine::Engine, run::Runtime};

    fn args() -> RunOptions {
        RunOptions {
            runtime: Runtime::Podman,
            keep: false,
            ready_timeout: Duration::from_secs(1),
            faults: true,
            images: None,
            registry: None,
            allow_stale: false,
            cluster_name: None,
            reuse_cluster: None,
            context: None,
            dry_run: false,
            suite_in: None,
            down: None,
            build: BuildOptions::default(),
            test_args: vec!["metrics".into()],
        }
    }

    #[test]
    fn the_image_source_is_decided_once_from_the_options() {
        assert_eq!(args().image_source(), ImageSource::Build);
        let archive = RunOptions { images: Some("a.tar.zst".into()), allow_stale: true, ..args() };
        let path = "a.tar.zst".into();
        assert_eq!(archive.image_source(), ImageSource::Archive { path, allow_stale: true });
        assert_eq!(archive.image_source().archive(), Some(std::path::Path::new("a.tar.zst")));
        let registry = RunOptions { registry: Some("r:5000/e2e".into()), ..args() };
        assert_eq!(registry.image_source(), ImageSource::Registry("r:5000/e2e".into()));
        assert_eq!(registry.image_source().archive(), None);
    }

    #[test]
    fn the_engine_follows_the_runtime() {
        let mut opts = args();
        assert_eq!(opts.engine(), Ok(Some(Engine::Podman)));
        opts.build.engine = Some(Engine::Docker);
        let p = opts.engine().unwrap_err();
        assert!(p.fix.contains("--runtime kind"), "{p}");
        opts.runtime = Runtime::Kind;
        assert_eq!(opts.engine(), Ok(Some(Engine::Docker)));
        opts.build.engine = None;
        assert_eq!(opts.engine(), Ok(None));
    }

    #[test]
    fn each_runtime_refuses_the_options_of_another() {
        let kube = RunOptions { runtime: Runtime::Kube, ..args() };
        let p = kube.check_runtime().unwrap_err();
        assert!(p.fix.contains("--context NAME") && p.fix.contains("--registry"), "{p}");
        let kube = RunOptions { context: Some("staging".into()), ..kube };
        assert!(kube.check_runtime().is_err(), "the registry is still missing");
        let kube = RunOptions { registry: Some("r.example.com/e2e".into()), ..kube };
        assert_eq!(kube.check_runtime(), Ok(()));
        let podman = RunOptions { context: Some("staging".into()), ..args() };
        assert!(podman.check_runtime().unwrap_err().fix.contains("--runtime kube"));
        let podman = RunOptions { reuse_cluster: Some("team".into()), ..args() };
        assert!(podman.check_runtime().unwrap_err().fix.contains("--runtime kind"));
    }

    #[test]
    fn fault_tests_run_after_the_suite_one_at_a_time_with_the_stack_file() {
        let opts = args();
        let project = Project {
            root: "/r".into(),
            target_dir: "/r/target".into(),
            e2e_dir: "/r/target/e2e".into(),
        };
        let stack = crate::runtime::podman::tests::run(std::path::Path::new("/r"));
        let phases = runtime::tests(&opts, &project, &stack, None);
        let names: Vec<&str> = phases.iter().map(|p| p.name).collect();
        assert_eq!(names, ["run E2E suite", "run fault tests"]);
        let urls = "DATA_STORAGE_URL=http://127.0.0.1:40000 GATEWAY_URL=http://127.0.0.1:40000";
        assert_eq!(
            step::print(&phases),
            [
                format!("{urls} /r/target/e2e/suite/e2e metrics"),
                format!("{urls} E2E_STACK=/r/target/e2e/runs/20261127-103501-42/stack.json /r/target/e2e/suite/faults --test-threads=1"),
            ]
        );
    }
}
