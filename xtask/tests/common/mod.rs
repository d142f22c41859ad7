//! A sandbox for tests against the real engine: small images of its own under a repository
//! prefix of its own, state in a temporary `E2E_DIR`, images removed at the end.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// One sandbox at a time: podman's build cache lookup fails ("layer not known") when another
/// test removes images at the same moment, so the engine tests of a binary run in turn.
static ENGINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Sandbox {
    _turn: std::sync::MutexGuard<'static, ()>,
    pub dir: PathBuf,
    pub repository: String,
    pub engine: &'static str,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        Sandbox::with_engine(name, "podman")
    }

    pub fn with_engine(name: &str, engine: &'static str) -> Sandbox {
        let turn = ENGINE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        assert!(
            Command::new(engine).arg("version").output().is_ok_and(|o| o.status.success()),
            "these tests need {engine}: run test/e2e/setup-{engine}.sh as root"
        );
        let dir = std::env::temp_dir().join(format!("xtask-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Sandbox {
            _turn: turn,
            dir,
            repository: format!("localhost/xtask-it-{name}-{}", std::process::id()),
            engine,
        }
    }

    /// Writes a context directory with a Dockerfile that copies it in, plus `extra` steps.
    pub fn image(&self, name: &str, extra: &str) {
        let ctx = self.dir.join(name);
        std::fs::create_dir_all(&ctx).unwrap();
        // Content unique to this sandbox: tests run in parallel, and removing one test's
        // images must never pull a layer from under another test's build cache.
        std::fs::write(ctx.join("data.txt"), format!("{name} v1\n")).unwrap();
        std::fs::write(ctx.join("sandbox.txt"), format!("{}\n", self.repository)).unwrap();
        std::fs::write(
            self.dir.join(format!("{name}.Dockerfile")),
            format!("ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nCOPY . /app\n{extra}"),
        )
        .unwrap();
    }

    pub fn images_file(&self, entries: &[(&str, &str)]) -> PathBuf {
        let mut text = format!(
            "[defaults]\nrepository = \"{}\"\nbase_image = \"localhost/e2e-base:bookworm\"\nmemory = \"256m\"\n",
            self.repository
        );
        for (name, memory) in entries {
            let dir = self.dir.display();
            text.push_str(&format!(
                "\n[[image]]\nname = \"{name}\"\ndockerfile = \"{dir}/{name}.Dockerfile\"\ncontext = \"{dir}/{name}\"\nmemory = \"{memory}\"\n"
            ));
        }
        let path = self.dir.join("images.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `xtask prebuild-images --images-file FILE ARGS...`: (success, output).
    pub fn prebuild(&self, file: &Path, args: &[&str]) -> (bool, String) {
        self.xtask("prebuild-images", file, args)
    }

    /// `xtask COMMAND --images-file FILE --engine ENGINE ARGS...` in this sandbox's state dir.
    pub fn xtask(&self, command: &str, file: &Path, args: &[&str]) -> (bool, String) {
        let out = self.command(command, file, args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn command(&self, command: &str, file: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
        c.arg(command)
            .arg("--images-file")
            .arg(file)
            .args(["--engine", self.engine])
            .args(args)
            .env("E2E_DIR", self.dir.join("state"))
            .env_remove("E2E_BASE_IMAGE");
        c
    }

    /// The ID the engine has for a reference, if it has it.
    pub fn engine_id(&self, reference: &str) -> Option<String> {
        let out = Command::new(self.engine)
            .args(["image", "inspect", "--format", "{{.Id}}", reference])
            .output()
            .ok()?;
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("sha256:").to_owned()
        })
    }

    /// Removes this sandbox's images from the engine.
    pub fn remove_images(&self) {
        let out = Command::new(self.engine)
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .output()
            .unwrap();
        let ours: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&self.repository))
            .map(str::to_owned)
            .collect();
        if !ours.is_empty() {
            let _ = Command::new(self.engine).args(["rmi", "-f"]).args(&ours).output();
        }
    }

    pub fn handoff(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("state/images.json")).unwrap()).unwrap()
    }

    pub fn id(&self, name: &str) -> String {
        let h = self.handoff();
        h["images"].as_array().unwrap().iter().find(|i| i["name"] == name).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.remove_images();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The row of an image in the closing table: `name result ...`.
pub fn result_of<'a>(out: &'a str, name: &str) -> &'a str {
    let after = out.rsplit_once("images:\n").map_or("", |(_, t)| t);
    after
        .lines()
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(name)).then(|| cols.next().unwrap_or(""))
        })
        .unwrap_or_else(|| panic!("no row for {name} in:\n{out}"))
}
