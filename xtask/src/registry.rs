//! Images through a registry, for machines that pull instead of load: `save-images --push
//! REGISTRY/PREFIX` pushes each image under its fingerprint tag; `load-images --registry` and
//! `e2e --registry` pull this checkout's images by those tags.

use anyhow::Context;

use crate::{
    build::{self, Action, BuildOptions, Session},
    cmd::Cmd,
    engine::Engine,
    fingerprint,
    handoff::{Handoff, ImageRecord},
    project::Project,
    report::Reporter,
};

/// Pulls this checkout's images from `REGISTRY/PREFIX` by their fingerprint tags (in
/// parallel: pulling is light) and tags them as a local build would. An image already in the
/// engine with its fingerprint is not pulled. The base image must be present, since its ID
/// is part of every fingerprint.
pub fn pull(
    project: &Project,
    r: &Reporter,
    prefix: &str,
    opts: &BuildOptions,
    session: &Session,
) -> anyhow::Result<Handoff> {
    let prepared = build::prepare(project, r, opts, session, &[], None, true)?;
    let engine = prepared.env.engine();
    let log = project.logs_dir().join("pull-images.log");
    let _ = std::fs::remove_file(&log);
    let insecure = is_loopback_registry(prefix);
    r.phase("pull images", |r| {
        let results: Vec<anyhow::Result<ImageRecord>> = std::thread::scope(|s| {
            let handles: Vec<_> = prepared
                .plan
                .iter()
                .map(|item| {
                    s.spawn(|| -> anyhow::Result<ImageRecord> {
                        if let Action::Cached(image) = &item.action {
                            return Ok(item.record(image));
                        }
                        let remote = format!("{}/{}:{}", prefix.trim_end_matches('/'), item.spec.name, fingerprint::tag(&item.fingerprint));
                        let mut pull = Cmd::new(engine.program()).arg("pull");
                        if insecure && engine == Engine::Podman {
                            pull = pull.arg("--tls-verify=false");
                        }
                        let pull = pull.arg(&remote);
                        let tag = Cmd::new(engine.program()).args(["tag", &remote, &item.reference]);
                        for c in [pull, tag] {
                            r.command(&c);
                            c.run_logged(&log).with_context(|| {
                                format!("pulling {} as {remote} (was it pushed with `save-images --push {prefix}`?)", item.spec.name)
                            })?;
                        }
                        let image = engine
                            .image(&item.reference)
                            .with_context(|| format!("{} is not in the engine after the pull", item.reference))?;
                        anyhow::ensure!(
                            image.fingerprint.as_deref() == Some(item.fingerprint.as_str()),
                            "{remote} carries fingerprint {:?}, this checkout needs {}",
                            image.fingerprint,
                            item.fingerprint
                        );
                        Ok(item.record(&image))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("no panic")).collect()
        });
        let images = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Handoff {
            engine,
            at: prepared.env.facts.at.clone(),
            platform: prepared.env.platform().to_owned(),
            base_image: prepared.env.base_image.clone(),
            base_image_id: prepared.env.base_image_id.clone(),
            images,
            built_now: Vec::new(),
        })
    })
}

/// Tags each image `REGISTRY/PREFIX/<name>:<fingerprint tag>` and pushes it.
pub fn push(
    project: &Project,
    r: &Reporter,
    handoff: &Handoff,
    prefix: &str,
) -> anyhow::Result<()> {
    let log = project.logs_dir().join("push-images.log");
    let insecure = is_loopback_registry(prefix);
    for image in &handoff.images {
        let remote = remote_reference(prefix, image);
        let tag = Cmd::new(handoff.engine.program()).args(["tag", &image.reference, &remote]);
        let mut push = Cmd::new(handoff.engine.program()).arg("push");
        if insecure && handoff.engine == Engine::Podman {
            push = push.arg("--tls-verify=false");
        }
        let push = push.arg(&remote);
        for c in [tag, push] {
            r.command(&c);
            c.run_logged(&log)
                .with_context(|| format!("pushing {}", image.name))?;
        }
    }
    Ok(())
}

/// `localhost:5000/e2e` + gateway at fingerprint f00... = `localhost:5000/e2e/gateway:f00...`.
pub fn remote_reference(prefix: &str, image: &ImageRecord) -> String {
    format!(
        "{}/{}:{}",
        prefix.trim_end_matches('/'),
        image.name,
        fingerprint::tag(&image.fingerprint)
    )
}

/// Registries on loopback speak plain HTTP in tests; podman must be told so.
pub fn is_loopback_registry(prefix: &str) -> bool {
    let host = prefix.split('/').next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_references() {
        let r = ImageRecord {
            name: "gateway".into(),
            repository: "localhost/e2e-gateway".into(),
            reference: "localhost/e2e-gateway:x".into(),
            id: String::new(),
            fingerprint: "c".repeat(64),
            size: 0,
        };
        assert_eq!(
            remote_reference("localhost:5000/e2e/", &r),
            "localhost:5000/e2e/gateway:cccccccccccccccc"
        );
        assert!(is_loopback_registry("localhost:5000/e2e"));
        assert!(is_loopback_registry("127.0.0.1:5000/x"));
        assert!(!is_loopback_registry("ghcr.io/team/e2e"));
    }
}
