//! What a command needs to know about the machine, asked once: which engine, what it says of
//! itself (platform, memory, CPUs, local or remote), whether it has the base image, and the
//! memory budgets. `doctor` judges these facts; every later stage takes the same values.

use anyhow::Context;

use crate::{
    engine::{Engine, EngineFacts, ImageInfo},
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

    pub fn platform(&self) -> &str {
        &self.facts.platform
    }

    /// `cargo -j` for the host's compiles: one rustc job per 1.5 GiB of the host's budget,
    /// at most one per CPU.
    pub fn cargo_jobs(&self) -> usize {
        memory::cargo_jobs(self.host_budget.bytes, memory::cpus())
    }
}

impl Facts {
    /// Asks the engine for its facts and for the base image at once (each call costs
    /// tens to hundreds of milliseconds), and reads the host's memory meanwhile.
    pub fn gather(
        engine: Result<Engine, Problem>,
        base_image: &str,
        budget_flag: Option<u64>,
    ) -> Facts {
        let (answer, base) = match engine {
            Err(p) => (Err(p), None),
            Ok(e) => std::thread::scope(|s| {
                let info = s.spawn(|| ask(e));
                let base = e.image(base_image);
                let answer = match info.join().expect("no panic") {
                    Ok(Ok(facts)) => Ok(facts),
                    Ok(Err(err)) => Err(Problem::new(format!("{err:#}"), e.not_answering_fix())),
                    Err(err) => Err(Problem::new(
                        format!("{} is installed but does not answer: {err:#}", e.program()),
                        e.not_answering_fix(),
                    )),
                };
                (answer, base)
            }),
        };
        let host = memory::read()
            .map(|info| memory::default_budget(&info))
            .map_err(|e| {
                Problem::new(
                    format!("cannot read this machine's memory (/proc/meminfo): {e:#}"),
                    "run on Linux, or pass --memory-budget SIZE",
                )
            });
        let budget = match (budget_flag, &answer) {
            (Some(bytes), _) => Ok(Budget {
                bytes,
                source: "--memory-budget".into(),
            }),
            (None, Ok(f)) if f.remote => Ok(memory::engine_budget(f)),
            (None, _) => host.clone(),
        };
        let host_budget = match budget_flag {
            Some(bytes) => Ok(Budget {
                bytes,
                source: "--memory-budget".into(),
            }),
            None => host,
        };
        Facts {
            engine: answer,
            base_image: base_image.to_owned(),
            base,
            budget,
            host_budget,
        }
    }

    /// The facts to go on with. `base_image_id` given (from an archive's manifest) means the
    /// base image need not be in the engine.
    pub fn env(&self, base_image_id: Option<&str>) -> anyhow::Result<Env> {
        let facts = self.engine.clone()?;
        let base_image_id = match (base_image_id, &self.base) {
            (Some(id), _) => id.to_owned(),
            (None, Some(b)) => b.id.clone(),
            (None, None) => return Err(self.missing_base(facts.engine).into()),
        };
        Ok(Env {
            facts,
            base_image: self.base_image.clone(),
            base_image_id,
            budget: self.budget.clone().context("the memory budget")?,
            host_budget: self
                .host_budget
                .clone()
                .context("the host's memory budget")?,
        })
    }

    pub fn missing_base(&self, engine: Engine) -> Problem {
        Problem::new(
            format!(
                "the base image {} is not in {}'s image store",
                self.base_image,
                engine.program()
            ),
            format!(
                "`cargo xtask e2e` (or prebuild-images) pulls it, or where no registry answers makes the \
                 offline one with debootstrap (`test/e2e/make-base-image.sh`, as root); or set E2E_BASE_IMAGE \
                 to an image {} has",
                engine.program()
            ),
        )
    }
}

/// The engine's facts: `version` first (cheap), and `info` only when the engine is not a
/// local podman. The outer error: the engine did not answer; the inner: it answered
/// something unreadable.
fn ask(engine: Engine) -> anyhow::Result<anyhow::Result<EngineFacts>> {
    if engine == Engine::Podman {
        let version = engine.version().read()?;
        if let Some(local) = EngineFacts::local_podman(&version) {
            return Ok(local);
        }
    }
    let json = engine.info().read()?;
    Ok(EngineFacts::parse(engine, &json))
}
