//! A podman stack made from a run: its subnet claimed, its manifests rendered on free host
//! ports, its suite packaged for the engine when it runs there, and the infrastructure pods
//! that can start before the service images exist.

use super::*;

use crate::{
    archive, build,
    build::{compile, CompileIn},
    manifests::distinct,
    run::{ImageSource, Run},
    runtime::{free_port, EarlyStart},
    suite::SuiteIn,
};

impl PodmanRun {
    /// The stack with `engine_images`' images, on a subnet of the run's own.
    pub fn new_for(run: &Run, engine_images: &EngineImages) -> anyhow::Result<PodmanRun> {
        let stack = PodmanRun::on_run_subnet(run, &engine_images.pinned())?;
        Ok(PodmanRun::with_suite(run, stack))
    }

    /// The pods that can start before the service images exist (their images hold no binary of
    /// ours and are cached, or come first in the archive), or `None`.
    pub fn early(run: &Run) -> Option<PodmanRun> {
        let Run { opts, source, project, session, manifests, id, .. } = run;
        if opts.build.force {
            return None;
        }
        let names: Vec<String> =
            session.images_file.infrastructure().into_iter().map(str::to_owned).collect();
        // Their images: cached here, or coming with the archive (awaited before they start).
        let (pinned, awaited): (BTreeMap<String, String>, _) = match source {
            ImageSource::Archive { path, .. } => {
                let images = archive::read_manifest(path).ok()?.engine_images.images.into_iter();
                let (pinned, awaited): (_, Vec<_>) = images
                    .filter(|i| names.contains(&i.name))
                    .map(|i| ((i.repository, i.reference.clone()), (i.reference, i.id)))
                    .unzip();
                (pinned, Some(awaited))
            }
            ImageSource::Registry(_) => return None,
            ImageSource::Build => {
                let items = build::plan_quietly(project, session, &names).ok()?;
                if !items.iter().all(|i| i.is_cached()) {
                    return None;
                }
                (items.into_iter().map(|i| (i.spec.repository, i.reference)).collect(), None)
            }
        };
        if pinned.is_empty() {
            return None;
        }
        // Which pods can start early, from the stack on any subnet: the run's is claimed only
        // when some can.
        let anywhere = Subnet::choose(id.as_str(), manifests.pods().len(), &[]).ok()?;
        let stack = manifests
            .render_podman(&pinned, id.suffix(), Some(anywhere), distinct(free_port))
            .ok()?;
        let early: BTreeSet<String> = stack
            .pods
            .iter()
            .filter(|p| {
                p.containers.iter().all(|c| pinned.values().any(|reference| *reference == c.image))
            })
            .map(|p| p.name.clone())
            .collect();
        if early.is_empty() {
            return None;
        }
        let mut started = PodmanRun::on_run_subnet(run, &pinned).ok()?;
        started.early = early;
        started.awaited =
            awaited.map(|images| AwaitedImages { images, arrivals: Default::default() });
        Some(started)
    }

    /// The stack rendered with `pinned`, on the run's subnet, sized to its pods: on a dry run
    /// chosen, else claimed (the network made and recorded, see [`claim_network`]).
    fn on_run_subnet(run: &Run, pinned: &BTreeMap<String, String>) -> anyhow::Result<PodmanRun> {
        let Run { opts, project, reporter, session, manifests, id, .. } = run;
        let pods = manifests.pods().len();
        let (subnet, made) = match opts.dry_run {
            true => (Subnet::choose(id.as_str(), pods, &engine_subnets()?)?, None),
            false => {
                let engine = (session.remote(), session.engine_version());
                let (subnet, record) = claim_network(id, pods, &id.dir(project), engine, reporter)?;
                (subnet, Some(record))
            }
        };
        let stack =
            manifests.render_podman(pinned, id.suffix(), Some(subnet), distinct(free_port))?;
        let mut podman = PodmanRun::new(project, id.clone(), stack);
        podman.remote = session.remote();
        podman.version = session.engine_version().to_owned();
        podman.network_made = !opts.dry_run;
        podman.made = made;
        Ok(podman)
    }

    /// In the engine (as asked, or when it is remote), the suite's package goes with the run,
    /// so the teardown removes its image.
    fn with_suite(run: &Run, mut podman: PodmanRun) -> PodmanRun {
        let Run { opts, project, session, id, .. } = run;
        if SuiteIn::resolve(opts.suite_in, podman.remote) != SuiteIn::Engine {
            return podman;
        }
        let base = &session.facts.base_image;
        let mut package = InEngine::new(project, Engine::Podman, id.suffix(), base);
        // Compiled in the engine (as asked, or as the platforms decide).
        let in_engine = session.facts.engine.as_ref().is_ok_and(|facts| {
            let host = compile::host_platform();
            compile::resolve(opts.build.compile_in, &host, &facts.platform) == CompileIn::Engine
        });
        package.compiled_in_engine =
            in_engine.then(|| project.e2e_dir.join("engine-bin").join("suite"));
        if session.facts.engine.as_ref().is_ok_and(|facts| !facts.isolation.caps_hold()) {
            package.cap = None;
        }
        podman.suite = Some(package);
        podman
    }
}

impl EarlyStart for PodmanRun {
    fn plan_early(&self) -> Vec<Phase<'_>> {
        PodmanRun::plan_early(self)
    }

    fn image_arrived(&self, reference: &str) {
        if let Some(awaited) = &self.awaited {
            awaited.arrivals.image(reference);
        }
    }

    fn images_ended(&self) {
        if let Some(awaited) = &self.awaited {
            awaited.arrivals.ended.store(true, Ordering::SeqCst);
        }
    }

    fn as_stack(&self) -> &dyn Stack {
        self
    }

    /// The same stack with every image pinned now, on the subnet and ports the early part chose.
    fn go_on(
        self: Box<Self>,
        run: &Run,
        engine_images: &EngineImages,
    ) -> anyhow::Result<Box<dyn Stack>> {
        let stack = self.rerender(&run.manifests, &engine_images.pinned())?;
        let podman = PodmanRun { stack, awaited: None, ..*self };
        Ok(Box::new(PodmanRun::with_suite(run, podman)))
    }
}
