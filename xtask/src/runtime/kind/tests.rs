use super::*;

use crate::manifests::Manifests;
use crate::runtime::step;

fn run(reuse: bool, provider: Engine) -> KindRun {
    run_in(Path::new("/r"), reuse, provider)
}

fn run_in(root: &Path, reuse: bool, provider: Engine) -> KindRun {
    let dir = root.join("target/e2e/runs/1");
    KindRun {
        id: serde_json::from_str("\"20261127-103501-42\"").unwrap(),
        cluster: if reuse { "team".into() } else { "e2e-103501-42".into() },
        reuse,
        namespace: Namespace {
            context: if reuse { "kind-team".into() } else { "kind-e2e-103501-42".into() },
            name: "e2e-103501-42".into(),
        },
        provider,
        log: root.join("target/e2e/logs/run-1.log"),
        ports: [(30080, 41000), (30081, 41001)].into(),
        node_ports: [("gateway".to_owned(), 30080), ("data-storage".to_owned(), 30081)].into(),
        archive_source: Some("/r/images.tar.zst".into()),
        references: vec!["localhost/e2e-gateway:aaaa".into()],
        pods: vec!["gateway".into()],
        dir,
        config: "kind: Cluster".into(),
        stack: "---".into(),
        ports_record: None,
    }
}

fn suite(run: &KindRun) -> Vec<Phase<'static>> {
    let mut cmd = Cmd::new("cargo").args(["test", "-p", "e2e-suite"]);
    for (k, v) in run.urls() {
        cmd = cmd.env(k, v);
    }
    vec![Phase::new("run E2E suite", vec![Step::Terminal { cmd, doing: "the suite".into() }])]
}

#[test]
fn the_kind_plan_is_the_documented_command_line() {
    let run = run(false, Engine::Podman);
    let mut plan = step::print(&run.plan(Duration::from_secs(1), suite(&run)));
    plan.extend(run.final_record().teardown().concat().iter().map(ToString::to_string));
    let expected = [
        "zstd -d -q -f -o /r/target/e2e/runs/1/images.tar /r/images.tar.zst",
        "KIND_EXPERIMENTAL_PROVIDER=podman kind create cluster --name e2e-103501-42 --config /r/target/e2e/runs/1/kind-cluster.yaml --wait 120s",
        "# the images into each node that lacks one (polled: the nodes, then per node and image), all at once:",
        "# KIND_EXPERIMENTAL_PROVIDER=podman kind load image-archive /r/target/e2e/runs/1/images.tar --name e2e-103501-42 --nodes e2e-103501-42-control-plane",
        "#   polls: KIND_EXPERIMENTAL_PROVIDER=podman kind get nodes --name e2e-103501-42",
        "#   polls: podman exec e2e-103501-42-control-plane crictl inspecti -q localhost/e2e-gateway:aaaa",
        "kubectl --context kind-e2e-103501-42 create namespace e2e-103501-42",
        "kubectl --context kind-e2e-103501-42 --namespace e2e-103501-42 apply --filename /r/target/e2e/runs/1/stack.yaml",
        "# until every pod is Ready",
        "#   polls: kubectl --context kind-e2e-103501-42 --namespace e2e-103501-42 get pods --output json",
        "DATA_STORAGE_URL=http://127.0.0.1:41001 GATEWAY_URL=http://127.0.0.1:41000 cargo test -p e2e-suite",
        "KIND_EXPERIMENTAL_PROVIDER=podman kind delete cluster --name e2e-103501-42",
    ];
    assert_eq!(plan, expected);
    let bundle: Vec<String> =
        run.bundle(&["POD".into()]).iter().map(|(f, c)| format!("{f}: {c}")).collect();
    assert_eq!(bundle[0], "kind-export-logs.txt: KIND_EXPERIMENTAL_PROVIDER=podman kind export logs /r/target/e2e/runs/1/bundle/kind --name e2e-103501-42");
    assert!(bundle
        .iter()
        .any(|l| l.ends_with("logs pod/POD --all-containers --timestamps --previous")));
}

#[test]
fn the_printed_plan_is_the_executed_plan() {
    for reuse in [false, true] {
        let root =
            std::env::temp_dir().join(format!("xtask-kind-plan-{}-{reuse}", std::process::id()));
        let run = run_in(&root, reuse, Engine::Docker);
        let plan = run.plan(Duration::from_secs(1), suite(&run));
        let mut printed = step::printed_commands(&plan);
        printed.extend(run.final_record().teardown().concat().iter().map(ToString::to_string));
        let rec = step::Recorder::answering(&[
            ("kind get nodes", &format!("{}-control-plane\n", run.cluster)),
            ("kubectl --context", crate::runtime::kube::tests::READY_POD),
        ]);
        let record = step::record_run(&rec, &run.dir, &run.log, &[&plan]);
        let record = record.expect("recorded before the cluster exists");
        assert_eq!(record, run.final_record());
        let reporter = Reporter::quiet();
        crate::runtime::teardown(&run.dir, &record, &run.log, &reporter, &rec).unwrap();
        assert_eq!(rec.commands(), printed, "reuse: {reuse}");
        assert!(printed.iter().any(|l| l.ends_with("get pods --output json")), "{printed:#?}");
        std::fs::remove_dir_all(root).unwrap();
    }
}

#[test]
fn the_dev_loop_replaces_only_changed_pods_through_kubectl() {
    let run = run(false, Engine::Podman);
    let cmds: Vec<String> = run
        .replace_cmds(&["gateway".into()], &["localhost/e2e-gateway:bbbb".into()])
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        cmds,
        [
            "podman save --multi-image-archive --output /r/target/e2e/runs/1/images.tar localhost/e2e-gateway:bbbb",
            "KIND_EXPERIMENTAL_PROVIDER=podman kind load image-archive /r/target/e2e/runs/1/images.tar --name e2e-103501-42",
            "kubectl --context kind-e2e-103501-42 --namespace e2e-103501-42 delete pod/gateway --wait=true --ignore-not-found",
            "kubectl --context kind-e2e-103501-42 --namespace e2e-103501-42 apply --filename /r/target/e2e/runs/1/stack.yaml",
        ]
    );
    assert!(run.replace_cmds(&[], &[]).is_empty(), "nothing changed, nothing run");
    let m = Manifests::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/e2e/manifests"))
        .unwrap();
    let (old, _) = m.render_kubernetes(&BTreeMap::new(), ClusterKind::Kind).unwrap();
    let pinned =
        [("localhost/e2e-gateway".to_owned(), "localhost/e2e-gateway:new".to_owned())].into();
    let (new, _) = m.render_kubernetes(&pinned, ClusterKind::Kind).unwrap();
    assert_eq!(changed_pods(&old, &new), ["gateway"]);
    assert!(changed_pods(&old, &old).is_empty());
    // A Secret edited (with a binary or alone): the pods that read it are created again.
    let edited = new.replace("password: e2e-audit-password", "password: another-password");
    assert_ne!(edited, new, "the shipped Secret holds the password this test edits");
    assert_eq!(changed_pods(&new, &edited), ["data-storage", "postgres"]);
}

#[test]
fn a_reused_cluster_is_neither_created_nor_deleted() {
    let run = run(true, Engine::Docker);
    let mut plan = step::print(&run.plan(Duration::from_secs(1), vec![]));
    plan.extend(run.final_record().teardown().concat().iter().map(ToString::to_string));
    assert!(
        !plan.iter().any(|l| l.contains("create cluster") || l.contains("delete cluster")),
        "{plan:#?}"
    );
    assert!(
        !plan.iter().any(|l| l.contains("KIND_EXPERIMENTAL_PROVIDER")),
        "docker is kind's default provider"
    );
    assert!(plan.last().unwrap().starts_with("kubectl --context kind-team delete namespace e2e-103501-42 --wait=false --ignore-not-found"));
}

#[test]
fn cluster_config_gets_its_name_and_free_host_ports() {
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../test/e2e/kind-cluster.yaml"
    ))
    .unwrap();
    let mut next = 50000;
    let (yaml, ports) = render_cluster_config(&template, "e2e-x", || {
        next += 1;
        Ok(next)
    })
    .unwrap();
    assert_eq!(ports, BTreeMap::from([(30080, 50001), (30081, 50002)]));
    let doc: Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(doc["name"].as_str(), Some("e2e-x"));
    assert_eq!(doc["apiVersion"].as_str(), Some("kind.x-k8s.io/v1alpha4"));
    let m = &doc["nodes"][0]["extraPortMappings"][0];
    assert_eq!((m["containerPort"].as_u64(), m["hostPort"].as_u64()), (Some(30080), Some(50001)));
    assert_eq!(m["listenAddress"].as_str(), Some("127.0.0.1"));
}

#[test]
fn manifests_for_kind_pin_images_never_pull_and_keep_services() {
    let m = Manifests::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/e2e/manifests"))
        .unwrap();
    let images: BTreeMap<String, String> =
        [("localhost/e2e-gateway".to_owned(), "localhost/e2e-gateway:abc".to_owned())].into();
    let (yaml, node_ports) = m.render_kubernetes(&images, ClusterKind::Kind).unwrap();
    assert!(yaml.contains("image: localhost/e2e-gateway:abc"));
    assert!(!yaml.contains("imagePullPolicy: IfNotPresent"));
    assert_eq!(yaml.matches("imagePullPolicy: Never").count(), 4);
    assert!(yaml.contains("kind: Secret") && yaml.contains("kind: Service"));
    let node_ports: BTreeMap<String, u16> =
        node_ports.into_iter().map(|(service, p)| (service, p.node_port)).collect();
    assert_eq!(
        node_ports,
        BTreeMap::from([("data-storage".to_owned(), 30081), ("gateway".to_owned(), 30080)])
    );
    // The NodePorts are exactly the ports the cluster config maps to the host.
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../test/e2e/kind-cluster.yaml"
    ))
    .unwrap();
    let (_, ports) = render_cluster_config(&template, "x", || Ok(1)).unwrap();
    let mapped: Vec<u16> = ports.keys().copied().collect();
    let mut wanted: Vec<u16> = node_ports.values().copied().collect();
    wanted.sort_unstable();
    assert_eq!(mapped, wanted);
}

#[test]
fn without_an_archive_the_engine_saves_one() {
    let saved = KindRun { archive_source: None, ..run(false, Engine::Podman) };
    assert_eq!(saved.make_tar().to_string(), "podman save --multi-image-archive --output /r/target/e2e/runs/1/images.tar localhost/e2e-gateway:aaaa");
}

#[test]
fn every_step_reads_the_tar_that_make_tar_writes_in_the_run_dir() {
    let run = run(false, Engine::Docker);
    let tar = "/r/target/e2e/runs/1/images.tar";
    assert!(run.make_tar().to_string().contains(tar));
    assert!(run.load_archive("node").to_string().contains(tar));
    let replace = run.replace_cmds(&[], &["x:1".into()]);
    assert!(replace.iter().all(|c| c.to_string().contains(tar)), "{replace:?}");
}

/// kubectl itself parses the rendered manifests (offline: `--local`), as `kubectl apply` would.
#[test]
fn kubectl_parses_the_rendered_manifests() {
    let m = Manifests::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/e2e/manifests"))
        .unwrap();
    let (yaml, _) = m.render_kubernetes(&BTreeMap::new(), ClusterKind::Kind).unwrap();
    let names = crate::runtime::kube::tests::kubectl_parses(&yaml, "kind");
    assert_eq!(
        names,
        [
            "secret/postgres-credentials",
            "pod/postgres",
            "service/postgres",
            "pod/redis",
            "service/redis",
            "pod/data-storage",
            "service/data-storage",
            "pod/gateway",
            "service/gateway"
        ]
    );
}

#[test]
fn containerd_names() {
    assert_eq!(containerd_name("localhost/e2e-gateway:1"), "localhost/e2e-gateway:1");
    assert_eq!(containerd_name("redis:7"), "docker.io/library/redis:7");
    assert_eq!(containerd_name("team/x:1"), "docker.io/team/x:1");
    assert_eq!(containerd_name("ghcr.io/a/b:1"), "ghcr.io/a/b:1");
}

/// The stack file on Kind, as the suite reads it: every service the fault tests need.
#[test]
fn fault_tests_get_a_handle_on_every_service() {
    let mut run = run(false, Engine::Docker);
    run.pods = e2e_stack::SERVICES.map(str::to_owned).to_vec();
    let control = run.control(5);
    let read = e2e_stack::StackFile::parse(&control.to_json(), &e2e_stack::SERVICES);
    assert_eq!(read, Ok(control));
}
