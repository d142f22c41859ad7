//! Where podman differs by version, and the bugs of podman this xtask works around: each with
//! the versions it was seen in, where it is upstream, and the decision that applies it only
//! to the engines that have it. The engine's version is the one it reports of itself (a remote
//! engine's server, not this machine's client).

/// `(major, minor)` of `4.3.1`, `5.4.2`, `5.0.0-dev`; `None` for what is not a version.
pub fn version(said: &str) -> Option<(u32, u32)> {
    let mut parts = said.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// How a run's pods are stopped and removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodRemoval {
    /// `pod stop --time 0`, then `pod rm --force` (podman 4). `pod rm --force --time 0` alone
    /// is honoured by 4.3.1 (`--time` exists since 4.0, containers/podman#11763: 0.5 s for a
    /// container that ignores SIGTERM), but on a run's `kube play` pods it took 3.8-4.1 s in 4
    /// of 5 teardowns against 1.2-1.4 s for stop then rm (5 warm runs of each in a row on
    /// this machine's 4.3.1, cgroup v1); the cause was not traced. With `kill_first` (a remote podman
    /// 4), `pod kill` before: the libpod API's pod stop takes a timeout of 0 as none given
    /// (`pkg/api/handlers/libpod/pods.go`, `PodStop`: `if query.Timeout > 0`), so a remote `pod
    /// stop --time 0` waits the stop timeouts (seen with 4.3.1, and with 5.4.2: 53 s for four
    /// pods ignoring SIGTERM); still so in podman 5.8, and no upstream issue was found.
    StopThenRm { kill_first: bool },
    /// `pod rm --force --time 0` alone (podman 5, local or remote: 0.8-1.9 s for the stack
    /// through a rootful podman 5.4.2). A kill or a stop first costs 3-7 s there on cgroup v1
    /// with cgroupfs: each killed container's clean-up applies the pod's exit policy (`stop`),
    /// tries to remove the pod's cgroup it runs in, and retries for 3 s holding the pod's lock.
    RmAtOnce,
}

/// The removal for podman `version`, local or `remote`. An unknown version is taken as 4's
/// (the order that is right, if slower, everywhere).
pub fn pod_removal(version: &str, remote: bool) -> PodRemoval {
    match self::version(version) {
        Some((major, _)) if major >= 5 => PodRemoval::RmAtOnce,
        _ => PodRemoval::StopThenRm { kill_first: remote },
    }
}

/// How a Secret of the manifests becomes a podman secret that `secretKeyRef` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMaking {
    /// `podman secret create` of the data as JSON. Podman before 4.4 stores a Secret that
    /// `kube play` makes as YAML and reads `secretKeyRef` as JSON, so a pod cannot read it
    /// (containers/podman#16269, seen with 4.3.1; fixed in 4.4.0 by #16631).
    CreateFromJson,
    /// `kube play` of the Secret, as Kubernetes would take it (podman 4.4 and later).
    KubePlay,
}

/// The making for podman `version`; an unknown version is taken as one before 4.4 (the form
/// every version reads).
pub fn secret_making(version: &str) -> SecretMaking {
    match self::version(version) {
        Some(v) if v >= (4, 4) => SecretMaking::KubePlay,
        _ => SecretMaking::CreateFromJson,
    }
}

/// Where a `RUN --mount=type=cache` keeps its directories, when it must not be the default.
/// buildah before 1.29 (podman before 4.4) keeps every user's in one `$TMPDIR/buildah-cache`
/// (containers/buildah#4404, fixed by #4421 in 1.29): after root's build made it, a rootless
/// user's build cannot write there (`failed to open: /src/target/debug/.cargo-lock: Permission
/// denied`, seen with podman 4.3.1). So a local rootless podman before 4.4 gets `TMPDIR` of
/// its own (`dir`) for the builds that use cache mounts; other engines keep their default.
pub fn build_cache_tmpdir<'a>(
    version: &str,
    rootless: bool,
    remote: bool,
    dir: &'a std::path::Path,
) -> Option<&'a std::path::Path> {
    let shared = self::version(version).is_some_and(|v| v < (4, 4));
    (shared && rootless && !remote).then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(version("4.3.1"), Some((4, 3)));
        assert_eq!(version("5.4.2\n"), Some((5, 4)));
        assert_eq!(version("5.0.0-dev"), Some((5, 0)));
        assert_eq!(version("6"), Some((6, 0)));
        assert_eq!(version("?"), None);
        assert_eq!(version(""), None);
    }

    #[test]
    fn podman_4_stops_first_and_remote_kills_first_podman_5_removes_at_once() {
        assert_eq!(pod_removal("4.3.1", false), PodRemoval::StopThenRm { kill_first: false });
        assert_eq!(pod_removal("4.3.1", true), PodRemoval::StopThenRm { kill_first: true });
        assert_eq!(pod_removal("5.4.2", true), PodRemoval::RmAtOnce);
        assert_eq!(pod_removal("5.4.2", false), PodRemoval::RmAtOnce);
        assert_eq!(pod_removal("?", true), PodRemoval::StopThenRm { kill_first: true });
    }

    #[test]
    fn secrets_are_played_from_podman_4_4_and_created_from_json_before() {
        assert_eq!(secret_making("4.3.1"), SecretMaking::CreateFromJson);
        assert_eq!(secret_making("4.4.0"), SecretMaking::KubePlay);
        assert_eq!(secret_making("5.4.2"), SecretMaking::KubePlay);
        assert_eq!(secret_making("?"), SecretMaking::CreateFromJson);
    }

    #[test]
    fn only_a_local_rootless_podman_before_4_4_gets_a_cache_dir_of_its_own() {
        let dir = std::path::Path::new("/p/target/e2e/buildah-tmp");
        assert_eq!(build_cache_tmpdir("4.3.1", true, false, dir), Some(dir));
        assert_eq!(build_cache_tmpdir("4.3.1", false, false, dir), None, "root's is root's");
        assert_eq!(build_cache_tmpdir("4.3.1", true, true, dir), None, "its TMPDIR is not ours");
        assert_eq!(build_cache_tmpdir("4.4.0", true, false, dir), None, "buildah 1.29 splits it");
        assert_eq!(build_cache_tmpdir("5.4.2", true, false, dir), None);
    }
}
