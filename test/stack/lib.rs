//! The contract between `cargo xtask` and the E2E suite, in one place: the stack file the
//! xtask writes for a run (`<run dir>/stack.json`, named to the suite by `E2E_STACK`), and
//! how both wait for podman's clean-up of a stopped pod.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The services the fault tests stop, start and enter: a stack file must hold each.
pub const SERVICES: [&str; 4] = ["gateway", "data-storage", "postgres", "redis"];

/// How the fault tests reach the stack: for each service (by its name in the manifests),
/// the commands that stop it, start it again, and run a command in it.
///
/// ```json
/// {"runtime": "podman", "dedup_ttl_seconds": 5,
///  "services": {"gateway": {"stop": ["podman","pod","stop","--time","10","gateway-SUF"],
///                           "start": ["podman","pod","start","gateway-SUF"],
///                           "exec": ["podman","exec","-i","gateway-SUF-gateway"],
///                           "pod": "gateway-SUF"}, ...}}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackFile {
    pub runtime: String,
    /// The gateway's `DEDUP_TTL_SECONDS` in this run.
    pub dedup_ttl_seconds: u64,
    pub services: BTreeMap<String, ServiceControl>,
}

/// The commands of one service, each an argv.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceControl {
    pub stop: Vec<String>,
    pub start: Vec<String>,
    /// A prefix: the command to run inside the service's container is appended.
    pub exec: Vec<String>,
    /// The service's pod on a local podman: after a stop, wait until the monitors (conmon) of
    /// its containers have ended (see [`clean_up`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

impl StackFile {
    /// The file's text, checked: each of `services` is there, none with an empty command.
    pub fn parse(text: &str, services: &[&str]) -> Result<StackFile, String> {
        let file: StackFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        for name in services {
            let s = file
                .services
                .get(*name)
                .ok_or_else(|| format!("no service {name:?}"))?;
            if s.stop.is_empty() || s.start.is_empty() || s.exec.is_empty() {
                return Err(format!("service {name:?} has an empty command"));
            }
        }
        Ok(file)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a stack file serialises")
    }
}

/// After a pod stops on a local podman, its containers' monitors (conmon) end only once each
/// container's clean-up (`podman container cleanup`) has run. podman 4.3's clean-up of a `kube
/// play` pod (exit policy `stop`) stops the pod when no other container runs, deciding before
/// it takes the pod's lock: a start issued before it ran was stopped again ms later (Redis:
/// SIGTERM 2 ms after `pod start` in 10 of 160 stop/start cycles under DNS load; none of 80
/// with the wait). So a stop is followed by a wait until these monitors have ended.
pub mod clean_up {
    /// podman's arguments for the IDs of a pod's containers, its infra container's included
    /// (whitespace-separated).
    pub fn pod_container_ids(pod: &str) -> Vec<String> {
        let args = [
            "pod",
            "inspect",
            "--format",
            "{{range .Containers}}{{.ID}} {{end}}",
            pod,
        ];
        args.map(str::to_owned).to_vec()
    }

    /// The monitors (conmon) of `containers` (full IDs) that still run, found in `/proc` (a
    /// conmon's arguments name its container: `-c ID`) rather than asked of podman: a stop and
    /// start then costs no podman call for them.
    pub fn monitors_of(containers: &[String]) -> Vec<u32> {
        let Ok(proc) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let pids = proc.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok());
        let of_ours = |pid: &u32| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let named = |pair: &[&[u8]]| {
                pair[0] == b"-c" && containers.iter().any(|c| pair[1] == c.as_bytes())
            };
            args.first().is_some_and(|a| a.ends_with(b"conmon")) && args.windows(2).any(named)
        };
        pids.filter(of_ours)
            .filter(|&pid| monitoring(pid))
            .collect()
    }

    /// Whether a conmon still runs (neither ended nor a zombie waiting to be reaped).
    pub fn monitoring(pid: u32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.contains("(conmon) ") && !stat.contains("(conmon) Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_file_names_every_service_with_its_commands() {
        let service = |pod: Option<&str>| ServiceControl {
            stop: vec!["podman".into(), "pod".into(), "stop".into()],
            start: vec!["podman".into(), "pod".into(), "start".into()],
            exec: vec!["podman".into(), "exec".into()],
            pod: pod.map(str::to_owned),
        };
        let services = [
            ("gateway".into(), service(Some("gw-1"))),
            ("redis".into(), service(None)),
        ];
        let file = StackFile {
            runtime: "podman".into(),
            dedup_ttl_seconds: 5,
            services: services.into(),
        };
        let text = file.to_json();
        assert!(
            !text.contains("\"pod\": null"),
            "a pod is left out when there is none: {text}"
        );
        assert_eq!(
            StackFile::parse(&text, &["gateway", "redis"]),
            Ok(file.clone())
        );
        assert_eq!(
            StackFile::parse(&text, &["postgres"]),
            Err("no service \"postgres\"".into())
        );
        let mut empty = file;
        empty.services.get_mut("redis").unwrap().exec.clear();
        let err = StackFile::parse(&empty.to_json(), &["redis"]).unwrap_err();
        assert_eq!(err, "service \"redis\" has an empty command");
        assert!(StackFile::parse("{}", &[])
            .unwrap_err()
            .contains("missing field"));
    }

    #[test]
    fn only_a_running_conmon_of_the_containers_counts() {
        let none: [String; 0] = [];
        assert_eq!(clean_up::monitors_of(&none), Vec::<u32>::new());
        assert!(!clean_up::monitoring(1), "PID 1 is no conmon");
        assert!(
            !clean_up::monitoring(std::process::id()),
            "nor is this test"
        );
    }
}
