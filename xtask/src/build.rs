//! Building: the service binaries compiled once on the host in one `cargo build`, then each
//! E2E image built from its Dockerfile, one at a time, under its memory cap.

use std::{path::PathBuf, time::Instant};

use anyhow::Context;

use crate::{
    cmd::Cmd,
    engine::Podman,
    images::{self, BuildContext, ImageSpec, Images},
    interrupt,
    project::Project,
    report::{secs, Reporter},
};

#[derive(clap::Args, Debug)]
pub struct PrebuildArgs {
    /// Images to build (names from test/e2e/images.toml); all of them when none is given.
    pub images: Vec<String>,
}

impl PrebuildArgs {
    pub fn run(self, project: &Project) -> anyhow::Result<()> {
        let mut reporter = Reporter::new();
        let images = load_images(project)?;
        let selected = images.select(&self.images)?;
        check_prerequisites(&images, &mut reporter)?;
        let built = build_all(project, &mut reporter, &selected)?;
        reporter.line("images:");
        for b in &built {
            reporter.line(format!("  {:<14} {:<40} built in {}", b.name, b.reference, secs(b.took)));
        }
        Ok(())
    }
}

/// An image that is ready in the engine.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub name: String,
    pub repository: String,
    pub reference: String,
    pub took: std::time::Duration,
}

pub fn load_images(project: &Project) -> anyhow::Result<Images> {
    Images::load(&project.images_file(), std::env::var("E2E_BASE_IMAGE").ok())
}

/// Stops before anything runs when podman or the base image is missing, naming the fix.
pub fn check_prerequisites(images: &Images, reporter: &mut Reporter) -> anyhow::Result<()> {
    reporter.phase("check prerequisites", |r| {
        which::which(Podman::PROGRAM).map_err(|_| {
            anyhow::anyhow!(
                "podman is not installed (not found on PATH).\n  fix: run `test/e2e/setup-podman.sh` as root \
                 (installs and configures podman on Debian 12), or `apt-get install podman runc netavark aardvark-dns iptables`"
            )
        })?;
        let info = Podman.info();
        r.command(&info);
        let runtime = info.read().context(
            "podman is installed but does not work.\n  fix: see shared/ENVIRONMENT.md; `test/e2e/setup-podman.sh` writes a working /etc/containers/containers.conf",
        )?;
        r.line(format!("  podman works (runtime {})", runtime.trim()));
        if !Podman.image_exists(&images.base_image).succeeds()? {
            anyhow::bail!(
                "the base image {base} is not in podman's image store.\n  fix: run `test/e2e/setup-podman.sh` \
                 (makes it with debootstrap, no registry needed), or set E2E_BASE_IMAGE to an image you have \
                 (e.g. `podman pull docker.io/library/debian:bookworm-slim` where a registry is reachable)",
                base = images.base_image
            );
        }
        r.line(format!("  base image {} is present", images.base_image));
        Ok(())
    })
}

/// Compiles the binaries the images package, in one `cargo build`, then builds the images.
pub fn build_all(project: &Project, reporter: &mut Reporter, specs: &[ImageSpec]) -> anyhow::Result<Vec<BuiltImage>> {
    let binaries: Vec<&str> = specs.iter().filter_map(ImageSpec::binary).collect();
    if !binaries.is_empty() {
        reporter.phase("compile service binaries", |r| {
            let cmd = cargo_build(project, &binaries);
            r.command(&cmd);
            cmd.run_logged(&project.logs_dir().join("cargo-build.log"))
                .context("compiling the service binaries")
        })?;
    }
    reporter.phase("build images", |r| {
        let mut built = Vec::new();
        for spec in specs {
            interrupt::check()?;
            built.push(build_one(project, r, spec)?);
        }
        Ok(built)
    })
}

/// `cargo build` of every binary the images need, in the workspace's `dev` profile (the one
/// `cargo test` shares, so the E2E suite reuses the compiled dependencies).
pub fn cargo_build(project: &Project, binaries: &[&str]) -> Cmd {
    let mut c = Cmd::new(Project::cargo()).args(["build", "--workspace", "--locked"]).cwd(&project.root);
    for b in binaries {
        c = c.arg("--bin").arg(*b);
    }
    c
}

fn build_one(project: &Project, reporter: &mut Reporter, spec: &ImageSpec) -> anyhow::Result<BuiltImage> {
    let start = Instant::now();
    let context = stage_context(project, spec)?;
    let reference = format!("{}:latest", spec.repository);
    let build_args: Vec<(String, String)> = spec.build_args.clone().into_iter().collect();
    let cmd = Podman.build(
        &reference,
        &project.root.join(&spec.dockerfile),
        &context,
        &images::podman_size(spec.memory),
        &build_args,
    );
    reporter.command(&cmd);
    let log = project.logs_dir().join(format!("build-{}.log", spec.name));
    let _ = std::fs::remove_file(&log);
    cmd.run_logged(&log).with_context(|| format!("building image {} (memory cap {})", spec.name, images::podman_size(spec.memory)))?;
    let took = start.elapsed();
    reporter.line(format!("  built {reference} in {}", secs(took)));
    Ok(BuiltImage { name: spec.name.clone(), repository: spec.repository.clone(), reference, took })
}

/// The build context of an image: its directory, or a staged directory holding only the
/// binary it packages (so the engine is sent megabytes, not the whole target directory).
fn stage_context(project: &Project, spec: &ImageSpec) -> anyhow::Result<PathBuf> {
    match &spec.context {
        BuildContext::Dir(dir) => {
            let path = project.root.join(dir);
            anyhow::ensure!(path.is_dir(), "image {}: context directory {dir} does not exist", spec.name);
            Ok(path)
        }
        BuildContext::Binary(bin) => {
            let src = project.binary(bin);
            anyhow::ensure!(
                src.is_file(),
                "image {}: binary {} was not built (is `{bin}` a binary of this workspace?)",
                spec.name,
                project.display(&src)
            );
            let dir = project.e2e_dir().join("context").join(&spec.name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let dst = dir.join(bin);
            copy_if_changed(&src, &dst)?;
            Ok(dir)
        }
    }
}

/// Copies unless the destination already holds the same bytes, so an unchanged binary keeps
/// its staged file untouched.
fn copy_if_changed(src: &std::path::Path, dst: &std::path::Path) -> anyhow::Result<()> {
    let same = match (std::fs::metadata(src), std::fs::metadata(dst)) {
        (Ok(a), Ok(b)) if a.len() == b.len() => std::fs::read(src)? == std::fs::read(dst)?,
        _ => false,
    };
    if !same {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(src, &tmp).with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
        std::fs::rename(&tmp, dst)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cargo_build_for_every_binary() {
        let project = Project { root: "/repo".into(), target_dir: "/repo/target".into() };
        let c = cargo_build(&project, &["gateway", "data-storage"]);
        assert!(c.to_string().ends_with("build --workspace --locked --bin gateway --bin data-storage"), "{c}");
    }
}
