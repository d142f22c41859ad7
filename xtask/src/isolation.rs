//! What decides whether the engine can hold a build to its memory cap (rootless or not, the
//! cgroup version, the controllers it may use) and how its store keeps layers (the storage
//! driver): read from the engine's `info`, or, for a local podman, where podman reads it.

use std::path::Path;

use serde_json::Value;

use crate::{memory::human, problem::Problem};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Isolation {
    pub rootless: bool,
    /// 1 or 2 (`None`: the engine did not say).
    pub cgroup: Option<u8>,
    /// The cgroup controllers the engine may use (`None`: it did not say). Docker says only
    /// whether it can limit memory: `["memory"]` or nothing.
    pub controllers: Option<Vec<String>>,
    /// `overlay`, `vfs`, ... (`None`: not known yet; a local podman's comes from an image).
    pub driver: Option<String>,
}

impl Isolation {
    /// From `podman info`: `host.security.rootless`, `host.cgroupVersion` (`v1`, `v2`),
    /// `host.cgroupControllers`, `store.graphDriverName`.
    pub fn of_podman(info: &Value) -> Isolation {
        let controllers = info["host"]["cgroupControllers"]
            .as_array()
            .map(|list| list.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect());
        Isolation {
            rootless: info["host"]["security"]["rootless"].as_bool().unwrap_or(false),
            cgroup: cgroup_version(info["host"]["cgroupVersion"].as_str().unwrap_or("")),
            controllers,
            driver: info["store"]["graphDriverName"].as_str().map(str::to_owned),
        }
    }

    /// From `docker info`: `SecurityOptions` (`name=rootless`), `CgroupVersion`, `MemoryLimit`,
    /// `Driver`.
    pub fn of_docker(info: &Value) -> Isolation {
        let options = info["SecurityOptions"].as_array().into_iter().flatten();
        let memory = info["MemoryLimit"]
            .as_bool()
            .map(|limits| limits.then(|| "memory".to_owned()).into_iter().collect());
        Isolation {
            rootless: options.filter_map(Value::as_str).any(|o| o.contains("name=rootless")),
            cgroup: cgroup_version(info["CgroupVersion"].as_str().unwrap_or("")),
            controllers: memory,
            driver: info["Driver"].as_str().map(str::to_owned),
        }
    }

    /// A local podman run by this process's user.
    pub fn of_this_process() -> Isolation {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
        Isolation::here(Path::new("/sys/fs/cgroup"), uid)
    }

    /// A local podman run by `uid`, read where podman reads it: cgroup v2 when
    /// `<root>/cgroup.controllers` exists, and then a rootless user's controllers are those
    /// systemd delegates to `user@UID.service`; on cgroup v1 a rootless podman may use none.
    pub fn here(cgroup_root: &Path, uid: u32) -> Isolation {
        let rootless = uid != 0;
        let unified = cgroup_root.join("cgroup.controllers");
        let controllers = if unified.exists() {
            let delegated = cgroup_root
                .join(format!("user.slice/user-{uid}.slice/user@{uid}.service/cgroup.controllers"));
            let file = if rootless { delegated } else { unified.clone() };
            let text = std::fs::read_to_string(file).unwrap_or_default();
            text.split_whitespace().map(str::to_owned).collect()
        } else if rootless {
            Vec::new()
        } else {
            let mounted = std::fs::read_dir(cgroup_root).into_iter().flatten().flatten();
            mounted.filter_map(|e| e.file_name().into_string().ok()).collect()
        };
        let cgroup = Some(if unified.exists() { 2 } else { 1 });
        Isolation { rootless, cgroup, controllers: Some(controllers), driver: None }
    }

    /// Why the engine cannot hold a container or build to `--memory`, when it cannot (the run
    /// then builds one image at a time without a cap).
    pub fn no_memory_caps(&self) -> Option<String> {
        let has_memory = |list: &Vec<String>| list.iter().any(|c| c == "memory");
        let can = match &self.controllers {
            Some(list) => has_memory(list),
            None => !(self.rootless && self.cgroup == Some(1)),
        };
        if can {
            return None;
        }
        Some(match (self.rootless, self.cgroup) {
            (true, Some(1)) => {
                "it is rootless on cgroup v1, where no user can set a memory limit".into()
            }
            (true, _) => {
                "it is rootless, and the memory controller is not delegated to its user".into()
            }
            (false, _) => "the memory controller is not available to it".into(),
        })
    }

    /// Whether the engine holds a container or build to its `--memory`.
    pub fn caps_hold(&self) -> bool {
        self.no_memory_caps().is_none()
    }

    /// `rootful, cgroup v2 (memory caps hold), overlay`.
    pub fn describe(&self) -> String {
        let mode = if self.rootless { "rootless" } else { "rootful" };
        let cgroup = self.cgroup.map(|v| format!(", cgroup v{v}")).unwrap_or_default();
        let driver = self.driver.as_deref().map(|d| format!(", {d} store")).unwrap_or_default();
        format!("{mode}{cgroup}{driver}")
    }

    /// Caps that cannot hold (`why`, from [`Self::no_memory_caps`]), and the ways to get them:
    /// on a podman machine its rootful mode; on Linux cgroup v2 with the memory controller
    /// delegated to the user's systemd.
    pub fn caps_problem(&self, why: &str, remote: bool) -> Problem {
        let what = format!("the engine cannot enforce memory caps: {why}");
        let machine =
            "on podman machine, its rootful mode: `podman machine stop && podman machine \
            set --rootful && podman machine start`";
        let v2 = match self.cgroup {
            Some(1) => {
                "the machine on cgroup v2 (`systemd.unified_cgroup_hierarchy=1` on the \
                kernel command line) with the memory controller delegated to your user"
            }
            _ => "the memory controller delegated to your user",
        };
        let linux = format!(
            "on Linux, {v2} (`Delegate=cpu memory pids` in \
             /etc/systemd/system/user@.service.d/delegate.conf; docs/podman.md, \"Rootless \
             podman\"), or podman run as root"
        );
        let fix =
            if remote { format!("{machine}; {linux}") } else { format!("{linux}; {machine}") };
        Problem::new(what, fix)
    }

    /// What a run does where caps cannot hold, against `budget`.
    pub fn uncapped_builds(budget: u64) -> String {
        format!(
            "image builds run one at a time without --memory, admitted against the {} budget; \
             one that needs more is killed by the machine's OOM killer, not held to its cap",
            human(budget)
        )
    }

    /// The `vfs` driver copies every layer whole: builds several times slower, the store larger.
    pub fn slow_store(&self) -> Option<Problem> {
        (self.driver.as_deref() == Some("vfs")).then(|| {
            Problem::new(
                "the engine's store uses the vfs driver: every layer is a full copy, so builds \
                 are several times slower and images take far more disk",
                "use overlay: rootless podman needs fuse-overlayfs (`apt-get install \
                 fuse-overlayfs`) or a kernel of 5.13 or later, then `podman system reset -f` \
                 (removes your images and containers) so that podman picks it; see docs/podman.md, \
                 \"Rootless podman\"",
            )
        })
    }
}

fn cgroup_version(said: &str) -> Option<u8> {
    said.trim_start_matches('v').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn podman(rootless: bool, version: &str, controllers: &str, driver: &str) -> Isolation {
        let info = format!(
            r#"{{"host":{{"security":{{"rootless":{rootless}}},"cgroupVersion":"{version}",
            "cgroupControllers":{controllers}}},"store":{{"graphDriverName":"{driver}"}}}}"#
        );
        Isolation::of_podman(&serde_json::from_str(&info).unwrap())
    }

    #[test]
    fn caps_hold_where_the_memory_controller_is_the_engines() {
        // podman 4.3 as root on this machine (cgroup v1): every controller.
        let rootful = podman(false, "v1", r#"["cpuset","cpu","memory","pids"]"#, "overlay");
        assert_eq!(rootful.no_memory_caps(), None);
        assert_eq!(rootful.describe(), "rootful, cgroup v1, overlay store");
        // Rootless podman on cgroup v1: none.
        let v1 = podman(true, "v1", "[]", "vfs");
        assert!(v1.no_memory_caps().unwrap().contains("rootless on cgroup v1"));
        assert!(v1.slow_store().is_some());
        // Rootless on cgroup v2: as systemd delegates (podman machine: `cpu memory pids`).
        assert_eq!(
            podman(true, "v2", r#"["cpu","memory","pids"]"#, "overlay").no_memory_caps(),
            None
        );
        let undelegated = podman(true, "v2", r#"["pids"]"#, "overlay");
        assert!(undelegated.no_memory_caps().unwrap().contains("not delegated"));
        assert_eq!(undelegated.slow_store(), None);
    }

    #[test]
    fn docker_says_whether_it_limits_memory() {
        let info = r#"{"SecurityOptions":["name=seccomp,profile=builtin","name=rootless"],
            "CgroupVersion":"1","MemoryLimit":false,"Driver":"overlay2"}"#;
        let rootless = Isolation::of_docker(&serde_json::from_str(info).unwrap());
        assert!(rootless.rootless && rootless.no_memory_caps().is_some());
        let info = r#"{"CgroupVersion":"2","MemoryLimit":true,"Driver":"overlay2"}"#;
        assert_eq!(
            Isolation::of_docker(&serde_json::from_str(info).unwrap()).no_memory_caps(),
            None
        );
    }

    #[test]
    fn a_local_podman_reads_the_cgroups_as_podman_does() {
        let dir = std::env::temp_dir().join(format!("e2e-cgroups-{}", std::process::id()));
        let user = dir.join("user.slice/user-1000.slice/user@1000.service");
        std::fs::create_dir_all(&user).unwrap();
        std::fs::create_dir_all(dir.join("memory")).unwrap();
        // cgroup v1: root has what is mounted, a user nothing.
        assert!(Isolation::here(&dir, 0).controllers.unwrap().contains(&"memory".to_owned()));
        assert!(Isolation::here(&dir, 1000).no_memory_caps().is_some());
        // cgroup v2: root has the root's controllers, a user what is delegated to it.
        std::fs::write(dir.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        std::fs::write(user.join("cgroup.controllers"), "pids\n").unwrap();
        assert_eq!(Isolation::here(&dir, 0).no_memory_caps(), None);
        assert!(Isolation::here(&dir, 1000).no_memory_caps().unwrap().contains("not delegated"));
        std::fs::write(user.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert_eq!(Isolation::here(&dir, 1000).no_memory_caps(), None);
        assert_eq!(Isolation::here(&dir, 1000).cgroup, Some(2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
