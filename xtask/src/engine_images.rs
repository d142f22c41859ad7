//! `target/e2e/images.json`, the record of the images (docs/commands.md): every E2E image as the engine has
//! it, written by `prebuild-images`, read by `e2e`, `save-images`, `doctor` and the benchmarks.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    engine::{Engine, EngineFacts, THIS_MACHINE},
    facts::Env,
    fsx,
    project::Project,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineImages {
    pub engine: Engine,
    /// Which engine has these images ([`EngineFacts::at`]); older files are the local one's.
    #[serde(default = "this_machine")]
    pub at: String,
    pub platform: String,
    pub base_image: String,
    pub base_image_id: String,
    pub images: Vec<ImageRecord>,
    /// The images this run built (not written to the file).
    #[serde(skip, default)]
    pub built_now: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub repository: String,
    /// `repository:tag`, the tag being the fingerprint's first 16 hex digits.
    pub reference: String,
    pub id: String,
    pub fingerprint: String,
    pub size: u64,
}

fn this_machine() -> String {
    THIS_MACHINE.to_owned()
}

impl EngineImages {
    pub fn new(env: &Env, images: Vec<ImageRecord>) -> EngineImages {
        EngineImages {
            engine: env.engine(),
            at: env.facts.at.clone(),
            platform: env.facts.platform.clone(),
            base_image: env.base_image.clone(),
            base_image_id: env.base_image_id.clone(),
            images,
            built_now: Vec::new(),
        }
    }

    /// Whether this records that engine's images (another has others, even with equal tags).
    pub fn is_of(&self, engine: &EngineFacts) -> bool {
        self.engine == engine.engine && self.at == engine.at && self.platform == engine.platform
    }

    /// `podman at unix:///run/e2e-rig/podman.sock (linux/amd64)`.
    pub fn engine_name(&self) -> String {
        format!("{} at {} ({})", self.engine.program(), self.at, self.platform)
    }

    pub fn path(project: &Project) -> PathBuf {
        project.e2e_dir.join("images.json")
    }

    pub fn load(project: &Project) -> Option<EngineImages> {
        serde_json::from_slice(&std::fs::read(EngineImages::path(project)).ok()?).ok()
    }

    pub fn save(&self, project: &Project) -> anyhow::Result<()> {
        fsx::write_json(&EngineImages::path(project), self)
    }

    pub fn pinned(&self) -> BTreeMap<String, String> {
        self.images.iter().map(|i| (i.repository.clone(), i.reference.clone())).collect()
    }
}
