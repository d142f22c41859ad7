//! The base image every E2E image starts FROM, provided when the engine has neither the
//! configured one nor the offline one.

use crate::{
    cmd::Cmd,
    engine::{Engine, EngineFacts},
    images::ImagesFile,
    project::Project,
    report::Reporter,
};

/// When the engine has neither base image: the configured one pulled, else (podman only) the
/// offline one made here by `test/e2e/make-base-image.sh` and imported into the engine's own
/// store. `None` when neither worked (doctor then says so).
pub fn provision_base(
    project: &Project,
    reporter: &Reporter,
    engine: &EngineFacts,
    images: &ImagesFile,
) -> Option<String> {
    let log = project.logs_dir().join("base-image.log");
    let program = engine.engine.program();
    let base = &images.base_image;
    let at = &engine.at;
    let pull = Cmd::new(program).args(["pull", base]);
    reporter.line(format!(
        "the base image {base} is not in {program} at {at}: pulling it into that engine's store"
    ));
    reporter.command(&pull);
    if pull.run_logged(&log).is_ok() {
        return Some(base.clone());
    }
    let offline =
        images.offline_base_image.as_deref().filter(|_| engine.engine == Engine::Podman)?;
    let script = project.root.join("test/e2e/make-base-image.sh").display().to_string();
    let make = Cmd::new("bash").arg(script).arg(offline);
    reporter.line(format!(
        "no registry answers: making {offline} with debootstrap on this machine (about a minute) and importing it into {}",
        engine.base_destination()
    ));
    reporter.command(&make);
    let made = make
        .run_logged(&log)
        .map_err(|e| reporter.line(format!("could not make {offline}: {e:#}")));
    made.ok().map(|()| offline.to_owned())
}
