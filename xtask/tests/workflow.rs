//! The CI workflow splits building from testing: checked here for what it must do, and in
//! `.ci/run` against GitHub's workflow schema (check-jsonschema).

use serde_norway::Value;

fn workflow() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../.github/workflows/e2e.yml");
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn steps<'a>(w: &'a Value, job: &str) -> &'a Vec<Value> {
    w["jobs"][job]["steps"].as_sequence().unwrap_or_else(|| panic!("job {job} has no steps"))
}

fn runs(w: &Value, job: &str) -> String {
    steps(w, job).iter().filter_map(|s| s["run"].as_str()).collect::<Vec<_>>().join("\n")
}

fn uses<'a>(w: &'a Value, job: &str, action: &str) -> Vec<&'a Value> {
    steps(w, job)
        .iter()
        .filter(|s| s["uses"].as_str().is_some_and(|u| u.starts_with(action)))
        .collect()
}

#[test]
fn build_images_builds_saves_and_uploads_without_recompressing() {
    let w = workflow();
    let run = runs(&w, "build-images");
    let prebuild = run.find("cargo xtask prebuild-images").expect("prebuild-images");
    let save = run.find("cargo xtask save-images").expect("save-images");
    assert!(prebuild < save, "build before saving");
    let upload = uses(&w, "build-images", "actions/upload-artifact");
    assert_eq!(upload.len(), 1);
    assert_eq!(
        upload[0]["with"]["compression-level"].as_u64(),
        Some(0),
        "the archive is zstd already"
    );
    let paths = upload[0]["with"]["path"].as_str().unwrap();
    assert!(
        paths.contains("target/e2e/images.tar.zst\n")
            && paths.contains("target/e2e/images.tar.zst.json"),
        "{paths}"
    );
}

#[test]
fn e2e_jobs_only_load_the_archive() {
    let w = workflow();
    assert_eq!(w["jobs"]["e2e"]["needs"].as_str(), Some("build-images"));
    let download = uses(&w, "e2e", "actions/download-artifact");
    assert_eq!(download.len(), 1);
    assert_eq!(download[0]["with"]["path"].as_str(), Some("target/e2e"));
    let run = runs(&w, "e2e");
    assert!(run.contains("cargo xtask e2e --images target/e2e/images.tar.zst"), "{run}");
    for forbidden in
        ["prebuild-images", "podman build", "docker build", "podman pull", "docker pull"]
    {
        assert!(!run.contains(forbidden), "the e2e job must not `{forbidden}`:\n{run}");
    }
    assert!(run.contains("E2E_SKIP_BASE_IMAGE=1"), "a loading job needs no base image");
}

/// The build job builds on the official Debian image, which `prebuild-images` pulls itself
/// (no job pulls by hand, and none replaces the upstream default); the e2e job loads.
#[test]
fn the_build_job_uses_upstream_images_and_no_job_pulls_by_hand() {
    let w = workflow();
    for job in w["jobs"].as_mapping().unwrap().keys() {
        let run = runs(&w, job.as_str().unwrap());
        assert!(!run.contains(" pull "), "{run}");
        assert!(!run.contains("E2E_BASE_IMAGE="), "upstream images on GitHub: {run}");
    }
    let build = runs(&w, "build-images");
    assert!(
        build.contains("E2E_SKIP_BASE_IMAGE=1"),
        "no debootstrap where a registry answers: {build}"
    );
    assert!(runs(&w, "e2e").contains("--faults"), "the e2e job runs the fault tests");
}
