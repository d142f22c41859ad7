//! One ssh connection for a whole command, when podman's engine is reached over ssh (podman
//! machine's connections, the twin's): the engine's API socket is forwarded to a socket here
//! (`ssh -L`) and every podman call of the command goes through it, instead of an ssh
//! connection of its own per call (measured through the twin: 128 ms a call over ssh, 40 ms
//! through the forwarded socket). docs/remote-engine.md says more; `E2E_SSH_TUNNEL=0` turns it off.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Stdio},
    time::Duration,
};

use anyhow::Context;

use crate::cmd::Cmd;

use crate::engine::ENGINE_AT;

/// An engine's ssh URL: `ssh://[user@]host[:port]/path/to/podman.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshUrl {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

impl SshUrl {
    pub fn parse(url: &str) -> Option<SshUrl> {
        let rest = url.strip_prefix("ssh://")?;
        let (authority, path) = rest.split_once('/')?;
        let path = format!("/{}", path.split('?').next().unwrap_or_default());
        let (user, host_port) = match authority.rsplit_once('@') {
            Some((user, host_port)) => (Some(user.to_owned()), host_port),
            None => (None, authority),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse().ok()?)),
            None => (host_port, None),
        };
        let usable = !host.is_empty() && path.len() > 1;
        usable.then(|| SshUrl { user, host: host.to_owned(), port, path })
    }
}

/// The ssh command that forwards `socket` here to the engine's socket. It runs `cat` on the
/// engine's machine, reading this process's pipe: when this process ends, however it ends, the
/// pipe closes, `cat` ends and so does the ssh. `BatchMode`: never a prompt; a host key or an
/// identity that does not work fails it, and podman's own ssh is used instead.
pub fn forward(url: &SshUrl, identity: Option<&str>, socket: &Path) -> Cmd {
    let target = match &url.user {
        Some(user) => format!("{user}@{}", url.host),
        None => url.host.clone(),
    };
    let forward = format!("{}:{}", socket.display(), url.path);
    let options = ["BatchMode=yes", "ExitOnForwardFailure=yes", "StreamLocalBindUnlink=yes"];
    let mut cmd = Cmd::new("ssh");
    for option in options {
        cmd = cmd.args(["-o", option]);
    }
    if let Some(identity) = identity {
        cmd = cmd.args(["-i", identity]);
    }
    if let Some(port) = url.port {
        cmd = cmd.args(["-p", &port.to_string()]);
    }
    cmd.args(["-L", &forward, &target, "cat"])
}

/// The engine's ssh URL and identity: `CONTAINER_HOST` (with `CONTAINER_SSHKEY`), else the
/// connection `CONTAINER_CONNECTION` names, else, where podman is a remote client only (macOS,
/// Windows), its default connection.
fn ssh_engine() -> Option<(String, Option<String>)> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(host) = var("CONTAINER_HOST") {
        return Some((host, var("CONTAINER_SSHKEY")));
    }
    let named = var("CONTAINER_CONNECTION");
    if named.is_none() && cfg!(target_os = "linux") {
        return None;
    }
    let listed = Cmd::new("podman").args(["system", "connection", "list", "--format", "json"]);
    connection(&listed.read().ok()?, named.as_deref())
}

/// From `podman system connection list --format json`: the named connection, else the default.
pub fn connection(json: &str, name: Option<&str>) -> Option<(String, Option<String>)> {
    let list: Vec<serde_json::Value> = serde_json::from_str(json).ok()?;
    let chosen = list.iter().find(|c| match name {
        Some(name) => c["Name"] == name,
        None => c["Default"] == true,
    })?;
    let uri = chosen["URI"].as_str()?.to_owned();
    let identity = chosen["Identity"].as_str().filter(|i| !i.is_empty()).map(str::to_owned);
    Some((uri, identity))
}

/// The forwarding ssh, running; dropped, it ends and its socket goes.
pub struct Tunnel {
    child: Child,
    /// Held open: its end is what ends the ssh.
    stdin: Option<ChildStdin>,
    socket: PathBuf,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// When podman's engine is over ssh: the tunnel opened, and this process's podman calls (and
/// its children's) pointed at it. `None` (podman's own ssh then) when the engine is not over
/// ssh, when `E2E_SSH_TUNNEL=0`, or when the tunnel does not open (why, in `log`).
pub fn open(log: &Path) -> Option<Tunnel> {
    if std::env::var("E2E_SSH_TUNNEL").is_ok_and(|v| v == "0")
        || std::env::var_os(ENGINE_AT).is_some()
    {
        return None;
    }
    let (uri, identity) = ssh_engine()?;
    let url = SshUrl::parse(&uri)?;
    remove_stale_sockets();
    let socket = std::env::temp_dir().join(format!("{SOCKET_PREFIX}{}.sock", std::process::id()));
    match start(&url, identity.as_deref(), &socket, log) {
        Ok(tunnel) => {
            // As named without the tunnel (empty: no URL or connection was given).
            let at = crate::engine::given_at(crate::engine::Engine::Podman).unwrap_or_default();
            std::env::set_var(ENGINE_AT, at);
            std::env::set_var("CONTAINER_HOST", format!("unix://{}", socket.display()));
            std::env::remove_var("CONTAINER_CONNECTION");
            Some(tunnel)
        }
        Err(e) => {
            let _ = std::fs::OpenOptions::new().create(true).append(true).open(log).and_then(
                |mut f| writeln!(f, "no tunnel to {uri}, podman's own ssh is used: {e:#}"),
            );
            None
        }
    }
}

/// The forwarded sockets are `e2e-engine-<pid>.sock` in the temporary directory.
const SOCKET_PREFIX: &str = "e2e-engine-";

/// Sockets of processes that are gone (killed: nothing of theirs ran to remove them). Where
/// there is no /proc to tell (macOS), they are left: a new one never reuses them.
fn remove_stale_sockets() {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for path in entries.filter_map(|e| Some(e.ok()?.path())) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let pid = name.strip_prefix(SOCKET_PREFIX).and_then(|rest| rest.strip_suffix(".sock"));
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn start(
    url: &SshUrl,
    identity: Option<&str>,
    socket: &Path,
    log: &Path,
) -> anyhow::Result<Tunnel> {
    let cmd = forward(url, identity, socket);
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut command = std::process::Command::new(&cmd.program);
    command.args(&cmd.args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(stderr);
    // Its own process group: a Ctrl-C at the terminal leaves it to the teardown that follows.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command.spawn().with_context(|| format!("starting `{cmd}`"))?;
    let mut tunnel = Tunnel { stdin: None, child, socket: socket.to_owned() };
    tunnel.stdin = tunnel.child.stdin.take();
    let forwarding =
        crate::poll::until(Duration::from_secs(15), Duration::from_millis(20), || {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Ok(true);
            }
            match tunnel.child.try_wait()? {
                Some(status) => anyhow::bail!(
                    "`{cmd}` ended ({status}) before forwarding (its output: {})",
                    log.display()
                ),
                None => Ok(false),
            }
        })?;
    anyhow::ensure!(forwarding, "`{cmd}` did not forward within 15 s");
    Ok(tunnel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_urls_as_podman_gives_them() {
        let url =
            SshUrl::parse("ssh://core@127.0.0.1:53093/run/user/501/podman/podman.sock").unwrap();
        assert_eq!(url.user.as_deref(), Some("core"));
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", Some(53093)));
        assert_eq!(url.path, "/run/user/501/podman/podman.sock");
        let plain = SshUrl::parse("ssh://vm/run/podman/podman.sock?secure=true").unwrap();
        assert_eq!(
            (plain.user, plain.port, plain.path.as_str()),
            (None, None, "/run/podman/podman.sock")
        );
        assert_eq!(SshUrl::parse("unix:///run/podman/podman.sock"), None);
        assert_eq!(SshUrl::parse("ssh://host"), None, "no socket path");
        assert_eq!(SshUrl::parse("ssh://host:notaport/x"), None);
    }

    #[test]
    fn the_forward_is_one_ssh_that_ends_with_this_process() {
        let url =
            SshUrl::parse("ssh://core@127.0.0.1:2223/run/user/1000/podman/podman.sock").unwrap();
        let cmd = forward(&url, Some("/k/id_ed25519"), Path::new("/tmp/e2e-engine-1.sock"));
        assert_eq!(
            cmd.to_string(),
            "ssh -o BatchMode=yes -o ExitOnForwardFailure=yes -o StreamLocalBindUnlink=yes -i /k/id_ed25519 -p 2223 -L /tmp/e2e-engine-1.sock:/run/user/1000/podman/podman.sock core@127.0.0.1 cat"
        );
    }

    #[test]
    fn the_named_connection_else_the_default() {
        let json = r#"[{"Name":"podman-machine-default","URI":"ssh://core@127.0.0.1:53093/run/user/501/podman/podman.sock","Identity":"/Users/me/.local/share/containers/podman/machine/machine","Default":true,"ReadWrite":true},
                      {"Name":"podman-machine-default-root","URI":"ssh://root@127.0.0.1:53093/run/podman/podman.sock","Identity":"/Users/me/.local/share/containers/podman/machine/machine","Default":false,"ReadWrite":true}]"#;
        let (uri, identity) = connection(json, None).unwrap();
        assert_eq!(uri, "ssh://core@127.0.0.1:53093/run/user/501/podman/podman.sock");
        assert_eq!(
            identity.as_deref(),
            Some("/Users/me/.local/share/containers/podman/machine/machine")
        );
        let (root, _) = connection(json, Some("podman-machine-default-root")).unwrap();
        assert!(root.starts_with("ssh://root@"));
        assert_eq!(connection(json, Some("nope")), None);
    }
}
