//! A run as data: phases of steps, each either printed (`--dry-run`) or executed, so the
//! plan a person reads is, by construction, the plan that runs. Commands go through an
//! [`Exec`], which the tests replace with one that records what would have run.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::{cmd::Cmd, fsx, interrupt, report::Reporter};

use super::RunRecord;

pub type Observe<'a> = Box<dyn Fn(&Reporter) -> anyhow::Result<()> + 'a>;

/// One thing a run does; `doing` says what, when it fails.
pub enum Step<'a> {
    /// Writes a file of the run (the rendered stack, a config).
    Write { path: PathBuf, contents: String },
    /// Records in `state.json` what the next steps create, before they create it.
    Record(RunRecord),
    /// Runs a command with its output in the run's log.
    Run { cmd: Cmd, doing: String },
    /// Writes a secret's payload (owner-only), runs the command that reads it, removes it.
    Secret { file: PathBuf, payload: String, cmd: Cmd, doing: String },
    /// Runs commands at once, each with its output in the run's log; all must succeed.
    Parallel { cmds: Vec<Cmd>, doing: String },
    /// Runs a command on this terminal (a test suite).
    Terminal { cmd: Cmd, doing: String },
    /// Something that observes rather than changes (polling until ready, loading only what
    /// is missing): shown as what it does, then run.
    Watch { what: String, run: Observe<'a> },
}

/// A named group of steps, timed as one phase of the run.
pub struct Phase<'a> {
    pub name: &'static str,
    pub steps: Vec<Step<'a>>,
}

impl<'a> Phase<'a> {
    pub fn new(name: &'static str, steps: Vec<Step<'a>>) -> Phase<'a> {
        Phase { name, steps }
    }
}

impl Step<'_> {
    /// The lines `--dry-run` prints for this step: its command, or what it does as a comment.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Step::Write { .. } | Step::Record(_) => Vec::new(),
            Step::Run { cmd, .. } | Step::Secret { cmd, .. } | Step::Terminal { cmd, .. } => {
                vec![cmd.to_string()]
            }
            Step::Parallel { cmds, .. } => {
                std::iter::once(format!("# at once, {} commands:", cmds.len()))
                    .chain(cmds.iter().map(ToString::to_string))
                    .collect()
            }
            Step::Watch { what, .. } => what.lines().map(|l| format!("# {l}")).collect(),
        }
    }
}

/// How commands are run: for real ([`Live`]), or recorded by the tests.
pub trait Exec {
    fn run(&mut self, cmd: &Cmd, log: &Path) -> anyhow::Result<()>;
    /// Runs commands at once (by default, one after the other); returns the failures.
    fn run_all(&mut self, cmds: &[Cmd], log: &Path) -> Vec<String> {
        failures(cmds.iter().map(|c| self.run(c, log)))
    }
    fn terminal(&mut self, cmd: &Cmd) -> anyhow::Result<()>;
    /// Asks a yes/no question of the world (`podman pod exists`): not a step of the run.
    fn probe(&mut self, cmd: &Cmd) -> bool;
    /// Whether observing steps run (the recorder skips them).
    fn watches(&self) -> bool {
        true
    }
}

pub fn failures(results: impl IntoIterator<Item = anyhow::Result<()>>) -> Vec<String> {
    results.into_iter().filter_map(|r| Some(format!("{:#}", r.err()?))).collect()
}

pub struct Live;

/// How many commands of a step [`Live`] runs at once: four per CPU.
fn at_once() -> usize {
    crate::memory::cpus() * 4
}

impl Exec for Live {
    fn run(&mut self, cmd: &Cmd, log: &Path) -> anyhow::Result<()> {
        cmd.run_logged(log)
    }

    /// At most [`at_once`] at a time: past that, podman processes only crowd the CPUs (each
    /// costs about 0.1 s of CPU to start) and the engine's locks.
    fn run_all(&mut self, cmds: &[Cmd], log: &Path) -> Vec<String> {
        let next = std::sync::Mutex::new(cmds.iter().enumerate());
        let results = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..cmds.len().min(at_once()) {
                s.spawn(|| loop {
                    let Some((i, cmd)) = next.lock().expect("not poisoned").next() else { break };
                    let result = cmd.run_logged(log);
                    results.lock().expect("not poisoned").push((i, result));
                });
            }
        });
        let mut results = results.into_inner().expect("not poisoned");
        results.sort_by_key(|(i, _)| *i);
        failures(results.into_iter().map(|(_, r)| r))
    }

    fn terminal(&mut self, cmd: &Cmd) -> anyhow::Result<()> {
        cmd.run_inherit()
    }

    fn probe(&mut self, cmd: &Cmd) -> bool {
        cmd.clone().survives_interrupt().succeeds().unwrap_or(false)
    }
}

/// Executes phases, keeping the record last written (for the teardown after a failure).
pub struct Runner<'e> {
    pub dir: PathBuf,
    pub log: PathBuf,
    pub exec: &'e mut dyn Exec,
    pub record: Option<RunRecord>,
}

impl Runner<'_> {
    pub fn phases(&mut self, r: &Reporter, phases: &[Phase]) -> anyhow::Result<()> {
        for phase in phases {
            r.phase(phase.name, |r| phase.steps.iter().try_for_each(|s| self.step(r, s)))?;
        }
        Ok(())
    }

    pub fn step(&mut self, r: &Reporter, step: &Step) -> anyhow::Result<()> {
        match step {
            Step::Write { path, contents } => fsx::write_atomic(path, contents),
            Step::Record(record) => {
                record.save(&self.dir)?;
                self.record = Some(record.clone());
                Ok(())
            }
            Step::Run { cmd, doing } => {
                r.command(cmd);
                self.exec.run(cmd, &self.log).with_context(|| doing.clone())
            }
            Step::Secret { file, payload, cmd, doing } => {
                fsx::write_private(file, payload)?;
                r.command(cmd);
                let result = self.exec.run(cmd, &self.log);
                let _ = std::fs::remove_file(file);
                result.map_err(damaged_secrets).with_context(|| doing.clone())
            }
            Step::Parallel { cmds, doing } => {
                cmds.iter().for_each(|c| r.command(c));
                let failed = self.exec.run_all(cmds, &self.log);
                anyhow::ensure!(failed.is_empty(), "{doing}:\n{}", failed.join("\n"));
                Ok(())
            }
            Step::Terminal { cmd, doing } => {
                r.command(cmd);
                self.exec.terminal(cmd).with_context(|| doing.clone())
            }
            Step::Watch { run, .. } if self.exec.watches() => run(r),
            Step::Watch { .. } => Ok(()),
        }
    }
}

/// podman 4.3 writes its secret database (`secrets.json`, `filedriver/secretsdata.json`) in
/// place: a podman killed mid-write (by anything; this xtask lets its own finish) leaves a file
/// empty, and every `podman secret` then fails.
fn damaged_secrets(err: anyhow::Error) -> anyhow::Error {
    if !format!("{err:#}").contains("unexpected end of JSON input") {
        return err;
    }
    let what = format!(
        "{err:#}\npodman's secret database is damaged (\"unexpected end of JSON input\"): a \
         podman was killed while writing it, and every `podman secret` command fails until it \
         is replaced"
    );
    let fix = "on the engine's machine, move podman's secrets directory aside and podman starts \
        an empty one (the secrets in it are lost): \
        `mv \"$(podman info --format '{{.Store.GraphRoot}}')/secrets\" /tmp/podman-secrets.broken`";
    crate::problem::Problem::new(what, fix).into()
}

/// Runs commands in turn, each shown, with its output in `log` (`dev`'s changes to a stack),
/// each to its end even after Ctrl-C (as the deploy's steps).
pub fn run_shown(r: &Reporter, log: &Path, cmds: &[Cmd], doing: &str) -> anyhow::Result<()> {
    cmds.iter().try_for_each(|c| {
        r.command(c);
        interrupt::check()?;
        c.clone().survives_interrupt().run_logged(log).with_context(|| doing.to_owned())
    })
}

pub fn print(phases: &[Phase]) -> Vec<String> {
    phases.iter().flat_map(|p| p.steps.iter().flat_map(Step::lines)).collect()
}

#[cfg(test)]
/// The commands `--dry-run` prints for these phases, comments left out (for tests that
/// compare them with the commands executed).
pub fn printed_commands(phases: &[Phase]) -> Vec<String> {
    print(phases).into_iter().filter(|l| !l.starts_with('#')).collect()
}

/// Executes lists of phases in turn with a [`Recorder`]: the recorder, and the record the
/// run wrote last.
#[cfg(test)]
pub fn record_run(dir: &Path, log: &Path, plans: &[&[Phase]]) -> (Recorder, Option<RunRecord>) {
    let mut rec = Recorder::default();
    let mut runner =
        Runner { dir: dir.to_owned(), log: log.to_owned(), exec: &mut rec, record: None };
    let r = Reporter::quiet();
    for plan in plans {
        runner.phases(&r, plan).unwrap();
    }
    let record = runner.record;
    (rec, record)
}

/// Records the commands a run executes, answering every probe "no" (nothing is left).
#[cfg(test)]
#[derive(Default)]
pub struct Recorder {
    pub commands: Vec<String>,
    /// Those of them that Ctrl-C would stop mid-way.
    pub interruptible: Vec<String>,
}

#[cfg(test)]
impl Recorder {
    fn push(&mut self, cmd: &Cmd) {
        self.commands.push(cmd.to_string());
        if !cmd.survives_interrupt {
            self.interruptible.push(cmd.to_string());
        }
    }
}

#[cfg(test)]
impl Exec for Recorder {
    fn run(&mut self, cmd: &Cmd, _log: &Path) -> anyhow::Result<()> {
        self.push(cmd);
        Ok(())
    }

    fn terminal(&mut self, cmd: &Cmd) -> anyhow::Result<()> {
        self.push(cmd);
        Ok(())
    }

    fn probe(&mut self, _cmd: &Cmd) -> bool {
        false
    }

    fn watches(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_secret_database_is_named_with_its_fix() {
        let err = anyhow::anyhow!(
            "`podman secret create s f` failed\n | Error: unexpected end of JSON input"
        );
        let err = damaged_secrets(err);
        let p = err.downcast_ref::<crate::problem::Problem>().expect("a problem with a fix");
        assert!(p.what.starts_with("`podman secret create s f` failed"), "{}", p.what);
        assert!(p.fix.contains("/secrets\" /tmp/"), "{}", p.fix);
        let other = damaged_secrets(anyhow::anyhow!("Error: secret name in use"));
        assert!(
            other.downcast_ref::<crate::problem::Problem>().is_none(),
            "anything else passes through"
        );
    }
}
