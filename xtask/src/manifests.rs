//! The manifests under `test/e2e/manifests/`, rendered for a runtime. For podman: images
//! pinned, ports published on free loopback ports, Secrets taken out (podman 4.3's `kube play`
//! stores one in a form its own `secretKeyRef` cannot read; see [`Secret`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use anyhow::Context;
use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde::{de::DeserializeOwned, Deserialize};
use serde_norway::Value;

/// Every document of every `*.yaml` file, files in name order.
#[derive(Debug, Clone)]
pub struct Manifests {
    pub docs: Vec<Value>,
}

/// A Secret as podman 4.3's `secretKeyRef` reads it from a podman secret: `payload` is JSON of
/// key to base64 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub name: String,
    pub payload: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Exec(Vec<String>),
    Http {
        path: String,
        port: u16,
    },
    /// A TCP connection to the container's port.
    Tcp {
        port: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub readiness: Option<Probe>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The pod's name in this run (`gateway-<run suffix>`).
    pub name: String,
    /// Its name in the manifests (`gateway`), as tests and people know it.
    pub base: String,
    pub containers: Vec<Container>,
    /// The Secrets its containers read (`secretKeyRef`), by their names in this run.
    pub secrets: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub pod: String,
    /// The pod's name in the manifests.
    pub base: String,
    pub container_port: u16,
    pub host_port: u16,
}

/// The run's network: a subnet of podman's 10.89.0.0/16 sized to the stack, pods at fixed
/// addresses in its lower half, podman's own allocation (a suite's container, say) confined to
/// the upper half (`--ip-range`), so that a container without a fixed address never takes a
/// stopped pod's; every pod's name in every pod's `/etc/hosts` (`hostAliases`): no lookup is
/// left to aardvark-dns 1.4, which loses those in flight whenever a container joins or leaves a
/// network (docs/dns-hang.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub base: Ipv4Addr,
    pub prefix: u32,
}

impl Subnet {
    /// Pods from `.2` (`.1` is the gateway).
    const FIRST_POD: u32 = 2;
    /// The smallest half: a /27 (14 pods, and 15 addresses for podman to hand out).
    const MIN_HALF: u32 = 16;
    /// 10.89.0.0/16, where podman allocates its networks.
    const POOL: u32 = u32::from_be_bytes([10, 89, 0, 0]);
    const POOL_PREFIX: u32 = 16;

    /// The prefix of a subnet for `pods` pods: the lower half holds them, the upper half
    /// podman's allocation.
    pub fn prefix_for(pods: usize) -> u32 {
        let half = (Self::FIRST_POD + pods as u32).next_power_of_two().max(Self::MIN_HALF);
        32 - (2 * half).trailing_zeros()
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    /// A subnet for `pods` pods overlapping none of `used`, first tried at a hash of the run's
    /// id (runs start apart).
    pub fn choose(run: &str, pods: usize, used: &[(Ipv4Addr, u32)]) -> anyhow::Result<Subnet> {
        let prefix = Self::prefix_for(pods);
        anyhow::ensure!(
            prefix > Self::POOL_PREFIX,
            "{pods} pods need more addresses than 10.89.0.0/16 has"
        );
        let size = 1u32 << (32 - prefix);
        let slots = 1u32 << (prefix - Self::POOL_PREFIX);
        let hash = run.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let start = (hash % u64::from(slots)) as u32;
        // Two networks overlap when their addresses agree on the shorter prefix.
        let overlaps = |base: u32, &(net, other): &(Ipv4Addr, u32)| {
            let mask = u32::MAX.checked_shl(32 - other.min(prefix)).unwrap_or(0);
            (base ^ u32::from(net)) & mask == 0
        };
        (0..slots)
            .map(|i| Self::POOL + ((start + i) % slots) * size)
            .find(|&base| !used.iter().any(|n| overlaps(base, n)))
            .map(|base| Subnet { base: base.into(), prefix })
            .with_context(|| format!("no /{prefix} of 10.89.0.0/16 is free of the engine's networks: remove old ones (podman network prune)"))
    }

    pub fn pod(&self, i: usize) -> Ipv4Addr {
        (u32::from(self.base) + Self::FIRST_POD + i as u32).into()
    }

    /// Whether `pods` pods have addresses in the lower half.
    pub fn holds(&self, pods: usize) -> bool {
        Self::FIRST_POD + pods as u32 <= self.size() / 2
    }

    /// The upper half, where podman hands out addresses (`--ip-range`).
    pub fn dynamic_range(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(u32::from(self.base) + self.size() / 2), self.prefix + 1)
    }

    /// The `i`-th pod's fixed MAC (`02:e2:` and the IP's bytes), so peers' ARP entries stay right:
    /// a new random MAC behind the same IP made a restarted Redis unreachable for 40-54 s (measured).
    pub fn mac(&self, i: usize) -> String {
        let [a, b, c, d] = self.pod(i).octets();
        format!("02:e2:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The IPv4 subnets in `podman network ls` output (`10.88.0.0/16` a line), others skipped.
pub fn parse_subnets(text: &str) -> Vec<(Ipv4Addr, u32)> {
    text.split_whitespace()
        .filter_map(|cidr| {
            let (ip, prefix) = cidr.split_once('/')?;
            Some((ip.parse().ok()?, prefix.parse().ok()?))
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct PodmanStack {
    /// One multi-document YAML with every Pod.
    pub yaml: String,
    /// Each Pod's own YAML, in the order of `pods` (to replace one pod alone).
    pub pod_yaml: Vec<String>,
    pub secrets: Vec<Secret>,
    pub pods: Vec<Pod>,
    pub published: Vec<Published>,
    /// The network's subnet, and so each pod's address (in the order of `pods`).
    pub subnet: Option<Subnet>,
}

impl PodmanStack {
    /// Every container, with its pod.
    pub fn containers(&self) -> impl Iterator<Item = (&Pod, &Container)> {
        self.pods.iter().flat_map(|p| p.containers.iter().map(move |c| (p, c)))
    }

    /// Each pod's name and fixed address on the run's network.
    pub fn hosts(&self) -> Vec<(String, Ipv4Addr)> {
        let Some(subnet) = self.subnet else { return vec![] };
        let pods = self.pods.iter().enumerate();
        pods.map(|(i, p)| (p.name.clone(), subnet.pod(i))).collect()
    }

    /// A pod's fixed IP and MAC addresses, when the stack has them.
    pub fn address(&self, pod: &str) -> Option<(Ipv4Addr, String)> {
        let index = self.pods.iter().position(|p| p.name == pod)?;
        let subnet = self.subnet?;
        Some((subnet.pod(index), subnet.mac(index)))
    }

    /// The host port of a pod's container port; `pod` is the run's name or the manifests'.
    pub fn host_port(&self, pod: &str, container_port: u16) -> Option<u16> {
        self.published
            .iter()
            .find(|p| (p.pod == pod || p.base == pod) && p.container_port == container_port)
            .map(|p| p.host_port)
    }
}

/// Which Kubernetes cluster manifests are rendered for ([`Manifests::render_kubernetes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKind {
    /// A Kind cluster of the run's own (or a reused one): images loaded, NodePorts mapped here.
    Kind,
    /// A cluster others use too: images pulled from a registry, Services reached by
    /// `kubectl port-forward`.
    Shared,
}

impl ClusterKind {
    fn pull_policy(self) -> &'static str {
        match self {
            ClusterKind::Kind => "Never",
            ClusterKind::Shared => "IfNotPresent",
        }
    }
}

/// A Service the suite reaches: its port, and the NodePort the manifests give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePorts {
    pub port: u16,
    pub node_port: u16,
}

/// A Service made a ClusterIP one, its NodePorts dropped.
fn strip_node_ports(service: &mut Value) {
    if let Some(spec) = service.get_mut("spec").and_then(Value::as_mapping_mut) {
        spec.remove("type");
    }
    let ports = service["spec"].get_mut("ports").and_then(Value::as_sequence_mut);
    for port in ports.into_iter().flatten() {
        if let Some(port) = port.as_mapping_mut() {
            port.remove("nodePort");
        }
    }
}

impl Manifests {
    pub fn load(dir: &Path) -> anyhow::Result<Manifests> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        anyhow::ensure!(!files.is_empty(), "no *.yaml manifests in {}", dir.display());
        let mut docs = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            docs.extend(parse_docs(&text).with_context(|| format!("in {}", file.display()))?);
        }
        Ok(Manifests { docs })
    }

    /// For a Kubernetes cluster: every image pinned; Secrets kept. In Kind the images are loaded
    /// (never pulled) and the NodePorts kept, since the cluster config maps them to this machine;
    /// in a shared cluster they are pulled (`IfNotPresent`: the tags are content-addressed) and
    /// every Service is a ClusterIP one, since NodePorts are the whole cluster's and would collide
    /// between runs. Returns the YAML and, per Service with a NodePort in the manifests (those the
    /// suite reaches), its ports.
    pub fn render_kubernetes(
        &self,
        images: &BTreeMap<String, String>,
        cluster: ClusterKind,
    ) -> anyhow::Result<(String, BTreeMap<String, ServicePorts>)> {
        let mut out = String::new();
        let mut exposed = BTreeMap::new();
        for doc in &self.docs {
            let mut doc = doc.clone();
            match kind(&doc) {
                "Pod" => {
                    for container in containers_of(&mut doc).context("a Pod without containers")? {
                        let image = container["image"].as_str().unwrap_or_default();
                        container["image"] = pin_image(image, images).into();
                        container["imagePullPolicy"] = cluster.pull_policy().into();
                    }
                }
                "Service" => {
                    let ports = &mut doc["spec"]["ports"][0];
                    let port = ports["port"].as_u64();
                    let node_port = ports["nodePort"].as_u64();
                    if let (Some(port), Some(node_port)) = (port, node_port) {
                        let service = name(&doc).unwrap_or_default();
                        let ports = ServicePorts { port: port as u16, node_port: node_port as u16 };
                        exposed.insert(service, ports);
                    }
                    if cluster == ClusterKind::Shared {
                        strip_node_ports(&mut doc);
                    }
                }
                _ => {}
            }
            out.push_str(&to_yaml(&doc)?);
        }
        Ok((out, exposed))
    }

    /// Sets an environment variable in every container of a Pod (e.g. the fault tests' short TTL).
    pub fn set_env(&mut self, pod: &str, var: &str, value: &str) -> anyhow::Result<()> {
        let doc = self
            .docs
            .iter_mut()
            .find(|d| kind(d) == "Pod" && name(d).ok().as_deref() == Some(pod))
            .with_context(|| format!("no Pod {pod} in the manifests"))?;
        let entry = serde_norway::to_value(BTreeMap::from([("name", var), ("value", value)]))?;
        let containers =
            containers_of(doc).with_context(|| format!("pod {pod}: no spec.containers"))?;
        for container in containers {
            match container.get_mut("env").and_then(Value::as_sequence_mut) {
                Some(env) => {
                    env.retain(|e| e.get("name").and_then(Value::as_str) != Some(var));
                    env.push(entry.clone());
                }
                None => container["env"] = Value::Sequence(vec![entry.clone()]),
            }
        }
        Ok(())
    }

    /// `copies` copies of the Pod `pod`, named `<pod>-copy-<i>` (its `app` label too), as YAML:
    /// a stack that grows, for `cargo xtask bench scale`.
    pub fn copies_of(&self, pod: &str, copies: usize) -> anyhow::Result<String> {
        let is_it = |d: &&Value| kind(d) == "Pod" && name(d).is_ok_and(|n| n == pod);
        let original = self.docs.iter().find(is_it).with_context(|| format!("no Pod {pod}"))?;
        let mut yaml = String::new();
        for i in 1..=copies {
            let mut doc = original.clone();
            let copy = format!("{pod}-copy-{i}");
            doc["metadata"]["name"] = copy.clone().into();
            if let Some(labels) = doc["metadata"].get_mut("labels").and_then(Value::as_mapping_mut)
            {
                labels.insert("app".into(), copy.into());
            }
            yaml.push_str(&to_yaml(&doc)?);
        }
        Ok(yaml)
    }

    /// Each Pod that requests memory, in order, with its containers' `resources.requests.memory`
    /// added up in bytes.
    pub fn memory_requests(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let mut requests = Vec::new();
        for doc in self.docs.iter().filter(|d| kind(d) == "Pod") {
            let pod = name(doc)?;
            let mut bytes = 0;
            for container in doc["spec"]["containers"].as_sequence().into_iter().flatten() {
                let Some(request) = container["resources"]["requests"].get("memory") else {
                    continue;
                };
                let text = match request {
                    Value::Number(number) => number.to_string(),
                    other => other.as_str().unwrap_or_default().to_owned(),
                };
                bytes += crate::memory::parse_quantity(&text).with_context(|| {
                    format!("pod {pod}: resources.requests.memory {text:?} is not a quantity such as 256Mi")
                })?;
            }
            if bytes > 0 {
                requests.push((pod, bytes));
            }
        }
        Ok(requests)
    }

    /// The names of the Pods, in order.
    pub fn pods(&self) -> Vec<String> {
        self.docs.iter().filter(|d| kind(d) == "Pod").filter_map(|d| name(d).ok()).collect()
    }

    /// For podman. `images` maps a repository (no tag) to the reference to run; `free_port`
    /// yields a host port per container port. podman's pod and secret names are machine-wide, so
    /// each gets the run's `suffix` (`postgres-<suffix>`; empty: kept), and so do the env values
    /// naming one as a host (`redis://redis:6379`) and `secretKeyRef`s: two runs never collide.
    pub fn render_podman(
        &self,
        images: &BTreeMap<String, String>,
        suffix: &str,
        subnet: Option<Subnet>,
        mut free_port: impl FnMut() -> anyhow::Result<u16>,
    ) -> anyhow::Result<PodmanStack> {
        let renamed =
            |n: &str| if suffix.is_empty() { n.to_owned() } else { format!("{n}-{suffix}") };
        let renames = |kinds: &[&str]| -> anyhow::Result<BTreeMap<String, String>> {
            let docs = self.docs.iter().filter(|d| kinds.contains(&kind(d)));
            docs.map(|d| name(d).map(|n| (n.clone(), renamed(&n)))).collect()
        };
        let hosts = renames(&["Pod", "Service"])?;
        let secret_names = renames(&["Secret"])?;
        let count = self.pods().len();
        if let Some(network) = subnet.filter(|s| !s.holds(count)) {
            anyhow::bail!(
                "the run's network {network} has fixed addresses for fewer than the manifests' {count} pods: \
                 start the run again (`cargo xtask dev` sizes its network when it starts)"
            );
        }
        let mut yaml_docs = vec![];
        let mut secrets = vec![];
        let mut pods = vec![];
        let mut published = vec![];
        for doc in &self.docs {
            match kind(doc) {
                "Secret" => secrets.push(Secret { name: renamed(&name(doc)?), ..secret(doc)? }),
                // podman ignores Services; pods reach each other by pod name instead.
                "Service" => {}
                "Pod" => {
                    let mut doc = doc.clone();
                    let base = name(&doc)?;
                    let pod_name = renamed(&base);
                    doc["metadata"]["name"] = pod_name.clone().into();
                    if !suffix.is_empty() {
                        doc["metadata"]["labels"]["e2e.run"] = suffix.into();
                    }
                    let mut containers = Vec::new();
                    for container in containers_of(&mut doc)
                        .with_context(|| format!("pod {pod_name}: no spec.containers"))?
                    {
                        let what = format!("pod {pod_name}: a container");
                        let name: String = field(container, &what, "name")?;
                        let image: String = field(container, &what, "image")?;
                        let what = format!("pod {pod_name}: container {name}");
                        let readiness = match &container["readinessProbe"] {
                            Value::Null => None,
                            yaml => Some(probe(yaml, &format!("{what}: readinessProbe"))?),
                        };
                        let image = pin_image(&image, images);
                        container["image"] = image.clone().into();
                        let env = container.get_mut("env").and_then(Value::as_sequence_mut);
                        for var in env.into_iter().flatten() {
                            rename_at(var.get_mut("value"), &hosts);
                            let secret_ref =
                                var.get_mut("valueFrom").and_then(|v| v.get_mut("secretKeyRef"));
                            let secret_name =
                                secret_ref.and_then(|secret_ref| secret_ref.get_mut("name"));
                            rename_at(secret_name, &secret_names);
                        }
                        // podman makes probes systemd healthchecks, which fail without systemd;
                        // the xtask runs the readiness probes itself (see ready.rs).
                        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                            container.as_mapping_mut().map(|m| m.remove(probe));
                        }
                        let ports = container.get_mut("ports").filter(|p| !p.is_null()).map(|p| {
                            p.as_sequence_mut()
                                .with_context(|| format!("{what}: ports is not a list"))
                        });
                        for port in ports.transpose()?.into_iter().flatten() {
                            let container_port =
                                field(port, &format!("{what}: a port"), "containerPort")?;
                            let host_port = free_port()?;
                            port["hostPort"] = host_port.into();
                            port["hostIP"] = "127.0.0.1".into();
                            let pod = pod_name.clone();
                            let base = base.clone();
                            published.push(Published { pod, base, container_port, host_port });
                        }
                        containers.push(Container { name, image, readiness });
                    }
                    let secrets = secrets_read(&doc);
                    pods.push(Pod { name: pod_name, base, containers, secrets });
                    yaml_docs.push(doc);
                }
                other => anyhow::bail!(
                    "{other} {:?}: only Pod, Service and Secret objects are supported",
                    name(doc)?
                ),
            }
        }
        anyhow::ensure!(!pods.is_empty(), "the manifests hold no Pod");
        if let Some(subnet) = subnet {
            let aliases: Vec<Value> = (pods.iter().enumerate())
                .map(|(i, p)| {
                    let ip = ("ip".into(), subnet.pod(i).to_string().into());
                    let hostnames = ("hostnames".into(), vec![p.name.as_str()].into());
                    Value::Mapping([ip, hostnames].into_iter().collect())
                })
                .collect();
            let aliases = Value::from(aliases);
            for doc in &mut yaml_docs {
                doc["spec"]["hostAliases"] = aliases.clone();
            }
        }
        let pod_yaml = yaml_docs.iter().map(to_yaml).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(PodmanStack { yaml: pod_yaml.concat(), pod_yaml, secrets, pods, published, subnet })
    }
}

/// Renames a host in an env value (or a secret's name): the whole value (`postgres`) or a
/// URL's host (`redis://redis:6379`, `http://data-storage:8080/x`).
pub fn rename_hosts(value: &str, hosts: &BTreeMap<String, String>) -> String {
    if let Some(new) = hosts.get(value) {
        return new.clone();
    }
    if let Some((scheme, rest)) = value.split_once("://") {
        let end = rest.find([':', '/', '?']).unwrap_or(rest.len());
        if let Some(new) = hosts.get(&rest[..end]) {
            return format!("{scheme}://{new}{}", &rest[end..]);
        }
    }
    value.to_owned()
}

/// The names of the Secrets a Pod's containers read (`env[].valueFrom.secretKeyRef.name`).
pub fn secrets_read(pod: &Value) -> BTreeSet<String> {
    let containers = pod["spec"]["containers"].as_sequence().into_iter().flatten();
    let env = containers.flat_map(|c| c["env"].as_sequence().into_iter().flatten());
    let names = env.filter_map(|var| var["valueFrom"]["secretKeyRef"]["name"].as_str());
    names.map(str::to_owned).collect()
}

fn rename_at(value: Option<&mut Value>, names: &BTreeMap<String, String>) {
    if let Some(value) = value {
        if let Some(new) = value.as_str().map(|s| rename_hosts(s, names)) {
            *value = new.into();
        }
    }
}

/// `free_port` as ports never given twice: a port the kernel hands to one probe (bind to port 0,
/// then close) it can hand to the next, and two pods of one stack then publish the same port
/// (seen: 2 of a 50-pod stack's 48, "address already in use").
pub fn distinct(
    mut free_port: impl FnMut() -> anyhow::Result<u16>,
) -> impl FnMut() -> anyhow::Result<u16> {
    let mut given = std::collections::BTreeSet::new();
    move || {
        for _ in 0..1000 {
            let port = free_port()?;
            if given.insert(port) {
                return Ok(port);
            }
        }
        anyhow::bail!("no free port that this stack does not publish already")
    }
}

fn to_yaml(doc: &Value) -> anyhow::Result<String> {
    Ok(format!("---\n{}", serde_norway::to_string(doc)?))
}

fn parse_docs(text: &str) -> anyhow::Result<Vec<Value>> {
    let docs = serde_norway::Deserializer::from_str(text).map(Value::deserialize);
    let docs = docs.filter(|d| !matches!(d, Ok(Value::Null)));
    Ok(docs.collect::<Result<_, _>>()?)
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn name(doc: &Value) -> anyhow::Result<String> {
    let name = doc["metadata"]["name"].as_str().map(str::to_owned);
    name.with_context(|| format!("a {} without metadata.name", kind(doc)))
}

fn containers_of(doc: &mut Value) -> Option<&mut Vec<Value>> {
    doc.get_mut("spec")?.get_mut("containers")?.as_sequence_mut()
}

impl Secret {
    /// The Secret as a Kubernetes document (its data base64, as in `payload`).
    pub fn manifest(&self) -> String {
        let data: BTreeMap<String, String> =
            serde_json::from_str(&self.payload).expect("the payload is a map of strings");
        let doc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": self.name },
            "data": data,
        });
        serde_norway::to_string(&doc).expect("a Secret serialises")
    }
}

fn secret(doc: &Value) -> anyhow::Result<Secret> {
    let name = name(doc)?;
    let strings = |field: &str| {
        serde_norway::from_value::<Option<BTreeMap<String, String>>>(doc[field].clone())
            .with_context(|| format!("secret {name}: data and stringData map keys to strings"))
    };
    let data = strings("data")?.unwrap_or_default();
    for (key, value) in &data {
        // Decoded only to be checked: base64 that decodes is canonical, so it is kept as it is.
        STANDARD
            .decode(value)
            .with_context(|| format!("secret {name}: data.{key} is not base64"))?;
    }
    let string_data = strings("stringData")?.unwrap_or_default().into_iter();
    let values: BTreeMap<_, _> =
        data.into_iter().chain(string_data.map(|(k, v)| (k, STANDARD.encode(v)))).collect();
    let payload = serde_json::to_string(&values).expect("a map of strings serialises");
    Ok(Secret { name, payload })
}

/// `value[key]` as a `T`, or an error naming it in `what`.
fn field<T: DeserializeOwned>(value: &Value, what: &str, key: &str) -> anyhow::Result<T> {
    anyhow::ensure!(!value[key].is_null(), "{what}: no {key}");
    serde_norway::from_value(value[key].clone()).with_context(|| format!("{what}: {key}"))
}

/// A probe as the manifests give it: `httpGet` (path, port), else `exec` (none: `true`).
fn probe(yaml: &Value, what: &str) -> anyhow::Result<Probe> {
    anyhow::ensure!(yaml.is_mapping(), "{what}: not a mapping");
    Ok(match (&yaml["httpGet"], &yaml["exec"], &yaml["tcpSocket"]) {
        (Value::Null, Value::Null, Value::Null) => anyhow::bail!(
            "{what}: neither exec, httpGet nor tcpSocket; podman runs only those (a probe it \
             cannot run would pass at once)"
        ),
        (Value::Null, Value::Null, tcp) => Probe::Tcp { port: field(tcp, what, "port")? },
        (Value::Null, exec, _) => Probe::Exec(field(exec, what, "command")?),
        (get, _, _) => {
            Probe::Http { path: field(get, what, "path")?, port: field(get, what, "port")? }
        }
    })
}

/// `localhost/e2e-gateway:latest` becomes the built reference for `localhost/e2e-gateway`.
fn pin_image(image: &str, images: &BTreeMap<String, String>) -> String {
    images.get(repository(image)).cloned().unwrap_or_else(|| image.to_owned())
}

/// The image reference without its tag or digest.
pub fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    }
}

#[cfg(test)]
mod tests;
