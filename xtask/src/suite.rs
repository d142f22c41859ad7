//! The E2E suite (`test/suite`): its compile and runs here, or, when the engine's published
//! ports are out of reach, its test binaries in an image run on the run's network.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::{cmd::Cmd, engine::Engine, project::Project, report::Reporter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SuiteIn {
    /// On this machine, against the ports the engine publishes here.
    Host,
    /// In a container on the run's network, against the services' in-network URLs.
    Engine,
}

impl SuiteIn {
    /// As asked, else where the services can be reached: the engine when it is remote.
    pub fn resolve(asked: Option<SuiteIn>, remote: bool) -> SuiteIn {
        asked.unwrap_or(if remote { SuiteIn::Engine } else { SuiteIn::Host })
    }
}

/// The suite's sources, where cargo runs its test binaries from.
const DIR: &str = "test/suite";
/// The contract between the suite and the xtask (the stack file), which the suite compiles in.
pub const CONTRACT_DIR: &str = "test/stack";

/// One test binary as [`place`] left it, run from the suite's directory as cargo would, with
/// the services' URLs (the run compiled it: cargo's no-op check would only cost time).
pub fn run(project: &Project, test: &str, urls: &BTreeMap<String, String>) -> Cmd {
    let cmd = Cmd::new(binary(project, test).display().to_string()).cwd(project.root.join(DIR));
    urls.iter().fold(cmd, |cmd, (var, url)| cmd.env(var, url))
}

/// Where [`place`] puts a test binary: `target/e2e/suite/<test>`, a path that stays.
fn binary(project: &Project, test: &str) -> PathBuf {
    project.e2e_dir.join("suite").join(test)
}

/// Compiles every test binary (suite, fault tests); stdout's JSON names them ([`executables`]).
pub fn compile(project: &Project, jobs: usize) -> Cmd {
    let args = format!("test --locked -p e2e-suite --tests --no-run --message-format=json-render-diagnostics -j {jobs}");
    Cmd::new(Project::cargo()).args(args.split(' ')).cwd(&project.root)
}

/// Compiles the suite on this machine and places its test binaries ([`place`]).
pub fn compile_here(project: &Project, reporter: &Reporter, jobs: usize) -> Result<()> {
    let cmd = compile(project, jobs);
    reporter.command(&cmd);
    let log = project.logs_dir().join("cargo-test-build.log");
    place(project, &cmd.run_logged_capturing(&log).context("compiling the E2E suite")?)
}

/// Whether a change (paths from the workspace's root) can change the suite's binaries.
pub fn touched_by(changed: &[String]) -> bool {
    let suite = |p: &String| p.starts_with(DIR) || p.starts_with(CONTRACT_DIR);
    changed.iter().any(|p| suite(p) || p == "Cargo.lock" || p == "Cargo.toml")
}

/// Links each test binary the compile named (`json`: its stdout) to [`binary`].
pub fn place(project: &Project, json: &str) -> Result<()> {
    let found = executables(json);
    anyhow::ensure!(!found.is_empty(), "cargo named no test binary of the suite");
    let dir = project.e2e_dir.join("suite");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (test, from) in found {
        // Linked beside, renamed over: a concurrent run never finds it missing. Skipped when
        // already that file, as rename(2) between two links of one file leaves the temporary.
        let to = binary(project, &test);
        let file_id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
        if file_id(&from).is_some_and(|from_id| file_id(&to) == Some(from_id)) {
            continue;
        }
        let tmp = crate::fsx::temp_beside(&to);
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&from, &tmp).is_err() {
            std::fs::copy(&from, &tmp)
                .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
        }
        std::fs::rename(&tmp, &to)
            .with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))?;
    }
    Ok(())
}

/// The test binaries [`place`] left, by test name (not its temporary `.` files).
fn placed(project: &Project) -> Result<BTreeMap<String, PathBuf>> {
    files_in(&project.e2e_dir.join("suite"), |name| (!name.starts_with('.')).then_some(name))
}

/// The files in `dir` that `test` names a test binary of, by that name.
fn files_in(dir: &Path, test: impl Fn(&str) -> Option<&str>) -> Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(test) = test(name).filter(|_| path.is_file()) {
            found.insert(test.to_owned(), path.clone());
        }
    }
    Ok(found)
}

/// The test binaries, by test name, from cargo's JSON messages.
pub fn executables(json_lines: &str) -> BTreeMap<String, PathBuf> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["kind"][0] == "test")
        .filter_map(|m| {
            Some((m["target"]["name"].as_str()?.to_owned(), m["executable"].as_str()?.into()))
        })
        .collect()
}

/// The suite packaged for the engine: the image, its build, and how it runs.
pub struct InEngine {
    pub engine: Engine,
    /// `localhost/e2e-suite:<run suffix>`, untagged with the run: a second name for the image
    /// of the staged binaries' content ([`InEngine::package`]), built once.
    pub image: String,
    pub context: PathBuf,
    pub dockerfile: PathBuf,
    pub base_image: String,
    /// The test binaries compiled in the engine (`<test>-<hash>` files), else cargo's here.
    pub compiled_in_engine: Option<PathBuf>,
    /// The packaging build's `--memory` (`None` where the engine cannot enforce one).
    pub cap: Option<String>,
}

impl InEngine {
    pub fn new(project: &Project, engine: Engine, suffix: &str, base_image: &str) -> InEngine {
        InEngine {
            engine,
            image: format!("localhost/e2e-suite:{suffix}"),
            context: project.e2e_dir.join("context").join(format!("suite-{suffix}")),
            dockerfile: project.root.join("docker/suite.Dockerfile"),
            base_image: base_image.to_owned(),
            compiled_in_engine: None,
            cap: Some("256m".into()),
        }
    }

    /// Stages the test binaries (the engine's, or those [`place`] left) into the build context
    /// and tags their content's image, `localhost/e2e-suite:<16 hex of the SHA-256 of the
    /// binaries, Dockerfile, base image>`, as this run's: built only if missing, and kept in the
    /// engine, so an unchanged suite builds nothing (3 s a run on a remote engine).
    pub fn package(&self, project: &Project, reporter: &Reporter) -> Result<()> {
        use sha2::{Digest, Sha256};
        let found = match &self.compiled_in_engine {
            Some(dir) => files_in(dir, |name| {
                let (test, hash) = name.rsplit_once('-')?;
                hash.chars().all(|c| c.is_ascii_hexdigit()).then_some(test)
            })?,
            None => placed(project)?,
        };
        anyhow::ensure!(!found.is_empty(), "cargo named no test binary of the suite");
        let _ = std::fs::remove_dir_all(&self.context);
        std::fs::create_dir_all(&self.context)?;
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        let read = |f: &Path| std::fs::read(f).with_context(|| format!("reading {}", f.display()));
        field(self.base_image.as_bytes());
        field(&read(&self.dockerfile)?);
        for (name, path) in found {
            let dst = self.context.join(&name);
            std::fs::copy(&path, &dst)
                .with_context(|| format!("copying {} to {}", path.display(), dst.display()))?;
            field(name.as_bytes());
            field(&read(&dst)?);
        }
        let hex: String = hasher.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
        let content = format!("localhost/e2e-suite:{hex}");
        let cmds = if self.engine.image(&content).is_some() {
            reporter.line(format!("  the suite's image is built: {content}"));
            vec![self.engine.tag(&content, &self.image)]
        } else {
            vec![self.build(), self.engine.tag(&self.image, &content)]
        };
        for cmd in cmds {
            reporter.command(&cmd);
            cmd.run_logged(&project.logs_dir().join("build-suite.log"))
                .context("packaging the suite for the engine")?;
        }
        Ok(())
    }

    pub fn build(&self) -> Cmd {
        self.engine.build(&crate::engine::BuildCmd {
            reference: self.image.clone(),
            dockerfile: &self.dockerfile,
            context: &self.context,
            memory: self.cap.clone(),
            build_args: [("BASE_IMAGE".to_owned(), self.base_image.clone())].into(),
            labels: Default::default(),
            no_cache: false,
        })
    }

    /// One test binary in a container on the network, with in-network URLs and the pods' names
    /// in its `/etc/hosts` (as the pods have them, so no DNS lookup).
    pub fn run(
        &self,
        network: &str,
        hosts: &[(String, std::net::Ipv4Addr)],
        test: &str,
        urls: &BTreeMap<String, String>,
        args: &[String],
    ) -> Cmd {
        let hosts =
            hosts.iter().flat_map(|(name, ip)| ["--add-host".into(), format!("{name}:{ip}")]);
        let urls = urls.iter().flat_map(|(var, url)| ["--env".into(), format!("{var}={url}")]);
        Cmd::new(self.engine.program())
            .args(["run", "--rm", "--network", network])
            .args(hosts.chain(urls))
            .args([self.image.clone(), format!("/suite/{test}")])
            .args(args.iter().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_suite_and_the_workspace_files_change_the_suite() {
        let changed =
            |paths: &[&str]| touched_by(&paths.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>());
        assert!(changed(&["test/suite/tests/e2e.rs"]));
        assert!(changed(&["services/gateway/src/api.rs", "Cargo.lock"]));
        assert!(!changed(&["services/gateway/src/api.rs", "docker/redis/redis.conf"]));
    }

    #[test]
    fn every_placed_test_binary_is_staged_and_no_temporary_file() {
        let root = std::env::temp_dir().join(format!("xtask-suite-placed-{}", std::process::id()));
        let project = Project {
            root: root.clone(),
            target_dir: root.join("target"),
            e2e_dir: root.join("target/e2e"),
        };
        let dir = project.e2e_dir.join("suite");
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["e2e", "faults", ".e2e.tmp-42"] {
            std::fs::write(dir.join(file), "").unwrap();
        }
        let found = placed(&project).unwrap();
        assert_eq!(found.keys().collect::<Vec<_>>(), ["e2e", "faults"]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn test_binaries_from_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"e2e_suite"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"e2e"},"executable":"/t/debug/deps/e2e-1234"}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"faults"},"executable":"/t/debug/deps/faults-99"}
{"reason":"build-finished","success":true}"#;
        let found = executables(json);
        assert_eq!(found.len(), 2);
        assert_eq!(found["e2e"], PathBuf::from("/t/debug/deps/e2e-1234"));
    }

    #[test]
    fn the_suite_runs_where_the_services_are_reachable() {
        assert_eq!(SuiteIn::resolve(None, false), SuiteIn::Host);
        assert_eq!(SuiteIn::resolve(None, true), SuiteIn::Engine);
        assert_eq!(SuiteIn::resolve(Some(SuiteIn::Host), true), SuiteIn::Host);
        let project = Project {
            root: "/r".into(),
            target_dir: "/r/target".into(),
            e2e_dir: "/r/target/e2e".into(),
        };
        let suite = InEngine::new(&project, Engine::Podman, "1-2", "localhost/e2e-base:bookworm");
        let urls = [("GATEWAY_URL".to_owned(), "http://gateway-1-2:8080".to_owned())].into();
        assert_eq!(
            suite
                .run(
                "e2e-x",
                &[("gateway-1-2".to_owned(), "10.89.7.77".parse().unwrap())],
                "e2e",
                &urls,
                &["metrics".into()]
            )
            .to_string(),
            "podman run --rm --network e2e-x --add-host gateway-1-2:10.89.7.77 --env GATEWAY_URL=http://gateway-1-2:8080 localhost/e2e-suite:1-2 /suite/e2e metrics"
        );
    }
}
