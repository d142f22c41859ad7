//! Images through a registry, by fingerprint tag, for machines that pull instead of load
//! (`save-images --push`, `load-images --registry`, `e2e --registry`: docs/commands.md).

use anyhow::{Context, Result};

use crate::{
    build::{self, Action, Goal, Inputs},
    cmd::Cmd,
    engine::Engine,
    engine_images::EngineImages,
    fingerprint,
    project::Project,
    report::Reporter,
};

/// Pulls (in parallel: it is light) this checkout's images not already in the engine from
/// `REGISTRY/PREFIX` by fingerprint tag, tagged as a local build would; the base image must be
/// present (its ID is in every fingerprint).
pub fn pull(inputs: Inputs, prefix: &str) -> Result<EngineImages> {
    let project = inputs.project;
    let reporter = inputs.reporter;
    let prepared = build::prepare(inputs, Goal::Build(&[]))?;
    let engine = prepared.env.engine();
    let log = project.logs_dir().join("pull-images.log");
    let _ = std::fs::remove_file(&log);
    reporter.phase("pull images", |reporter| {
        let pulled = crate::parallel::in_parallel(&prepared.plan, |item| {
            if let Action::Cached(image) = &item.action {
                return Ok(item.record(image));
            }
            let name = &item.spec.name;
            let fp = &item.fingerprint;
            let remote = remote_reference(prefix, name, fp);
            let pull = registry_cmd(engine, "pull", prefix).arg(&remote);
            let tag = Cmd::new(engine.program()).args(["tag", &remote, &item.reference]);
            for cmd in [pull, tag] {
                reporter.command(&cmd);
                cmd.run_logged(&log).with_context(|| {
                    format!("pulling {name} as {remote} (was it pushed with `save-images --push {prefix}`?)")
                })?;
            }
            let image = engine
                .image(&item.reference)
                .with_context(|| format!("{} is not in the engine after the pull", item.reference))?;
            anyhow::ensure!(
                image.fingerprint.as_ref() == Some(fp),
                "{remote} carries fingerprint {:?}, this checkout needs {fp}",
                image.fingerprint
            );
            Ok(item.record(&image))
        });
        let images = pulled.into_iter().collect::<Result<_>>()?;
        Ok(EngineImages::new(&prepared.env, images))
    })
}

/// Tags each image `REGISTRY/PREFIX/<name>:<fingerprint tag>` and pushes it.
pub fn push(
    project: &Project,
    reporter: &Reporter,
    engine_images: &EngineImages,
    prefix: &str,
) -> Result<()> {
    let log = project.logs_dir().join("push-images.log");
    for image in &engine_images.images {
        let remote = remote_reference(prefix, &image.name, &image.fingerprint);
        let tag = Cmd::new(engine_images.engine.program()).args(["tag", &image.reference, &remote]);
        let push = registry_cmd(engine_images.engine, "push", prefix).arg(&remote);
        for cmd in [tag, push] {
            reporter.command(&cmd);
            cmd.run_logged(&log).with_context(|| format!("pushing {}", image.name))?;
        }
    }
    Ok(())
}

/// `podman pull` or `push`, told that a registry on loopback speaks plain HTTP (in tests).
fn registry_cmd(engine: Engine, verb: &str, prefix: &str) -> Cmd {
    let plain_http = is_loopback_registry(prefix) && engine == Engine::Podman;
    Cmd::new(engine.program()).arg(verb).args(plain_http.then_some("--tls-verify=false"))
}

pub fn is_loopback_registry(prefix: &str) -> bool {
    let host = prefix.split('/').next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// `localhost:5000/e2e` + gateway at fingerprint f00... = `localhost:5000/e2e/gateway:f00...`.
pub fn remote_reference(prefix: &str, name: &str, fingerprint: &str) -> String {
    format!("{}/{name}:{}", prefix.trim_end_matches('/'), fingerprint::tag(fingerprint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine_images::ImageRecord;

    #[test]
    fn registry_references() {
        let record = ImageRecord {
            name: "gateway".into(),
            repository: "localhost/e2e-gateway".into(),
            reference: "localhost/e2e-gateway:x".into(),
            id: String::new(),
            fingerprint: "c".repeat(64),
            size: 0,
        };
        assert_eq!(
            remote_reference("localhost:5000/e2e/", &record.name, &record.fingerprint),
            "localhost:5000/e2e/gateway:cccccccccccccccc"
        );
        assert!(is_loopback_registry("localhost:5000/e2e"));
        assert!(is_loopback_registry("127.0.0.1:5000/x"));
        assert!(!is_loopback_registry("ghcr.io/team/e2e"));
    }
}
