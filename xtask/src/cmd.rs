//! External commands as values: argument lists (never `sh -c`), printed exactly as they run.

use std::{
    fmt,
    fs::File,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use anyhow::Context;

use crate::interrupt;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// What changes the engine's state (deploy and teardown steps) finishes even after
    /// Ctrl-C, in a process group of its own that a terminal's Ctrl-C does not reach;
    /// everything else is stopped by it.
    pub survives_interrupt: bool,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Cmd {
        let program = program.into();
        Cmd { program, ..Cmd::default() }
    }

    pub fn arg(self, arg: impl Into<String>) -> Cmd {
        self.args([arg])
    }

    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Cmd {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Cmd {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn cwd(self, dir: impl Into<PathBuf>) -> Cmd {
        Cmd { cwd: Some(dir.into()), ..self }
    }

    pub fn survives_interrupt(self) -> Cmd {
        Cmd { survives_interrupt: true, ..self }
    }

    pub fn pipe(self, next: Cmd) -> Pipeline {
        Pipeline(vec![self, next])
    }

    fn expression(&self) -> duct::Expression {
        let mut expression = duct::cmd(&self.program, &self.args).unchecked();
        for (key, value) in &self.env {
            expression = expression.env(key, value);
        }
        if let Some(dir) = &self.cwd {
            expression = expression.dir(dir);
        }
        if self.survives_interrupt {
            expression = expression.before_spawn(|c| {
                std::os::unix::process::CommandExt::process_group(c, 0);
                Ok(())
            });
        }
        expression
    }

    /// Runs with stdout and stderr appended to `log`; a failure names the log and its last lines.
    pub fn run_logged(&self, log: &Path) -> anyhow::Result<()> {
        Pipeline(vec![self.clone()]).run_logged(log)
    }

    /// [`Cmd::run_logged`], but stdout (machine-readable) returned instead of logged.
    pub fn run_logged_capturing(&self, log: &Path) -> anyhow::Result<String> {
        let stdout = Pipeline(vec![self.clone()]).run_into(log, true)?;
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }

    /// Runs the command with its output on this terminal (for the test suite).
    pub fn run_inherit(&self) -> anyhow::Result<()> {
        let handle = (self.expression().stdin_null().start())
            .with_context(|| format!("starting `{self}`"))?;
        CmdError::check(self, &self.wait_output(&handle)?, None)
    }

    /// Runs the command and returns its stdout; the error carries its stderr.
    pub fn read(&self) -> anyhow::Result<String> {
        let output = self.run_to_end(true)?;
        CmdError::check(self, &output, None)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs the command to its end: its exit status and output, unchecked.
    pub fn output(&self) -> anyhow::Result<Output> {
        self.run_to_end(true)
    }

    /// `Ok` when `output` (of this command) is a success; else the error, with its stderr.
    pub fn check(&self, output: &Output) -> anyhow::Result<()> {
        CmdError::check(self, output, None)
    }

    /// Starts the command in the background, stdout and stderr appended to `log`.
    pub fn start_logged(&self, log: &Path) -> anyhow::Result<duct::Handle> {
        let open = || std::fs::OpenOptions::new().create(true).append(true).open(log);
        let expression = self.expression().stdin_null().stdout_file(open()?).stderr_file(open()?);
        expression.start().with_context(|| format!("starting `{self}`"))
    }

    /// Runs the command and answers whether it exited 0 (for `podman image exists` and the like).
    pub fn succeeds(&self) -> anyhow::Result<bool> {
        Ok(self.run_to_end(false)?.status.success())
    }

    /// Run to its end by xshell (empty stdin, output captured or dropped); duct runs what streams
    /// into a log, pipes into another command, or must die on Ctrl-C.
    fn run_to_end(&self, capture: bool) -> anyhow::Result<Output> {
        let sh = xshell::Shell::new()?;
        if let Some(dir) = &self.cwd {
            sh.change_dir(dir);
        }
        let mut cmd = sh.cmd(&self.program).args(&self.args).envs(self.env.clone());
        cmd = cmd.quiet().ignore_status();
        if !capture {
            cmd = cmd.ignore_stdout().ignore_stderr();
        }
        cmd.output().with_context(|| format!("running `{self}`"))
    }

    /// Waits for the end (killing it on Ctrl-C unless it survives interrupts).
    fn wait_output(&self, handle: &duct::Handle) -> anyhow::Result<Output> {
        loop {
            if let Some(output) = handle.try_wait()? {
                return Ok(output.clone());
            }
            if !self.survives_interrupt && interrupt::interrupted() {
                let _ = handle.kill();
                anyhow::bail!("interrupted while running `{self}`");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Commands joined by pipes, `a | b`, run with every stderr and the last stdout in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline(pub Vec<Cmd>);

impl Pipeline {
    pub fn run_logged(&self, log: &Path) -> anyhow::Result<()> {
        self.run_into(log, false).map(drop)
    }

    /// Every stderr to `log`; the last stdout to `log` too, or, with `capture`, returned.
    fn run_into(&self, log: &Path, capture: bool) -> anyhow::Result<Vec<u8>> {
        let first = self.0.first().context("an empty pipeline")?;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = File::options().create(true).append(true).open(log);
        let mut file = file.with_context(|| format!("opening log file {}", log.display()))?;
        writeln!(file, "$ {self}")?;
        let pipe = |piped: duct::Expression, next: &Cmd| piped.pipe(next.expression());
        let expr = self.0[1..].iter().fold(first.expression().stdin_null(), pipe);
        let expr =
            if capture { expr.stdout_capture() } else { expr.stdout_file(file.try_clone()?) };
        let handle =
            (expr.stderr_file(file).start()).with_context(|| format!("starting `{self}`"))?;
        let output = first.wait_output(&handle)?;
        CmdError::check(self, &output, Some(log))?;
        Ok(output.stdout)
    }
}

impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.iter().map(ToString::to_string).collect::<Vec<_>>().join(" | "))
    }
}

/// Shell-quoted, so a printed command can be pasted into a terminal.
impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in &self.env {
            write!(f, "{key}={} ", quote(value))?;
        }
        write!(f, "{}", quote(&self.program))?;
        self.args.iter().try_for_each(|a| write!(f, " {}", quote(a)))
    }
}

pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[derive(Debug)]
pub struct CmdError {
    pub cmd: String,
    pub status: String,
    pub code: Option<i32>,
    pub log: Option<PathBuf>,
    pub tail: String,
}

impl CmdError {
    /// `Ok` for a success; else the error, with the last lines of `log`, else of its stderr.
    fn check(cmd: &dyn fmt::Display, output: &Output, log: Option<&Path>) -> anyhow::Result<()> {
        let status = output.status;
        let code = output.status.code();
        if status.success() {
            return Ok(());
        }
        let stderr = || String::from_utf8_lossy(&output.stderr).trim().to_owned();
        let tail = log.map_or_else(stderr, |l| tail(l, 20));
        let status = code.map_or_else(|| status.to_string(), |c| format!("exit code {c}"));
        let cmd = cmd.to_string();
        let log = log.map(Path::to_owned);
        Err(CmdError { cmd, status, code, log, tail }.into())
    }
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed with {}", self.cmd, self.status)?;
        if let Some(log) = &self.log {
            write!(f, "\n  full log: {}", log.display())?;
        }
        if !self.tail.is_empty() {
            write!(f, "\n  last lines:")?;
        }
        (self.tail.lines()).try_for_each(|line| write!(f, "\n    | {line}"))
    }
}

impl std::error::Error for CmdError {}

/// The last `count` lines of a file (empty when it cannot be read).
pub fn tail(path: &Path, count: usize) -> String {
    let file = File::open(path).map(BufReader::new);
    let lines: Vec<String> =
        file.into_iter().flat_map(|f| f.lines().map_while(Result::ok)).collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let cmd = Cmd::new("podman").args([
            "build",
            "--build-arg",
            "BASE_IMAGE=localhost/e2e-base:bookworm",
            "a b",
            "it's",
        ]);
        assert_eq!(
            cmd.to_string(),
            r"podman build --build-arg BASE_IMAGE=localhost/e2e-base:bookworm 'a b' 'it'\''s'"
        );
        assert_eq!(Cmd::new("cargo").env("X", "1 2").arg("t").to_string(), "X='1 2' cargo t");
    }

    #[test]
    fn failure_names_command_log_and_last_lines() {
        let dir = std::env::temp_dir().join(format!("xtask-cmd-{}", std::process::id()));
        let log = dir.join("fail.log");
        let _ = std::fs::remove_file(&log);
        let err = Cmd::new("sh")
            .args(["-c", "echo first; echo second >&2; exit 3"])
            .run_logged(&log)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exit code 3"), "{err}");
        assert!(err.contains("fail.log"), "{err}");
        assert!(err.contains("| first") && err.contains("| second"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pipelines_print_and_fail_like_commands() {
        let pipeline =
            Cmd::new("podman").args(["save", "x"]).pipe(Cmd::new("zstd").args(["-o", "a b"]));
        assert_eq!(pipeline.to_string(), "podman save x | zstd -o 'a b'");
        let dir = std::env::temp_dir().join(format!("xtask-pipe-{}", std::process::id()));
        let log = dir.join("p.log");
        Cmd::new("echo").arg("hello").pipe(Cmd::new("cat")).run_logged(&log).unwrap();
        // The second command reads the pipe (`wc -c` counts what `echo` wrote).
        Cmd::new("echo").arg("1234").pipe(Cmd::new("wc").arg("-c")).run_logged(&log).unwrap();
        assert!(std::fs::read_to_string(&log).unwrap().lines().any(|l| l.trim() == "5"));
        assert!(std::fs::read_to_string(&log).unwrap().contains("hello"));
        let err = Cmd::new("echo")
            .arg("x")
            .pipe(Cmd::new("sh").args(["-c", "echo broken >&2; exit 4"]))
            .run_logged(&log)
            .unwrap_err();
        assert!(
            err.to_string().contains("exit code 4") && err.to_string().contains("broken"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn read_returns_stdout_and_errors_carry_stderr() {
        assert_eq!(Cmd::new("echo").arg("hi").read().unwrap(), "hi\n");
        let err = Cmd::new("sh").args(["-c", "echo oops >&2; exit 1"]).read().unwrap_err();
        assert!(err.to_string().contains("oops"), "{err}");
        assert!(
            err.to_string().contains("failed with exit code 1"),
            "worded as a pipeline's: {err}"
        );
        let code = err.downcast_ref::<CmdError>().and_then(|e| e.code);
        assert_eq!(code, Some(1), "the exit code, for the build's diagnosis");
        assert!(Cmd::new("true").succeeds().unwrap());
        assert!(!Cmd::new("false").succeeds().unwrap());
    }
}
