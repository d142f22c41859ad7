//! The engines' command lines as values (podman or docker for images, podman for the stack),
//! so a dry run and the tests can print and compare them.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    cmd::Cmd,
    isolation::Isolation,
    problem::{Problem, PODMAN_DOCS},
};

pub const FINGERPRINT_LABEL: &str = "e2e.fingerprint";

/// `with`: docker fails on `index` of an image without labels.
const INSPECT: &str =
    r#"{{.Id}} {{.Size}} {{with .Config.Labels}}{{index . "e2e.fingerprint"}}{{end}}"#;

/// A method per command: `name(parameters) => [arguments (into String)]`, `+ list` appended.
macro_rules! commands {
    ($ty:ty, $s:ident => $program:expr;
     $($(#[$doc:meta])* $name:ident($($p:ident: $t:ty),*) => [$($a:expr),*] $(+ $rest:expr)?;)*) => {
        impl $ty {
            $($(#[$doc])* pub fn $name($s, $($p: $t),*) -> Cmd {
                Cmd::new($program).args([$(String::from($a)),*])$(.args($rest))?
            })*
        }
    };
}

commands! { Engine, self => self.program();
    /// Everything the engine says about itself and its machine, as JSON (see [`EngineFacts`]).
    info() => ["info", "--format", self.json()];
    /// The client's version, and a `Server` part only when remote: tens of ms, `info` hundreds.
    version() => ["version", "--format", self.json()];
    /// `ID SIZE FINGERPRINT-LABEL` of an image; fails when there is no such image.
    inspect_image(reference: &str) => ["image", "inspect", "--format", INSPECT, reference];
    /// The IDs of those of `references` the engine has (a line each; it fails for the others).
    image_ids(references: &[String]) => ["image", "inspect", "--format", "{{.Id}}"] + references;
    /// `repository:tag` of every image that carries a fingerprint label (every image built here).
    list_fingerprinted() => ["images", "--filter", format!("label={FINGERPRINT_LABEL}"),
        "--format", "{{.Repository}}:{{.Tag}}"];
    /// A command in a throwaway container of `image`, without a network.
    run_once(image: &str, command: &[&str]) => ["run", "--rm", "--network", "none"]
        + self.pick(Some("--pull=never"), None).into_iter().chain([image]).chain(command.iter().copied());
    tag(reference: &str, new: &str) => ["tag", reference, new];
    untag(reference: &str) => ["rmi", reference];
    /// An image's storage driver and top layer's directory on the engine's machine: `overlay
    /// <graph root>/overlay/<id>/diff`; `vfs <no value>` (vfs says no directory).
    layer_dir(image: &str) => ["image", "inspect", "--format",
        "{{.GraphDriver.Name}} {{.GraphDriver.Data.UpperDir}}", image];
    /// `DRIVER GRAPH-ROOT` of podman's store (`info` takes 10x an `image inspect`).
    store_info() => ["info", "--format", "{{.Store.GraphDriverName}} {{.Store.GraphRoot}}"];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Podman,
    Docker,
}

impl Engine {
    /// Starts and removes a container: proves the engine can run one, not just answer.
    pub fn run_true(self, image: &str) -> Cmd {
        self.run_once(image, &["true"])
    }

    /// Of a value for podman and one for docker, this engine's.
    fn pick<T>(self, podman: T, docker: T) -> T {
        match self {
            Engine::Podman => podman,
            Engine::Docker => docker,
        }
    }

    pub fn program(self) -> &'static str {
        self.pick("podman", "docker")
    }

    /// The engine asked for, else podman, else docker (once per command, by `Facts::gather`).
    pub fn detect(requested: Option<Engine>) -> Result<Engine, Problem> {
        let installed = |e: Engine| which::which(e.program()).is_ok();
        match requested {
            Some(engine) if installed(engine) => Ok(engine),
            Some(engine) => Err(Problem::new(
                format!("{} is not installed (not found on PATH)", engine.program()),
                engine.install_hint(),
            )),
            None if installed(Engine::Podman) => Ok(Engine::Podman),
            None if installed(Engine::Docker) => Ok(Engine::Docker),
            None => Err(Problem::new(
                "no container engine found: neither podman nor docker is on PATH",
                Engine::Podman.install_hint(),
            )),
        }
    }

    pub fn install_hint(self) -> String {
        self.pick(
            format!("run `test/e2e/setup-podman.sh` as root (installs and configures podman on Debian 12), or see {PODMAN_DOCS}"),
            "`apt-get install docker.io`, then start `dockerd` (test/e2e/setup-docker.sh does both)".into(),
        )
    }

    /// What to do when the engine is installed but does not answer.
    pub fn not_answering_fix(self) -> String {
        self.pick(
            format!("`test/e2e/setup-podman.sh` writes a working /etc/containers/containers.conf; see {PODMAN_DOCS}"),
            "start the daemon: `dockerd &` (test/e2e/setup-docker.sh does it)".into(),
        )
    }

    fn json(self) -> &'static str {
        self.pick("json", "{{json .}}")
    }

    /// A build under a memory cap (`--memory-swap` equal, so it holds) where the engine can
    /// enforce one (see [`Isolation::no_memory_caps`]), never pulling. Docker uses
    /// its classic builder (BuildKit ignores `--memory`), with `--force-rm`: it otherwise keeps a
    /// failed step's container (an OOM-killed RUN) for ever.
    pub fn build(self, build: &BuildCmd) -> Cmd {
        let mut cmd = self.pick(
            Cmd::new("podman").args(["build", "--layers", "--pull=never"]),
            Cmd::new("docker").args(["build", "--force-rm"]).env("DOCKER_BUILDKIT", "0"),
        );
        cmd = cmd.args(build.no_cache.then_some("--no-cache"));
        if let Some(memory) = &build.memory {
            cmd = cmd.args(["--memory", memory, "--memory-swap", memory]);
        }
        for (flag, map) in [("--build-arg", &build.build_args), ("--label", &build.labels)] {
            for (key, value) in map {
                cmd = cmd.arg(flag).arg(format!("{key}={value}"));
            }
        }
        let file = build.dockerfile.to_string_lossy();
        let context = build.context.to_string_lossy();
        cmd.args(["--file", &file, "--tag", &build.reference, &context])
    }

    /// `save` of images into one plain tar, to `output` or stdout (podman: all, not only the first).
    pub fn save(self, refs: &[String], output: Option<&Path>) -> Cmd {
        let output = output.into_iter().flat_map(|o| ["--output".into(), o.display().to_string()]);
        let multi = self.pick(Some("--multi-image-archive"), None);
        Cmd::new(self.program()).arg("save").args(multi).args(output).args(refs)
    }

    /// The image, or `None` when the engine does not have it.
    pub fn image(self, reference: &str) -> Option<ImageInfo> {
        ImageInfo::parse(&self.inspect_image(reference).read().ok()?)
    }
}

#[derive(Debug, Clone)]
pub struct BuildCmd<'a> {
    pub reference: String,
    pub dockerfile: &'a Path,
    pub context: &'a Path,
    /// `None` where the engine cannot enforce a cap.
    pub memory: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub no_cache: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Without the `sha256:` prefix.
    pub id: String,
    pub size: u64,
    /// The `e2e.fingerprint` label, when the image has one.
    pub fingerprint: Option<String>,
}

impl ImageInfo {
    /// Reads `inspect_image` output; `None` for the parts an engine prints as `<no value>`.
    pub fn parse(out: &str) -> Option<ImageInfo> {
        let mut parts = out.split_whitespace();
        let id = parts.next()?.trim_start_matches("sha256:").to_owned();
        let size = parts.next()?.parse().ok()?;
        let fingerprint = parts.next().filter(|l| *l != "<no").map(str::to_owned);
        Some(ImageInfo { id, size, fingerprint })
    }
}

/// What the engine says of itself and its machine, asked once per command: platform and memory
/// are the engine's, not the client's (they differ when it runs in a VM or elsewhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineFacts {
    pub engine: Engine,
    pub version: String,
    /// `os/arch` of the images this engine builds and runs, e.g. `linux/amd64`.
    pub platform: String,
    pub cpus: usize,
    pub mem_total: u64,
    /// Free memory as the engine reports it (podman: MemFree; docker: not reported).
    pub mem_free: Option<u64>,
    /// The engine runs on another machine (a VM, a remote host), reached through its API.
    pub remote: bool,
    /// `this machine`, or how it reaches the remote engine (see [`remote_at`]): images recorded
    /// in one engine are not in another.
    pub at: String,
    /// Where the engine keeps its images (`None`: the engine does not say).
    pub store: Option<Store>,
    /// Rootless or not, its cgroups, its storage driver: whether memory caps hold.
    pub isolation: Isolation,
}

/// The engine's image store on its machine, and the room left there (what images, loads and
/// builds fill).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    pub path: String,
    /// Bytes free there (`None`: unknown).
    pub free: Option<u64>,
}

/// Said of a local engine's `at`.
pub const THIS_MACHINE: &str = "this machine";

/// How this machine reaches a remote engine: the URL or connection given (see [`given_at`]),
/// else the engine's host name (podman machine's default connection).
pub fn remote_at(given: Option<String>, hostname: Option<&str>) -> String {
    given
        .filter(|g| !g.is_empty())
        .or_else(|| hostname.map(|h| format!("host {h}")))
        .unwrap_or_else(|| "the default connection".to_owned())
}

/// Where podman's engine is, as the user gave it, when an ssh tunnel (`tunnel.rs`) points
/// podman at a socket here: images.json and the reports name the engine by it (children of
/// the process read it too).
pub const ENGINE_AT: &str = "E2E_ENGINE_AT";

/// `CONTAINER_HOST`, `CONTAINER_CONNECTION` (docker: `DOCKER_HOST`, `DOCKER_CONTEXT`).
pub fn given_at(engine: Engine) -> Option<String> {
    // Through a tunnel: as it was given before.
    if let (Engine::Podman, Ok(at)) = (engine, std::env::var(ENGINE_AT)) {
        return Some(at).filter(|at| !at.is_empty());
    }
    let vars =
        engine.pick(["CONTAINER_HOST", "CONTAINER_CONNECTION"], ["DOCKER_HOST", "DOCKER_CONTEXT"]);
    vars.iter().find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
}

fn json(engine: Engine, command: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("`{} {command}` printed no JSON: {e}", engine.program()))
}

impl EngineFacts {
    /// Where a base image made on this machine goes: the engine's own store.
    pub fn base_destination(&self) -> String {
        match self.remote {
            true => format!(
                "the engine at {} through its API (its own store; nothing goes into this machine's)",
                self.at
            ),
            false => "this machine's podman".to_owned(),
        }
    }

    /// From podman's `version()`: no server means podman runs here, so its machine's facts are
    /// read here, without `info`. `None` when remote: ask `info()`.
    pub fn local_podman(version_json: &str) -> Option<anyhow::Result<EngineFacts>> {
        let answer = json(Engine::Podman, "version", version_json);
        if answer.as_ref().is_ok_and(|answer| !answer["Server"].is_null()) {
            return None;
        }
        Some(answer.map(|answer| EngineFacts {
            engine: Engine::Podman,
            version: answer["Client"]["Version"].as_str().unwrap_or("?").to_owned(),
            platform: normalize_platform(answer["Client"]["OsArch"].as_str().unwrap_or("?")),
            cpus: crate::memory::cpus(),
            mem_total: crate::memory::total().unwrap_or(0),
            mem_free: None,
            remote: false,
            at: THIS_MACHINE.to_owned(),
            store: None,
            isolation: Isolation::of_this_process(),
        }))
    }

    /// Reads `info()` output: podman's machine facts are under `host`, docker's at the top.
    pub fn parse(engine: Engine, json_text: &str) -> anyhow::Result<EngineFacts> {
        let info = json(engine, "info", json_text)?;
        let field = |podman_at, docker_at| {
            info.pointer(engine.pick(podman_at, docker_at)).unwrap_or(&Value::Null)
        };
        let remote = engine.pick(
            info["host"]["serviceIsRemote"].as_bool().unwrap_or(false),
            std::env::var("DOCKER_HOST").is_ok_and(|h| !h.is_empty() && !h.starts_with("unix://")),
        );
        Ok(EngineFacts {
            engine,
            version: field("/version/Version", "/ServerVersion").as_str().unwrap_or("?").to_owned(),
            platform: normalize_platform(&format!(
                "{}/{}",
                field("/host/os", "/OSType").as_str().unwrap_or("linux"),
                field("/host/arch", "/Architecture").as_str().unwrap_or("?")
            )),
            cpus: field("/host/cpus", "/NCPU").as_u64().unwrap_or(0) as usize,
            mem_total: field("/host/memTotal", "/MemTotal").as_u64().unwrap_or(0),
            mem_free: engine.pick(info["host"]["memFree"].as_u64(), None),
            remote,
            at: if remote {
                remote_at(given_at(engine), field("/host/hostname", "/Name").as_str())
            } else {
                THIS_MACHINE.to_owned()
            },
            // Podman 4 gives the store's filesystem's size and use: the difference is free
            // (reserved blocks included). Docker names its data root; only a local one is measured.
            store: field("/store/graphRoot", "/DockerRootDir").as_str().map(|path| Store {
                path: path.to_owned(),
                free: engine
                    .pick(info["store"]["graphRootAllocated"].as_u64(), None)
                    .zip(info["store"]["graphRootUsed"].as_u64())
                    .map(|(all, used)| all.saturating_sub(used)),
            }),
            isolation: engine.pick(Isolation::of_podman(&info), Isolation::of_docker(&info)),
        })
    }
}

/// `linux/x86_64` (docker) and `linux/amd64` (podman) name the same platform.
pub fn normalize_platform(platform: &str) -> String {
    platform.trim().replace("x86_64", "amd64").replace("aarch64", "arm64")
}

/// podman, for running the stack: networks, secrets, `kube play`, containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Podman;

/// The commands the E2E suite runs too (the wait for podman's clean-up): their arguments are
/// the contract's.
impl Podman {
    /// The IDs of a pod's containers, its infra container's included, whitespace-separated.
    pub fn pod_container_ids(self, pod: &str) -> Cmd {
        Cmd::new("podman").args(e2e_stack::clean_up::pod_container_ids(pod))
    }
}

commands! { Podman, self => "podman";
    network_rm(name: &str) => ["network", "rm", "--force", name];
    network_exists(name: &str) => ["network", "exists", name];
    /// Every network's subnets, whitespace-separated.
    network_subnets() => ["network", "ls", "--format", "{{range .Subnets}}{{.Subnet}} {{end}}"];
    secret_create(name: &str, file: &Path) => ["secret", "create", name, file.display().to_string()];
    /// Plays a file of Kubernetes Secrets: podman makes each a podman secret. On the run's
    /// network: without `--network`, podman 5 makes its `podman-default-kube-network`, which
    /// then outlives the run.
    kube_play_secrets(network: &str, file: &Path) =>
        ["kube", "play", "--network", network, file.display().to_string()];
    secret_rm(name: &str) => ["secret", "rm", name];
    secret_exists(name: &str) => ["secret", "inspect", "--format", "{{.ID}}", name];
    pod_exists(pod: &str) => ["pod", "exists", pod];
    pod_stop(pod: &str) => ["pod", "stop", "--time", "10", pod];
    pod_start(pod: &str) => ["pod", "start", pod];
    /// SIGKILL to a pod's containers, not waiting (see [`crate::quirks::PodRemoval`]).
    pod_kill(pod: &str) => ["pod", "kill", pod];
    /// Stops a pod with SIGKILL; after [`Self::pod_kill`], waits for the ends and clean-ups.
    pod_stop_now(pod: &str) => ["pod", "stop", "--ignore", "--time", "0", pod];
    pod_rm(pod: &str) => ["pod", "rm", "--force", "--ignore", pod];
    /// Stops (SIGKILL) and removes a pod in one step: podman 5 (4.3 ignores `--time` here).
    pod_rm_now(pod: &str) => ["pod", "rm", "--force", "--ignore", "--time", "0", pod];
    /// Removes images of a run's own, whether or not they exist.
    images_rm(images: &[String]) => ["rmi", "--force", "--ignore"] + images;
    /// Stops one container (SIGTERM, then SIGKILL after 10 s), its pod left running.
    container_stop(container: &str) => ["stop", "--time", "10", container];
    container_start(container: &str) => ["start", container];
    /// State of a container: `status exit-code restarts`.
    container_state(container: &str) => ["container", "inspect", "--format",
        "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}", container];
    /// A network, on `subnet` with podman's own allocation confined to `range` when given.
    network_create(name: &str, subnet: Option<(String, String)>) =>
        ["network", "create", "--label", "e2e.xtask=1"]
        + subnet.into_iter()
            .flat_map(|(cidr, range)| ["--subnet".into(), cidr, "--ip-range".into(), range])
            .chain([name.to_owned()]);
    /// Plays a pod file on a network, at fixed IP and MAC addresses when given.
    kube_play(network: &str, address: Option<(Ipv4Addr, String)>, file: &Path) =>
        ["kube", "play", "--network", network] + address.into_iter()
            .flat_map(|(ip, mac)| ["--ip".into(), ip.to_string(), "--mac-address".into(), mac])
            .chain([file.display().to_string()]);
    /// Copies a file of this machine into a container (through the API on a remote engine).
    cp_into(file: &Path, container: &str, dest: &str) =>
        ["cp", file.display().to_string(), format!("{container}:{dest}")];
    exec(container: &str, command: &[String]) => ["exec", container] + command;
    /// `podman exec -i CONTAINER`, to which a command is appended.
    exec_prefix(container: &str) => ["exec", "-i", container];
    /// `image` run once in a pod (`127.0.0.1` is the pod's), `command[0]` its entrypoint. Once:
    /// podman 5 gives a container the pod's restart policy (`always`, from `kube play`), and a
    /// probe that restarted before `--rm` removed it stayed in the pod (1-4 a run, seen on 5.4.2).
    run_in_pod(pod: &str, image: &str, command: &[String]) =>
        ["run", "--rm", "--restart", "no", "--pod", pod, "--entrypoint", &command[0], image]
            + &command[1..];
    logs(container: &str) => ["logs", "--timestamps", container];
}

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
            memory: Some("512m".into()),
            build_args: [("BASE_IMAGE".to_owned(), "localhost/e2e-base:bookworm".to_owned())]
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
        let cmd = Engine::Docker.build(&build_cmd(true)).to_string();
        assert!(
            cmd.starts_with(
                "DOCKER_BUILDKIT=0 docker build --force-rm --no-cache --memory 512m --memory-swap 512m"
            ),
            "{cmd}"
        );
    }

    #[test]
    fn inspect_output() {
        let info = |id: &str, size, fp: Option<&str>| ImageInfo {
            id: id.into(),
            size,
            fingerprint: fp.map(Into::into),
        };
        assert_eq!(ImageInfo::parse("sha256:abc 1234 f00\n"), Some(info("abc", 1234, Some("f00"))));
        assert_eq!(ImageInfo::parse("abc 1234 <no value>\n"), Some(info("abc", 1234, None)));
        assert_eq!(ImageInfo::parse(""), None);
        assert_eq!(normalize_platform("linux/x86_64\n"), "linux/amd64");
    }

    #[test]
    fn the_store_and_the_name_are_the_engines() {
        // `podman info` of the 2 GiB rig (podman 4.3.1), trimmed: its store is its own
        // filesystem, 4 GiB with 1 GiB used.
        let rig = r#"{"host":{"arch":"amd64","os":"linux","cpus":2,"memTotal":2147483648,
            "hostname":"e2e-rig","serviceIsRemote":true},
            "store":{"graphRoot":"/var/lib/containers/storage","graphRootAllocated":4294967296,
            "graphRootUsed":1073741824},"version":{"Version":"4.3.1"}}"#;
        let facts = EngineFacts::parse(Engine::Podman, rig).unwrap();
        assert_eq!(
            facts.store,
            Some(Store { path: "/var/lib/containers/storage".into(), free: Some(3 << 30) })
        );
        // Which remote: as this machine was told to reach it, else the engine's host name.
        assert_eq!(
            remote_at(Some("ssh://root@127.0.0.1:2222/run/podman/podman.sock".into()), Some("vm")),
            "ssh://root@127.0.0.1:2222/run/podman/podman.sock"
        );
        assert_eq!(remote_at(None, Some("podman-machine-default")), "host podman-machine-default");
        assert_eq!(remote_at(Some(String::new()), None), "the default connection");
        // An engine that does not say how full its store is: the path, no free figure.
        let old = r#"{"host":{"serviceIsRemote":false},"store":{"graphRoot":"/x"}}"#;
        let facts = EngineFacts::parse(Engine::Podman, old).unwrap();
        assert_eq!((facts.at.as_str(), facts.store.unwrap().free), (THIS_MACHINE, None));
        let docker =
            r#"{"OSType":"linux","Architecture":"x86_64","DockerRootDir":"/var/lib/docker"}"#;
        let facts = EngineFacts::parse(Engine::Docker, docker).unwrap();
        assert_eq!(facts.store.unwrap().path, "/var/lib/docker");
    }

    #[test]
    fn facts_are_the_engines_not_the_clients() {
        // Trimmed from `podman info --format json` of podman 4.3 (as a remote client on a
        // Mac would print it: the host part describes the engine's machine).
        let podman = r#"{"host":{"arch":"amd64","os":"linux","cpus":2,"memTotal":2061381632,
            "memFree":1500000000,"serviceIsRemote":true},"version":{"Version":"4.3.1","OsArch":"darwin/arm64"}}"#;
        let facts = EngineFacts::parse(Engine::Podman, podman).unwrap();
        assert_eq!(facts.platform, "linux/amd64");
        assert_eq!((facts.cpus, facts.mem_total, facts.remote), (2, 2_061_381_632, true));
        assert_eq!(facts.mem_free, Some(1_500_000_000));
        let docker = r#"{"OSType":"linux","Architecture":"x86_64","NCPU":4,"MemTotal":8000000000,"ServerVersion":"20.10.24"}"#;
        let facts = EngineFacts::parse(Engine::Docker, docker).unwrap();
        assert_eq!(
            (facts.platform.as_str(), facts.cpus, facts.version.as_str()),
            ("linux/amd64", 4, "20.10.24")
        );
        assert!(EngineFacts::parse(Engine::Podman, "Error: no").is_err());
        let local = r#"{"Client":{"Version":"4.3.1","OsArch":"linux/amd64"}}"#;
        let facts = EngineFacts::local_podman(local).unwrap().unwrap();
        assert_eq!((facts.at.as_str(), facts.store.as_ref()), (THIS_MACHINE, None));
        let facts = EngineFacts::local_podman(local).unwrap().unwrap();
        assert_eq!((facts.platform.as_str(), facts.remote), ("linux/amd64", false));
        let remote = r#"{"Client":{"OsArch":"darwin/arm64"},"Server":{"OsArch":"linux/arm64"}}"#;
        assert!(EngineFacts::local_podman(remote).is_none(), "a remote engine is asked with info");
    }

    #[test]
    fn table_commands_print_their_arguments_in_order() {
        assert!(INSPECT.contains(&format!("\"{FINGERPRINT_LABEL}\"")));
        assert_eq!(
            Engine::Docker.inspect_image("x").to_string(),
            "docker image inspect --format '{{.Id}} {{.Size}} {{with .Config.Labels}}\
             {{index . \"e2e.fingerprint\"}}{{end}}' x"
        );
        assert_eq!(
            Engine::Podman.list_fingerprinted().to_string(),
            "podman images --filter label=e2e.fingerprint --format '{{.Repository}}:{{.Tag}}'"
        );
        assert_eq!(Podman.pod_rm("a").to_string(), "podman pod rm --force --ignore a");
        assert_eq!(Podman.pod_rm_now("a").to_string(), "podman pod rm --force --ignore --time 0 a");
        let command = ["redis-cli".to_owned(), "ping".to_owned()];
        assert_eq!(
            Podman.run_in_pod("p", "img", &command).to_string(),
            "podman run --rm --restart no --pod p --entrypoint redis-cli img ping"
        );
        assert_eq!(
            Engine::Podman.run_true("i").to_string(),
            "podman run --rm --network none --pull=never i true"
        );
        assert_eq!(
            Engine::Docker.run_true("i").to_string(),
            "docker run --rm --network none i true"
        );
        assert_eq!(
            Podman.network_create("n", Some(("10.89.0.0/27".into(), "10.89.0.16/28".into())))
                .to_string(),
            "podman network create --label e2e.xtask=1 --subnet 10.89.0.0/27 --ip-range 10.89.0.16/28 n"
        );
    }

    #[test]
    fn kube_commands() {
        assert_eq!(
            Podman.kube_play("e2e-1", None, Path::new("s.yaml")).to_string(),
            "podman kube play --network e2e-1 s.yaml"
        );
        let at = Some(("10.89.0.2".parse().unwrap(), "02:00:0a:59:00:02".to_owned()));
        assert_eq!(
            Podman.kube_play("e2e-1", at, Path::new("s.yaml")).to_string(),
            "podman kube play --network e2e-1 --ip 10.89.0.2 --mac-address 02:00:0a:59:00:02 s.yaml"
        );
        assert_eq!(
            Podman.network_create("n", None).to_string(),
            "podman network create --label e2e.xtask=1 n"
        );
        assert_eq!(container_name("gateway", "gateway"), "gateway-gateway");
        assert_eq!(
            Podman.pod_container_ids("p").to_string(),
            "podman pod inspect --format '{{range .Containers}}{{.ID}} {{end}}' p"
        );
    }
}
