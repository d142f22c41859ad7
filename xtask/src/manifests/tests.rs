use super::*;

fn shipped() -> Manifests {
    Manifests::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/e2e/manifests")).unwrap()
}

#[test]
fn a_run_gets_a_subnet_no_network_of_the_engine_overlaps() {
    let used = parse_subnets("10.88.0.0/16 fd00::/64\n10.89.0.0/24 10.89.1.0/27\n");
    assert_eq!(used.len(), 3, "IPv6 subnets are skipped");
    for run in ["20261202-080000-1", "20261202-080000-2", "x", ""] {
        let s = Subnet::choose(run, 4, &used).unwrap();
        let base = u32::from(s.base);
        assert_eq!((base % 32, s.prefix), (0, 27), "{s} is a /27");
        assert_eq!(base >> 16, u32::from_be_bytes([0, 0, 10, 89]), "{s} in 10.89/16");
        assert!(
            base >= u32::from_be_bytes([10, 89, 1, 32])
                || base < u32::from_be_bytes([10, 89, 0, 0]),
            "{s} overlaps 10.89.0.0/24 or 10.89.1.0/27"
        );
        assert_eq!(Subnet::choose(run, 4, &used).unwrap(), s, "the same run, the same subnet");
    }
    assert_ne!(
        Subnet::choose("20261202-080000-1", 4, &[]).unwrap(),
        Subnet::choose("20261202-080000-2", 4, &[]).unwrap(),
        "two runs at once start apart"
    );
    let all = [(std::net::Ipv4Addr::new(10, 0, 0, 0), 8)];
    let err = Subnet::choose("r", 4, &all).unwrap_err().to_string();
    assert!(err.contains("podman network prune"), "{err}");
}

/// The pods in the lower half, from `.2`; podman's own allocation in the upper half.
#[test]
fn a_network_is_sized_to_its_stack() {
    for (pods, prefix) in
        [(1, 27), (4, 27), (14, 27), (15, 26), (30, 26), (50, 25), (126, 24), (500, 22)]
    {
        let s = Subnet::choose("r", pods, &[]).unwrap();
        assert_eq!(s.prefix, prefix, "{pods} pods");
        assert!(s.holds(pods) && u32::from(s.base) % (1 << (32 - prefix)) == 0, "{s}");
        let last = u32::from(s.pod(pods - 1));
        let range = s.dynamic_range();
        let (start, half) = range.split_once('/').unwrap();
        assert_eq!(half.parse::<u32>().unwrap(), prefix + 1, "{range}");
        assert!(last < u32::from(start.parse::<std::net::Ipv4Addr>().unwrap()), "{range}");
    }
    assert_eq!(Subnet::choose("r", 4, &[]).unwrap().pod(0).octets()[3] % 32, 2);
    let s = Subnet { base: std::net::Ipv4Addr::new(10, 89, 7, 64), prefix: 27 };
    assert_eq!(s.dynamic_range(), "10.89.7.80/28");
    assert!(s.holds(14) && !s.holds(15));
    // More pods than the network was made for: said, with what to do.
    let err = shipped().render_podman(&BTreeMap::new(), "r", Some(s), || Ok(1)).map(drop);
    assert!(err.is_ok());
    let small = Subnet { prefix: 29, ..s };
    let err = shipped().render_podman(&BTreeMap::new(), "r", Some(small), || Ok(1)).unwrap_err();
    assert!(err.to_string().contains("fewer than the manifests' 4 pods"), "{err}");
}

#[test]
fn with_a_subnet_every_pod_has_a_fixed_address_and_every_name_in_its_hosts() {
    let subnet = Subnet { base: std::net::Ipv4Addr::new(10, 89, 7, 64), prefix: 27 };
    let stack =
        shipped().render_podman(&BTreeMap::new(), "r1", Some(subnet), || Ok(40000)).unwrap();
    let hosts = stack.hosts();
    assert_eq!(
        hosts,
        vec![
            ("postgres-r1".to_owned(), "10.89.7.66".parse().unwrap()),
            ("redis-r1".to_owned(), "10.89.7.67".parse().unwrap()),
            ("data-storage-r1".to_owned(), "10.89.7.68".parse().unwrap()),
            ("gateway-r1".to_owned(), "10.89.7.69".parse().unwrap()),
        ]
    );
    assert_eq!(
        stack.address("redis-r1"),
        Some(("10.89.7.67".parse().unwrap(), "02:e2:0a:59:07:43".to_owned()))
    );
    for yaml in &stack.pod_yaml {
        let doc: Value = serde_norway::from_str(yaml.trim_start_matches("---\n")).unwrap();
        let aliases = doc["spec"]["hostAliases"].as_sequence().unwrap();
        for (name, ip) in &hosts {
            assert!(
                aliases.iter().any(|a| a["ip"].as_str() == Some(&ip.to_string())
                    && a["hostnames"][0].as_str() == Some(name)),
                "{name} -> {ip} missing in {yaml}"
            );
        }
    }
    let plain = shipped().render_podman(&BTreeMap::new(), "r1", None, || Ok(40000)).unwrap();
    assert!(plain.hosts().is_empty() && !plain.yaml.contains("hostAliases"));
}

fn render(m: &Manifests) -> PodmanStack {
    let images: BTreeMap<String, String> = ["gateway", "data-storage", "postgres", "redis"]
        .iter()
        .map(|n| (format!("localhost/e2e-{n}"), format!("localhost/e2e-{n}:abc123")))
        .collect();
    let mut next = 40000;
    m.render_podman(&images, "", None, || {
        next += 1;
        Ok(next)
    })
    .unwrap()
}

#[test]
fn shipped_manifests_render_for_podman() {
    let stack = render(&shipped());
    let names: Vec<&str> = stack.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["postgres", "redis", "data-storage", "gateway"],
        "files in name order: dependencies first"
    );
    // Every image is pinned to the built reference.
    for pod in &stack.pods {
        assert!(pod.containers[0].image.ends_with(":abc123"), "{pod:?}");
    }
    assert!(!stack.yaml.contains(":latest"));
    // Only the HTTP services are published, on loopback, each on its own port.
    assert_eq!(stack.published.len(), 2);
    assert_eq!(stack.host_port("data-storage", 8080), Some(40001));
    assert_eq!(stack.host_port("gateway", 8080), Some(40002));
    assert!(stack.yaml.contains("hostIP: 127.0.0.1"));
    assert!(!stack.yaml.contains("kind: Service") && !stack.yaml.contains("kind: Secret"));
    assert!(!stack.yaml.contains("Probe"), "probes are run by the xtask, not podman");
    // Readiness comes from the manifests' probes.
    let gw = &stack.pods[3].containers[0];
    assert_eq!(gw.readiness, Some(Probe::Http { path: "/ready".into(), port: 8080 }));
    let pg = &stack.pods[0].containers[0];
    assert!(matches!(&pg.readiness, Some(Probe::Exec(c)) if c[0] == "pg_isready"));
    let tcp = "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i, readinessProbe: {tcpSocket: {port: 6379}}}]}\n";
    let m = Manifests { docs: parse_docs(tcp).unwrap() };
    let stack = m.render_podman(&BTreeMap::new(), "", None, || Ok(1)).unwrap();
    assert_eq!(stack.pods[0].containers[0].readiness, Some(Probe::Tcp { port: 6379 }));
}

#[test]
fn a_run_suffix_renames_pods_secrets_and_the_hosts_that_name_them() {
    let m = shipped();
    let stack = m.render_podman(&BTreeMap::new(), "r1", None, || Ok(40000)).unwrap();
    let names: Vec<&str> = stack.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["postgres-r1", "redis-r1", "data-storage-r1", "gateway-r1"]);
    assert_eq!(stack.secrets[0].name, "postgres-credentials-r1");
    assert!(stack.yaml.contains("value: postgres-r1\n"), "POSTGRES_HOST follows:\n{}", stack.yaml);
    assert!(stack.yaml.contains("redis://redis-r1:6379"), "{}", stack.yaml);
    assert!(stack.yaml.contains("http://data-storage-r1:8080"), "{}", stack.yaml);
    assert!(stack.yaml.contains("name: postgres-credentials-r1"), "{}", stack.yaml);
    assert!(!stack.yaml.contains("name: postgres-credentials\n"), "{}", stack.yaml);
    assert!(stack.yaml.contains("e2e.run: r1"));
    assert_eq!(stack.host_port("gateway", 8080), Some(40000), "found by the manifests' name too");
    assert_eq!(stack.pods[3].base, "gateway");
}

#[test]
fn hosts_are_renamed_only_where_they_are_hosts() {
    let hosts: BTreeMap<String, String> =
        [("redis".into(), "redis-x".into()), ("postgres".into(), "postgres-x".into())].into();
    assert_eq!(rename_hosts("postgres", &hosts), "postgres-x");
    assert_eq!(rename_hosts("redis://redis:6379", &hosts), "redis://redis-x:6379");
    assert_eq!(rename_hosts("http://redis/path?q=1", &hosts), "http://redis-x/path?q=1");
    assert_eq!(rename_hosts("redis-cache", &hosts), "redis-cache");
    assert_eq!(rename_hosts("http://redisx:1", &hosts), "http://redisx:1");
    assert_eq!(rename_hosts("300", &hosts), "300");
}

#[test]
fn secrets_are_taken_out_and_encoded_for_podman() {
    let stack = render(&shipped());
    assert_eq!(stack.secrets.len(), 1);
    let s = &stack.secrets[0];
    assert_eq!(s.name, "postgres-credentials");
    let payload: serde_json::Value = serde_json::from_str(&s.payload).unwrap();
    assert_eq!(STANDARD.decode(payload["user"].as_str().unwrap()).unwrap(), b"audit");
    assert_eq!(payload["user"], "YXVkaXQ="); // base64("audit")
}

#[test]
fn data_and_string_data_both_count() {
    let docs =
        parse_docs("kind: Secret\nmetadata: {name: s}\ndata: {a: aGk=}\nstringData: {b: yo}\n")
            .unwrap();
    let s: serde_json::Value = serde_json::from_str(&secret(&docs[0]).unwrap().payload).unwrap();
    assert_eq!(s["a"], "aGk="); // base64("hi"), as given
    assert_eq!(s["b"], "eW8="); // base64("yo"), encoded
    let empty = parse_docs("kind: Secret\nmetadata: {name: s}\ndata:\n").unwrap();
    assert_eq!(secret(&empty[0]).unwrap().payload, "{}", "an empty data: is no values");
    let bad = parse_docs("kind: Secret\nmetadata: {name: s}\ndata: {a: '***'}\n").unwrap();
    assert!(secret(&bad[0]).unwrap_err().to_string().contains("data.a is not base64"));
}

#[test]
fn image_repository_strips_tag_and_digest_but_not_registry_port() {
    assert_eq!(repository("localhost/e2e-gateway:latest"), "localhost/e2e-gateway");
    assert_eq!(repository("localhost:5000/x"), "localhost:5000/x");
    assert_eq!(repository("localhost:5000/x:1"), "localhost:5000/x");
    assert_eq!(repository("x@sha256:abc"), "x");
}

#[test]
fn a_run_can_set_a_pods_environment() {
    let mut m = shipped();
    m.set_env("gateway", "DEDUP_TTL_SECONDS", "5").unwrap();
    m.set_env("gateway", "DEDUP_TTL_SECONDS", "6").unwrap();
    let (yaml, _) = m.render_kubernetes(&BTreeMap::new(), ClusterKind::Kind).unwrap();
    assert_eq!(yaml.matches("DEDUP_TTL_SECONDS").count(), 1, "replaced, not repeated");
    assert!(yaml.contains("value: '6'") || yaml.contains("value: \"6\""), "{yaml}");
    assert!(m.set_env("nope", "A", "1").is_err());
    assert_eq!(m.pods(), ["postgres", "redis", "data-storage", "gateway"]);
}

#[test]
fn unsupported_kinds_are_named() {
    let m = Manifests { docs: parse_docs("kind: Deployment\nmetadata: {name: d}\n").unwrap() };
    let err = m.render_podman(&BTreeMap::new(), "", None, || Ok(1)).unwrap_err().to_string();
    assert!(err.contains("Deployment") && err.contains("only Pod, Service and Secret"), "{err}");
}

#[test]
fn a_malformed_container_is_named_with_its_field() {
    let pod = |container: &str| {
        let yaml =
            format!("kind: Pod\nmetadata: {{name: p}}\nspec: {{containers: [{container}]}}\n");
        let m = Manifests { docs: parse_docs(&yaml).unwrap() };
        format!("{:#}", m.render_podman(&BTreeMap::new(), "", None, || Ok(1)).unwrap_err())
    };
    assert_eq!(pod("{name: c}"), "pod p: a container: no image");
    let port = pod("{name: c, image: i, ports: [{containerPort: x}]}");
    assert!(port.starts_with("pod p: container c: a port: containerPort: "), "{port}");
    let probe = pod("{name: c, image: i, readinessProbe: {httpGet: {path: /}}}");
    assert_eq!(probe, "pod p: container c: readinessProbe: no port");
    let probe = pod("{name: c, image: i, readinessProbe: 5}");
    assert_eq!(probe, "pod p: container c: readinessProbe: not a mapping");
    let probe = pod("{name: c, image: i, readinessProbe: {grpc: {port: 9}, periodSeconds: 2}}");
    assert_eq!(
        probe,
        "pod p: container c: readinessProbe: neither exec, httpGet nor tcpSocket; podman runs \
         only those (a probe it cannot run would pass at once)"
    );
    let probe = pod("{name: c, image: i, readinessProbe: {tcpSocket: {port: redis}}}");
    assert!(probe.starts_with("pod p: container c: readinessProbe: port: "), "{probe}");
    assert_eq!(pod("{name: c, image: i, ports: 80}"), "pod p: container c: ports is not a list");
}

/// `bench scale`'s copies: each a Pod of its own name and `app` label, the rest as the original.
#[test]
fn copies_of_a_pod_each_have_their_own_name() {
    let m = shipped();
    let yaml = m.copies_of("gateway", 3).unwrap();
    let docs = parse_docs(&yaml).unwrap();
    assert_eq!(docs.len(), 3);
    for (i, doc) in docs.iter().enumerate() {
        let copy = format!("gateway-copy-{}", i + 1);
        assert_eq!((kind(doc), name(doc).unwrap()), ("Pod", copy.clone()));
        assert_eq!(doc["metadata"]["labels"]["app"].as_str(), Some(copy.as_str()));
        assert_eq!(
            doc["spec"],
            m.docs.iter().find(|d| name(d).is_ok_and(|n| n == "gateway")).unwrap()["spec"]
        );
    }
    assert!(m.copies_of("nothing", 1).is_err());
    // The grown stack renders, on a network sized to it.
    let mut grown = m.clone();
    grown.docs.extend(parse_docs(&m.copies_of("gateway", 46).unwrap()).unwrap());
    let subnet = Subnet::choose("r", grown.pods().len(), &[]).unwrap();
    assert_eq!(subnet.prefix, 25);
    let stack = grown.render_podman(&BTreeMap::new(), "r", Some(subnet), || Ok(40000)).unwrap();
    assert_eq!(stack.pods.len(), 50);
}

/// A port is published once: the same free port handed out twice is asked for again.
#[test]
fn a_stack_never_publishes_one_port_twice() {
    let mut grown = shipped();
    grown.docs.extend(parse_docs(&shipped().copies_of("gateway", 3).unwrap()).unwrap());
    let mut said = [41000, 41000, 41001, 41001, 41000, 41002, 41003, 41002, 41004].into_iter();
    let free = distinct(|| said.next().context("no more ports"));
    let stack = grown.render_podman(&BTreeMap::new(), "r", None, free).unwrap();
    let ports: Vec<u16> = stack.published.iter().map(|p| p.host_port).collect();
    assert_eq!(ports, [41000, 41001, 41002, 41003, 41004]);
    let mut same = distinct(|| Ok(7));
    assert_eq!(same().unwrap(), 7);
    assert!(same().is_err(), "a source that only repeats itself is an error, not a loop");
}

#[test]
fn memory_requests_add_up_per_pod_and_pods_without_count_nothing() {
    let yaml = "\
kind: Pod
metadata: {name: two}
spec:
  containers:
    - {name: a, image: i, resources: {requests: {memory: 256Mi}}}
    - {name: b, image: i, resources: {requests: {memory: 268435456}, limits: {memory: 1Gi}}}
---
kind: Pod
metadata: {name: none}
spec: {containers: [{name: c, image: i, resources: {limits: {memory: 1Gi}}}]}
---
kind: Secret
metadata: {name: s}
stringData: {k: v}
";
    let m = Manifests { docs: parse_docs(yaml).unwrap() };
    assert_eq!(m.memory_requests().unwrap(), [("two".to_owned(), 512 << 20)]);
    assert_eq!(shipped().memory_requests().unwrap(), [], "the shipped pods request no memory");
    let bad = "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i, resources: {requests: {memory: 1GB}}}]}\n";
    let m = Manifests { docs: parse_docs(bad).unwrap() };
    let err = format!("{:#}", m.memory_requests().unwrap_err());
    assert_eq!(err, "pod p: resources.requests.memory \"1GB\" is not a quantity such as 256Mi");
}

#[test]
fn a_secret_as_podman_4_4_plays_it_reads_back_the_same() {
    let m = shipped();
    let rendered = m.render_podman(&BTreeMap::new(), "x", None, || Ok(40000)).unwrap();
    let secret = &rendered.secrets[0];
    let played = parse_docs(&secret.manifest()).unwrap();
    assert_eq!(played.len(), 1);
    assert_eq!(super::secret(&played[0]).unwrap(), *secret, "name and data as made from JSON");
}
