//! `cargo xtask prebuild-images` against the real engine (podman, and the base image that
//! `test/e2e/setup-podman.sh` makes). Each test builds small images of its own under a
//! repository prefix of its own, keeps its state in a temporary `E2E_DIR`, and removes its
//! images at the end.

mod common;

use std::process::Command;

use common::{result_of, Sandbox};

#[test]
fn builds_once_then_only_what_changed() {
    builds_once_then_only_what_changed_with(Sandbox::new("change"));
}

#[test]
#[ignore = "needs docker: run test/e2e/setup-docker.sh, then `cargo test -p xtask --test prebuild -- --ignored`"]
fn docker_builds_once_then_only_what_changed() {
    builds_once_then_only_what_changed_with(Sandbox::with_engine("dchange", "docker"));
}

#[test]
#[ignore = "needs docker: run test/e2e/setup-docker.sh, then `cargo test -p xtask --test prebuild -- --ignored`"]
fn docker_oom_kill_is_reported() {
    let sb = Sandbox::with_engine("doom", "docker");
    sb.image("hog", "RUN head -c 300m /dev/zero | tail -n 1 >/dev/null\n");
    let file = sb.images_file(&[("hog", "32m")]);
    let containers = || Command::new("docker").args(["ps", "-aq"]).output().unwrap().stdout;
    let before = containers();
    let (ok, out) = sb.prebuild(&file, &[]);
    assert_eq!(containers(), before, "the failed build left its container behind");
    assert!(!ok, "{out}");
    assert!(out.contains("image hog was killed for running out of memory"), "{out}");
    assert!(out.contains("at `RUN head -c 300m"), "{out}");
}

fn builds_once_then_only_what_changed_with(sb: Sandbox) {
    sb.image("alpha", "");
    sb.image("beta", "");
    let file = sb.images_file(&[("alpha", "128m"), ("beta", "128m")]);

    let (ok, out) = sb.prebuild(&file, &[]);
    assert!(ok, "{out}");
    assert_eq!((result_of(&out, "alpha"), result_of(&out, "beta")), ("built", "built"), "{out}");
    let h = sb.handoff();
    assert_eq!(h["images"].as_array().unwrap().len(), 2);
    for image in h["images"].as_array().unwrap() {
        let fp = image["fingerprint"].as_str().unwrap();
        assert_eq!(fp.len(), 64);
        assert!(image["reference"].as_str().unwrap().ends_with(&format!(":{}", &fp[..16])));
        assert!(image["size"].as_u64().unwrap() > 0);
    }
    let (alpha_id, beta_id) = (sb.id("alpha"), sb.id("beta"));

    // Nothing changed: nothing is built.
    let (ok, out) = sb.prebuild(&file, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("nothing to build: every image is cached"), "{out}");
    assert_eq!((result_of(&out, "alpha"), result_of(&out, "beta")), ("cached", "cached"), "{out}");

    // A newer mtime alone changes nothing.
    let f = std::fs::File::options().write(true).open(sb.dir.join("beta/data.txt")).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60)).unwrap();
    // One byte of alpha's context: only alpha is rebuilt, and the plan says why.
    std::fs::write(sb.dir.join("alpha/data.txt"), "alpha v2\n").unwrap();
    let (ok, out) = sb.prebuild(&file, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("inputs changed since the last build"), "{out}");
    assert_eq!((result_of(&out, "alpha"), result_of(&out, "beta")), ("built", "cached"), "{out}");
    assert_ne!(sb.id("alpha"), alpha_id);
    assert_eq!(sb.id("beta"), beta_id);

    // --force rebuilds everything.
    let (ok, out) = sb.prebuild(&file, &["--force", "beta"]);
    assert!(ok, "{out}");
    assert_eq!(result_of(&out, "beta"), "built", "{out}");
}

#[test]
fn a_build_over_its_memory_cap_is_reported_as_an_oom_kill() {
    let sb = Sandbox::new("oom");
    // `tail -n 1` keeps the whole 300 MB "line" in memory: far over the 32 MiB cap.
    sb.image("hog", "RUN head -c 300m /dev/zero | tail -n 1 >/dev/null\n");
    let file = sb.images_file(&[("hog", "32m")]);
    let (ok, out) = sb.prebuild(&file, &[]);
    if uncapped(&out) {
        // Rootless on cgroup v1: nothing can hold the build to its cap; it runs alone, uncapped.
        assert!(ok, "{out}");
        assert!(out.contains("building hog (cap none: the engine cannot enforce one)"), "{out}");
        assert!(!out.contains("--memory 32m"), "{out}");
        return;
    }
    assert!(!ok, "{out}");
    assert!(out.contains("image hog was killed for running out of memory"), "{out}");
    assert!(out.contains("memory cap of 32m at `RUN head -c 300m"), "{out}");
    assert!(out.contains("with 1 build(s) running"), "{out}");
    assert!(out.contains("raise `memory` for hog"), "{out}");
    assert!(out.contains("build-hog.log"), "{out}");
    assert!(!sb.dir.join("state/images.json").exists(), "no handoff after a failure");
}

#[test]
fn with_several_builds_every_failure_is_listed() {
    let sb = Sandbox::new("failures");
    sb.image("broken", "RUN echo compiling && exit 3\n");
    sb.image("hog", "RUN head -c 300m /dev/zero | tail -n 1 >/dev/null\n");
    sb.image("fine", "");
    let file = sb.images_file(&[("broken", "64m"), ("hog", "32m"), ("fine", "64m")]);
    let (ok, out) = sb.prebuild(&file, &["--jobs", "2"]);
    assert!(!ok, "{out}");
    if uncapped(&out) {
        // One build at a time whatever --jobs says: the first failure stops the rest.
        assert!(out.contains("3 to build, one at a time"), "{out}");
        assert!(out.contains("image broken failed at `RUN echo compiling && exit 3`"), "{out}");
        assert!(out.contains("1 image build(s) failed"), "{out}");
        assert_eq!(result_of(&out, "hog"), "not", "{out}");
        return;
    }
    assert!(out.contains("2 to build") || out.contains("3 to build"), "{out}");
    assert!(out.contains("image broken failed at `RUN echo compiling && exit 3`"), "{out}");
    assert!(out.contains("image hog was killed for running out of memory"), "{out}");
    assert!(out.contains("2 image build(s) failed"), "{out}");
    // After the first failure no new build starts.
    assert_eq!(result_of(&out, "fine"), "not", "{out}");
}

/// The plan says the engine cannot enforce memory caps (rootless podman on cgroup v1).
fn uncapped(out: &str) -> bool {
    out.contains("memory caps: the engine cannot enforce them")
}

#[test]
fn caps_over_the_budget_are_refused_before_anything_runs() {
    let sb = Sandbox::new("budget");
    sb.image("big", "");
    let file = sb.images_file(&[("big", "512m")]);
    let (ok, out) = sb.prebuild(&file, &["--memory-budget", "256m"]);
    assert!(!ok, "{out}");
    assert!(out.contains("big (cap 512 MiB)") && out.contains("--memory-budget"), "{out}");
    assert!(!out.contains("building big"), "{out}");
}
