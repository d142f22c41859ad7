//! The images file (`test/e2e/images.toml`): which images exist and how each is built.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    defaults: Defaults,
    builder: Option<Builder>,
    #[serde(rename = "image")]
    images: Vec<RawImage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    repository: String,
    base_image: String,
    offline_base_image: Option<String>,
    memory: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    name: String,
    dockerfile: String,
    context: Option<String>,
    binary: Option<String>,
    memory: Option<String>,
    #[serde(default)]
    build_args: BTreeMap<String, String>,
}

/// The compile in the engine: the builder image, the Dockerfile of that compile, its cap.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Builder {
    pub image: String,
    pub dockerfile: String,
    #[serde(deserialize_with = "size")]
    pub memory: u64,
}

fn size<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    parse_size(&String::deserialize(deserializer)?)
        .map_err(|e| serde::de::Error::custom(format!("{e:#}")))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildContext {
    /// A directory of the repository.
    Dir(String),
    /// A directory the xtask stages, holding only this workspace binary.
    Binary(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub name: String,
    /// `localhost/e2e-gateway`: the reference without a tag.
    pub repository: String,
    pub dockerfile: String,
    pub context: BuildContext,
    /// Memory cap of the build, in bytes.
    pub memory: u64,
    /// Build arguments, `BASE_IMAGE` included.
    pub build_args: BTreeMap<String, String>,
}

impl ImageSpec {
    pub fn binary(&self) -> Option<&str> {
        match &self.context {
            BuildContext::Binary(binary) => Some(binary),
            BuildContext::Dir(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImagesFile {
    pub base_image: String,
    /// The base image made locally where no registry answers (`E2E_BASE_IMAGE` unset).
    pub offline_base_image: Option<String>,
    pub images: Vec<ImageSpec>,
    /// `[builder]`, for `--compile-in engine` (`E2E_BUILDER_IMAGE` replaces its image).
    pub builder: Option<Builder>,
}

impl ImagesFile {
    /// The images that package no binary of ours (PostgreSQL, Redis): a run starts them first.
    pub fn infrastructure(&self) -> Vec<&str> {
        self.images.iter().filter(|i| i.binary().is_none()).map(|i| i.name.as_str()).collect()
    }

    /// The images file's text; `base_override` (from `E2E_BASE_IMAGE`) replaces the base image.
    pub fn parse(text: &str, base_override: Option<String>) -> Result<ImagesFile> {
        let file: File = toml::from_str(text)?;
        let defaults = file.defaults;
        let overridden = base_override.filter(|b| !b.is_empty());
        let offline_base_image = defaults.offline_base_image.filter(|_| overridden.is_none());
        let base_image = overridden.unwrap_or(defaults.base_image);
        let mut images: Vec<ImageSpec> = Vec::new();
        for raw in file.images {
            let name = raw.name;
            let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
            let why = "may only hold lowercase letters, digits and '-'";
            anyhow::ensure!(!name.is_empty() && name.chars().all(allowed), "image {name:?} {why}");
            anyhow::ensure!(
                images.iter().all(|i| i.name != name),
                "image {name:?} is declared twice"
            );
            let context = match (raw.context, raw.binary) {
                (Some(dir), None) => BuildContext::Dir(dir),
                (None, Some(bin)) => BuildContext::Binary(bin),
                (Some(_), Some(_)) => {
                    anyhow::bail!("image {name:?}: set either context or binary, not both")
                }
                (None, None) => anyhow::bail!(
                    "image {name:?}: set context (a directory) or binary (a workspace binary)"
                ),
            };
            let memory = parse_size(raw.memory.as_ref().unwrap_or(&defaults.memory))
                .with_context(|| format!("image {name:?}: memory"))?;
            let mut build_args = raw.build_args;
            build_args.entry("BASE_IMAGE".into()).or_insert_with(|| base_image.clone());
            images.push(ImageSpec {
                repository: format!("{}-{name}", defaults.repository),
                name,
                dockerfile: raw.dockerfile,
                context,
                memory,
                build_args,
            });
        }
        anyhow::ensure!(!images.is_empty(), "no [[image]] entries");
        let mut builder = file.builder;
        if let (Some(builder), Ok(image)) = (&mut builder, std::env::var("E2E_BUILDER_IMAGE")) {
            builder.image = if image.is_empty() { builder.image.clone() } else { image };
        }
        Ok(ImagesFile { base_image, offline_base_image, images, builder })
    }

    /// The images named on the command line, or all of them.
    pub fn select(&self, names: &[String]) -> Result<Vec<ImageSpec>> {
        if names.is_empty() {
            return Ok(self.images.clone());
        }
        let known: Vec<&str> = self.images.iter().map(|i| i.name.as_str()).collect();
        let unknown = |n| {
            format!("no image named {n:?} in test/e2e/images.toml (known: {})", known.join(", "))
        };
        let find = |n: &String| self.images.iter().find(|i| &i.name == n).cloned();
        names.iter().map(|n| find(n).with_context(|| unknown(n))).collect()
    }
}

/// Parses `512m`, `1g`, `1.5GiB`, `300000k` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(lower.len());
    let (num, unit) = lower.split_at(split);
    let value: f64 =
        num.parse().with_context(|| format!("{text:?} is not a size like 512m or 2g"))?;
    let multiplier: u64 = match unit.trim().trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => anyhow::bail!("{text:?} has an unknown unit (use k, m or g)"),
    };
    anyhow::ensure!(value > 0.0, "{text:?} must be more than zero");
    Ok((value * multiplier as f64) as u64)
}

/// The size as podman takes it for `--memory`: whole mebibytes.
pub fn podman_size(bytes: u64) -> String {
    format!("{}m", bytes.div_ceil(1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
        [defaults]
        repository = "localhost/e2e"
        base_image = "localhost/base:1"
        memory = "512m"

        [[image]]
        name = "gateway"
        dockerfile = "Dockerfile.gateway"
        binary = "gateway"
        memory = "256m"

        [[image]]
        name = "redis"
        dockerfile = "docker/redis.Dockerfile"
        context = "docker/redis"
        build_args = { VERSION = "7" }
    "#;

    #[test]
    fn parses_images_with_defaults() {
        let parsed = ImagesFile::parse(SAMPLE, None).unwrap();
        assert_eq!(parsed.images.len(), 2);
        let gateway = &parsed.images[0];
        assert_eq!(gateway.repository, "localhost/e2e-gateway");
        assert_eq!(gateway.binary(), Some("gateway"));
        assert_eq!(gateway.memory, 256 << 20);
        let redis = &parsed.images[1];
        assert_eq!(redis.context, BuildContext::Dir("docker/redis".into()));
        assert_eq!(redis.memory, 512 << 20);
        assert_eq!(redis.build_args["VERSION"], "7");
        assert_eq!(redis.build_args["BASE_IMAGE"], "localhost/base:1");
    }

    #[test]
    fn base_image_can_be_overridden() {
        let parsed =
            ImagesFile::parse(SAMPLE, Some("docker.io/library/debian:bookworm-slim".into()))
                .unwrap();
        assert_eq!(
            parsed.images[0].build_args["BASE_IMAGE"],
            "docker.io/library/debian:bookworm-slim"
        );
    }

    #[test]
    fn mistakes_are_named() {
        let both = SAMPLE.replace("binary = \"gateway\"", "binary = \"gateway\"\ncontext = \"x\"");
        assert!(format!("{:#}", ImagesFile::parse(&both, None).unwrap_err())
            .contains("either context or binary"));
        let typo = SAMPLE.replace("dockerfile = \"Dockerfile.gateway\"", "dockerfil = \"x\"");
        assert!(format!("{:#}", ImagesFile::parse(&typo, None).unwrap_err()).contains("dockerfil"));
        let parsed = ImagesFile::parse(SAMPLE, None).unwrap();
        let err = parsed.select(&["gatway".into()]).unwrap_err().to_string();
        assert!(err.contains("gatway") && err.contains("known: gateway, redis"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5x").is_err());
        assert_eq!(podman_size(256 << 20), "256m");
        assert_eq!(podman_size((256 << 20) + 1), "257m");
    }
}
