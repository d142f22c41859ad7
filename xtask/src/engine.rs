//! The container engines' command lines, as values: podman (the default) and docker for
//! images, podman for running the stack. Every command a run needs is built here, so a
//! dry run and the tests can print and compare them.

use std::{collections::BTreeMap, path::Path};

use crate::cmd::Cmd;

/// The label that carries an image's full fingerprint.
pub const FINGERPRINT_LABEL: &str = "e2e.fingerprint";

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Podman,
    Docker,
}

impl Engine {
    pub fn program(self) -> &'static str {
        match self {
            Engine::Podman => "podman",
            Engine::Docker => "docker",
        }
    }

    /// The engine asked for, or podman, or docker when only docker is installed.
    pub fn detect(requested: Option<Engine>) -> anyhow::Result<Engine> {
        let installed = |e: Engine| which::which(e.program()).is_ok();
        match requested {
            Some(e) if installed(e) => Ok(e),
            Some(e) => anyhow::bail!(
                "{} is not installed (not found on PATH).\n  fix: {}",
                e.program(),
                e.install_hint()
            ),
            None if installed(Engine::Podman) => Ok(Engine::Podman),
            None if installed(Engine::Docker) => Ok(Engine::Docker),
            None => anyhow::bail!(
                "no container engine found: neither podman nor docker is on PATH.\n  fix: {}",
                Engine::Podman.install_hint()
            ),
        }
    }

    pub fn install_hint(self) -> &'static str {
        match self {
            Engine::Podman => {
                "run `test/e2e/setup-podman.sh` as root (installs and configures podman on Debian 12), \
                 or `apt-get install podman runc netavark aardvark-dns iptables`"
            }
            Engine::Docker => "`apt-get install docker.io`, then start `dockerd`",
        }
    }

    fn cmd(self) -> Cmd {
        Cmd::new(self.program())
    }

    /// `os/arch` of the images this engine builds. Cheap (tens of milliseconds, where
    /// `podman info` takes 300), and for docker it fails when the daemon does not answer.
    pub fn platform(self) -> Cmd {
        match self {
            Engine::Podman => self
                .cmd()
                .args(["version", "--format", "{{.Client.OsArch}}"]),
            Engine::Docker => {
                self.cmd()
                    .args(["version", "--format", "{{.Server.Os}}/{{.Server.Arch}}"])
            }
        }
    }

    /// `ID SIZE FINGERPRINT-LABEL` of an image; fails when there is no such image.
    pub fn inspect_image(self, reference: &str) -> Cmd {
        self.cmd().args([
            "image",
            "inspect",
            "--format",
            // `with`: docker fails on `index` of an image without labels.
            &format!("{{{{.Id}}}} {{{{.Size}}}} {{{{with .Config.Labels}}}}{{{{index . \"{FINGERPRINT_LABEL}\"}}}}{{{{end}}}}"),
            reference,
        ])
    }

    /// `repository:tag` of every image that carries a fingerprint label (every image built here).
    pub fn list_fingerprinted(self) -> Cmd {
        self.cmd().args([
            "images",
            "--filter",
            &format!("label={FINGERPRINT_LABEL}"),
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ])
    }

    pub fn untag(self, reference: &str) -> Cmd {
        self.cmd().args(["rmi", reference])
    }

    /// Starts and removes a container: proves the engine can run one, not just answer.
    pub fn run_true(self, image: &str) -> Cmd {
        let mut c = self.cmd().args(["run", "--rm", "--network", "none"]);
        if self == Engine::Podman {
            c = c.arg("--pull=never");
        }
        c.args([image, "true"])
    }

    /// An image build under a memory cap (`--memory-swap` equal to it, so the cap holds),
    /// never pulling. Docker uses its classic builder: BuildKit ignores `--memory`.
    pub fn build(self, b: &BuildCmd) -> Cmd {
        let mut c = match self {
            Engine::Podman => self.cmd().args(["build", "--layers", "--pull=never"]),
            // `--force-rm`: the classic builder otherwise keeps the container of a failed
            // step (an OOM-killed RUN, say) for ever.
            Engine::Docker => self
                .cmd()
                .env("DOCKER_BUILDKIT", "0")
                .args(["build", "--force-rm"]),
        };
        if b.no_cache {
            c = c.arg("--no-cache");
        }
        c = c.args(["--memory", &b.memory, "--memory-swap", &b.memory]);
        for (k, v) in &b.build_args {
            c = c.arg("--build-arg").arg(format!("{k}={v}"));
        }
        for (k, v) in &b.labels {
            c = c.arg("--label").arg(format!("{k}={v}"));
        }
        c.arg("--file")
            .arg(b.dockerfile.display().to_string())
            .arg("--tag")
            .arg(&b.reference)
            .arg(b.context.display().to_string())
    }
}

/// What one image build needs.
#[derive(Debug, Clone)]
pub struct BuildCmd<'a> {
    pub reference: String,
    pub dockerfile: &'a Path,
    pub context: &'a Path,
    pub memory: String,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub no_cache: bool,
}

/// Reads `inspect_image` output: `None` for the parts an engine prints as `<no value>`.
pub fn parse_inspect(out: &str) -> Option<(String, u64, Option<String>)> {
    let mut parts = out.split_whitespace();
    let id = parts.next()?.trim_start_matches("sha256:").to_owned();
    let size = parts.next()?.parse().ok()?;
    let label = parts
        .next()
        .filter(|l| *l != "<no" && !l.is_empty())
        .map(str::to_owned);
    Some((id, size, label))
}

/// `linux/x86_64` (docker) and `linux/amd64` (podman) name the same platform.
pub fn normalize_platform(p: &str) -> String {
    p.trim()
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64")
}

/// podman, for running the stack: networks, secrets, `kube play`, containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Podman;

impl Podman {
    pub const PROGRAM: &'static str = "podman";

    fn cmd(self) -> Cmd {
        Cmd::new(Self::PROGRAM)
    }

    pub fn network_create(self, name: &str) -> Cmd {
        self.cmd()
            .args(["network", "create", "--label", "e2e.xtask=1", name])
    }

    pub fn network_rm(self, name: &str) -> Cmd {
        self.cmd().args(["network", "rm", "--force", name])
    }

    pub fn secret_create(self, name: &str, file: &Path) -> Cmd {
        self.cmd()
            .args(["secret", "create", name])
            .arg(file.display().to_string())
    }

    pub fn secret_rm(self, name: &str) -> Cmd {
        self.cmd().args(["secret", "rm", name])
    }

    pub fn secret_exists(self, name: &str) -> Cmd {
        self.cmd()
            .args(["secret", "inspect", "--format", "{{.ID}}", name])
    }

    pub fn pod_exists(self, pod: &str) -> Cmd {
        self.cmd().args(["pod", "exists", pod])
    }

    pub fn network_exists(self, name: &str) -> Cmd {
        self.cmd().args(["network", "exists", name])
    }

    pub fn kube_play(self, network: &str, file: &Path) -> Cmd {
        self.cmd()
            .args(["kube", "play", "--network", network])
            .arg(file.display().to_string())
    }

    pub fn kube_down(self, file: &Path) -> Cmd {
        self.cmd()
            .args(["kube", "down"])
            .arg(file.display().to_string())
    }

    pub fn pod_rm(self, pod: &str) -> Cmd {
        self.cmd().args(["pod", "rm", "--force", "--ignore", pod])
    }

    /// State of a container: `status exit-code restarts`.
    pub fn container_state(self, container: &str) -> Cmd {
        self.cmd().args([
            "container",
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}",
            container,
        ])
    }

    pub fn exec(self, container: &str, command: &[String]) -> Cmd {
        self.cmd()
            .args(["exec", container])
            .args(command.iter().cloned())
    }

    pub fn logs(self, container: &str) -> Cmd {
        self.cmd().args(["logs", "--timestamps", container])
    }
}

/// podman names a pod's container `<pod>-<container>`.
pub fn container_name(pod: &str, container: &str) -> String {
    format!("{pod}-{container}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_cmd(no_cache: bool) -> BuildCmd<'static> {
        BuildCmd {
            reference: "localhost/e2e-redis:0123456789abcdef".into(),
            dockerfile: Path::new("docker/redis.Dockerfile"),
            context: Path::new("docker/redis"),
            memory: "512m".into(),
            build_args: [(
                "BASE_IMAGE".to_owned(),
                "localhost/e2e-base:bookworm".to_owned(),
            )]
            .into(),
            labels: [(FINGERPRINT_LABEL.to_owned(), "0123".to_owned())].into(),
            no_cache,
        }
    }

    #[test]
    fn podman_build_caps_memory_and_swap_and_never_pulls() {
        assert_eq!(
            Engine::Podman.build(&build_cmd(false)).to_string(),
            "podman build --layers --pull=never --memory 512m --memory-swap 512m \
             --build-arg BASE_IMAGE=localhost/e2e-base:bookworm --label e2e.fingerprint=0123 \
             --file docker/redis.Dockerfile --tag localhost/e2e-redis:0123456789abcdef docker/redis"
        );
    }

    #[test]
    fn docker_build_uses_the_classic_builder_removes_failed_containers_and_force_skips_the_cache() {
        let c = Engine::Docker.build(&build_cmd(true)).to_string();
        assert!(
            c.starts_with(
                "DOCKER_BUILDKIT=0 docker build --force-rm --no-cache --memory 512m --memory-swap 512m"
            ),
            "{c}"
        );
    }

    #[test]
    fn inspect_output() {
        assert_eq!(
            parse_inspect("sha256:abc 1234 f00\n"),
            Some(("abc".into(), 1234, Some("f00".into())))
        );
        assert_eq!(
            parse_inspect("abc 1234 <no value>\n"),
            Some(("abc".into(), 1234, None))
        );
        assert_eq!(parse_inspect(""), None);
        assert_eq!(normalize_platform("linux/x86_64\n"), "linux/amd64");
    }

    #[test]
    fn kube_commands() {
        assert_eq!(
            Podman.kube_play("e2e-1", Path::new("s.yaml")).to_string(),
            "podman kube play --network e2e-1 s.yaml"
        );
        assert_eq!(
            Podman.kube_down(Path::new("s.yaml")).to_string(),
            "podman kube down s.yaml"
        );
        assert_eq!(container_name("gateway", "gateway"), "gateway-gateway");
    }
}
