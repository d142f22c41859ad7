//! What every image command starts from: the images file read and the engine asked once
//! ([`Session`]), and what each step of a build reads ([`Inputs`]).

use anyhow::{Context, Result};

use crate::{
    engine::Engine,
    facts::{Env, Facts},
    images::ImagesFile,
    memory,
    project::Project,
    report::Reporter,
};

use super::{base::provision_base, BuildOptions};

/// What every step of a build reads: the project, where it reports, the build's options, and
/// the session (the images file and the engine's facts).
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub project: &'a Project,
    pub reporter: &'a Reporter,
    pub opts: &'a BuildOptions,
    pub session: &'a Session,
}

/// What every image command starts from, read and asked once: the images file, and the
/// facts of the engine and the machine.
pub struct Session {
    pub images_file: ImagesFile,
    pub facts: Facts,
}

impl Session {
    /// Reads the images file and asks the engine for its facts (over ssh, each answer takes
    /// seconds); with `provision`, a missing base image is first [provided](provision_base).
    pub fn open(
        project: &Project,
        opts: &BuildOptions,
        reporter: &Reporter,
        provision: bool,
    ) -> Result<Self> {
        let images = load_images(project, opts, None)?;
        // The one place the engine is decided (as asked, else podman, else docker).
        let engine = Engine::detect(opts.engine);
        let offline = images.offline_base_image.as_deref();
        let candidates: Vec<&str> =
            [images.base_image.as_str()].into_iter().chain(offline).collect();
        let mut facts = reporter.phase("ask the engine", |reporter| {
            if let Ok(detected) = engine {
                let given = crate::engine::given_at(detected);
                let mut at = given.map(|at| format!(" at {at}")).unwrap_or_default();
                if std::env::var_os(crate::engine::ENGINE_AT).is_some() {
                    at += " (every call through one ssh connection)";
                }
                let what = "its platform, memory, CPUs, store and base image";
                reporter.line(format!("  asking {}{at}: {what}", detected.program()));
            }
            Ok(Facts::gather(engine.clone(), &candidates, opts.memory_budget))
        })?;
        if let (true, None, Ok(engine_facts)) = (provision, &facts.base, &facts.engine) {
            if let Some(made) = provision_base(project, reporter, engine_facts, &images) {
                facts.base = engine_facts.engine.image(&made);
                facts.base_image = made;
            }
        }
        let images = match facts.base_image != images.base_image {
            true => load_images(project, opts, Some(facts.base_image.clone()))?,
            false => images,
        };
        Ok(Session { images_file: images, facts })
    }

    pub fn remote(&self) -> bool {
        self.facts.engine.as_ref().is_ok_and(|f| f.remote)
    }

    /// The version the engine reports of itself (`?` when it did not answer).
    pub fn engine_version(&self) -> &str {
        self.facts.engine.as_ref().map_or("?", |f| f.version.as_str())
    }

    /// The facts to go on with, printed once: the engine, its machine, the base image.
    pub fn env(&self, reporter: &Reporter, base_image_id: Option<&str>) -> Result<Env> {
        reporter.phase("check prerequisites", |reporter| {
            let env = self.facts.env(base_image_id)?;
            let facts = &env.facts;
            let id = &env.base_image_id;
            reporter.line(format!(
                "  {} {} answers ({}, {}, {} CPUs, {} memory); base image {} {} ({})",
                facts.engine.program(),
                facts.version,
                facts.platform,
                if facts.remote { "remote" } else { "local" },
                facts.cpus,
                memory::human(facts.mem_total),
                env.base_image,
                if base_image_id.is_some() { "as the archive recorded it" } else { "is present" },
                &id[..12.min(id.len())]
            ));
            Ok(env)
        })
    }
}

/// The images file (`--images-file`, else `test/e2e/images.toml`), its base image `base`, else
/// `E2E_BASE_IMAGE`'s, else its own.
pub fn load_images(
    project: &Project,
    opts: &BuildOptions,
    base: Option<String>,
) -> Result<ImagesFile> {
    let file =
        opts.images_file.clone().unwrap_or_else(|| project.root.join("test/e2e/images.toml"));
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let base = base.or_else(|| std::env::var("E2E_BASE_IMAGE").ok());
    ImagesFile::parse(&text, base).with_context(|| format!("in {}", file.display()))
}
