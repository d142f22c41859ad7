//! `save-images` and `load-images` against the real engine: the round trip, corruption,
//! truncation, staleness, an interrupted save, and a push and pull through a real registry.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::Sandbox;

/// A sandbox with two small images, built, and the path its archive is saved to.
fn built(name: &str) -> (Sandbox, PathBuf, PathBuf) {
    let sb = Sandbox::new(name);
    sb.image("alpha", "");
    sb.image("beta", "RUN echo beta > /beta.txt\n");
    let file = sb.images_file(&[("alpha", "128m"), ("beta", "128m")]);
    let (ok, out) = sb.prebuild(&file, &[]);
    assert!(ok, "{out}");
    let archive = sb.dir.join("out/images.tar.zst");
    (sb, file, archive)
}

fn refs(sb: &Sandbox) -> Vec<(String, String)> {
    let h = sb.handoff();
    h["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (i["reference"].as_str().unwrap().to_owned(), i["id"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn save(sb: &Sandbox, file: &Path, archive: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["--output", archive.to_str().unwrap()];
    args.extend_from_slice(extra);
    sb.xtask("save-images", file, &args)
}

#[test]
fn round_trip_keeps_image_ids() {
    for compress in ["zstd", "none"] {
        let (sb, file, archive) = built(&format!("rt{compress}"));
        let archive = if compress == "none" { archive.with_extension("") } else { archive };
        let (ok, out) = save(&sb, &file, &archive, &["--compress", compress]);
        assert!(ok, "{out}");
        assert!(out.contains("2 images,"), "{out}");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{}.json", archive.display())).unwrap())
                .unwrap();
        assert_eq!(manifest["size"].as_u64().unwrap(), std::fs::metadata(&archive).unwrap().len());
        assert_eq!(manifest["compression"], compress);
        assert_eq!(manifest["images"].as_array().unwrap().len(), 2);
        assert!(manifest["commit"].as_str().unwrap().len() >= 7);

        let before = refs(&sb);
        sb.remove_images();
        assert!(sb.engine_id(&before[0].0).is_none(), "removed");
        let (ok, out) = sb.xtask("load-images", &file, &[archive.to_str().unwrap()]);
        assert!(ok, "{out}");
        assert!(out.contains("loaded 2 images"), "{out}");
        for (reference, id) in &before {
            assert_eq!(
                sb.engine_id(reference).as_deref(),
                Some(id.as_str()),
                "{reference} after the round trip"
            );
        }
        // Loading again finds everything in place and loads nothing.
        let (ok, out) = sb.xtask("load-images", &file, &[archive.to_str().unwrap()]);
        assert!(ok && out.contains("already loaded"), "{out}");
    }
}

#[test]
fn a_corrupted_or_truncated_archive_loads_nothing() {
    let (sb, file, archive) = built("corrupt");
    let (ok, out) = save(&sb, &file, &archive, &[]);
    assert!(ok, "{out}");
    let good = std::fs::read(&archive).unwrap();
    let before = refs(&sb);
    sb.remove_images();

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    std::fs::write(&archive, &flipped).unwrap();
    let (ok, out) = sb.xtask("load-images", &file, &[archive.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("is corrupted") && out.contains("Nothing was loaded"), "{out}");
    assert!(sb.engine_id(&before[0].0).is_none(), "nothing loaded");

    std::fs::write(&archive, &good[..good.len() - 1000]).unwrap();
    let (ok, out) = sb.xtask("load-images", &file, &[archive.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("truncated") && out.contains("Nothing was loaded"), "{out}");
    assert!(sb.engine_id(&before[1].0).is_none(), "nothing loaded");

    std::fs::remove_file(format!("{}.json", archive.display())).unwrap();
    let (ok, out) = sb.xtask("load-images", &file, &[archive.to_str().unwrap()]);
    assert!(!ok && out.contains("no manifest"), "{out}");
}

#[test]
fn stale_images_are_named_on_save_and_on_load() {
    let (sb, file, archive) = built("stale");
    // A change after the build: save refuses until the images are rebuilt.
    std::fs::write(sb.dir.join("alpha/data.txt"), "alpha v2\n").unwrap();
    let (ok, out) = save(&sb, &file, &archive, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("alpha: inputs changed since the last build"), "{out}");
    assert!(out.contains("prebuild-images") && out.contains("--build"), "{out}");
    assert!(!archive.exists());
    let (ok, out) = save(&sb, &file, &archive, &["--build"]);
    assert!(ok, "{out}");

    // A change after the save: load refuses, naming the image and the fix.
    std::fs::write(sb.dir.join("alpha/data.txt"), "alpha v3\n").unwrap();
    sb.remove_images();
    let (ok, out) = sb.xtask("load-images", &file, &[archive.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(out.contains("the archive does not match this checkout"), "{out}");
    assert!(out.contains("alpha: archive") && !out.contains("beta: archive"), "{out}");
    assert!(out.contains("--allow-stale"), "{out}");
    let (ok, out) = sb.xtask("load-images", &file, &[archive.to_str().unwrap(), "--allow-stale"]);
    assert!(ok, "{out}");
    assert!(out.contains("WARNING: --allow-stale"), "{out}");
}

#[test]
fn an_interrupted_save_leaves_nothing_that_looks_complete() {
    let (sb, file, archive) = built("interrupt");
    let dir = archive.parent().unwrap().to_owned();
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = sb
        .command(
            "save-images",
            &file,
            &["--output", archive.to_str().unwrap(), "--compress", "none"],
        )
        .spawn()
        .unwrap();
    // Interrupt as soon as the temporary archive exists, i.e. in the middle of writing it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let writing = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains(".tmp-"));
        if writing {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the save ended before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "no temporary archive within 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert!(!status.success(), "an interrupted save must fail");
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "an interrupted save left {left:?}");
}

/// A real registry (Debian's docker-registry) on a free loopback port, for this test only.
struct Registry {
    child: std::process::Child,
    dir: PathBuf,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry: apt-get install docker-registry");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "the registry did not listen on {addr} within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry { child, dir: dir.to_owned(), addr }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
#[ignore = "needs docker-registry (apt-get install docker-registry); CI runs it with --ignored"]
fn push_then_pull_through_a_local_registry() {
    let (sb, file, archive) = built("registry");
    let registry = Registry::start(&sb.dir.join("registry"));
    let prefix = format!("{}/e2e-test", registry.addr);
    let (ok, out) = save(&sb, &file, &archive, &["--push", &prefix]);
    assert!(ok, "{out}");
    let before = refs(&sb);
    sb.remove_images();
    let _ = Command::new("podman")
        .args(["rmi", "-f"])
        .args(before.iter().map(|(r, _)| {
            let (repo, tag) = r.rsplit_once(':').unwrap();
            format!("{prefix}/{}:{tag}", repo.rsplit_once('-').map_or(repo, |(_, n)| n))
        }))
        .output();

    let (ok, out) = sb.xtask("load-images", &file, &["--registry", &prefix]);
    assert!(ok, "{out}");
    for (reference, id) in &before {
        assert_eq!(
            sb.engine_id(reference).as_deref(),
            Some(id.as_str()),
            "{reference} pulled with the same ID"
        );
    }
    let _ = Command::new("podman")
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .output()
        .map(|o| {
            let pulled: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with(&registry.addr))
                .map(str::to_owned)
                .collect();
            if !pulled.is_empty() {
                let _ = Command::new("podman").args(["rmi", "-f"]).args(&pulled).output();
            }
        });
}
