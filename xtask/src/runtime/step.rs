//! A run as data: phases of steps, each either printed (`--dry-run`) or executed, so the
//! plan a person reads is, by construction, the plan that runs. Commands go through an
//! [`Exec`], which the tests replace with one that records what would have run.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use anyhow::Context;

use crate::{cmd::Cmd, fsx, interrupt, report::Reporter};

use super::RunRecord;

/// A [`Step::Watch`]'s work: it looks at the world only through the [`Exec`] it is given, so
/// that a recorded run records its polls too.
pub type Observe<'a> = Box<dyn Fn(&Reporter, &dyn Exec) -> anyhow::Result<()> + Sync + 'a>;

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
    /// Starts commands in the background, their output in the run's log, kept running in
    /// `into` (whose owner stops them).
    Background { cmds: Vec<Cmd>, into: &'a std::sync::Mutex<Vec<duct::Handle>>, doing: String },
    /// Something that observes rather than changes (polling until ready, loading only what
    /// is missing): shown as what it does and the commands it polls (each as often as it
    /// takes), then run.
    Watch { what: String, polls: Vec<Poll>, run: Observe<'a> },
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
            Step::Background { cmds, .. } => cmds.iter().map(ToString::to_string).collect(),
            Step::Parallel { cmds, .. } => {
                std::iter::once(format!("# at once, {} commands:", cmds.len()))
                    .chain(cmds.iter().map(ToString::to_string))
                    .collect()
            }
            Step::Watch { what, polls, .. } => {
                let what = what.lines().map(|l| format!("# {l}"));
                // A poll's command over lines (a probe's script) stays one comment.
                let poll = |p: &Poll| format!("{POLLED}{p}").replace('\n', POLLED_MORE);
                what.chain(polls.iter().map(poll)).collect()
            }
        }
    }
}

/// How `--dry-run` prints what a [`Step::Watch`] polls, and the lines after the first of a
/// command over lines.
pub const POLLED: &str = "#   polls: ";
const POLLED_MORE: &str = "\n#          ";

/// What a [`Step::Watch`] looks at, as `--dry-run` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// A command, run until its answer says done.
    Cmd(Cmd),
    /// An HTTP GET from this machine, until its status is 2xx.
    Get(String),
    /// A TCP connection to a port on this machine's loopback.
    Connect(u16),
}

impl std::fmt::Display for Poll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Poll::Cmd(cmd) => write!(f, "{cmd}"),
            Poll::Get(url) => write!(f, "GET {url}"),
            Poll::Connect(port) => write!(f, "connect 127.0.0.1:{port}"),
        }
    }
}

/// How commands are run and the world is looked at: for real ([`RealExec`]), or recorded by the
/// tests. Shared by the threads of a step (readiness polls each container on its own).
pub trait Exec: Sync {
    fn run(&self, cmd: &Cmd, log: &Path) -> anyhow::Result<()>;
    /// Runs commands at once (by default, one after the other); returns the failures.
    fn run_all(&self, cmds: &[Cmd], log: &Path) -> Vec<String> {
        failures(cmds.iter().map(|c| self.run(c, log)))
    }
    fn terminal(&self, cmd: &Cmd) -> anyhow::Result<()>;
    /// Asks a yes/no question of the world (`podman pod exists`): not a step of the run.
    fn probe(&self, cmd: &Cmd) -> bool;
    /// A poll ([`Poll::Cmd`]): the command run to its end, its exit status and output.
    fn output(&self, cmd: &Cmd) -> anyhow::Result<Output>;
    /// A poll ([`Poll::Get`]): the status of an HTTP GET, or why there was none.
    fn get(&self, url: &str) -> Result<u16, String>;
    /// A poll ([`Poll::Connect`]): whether a port on loopback accepts a connection.
    fn connects(&self, port: u16) -> bool;
    /// Starts a command in the background, its output into `log`; `None` when recorded.
    fn start(&self, cmd: &Cmd, log: &Path) -> anyhow::Result<Option<duct::Handle>>;
    /// A [`Step::Watch`] begins (with what it says it polls) or ends (`None`).
    fn watching(&self, _polls: Option<&[Poll]>) {}

    /// A poll's stdout, or the command's error.
    fn read(&self, cmd: &Cmd) -> anyhow::Result<String> {
        let output = self.output(cmd)?;
        cmd.check(&output)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A poll's stdout, whatever its exit status.
    fn read_any(&self, cmd: &Cmd) -> anyhow::Result<String> {
        Ok(String::from_utf8_lossy(&self.output(cmd)?.stdout).into_owned())
    }

    /// Whether a poll exited 0.
    fn succeeds(&self, cmd: &Cmd) -> anyhow::Result<bool> {
        Ok(self.output(cmd)?.status.success())
    }
}

pub fn failures(results: impl IntoIterator<Item = anyhow::Result<()>>) -> Vec<String> {
    results.into_iter().filter_map(|result| Some(format!("{:#}", result.err()?))).collect()
}

pub struct RealExec;

/// How many commands of a step [`RealExec`] runs at once: four per CPU.
fn at_once() -> usize {
    crate::memory::cpus() * 4
}

impl Exec for RealExec {
    fn run(&self, cmd: &Cmd, log: &Path) -> anyhow::Result<()> {
        cmd.run_logged(log)
    }

    /// At most [`at_once`] at a time: past that, podman processes only crowd the CPUs (each
    /// costs about 0.1 s of CPU to start) and the engine's locks.
    fn run_all(&self, cmds: &[Cmd], log: &Path) -> Vec<String> {
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
        failures(results.into_iter().map(|(_, reporter)| reporter))
    }

    fn terminal(&self, cmd: &Cmd) -> anyhow::Result<()> {
        cmd.run_inherit()
    }

    fn probe(&self, cmd: &Cmd) -> bool {
        cmd.clone().survives_interrupt().succeeds().unwrap_or(false)
    }

    fn output(&self, cmd: &Cmd) -> anyhow::Result<Output> {
        cmd.output()
    }

    /// With a timeout of 1 s: a service that does not answer is not ready yet. One agent for
    /// every GET of the process (readiness polls every 50 ms).
    fn get(&self, url: &str) -> Result<u16, String> {
        static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
        let agent = AGENT.get_or_init(|| {
            let config = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(1)));
            config.http_status_as_error(false).build().into()
        });
        match agent.get(url).call() {
            Ok(response) => Ok(response.status().as_u16()),
            Err(e) => Err(format!("GET {url}: {e}")),
        }
    }

    fn connects(&self, port: u16) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }

    fn start(&self, cmd: &Cmd, log: &Path) -> anyhow::Result<Option<duct::Handle>> {
        cmd.start_logged(log).map(Some)
    }
}

/// Executes phases, keeping the record last written (for the teardown after a failure).
pub struct Runner<'e> {
    pub dir: PathBuf,
    pub log: PathBuf,
    pub exec: &'e dyn Exec,
    pub record: Option<RunRecord>,
}

impl Runner<'_> {
    pub fn phases(&mut self, reporter: &Reporter, phases: &[Phase]) -> anyhow::Result<()> {
        for phase in phases {
            reporter.phase(phase.name, |reporter| {
                phase.steps.iter().try_for_each(|s| self.step(reporter, s))
            })?;
        }
        Ok(())
    }

    pub fn step(&mut self, reporter: &Reporter, step: &Step) -> anyhow::Result<()> {
        match step {
            Step::Write { path, contents } => fsx::write_atomic(path, contents),
            Step::Record(record) => {
                record.save(&self.dir)?;
                self.record = Some(record.clone());
                Ok(())
            }
            Step::Run { cmd, doing } => {
                reporter.command(cmd);
                self.exec.run(cmd, &self.log).with_context(|| doing.clone())
            }
            Step::Secret { file, payload, cmd, doing } => {
                fsx::write_private(file, payload)?;
                reporter.command(cmd);
                let result = self.exec.run(cmd, &self.log);
                let _ = std::fs::remove_file(file);
                result.map_err(damaged_secrets).with_context(|| doing.clone())
            }
            Step::Parallel { cmds, doing } => {
                cmds.iter().for_each(|c| reporter.command(c));
                let failed = self.exec.run_all(cmds, &self.log);
                anyhow::ensure!(failed.is_empty(), "{doing}:\n{}", failed.join("\n"));
                Ok(())
            }
            Step::Terminal { cmd, doing } => {
                reporter.command(cmd);
                self.exec.terminal(cmd).with_context(|| doing.clone())
            }
            Step::Background { cmds, into, doing } => {
                for cmd in cmds {
                    reporter.command(cmd);
                    let started = self.exec.start(cmd, &self.log).with_context(|| doing.clone())?;
                    into.lock().expect("not poisoned").extend(started);
                }
                Ok(())
            }
            Step::Watch { run, polls, .. } => {
                self.exec.watching(Some(polls));
                let watched = run(reporter, self.exec);
                self.exec.watching(None);
                watched
            }
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
pub fn run_shown(reporter: &Reporter, log: &Path, cmds: &[Cmd], doing: &str) -> anyhow::Result<()> {
    cmds.iter().try_for_each(|c| {
        reporter.command(c);
        interrupt::check()?;
        c.clone().survives_interrupt().run_logged(log).with_context(|| doing.to_owned())
    })
}

pub fn print(phases: &[Phase]) -> Vec<String> {
    phases.iter().flat_map(|p| p.steps.iter().flat_map(Step::lines)).collect()
}

#[cfg(test)]
/// The commands `--dry-run` prints for these phases, and what their Watch steps poll;
/// comments left out (for tests that compare them with what a recorded run executed).
pub fn printed_commands(phases: &[Phase]) -> Vec<String> {
    let lines = print(phases).into_iter();
    let polled = |l: String| match l.strip_prefix(POLLED) {
        Some(poll) => poll.replace(POLLED_MORE, "\n"),
        None => l,
    };
    lines.map(polled).filter(|l| !l.starts_with('#')).collect()
}

/// Executes lists of phases in turn with a [`Recorder`]: the recorder, and the record the
/// run wrote last.
#[cfg(test)]
pub fn record_run(rec: &Recorder, dir: &Path, log: &Path, plans: &[&[Phase]]) -> Option<RunRecord> {
    let mut runner = Runner { dir: dir.to_owned(), log: log.to_owned(), exec: rec, record: None };
    let reporter = Reporter::quiet();
    for plan in plans {
        runner.phases(&reporter, plan).unwrap();
    }
    runner.record
}

/// Records the commands a run executes, and what its Watch steps poll (each once, in the
/// order printed). Probes of what is left answer "no" (nothing is); every poll answers done:
/// a command exits 0, printing the first of `answers` whose key its command line starts with
/// (else nothing); a GET answers 200; a port connects.
#[cfg(test)]
#[derive(Default)]
pub struct Recorder {
    pub answers: Vec<(String, String)>,
    state: std::sync::Mutex<Recorded>,
}

#[cfg(test)]
#[derive(Default)]
struct Recorded {
    commands: Vec<String>,
    /// Those of them that Ctrl-C would stop mid-way.
    interruptible: Vec<String>,
    /// The Watch step under way: what it says it polls, and what it polled.
    polled: Option<(Vec<String>, Vec<String>)>,
}

#[cfg(test)]
impl Recorder {
    pub fn answering(answers: &[(&str, &str)]) -> Recorder {
        let answers = answers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Recorder { answers, ..Recorder::default() }
    }

    pub fn commands(&self) -> Vec<String> {
        self.state.lock().unwrap().commands.clone()
    }

    pub fn interruptible(&self) -> Vec<String> {
        self.state.lock().unwrap().interruptible.clone()
    }

    fn push(&self, cmd: &Cmd) {
        let mut state = self.state.lock().unwrap();
        state.commands.push(cmd.to_string());
        if !cmd.survives_interrupt {
            state.interruptible.push(cmd.to_string());
        }
    }

    fn poll(&self, poll: Poll) {
        let mut state = self.state.lock().unwrap();
        let line = poll.to_string();
        match &mut state.polled {
            Some((_, polled)) => polled.push(line),
            None => state.commands.push(line),
        }
    }
}

#[cfg(test)]
impl Exec for Recorder {
    fn run(&self, cmd: &Cmd, _log: &Path) -> anyhow::Result<()> {
        self.push(cmd);
        Ok(())
    }

    fn terminal(&self, cmd: &Cmd) -> anyhow::Result<()> {
        self.push(cmd);
        Ok(())
    }

    fn probe(&self, _cmd: &Cmd) -> bool {
        false
    }

    fn output(&self, cmd: &Cmd) -> anyhow::Result<Output> {
        self.poll(Poll::Cmd(cmd.clone()));
        let line = cmd.to_string();
        let answer = self.answers.iter().find(|(key, _)| line.starts_with(key.as_str()));
        let stdout = answer.map(|(_, a)| a.clone().into_bytes()).unwrap_or_default();
        let status = std::os::unix::process::ExitStatusExt::from_raw(0);
        Ok(Output { status, stdout, stderr: Vec::new() })
    }

    fn get(&self, url: &str) -> Result<u16, String> {
        self.poll(Poll::Get(url.to_owned()));
        Ok(200)
    }

    fn connects(&self, port: u16) -> bool {
        self.poll(Poll::Connect(port));
        true
    }

    fn start(&self, cmd: &Cmd, _log: &Path) -> anyhow::Result<Option<duct::Handle>> {
        self.push(cmd);
        Ok(None)
    }

    /// A Watch's polls, each once: those it declares in their order (its threads may poll in
    /// any), then any it did not declare.
    fn watching(&self, polls: Option<&[Poll]>) {
        let mut state = self.state.lock().unwrap();
        if let Some(polls) = polls {
            state.polled = Some((polls.iter().map(ToString::to_string).collect(), Vec::new()));
            return;
        }
        let (declared, polled) = state.polled.take().unwrap_or_default();
        let (mut known, unknown): (Vec<String>, Vec<String>) =
            polled.into_iter().partition(|line| declared.contains(line));
        known.sort_by_key(|line| declared.iter().position(|d| d == line));
        known.dedup();
        let mut seen = std::collections::BTreeSet::new();
        let unknown = unknown.into_iter().filter(|line| seen.insert(line.clone()));
        state.commands.extend(known.into_iter().chain(unknown));
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
