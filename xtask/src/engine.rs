//! The container engine's command line, as values. Only podman for now; every command the
//! runs need is built here, so a dry run and the tests can print and compare them.

use std::path::Path;

use crate::cmd::Cmd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Podman;

impl Podman {
    pub const PROGRAM: &'static str = "podman";

    fn cmd(self) -> Cmd {
        Cmd::new(Self::PROGRAM)
    }

    pub fn info(self) -> Cmd {
        self.cmd().args(["info", "--format", "{{.Host.OCIRuntime.Name}}"])
    }

    pub fn image_exists(self, reference: &str) -> Cmd {
        self.cmd().args(["image", "exists", reference])
    }

    /// `podman build` under a memory cap, with `--memory-swap` equal to it so the cap holds.
    pub fn build(
        self,
        reference: &str,
        dockerfile: &Path,
        context: &Path,
        memory: &str,
        build_args: &[(String, String)],
    ) -> Cmd {
        let mut c = self.cmd().args(["build", "--layers", "--pull=never"]);
        c = c.args(["--memory", memory, "--memory-swap", memory]);
        for (k, v) in build_args {
            c = c.arg("--build-arg").arg(format!("{k}={v}"));
        }
        c.arg("--file")
            .arg(dockerfile.display().to_string())
            .arg("--tag")
            .arg(reference)
            .arg(context.display().to_string())
    }

    pub fn network_create(self, name: &str) -> Cmd {
        self.cmd().args(["network", "create", "--label", "e2e.xtask=1", name])
    }

    pub fn network_rm(self, name: &str) -> Cmd {
        self.cmd().args(["network", "rm", "--force", name])
    }

    pub fn secret_create(self, name: &str, file: &Path) -> Cmd {
        self.cmd().args(["secret", "create", name]).arg(file.display().to_string())
    }

    pub fn secret_rm(self, name: &str) -> Cmd {
        self.cmd().args(["secret", "rm", name])
    }

    pub fn secret_exists(self, name: &str) -> Cmd {
        self.cmd().args(["secret", "inspect", "--format", "{{.ID}}", name])
    }

    pub fn kube_play(self, network: &str, file: &Path) -> Cmd {
        self.cmd().args(["kube", "play", "--network", network]).arg(file.display().to_string())
    }

    pub fn kube_down(self, file: &Path) -> Cmd {
        self.cmd().args(["kube", "down"]).arg(file.display().to_string())
    }

    pub fn pod_rm(self, pod: &str) -> Cmd {
        self.cmd().args(["pod", "rm", "--force", "--ignore", pod])
    }

    pub fn pod_exists(self, pod: &str) -> Cmd {
        self.cmd().args(["pod", "exists", pod])
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
        self.cmd().args(["exec", container]).args(command.iter().cloned())
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

    #[test]
    fn build_caps_memory_and_swap_and_never_pulls() {
        let c = Podman.build(
            "localhost/e2e-redis:latest",
            Path::new("docker/redis.Dockerfile"),
            Path::new("docker/redis"),
            "512m",
            &[("BASE_IMAGE".into(), "localhost/e2e-base:bookworm".into())],
        );
        assert_eq!(
            c.to_string(),
            "podman build --layers --pull=never --memory 512m --memory-swap 512m \
             --build-arg BASE_IMAGE=localhost/e2e-base:bookworm --file docker/redis.Dockerfile \
             --tag localhost/e2e-redis:latest docker/redis"
        );
    }

    #[test]
    fn kube_commands() {
        assert_eq!(Podman.kube_play("e2e-1", Path::new("s.yaml")).to_string(), "podman kube play --network e2e-1 s.yaml");
        assert_eq!(Podman.kube_down(Path::new("s.yaml")).to_string(), "podman kube down s.yaml");
        assert_eq!(container_name("gateway", "gateway"), "gateway-gateway");
    }
}
