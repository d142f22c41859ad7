//! Readiness in a Kind cluster: the namespace's pods polled until every one is Ready, with a
//! deadline; a crash loop fails the wait at once, with the pod's logs and `kubectl describe`.

use std::time::Duration;

use serde_json::Value;

use super::KindRun;
use crate::report::Reporter;

/// What a pod's status says, reduced to what the wait needs.
#[derive(Debug, PartialEq, Eq)]
pub enum PodHealth {
    Ready,
    Waiting(String),
    /// Crash-looping, or failed: stop waiting at once.
    Failed(String),
}

/// The waiting reasons that will not pass by themselves.
const FAILED: &str = "CrashLoopBackOff ErrImageNeverPull ImagePullBackOff ErrImagePull \
                      CreateContainerConfigError InvalidImageName";

/// Decides from one item of `kubectl get pods -o json`.
pub fn pod_health(pod: &Value) -> PodHealth {
    let status = &pod["status"];
    let phase = status["phase"].as_str().unwrap_or("Pending");
    if phase == "Failed" {
        return PodHealth::Failed(format!(
            "phase Failed: {}",
            status["message"].as_str().unwrap_or("")
        ));
    }
    for s in status["containerStatuses"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("?");
        let waiting = s["state"]["waiting"]["reason"].as_str().unwrap_or("");
        if FAILED.split_whitespace().any(|r| r == waiting) {
            return PodHealth::Failed(format!("container {name}: {waiting}"));
        }
        let code = s["lastState"]["terminated"]["exitCode"].as_i64().unwrap_or(0);
        if s["restartCount"].as_u64().unwrap_or(0) > 0 {
            return PodHealth::Failed(format!(
                "container {name} restarted (last exit code {code})"
            ));
        }
    }
    let conditions = status["conditions"].as_array().into_iter().flatten();
    match conditions.into_iter().any(|c| c["type"] == "Ready" && c["status"] == "True") {
        true => PodHealth::Ready,
        false => PodHealth::Waiting(format!("phase {phase}")),
    }
}

/// Polls the namespace's pods until every one is Ready, with a deadline.
pub fn wait_ready(run: &KindRun, timeout: Duration, r: &Reporter) -> anyhow::Result<()> {
    let mut waiting = Vec::new();
    let ready = crate::poll::until(timeout, Duration::from_millis(500), || {
        let list: Value = serde_json::from_str(&run.get_pods_json().read()?)?;
        let pods = list["items"].as_array().cloned().unwrap_or_default();
        waiting.clear();
        for pod in &pods {
            let name = pod["metadata"]["name"].as_str().unwrap_or("?");
            match pod_health(pod) {
                PodHealth::Ready => {}
                PodHealth::Waiting(why) => waiting.push(format!("{name}: {why}")),
                PodHealth::Failed(why) => {
                    let pod = format!("pod/{name}");
                    let read = |args: &[&str]| run.kubectl_ns(args).read().unwrap_or_default();
                    let logs = read(&["logs", &pod, "--all-containers", "--tail", "30"]);
                    let describe = read(&["describe", &pod]);
                    anyhow::bail!("pod {name} failed while waiting for readiness: {why}\n--- logs ---\n{logs}\n--- describe ---\n{describe}");
                }
            }
        }
        let ready = !pods.is_empty() && waiting.is_empty();
        if ready {
            r.line(format!("  {} pods ready", pods.len()));
        }
        Ok(ready)
    })?;
    anyhow::ensure!(ready, "not ready after {}s:\n  {}", timeout.as_secs(), waiting.join("\n  "));
    Ok(())
}
