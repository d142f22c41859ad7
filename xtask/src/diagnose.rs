//! Why an image build failed, from its exit status and log: OOM-killed under its memory cap or
//! not, and at which Dockerfile step.

/// Whether a RUN step was killed under the cap (exit 137 / `Killed` / `container exited on
/// killed`), and the Dockerfile step that failed, e.g. `RUN apt-get install -y postgresql-15`.
pub fn diagnose(exit_code: Option<i32>, log: &str) -> (bool, Option<String>) {
    // `container exited on killed`: the OOM killer took the step's first process, and podman
    // exits 1 (seen in CI with a 32m cap).
    let out_of_memory = exit_code == Some(137)
        || (log.lines()).any(|l| matches!(l.trim(), "Killed" | "container exited on killed"))
        || ["exit status 137", "returned a non-zero code: 137"].iter().any(|s| log.contains(s));
    (out_of_memory, failing_step(log))
}

/// The step in `Error: building at STEP "..."` (podman), else the last `STEP n/m: ...`
/// (podman) or `Step n/m : ...` (docker) line.
fn failing_step(log: &str) -> Option<String> {
    let at = log.lines().rev().find_map(|l| l.split_once("building at STEP \""));
    if let Some((step, _)) = at.and_then(|(_, rest)| rest.split_once("\":")) {
        return Some(step.to_owned());
    }
    log.lines().rev().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix("STEP ").or_else(|| l.strip_prefix("Step "))?;
        let (_, step) = rest.split_once(':')?;
        Some(step.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
    }

    #[test]
    fn real_podman_oom_kill() {
        // Output of a real `podman build --memory 64m --memory-swap 64m` whose RUN step
        // needed 300 MB (see tests/fixtures).
        let (out_of_memory, step) = diagnose(Some(137), &fixture("podman-build-oom.log"));
        assert!(out_of_memory);
        assert_eq!(step.as_deref(), Some("RUN head -c 300m /dev/zero | tail -n 1 >/dev/null"));
    }

    #[test]
    fn real_podman_oom_kill_of_the_steps_first_process() {
        // The same build under a 32m cap, in CI: podman exited 1.
        let (out_of_memory, step) =
            diagnose(Some(1), &fixture("podman-build-oom-container-killed.log"));
        assert!(out_of_memory);
        assert_eq!(step.as_deref(), Some("RUN head -c 300m /dev/zero | tail -n 1 >/dev/null"));
    }

    #[test]
    fn real_podman_failures_that_are_not_memory() {
        let run = diagnose(Some(3), &fixture("podman-build-run-failed.log"));
        assert_eq!(run, (false, Some("RUN echo compiling && exit 3".to_owned())));
        let copy = diagnose(Some(125), &fixture("podman-build-copy-failed.log"));
        assert!(!copy.0, "not memory");
        assert_eq!(copy.1.as_deref(), Some("COPY missing.txt /x"));
    }

    #[test]
    fn docker_classic_builder_output() {
        let log = "Step 1/3 : FROM base\nStep 3/3 : RUN make\n ---> Running in 1\nKilled\nThe command '/bin/sh -c make' returned a non-zero code: 137\n";
        let (out_of_memory, step) = diagnose(Some(1), log);
        assert!(out_of_memory);
        assert_eq!(step.as_deref(), Some("RUN make"));
    }
}
