//! What a command needs to know, asked once: the engine and what it says of itself, whether it
//! has the base image, the memory budgets. `doctor` judges them; every later stage takes them.

use std::path::Path;

use anyhow::Context;

use crate::{
    engine::{Engine, EngineFacts, ImageInfo, Store},
    memory::{self, Budget},
    problem::Problem,
};

/// The facts as gathered: each part either known or the problem that kept it unknown.
#[derive(Debug, Clone)]
pub struct Facts {
    pub engine: Result<EngineFacts, Problem>,
    pub base_image: String,
    /// The base image in the engine (`None`: not there, or the engine did not answer).
    pub base: Option<ImageInfo>,
    /// The base image made without a registry, when the configured one is not there.
    pub offline_base: Option<String>,
    /// The memory image builds may use: the engine machine's.
    pub budget: Result<Budget, Problem>,
    /// The memory the host's `cargo build` may use: the host's.
    pub host_budget: Result<Budget, Problem>,
}

/// The facts a run goes on with, once nothing is missing.
#[derive(Debug, Clone)]
pub struct Env {
    pub facts: EngineFacts,
    pub base_image: String,
    pub base_image_id: String,
    pub budget: Budget,
    pub host_budget: Budget,
}

impl Env {
    pub fn engine(&self) -> Engine {
        self.facts.engine
    }

    /// A build's `--memory` for a cap, where the engine can enforce it.
    pub fn cap(&self, bytes: u64) -> Option<String> {
        self.facts.isolation.caps_hold().then(|| crate::images::podman_size(bytes))
    }

    /// Builds at once: as asked, or one where nothing holds a build to its cap (the admission
    /// against the budget is then all that keeps builds within the machine's memory).
    pub fn build_jobs(&self, asked: usize) -> usize {
        if self.facts.isolation.caps_hold() {
            asked
        } else {
            1
        }
    }

    /// `cargo -j` for the host's compiles (see [`memory::cargo_jobs`]).
    pub fn cargo_jobs(&self) -> usize {
        memory::cargo_jobs(self.host_budget.bytes, memory::cpus())
    }
}

impl Facts {
    /// Asks the engine for its facts and each base image candidate (configured, then offline) at
    /// once: each call costs tens of ms here, seconds over ssh. `base_image`: the first it has.
    pub fn gather(
        engine: Result<Engine, Problem>,
        candidates: &[&str],
        budget_flag: Option<u64>,
    ) -> Facts {
        let (answer, base) = match engine {
            Err(problem) => (Err(problem), None),
            Ok(engine) => std::thread::scope(|scope| {
                let info = scope.spawn(|| ask(engine));
                let found: Vec<_> = candidates
                    .iter()
                    .map(|c| scope.spawn(move || engine.image(c).map(|i| (c.to_string(), i))))
                    .collect();
                let base = found.into_iter().find_map(|h| h.join().expect("no panic"));
                let answer = (info.join().expect("no panic"))
                    .map_err(|err| {
                        format!("{} is installed but does not answer: {err:#}", engine.program())
                    })
                    .and_then(|facts| facts.map_err(|err| format!("{err:#}")))
                    .map_err(|what| Problem::new(what, engine.not_answering_fix()));
                (answer.map(|f| with_local_store(f, base.as_ref())), base)
            }),
        };
        let host = memory::read().map_err(|e| {
            Problem::new(
                format!("cannot read this machine's memory (/proc/meminfo): {e:#}"),
                "run on Linux, or pass --memory-budget SIZE",
            )
        });
        let flag = budget_flag.map(|bytes| Budget { bytes, source: "--memory-budget".into() });
        let budget = match (&flag, &answer) {
            (Some(flagged), _) => Ok(flagged.clone()),
            (None, Ok(facts)) if facts.remote => {
                Ok(memory::engine_budget(facts.mem_free, facts.mem_total))
            }
            (None, _) => host.clone(),
        };
        let host_budget = flag.map_or(host, Ok);
        let first = candidates.first().unwrap_or(&"").to_string();
        let (base_image, base) = base.map_or((first, None), |(name, info)| (name, Some(info)));
        Facts {
            engine: answer,
            base_image,
            base,
            offline_base: candidates.get(1).map(|c| c.to_string()),
            budget,
            host_budget,
        }
    }

    /// The facts to go on with; a `base_image_id` given (an archive's) need not be in the engine.
    pub fn env(&self, base_image_id: Option<&str>) -> anyhow::Result<Env> {
        let facts = self.engine.clone()?;
        let base_image_id = match (base_image_id, &self.base) {
            (Some(id), _) => id.to_owned(),
            (None, Some(base)) => base.id.clone(),
            (None, None) => return Err(self.missing_base(&facts).into()),
        };
        Ok(Env {
            facts,
            base_image: self.base_image.clone(),
            base_image_id,
            budget: self.budget.clone().context("the memory budget")?,
            host_budget: self.host_budget.clone().context("the host's memory budget")?,
        })
    }

    pub fn missing_base(&self, engine: &EngineFacts) -> Problem {
        let program = engine.engine.program();
        let offline = match self.offline_base.as_deref() {
            Some(offline) => format!(
                ", or where no registry answers makes {offline} with debootstrap on this machine \
                 (`test/e2e/make-base-image.sh`, as root) and imports it into {}",
                engine.base_destination()
            ),
            None => String::new(),
        };
        Problem::new(
            format!(
                "the base image {} is not in the image store of {program} at {}",
                self.base_image, engine.at
            ),
            format!(
                "`cargo xtask e2e` (or prebuild-images) pulls it into that engine{offline}; or set \
                 E2E_BASE_IMAGE to an image it has"
            ),
        )
    }
}

/// A local engine's store, measured with `df`: docker's data root, or where the base image's
/// layers are (`podman info` says it, but takes 10x one `image inspect`; asked only where the
/// layers do not say, as with `vfs` or without the base image). Remote: as reported.
fn with_local_store(mut facts: EngineFacts, base: Option<&(String, ImageInfo)>) -> EngineFacts {
    if facts.remote {
        return facts;
    }
    let layers = base.and_then(|(name, _)| facts.engine.layer_dir(name).read().ok());
    let (mut driver, mut root) = layers.as_deref().map(driver_and_root).unwrap_or_default();
    if facts.store.is_none() && root.is_none() && facts.engine == Engine::Podman {
        let said = facts.engine.store_info().read().unwrap_or_default();
        let (name, path) = said.trim().split_once(' ').unwrap_or_default();
        driver = Some(name.to_owned()).filter(|n| !n.is_empty());
        root = Some(path.to_owned()).filter(|p| p.starts_with('/'));
    }
    facts.isolation.driver = facts.isolation.driver.or(driver);
    let path = facts.store.take().map(|s| s.path).or(root);
    facts.store = path.map(|path| Store { free: free_disk(Path::new(&path)), path });
    facts
}

/// Of `layer_dir`'s `DRIVER DIR`: the driver, and `/var/lib/containers/storage` of
/// `/var/lib/containers/storage/overlay/<id>/diff`.
pub fn driver_and_root(said: &str) -> (Option<String>, Option<String>) {
    let (driver, dir) = said.trim().split_once(' ').unwrap_or((said.trim(), ""));
    let root = dir.rsplit_once("/overlay/").map(|(root, _)| root.to_owned());
    let driver = Some(driver.to_owned()).filter(|d| !d.is_empty() && !d.starts_with('<'));
    (driver, root.filter(|root| root.starts_with('/')))
}

/// Free bytes on the filesystem of `dir` (or its nearest existing parent), from `df`.
pub fn free_disk(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|d| d.exists())?;
    let sh = xshell::Shell::new().ok()?;
    let out = xshell::cmd!(sh, "df --output=avail -B1 {existing}").quiet().read().ok()?;
    out.lines().nth(1)?.trim().parse().ok()
}

/// `version` first (cheap), `info` only when not a local podman (or told of a remote one). The
/// outer error: no answer; the inner: an unreadable one.
fn ask(engine: Engine) -> anyhow::Result<anyhow::Result<EngineFacts>> {
    let told_remote = std::env::var_os("CONTAINER_HOST").is_some_and(|h| !h.is_empty());
    if engine == Engine::Podman && !told_remote {
        let version = engine.version().read()?;
        if let Some(local) = EngineFacts::local_podman(&version) {
            return Ok(local);
        }
    }
    let json = engine.info().read()?;
    Ok(EngineFacts::parse(engine, &json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_store_is_where_the_layers_are() {
        let owned = |s: &str| Some(s.to_owned());
        assert_eq!(
            driver_and_root("overlay /var/lib/containers/storage/overlay/2f01/diff\n"),
            (owned("overlay"), owned("/var/lib/containers/storage"))
        );
        assert_eq!(
            driver_and_root("overlay /home/dev/.local/share/containers/storage/overlay/ab/diff"),
            (owned("overlay"), owned("/home/dev/.local/share/containers/storage"))
        );
        // vfs names no directory: the root is asked of `podman info`.
        assert_eq!(driver_and_root("vfs <no value>"), (owned("vfs"), None));
        assert_eq!(driver_and_root(""), (None, None));
        assert!(free_disk(Path::new("/")).is_some_and(|f| f > 0));
    }
}
