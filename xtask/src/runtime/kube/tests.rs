use super::*;

use crate::manifests::Manifests;
use crate::runtime::step;

/// `kubectl get pods -o json` of one Ready pod.
pub const READY_POD: &str = r#"{"items": [{"metadata": {"name": "gateway"}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}]}"#;

fn shipped() -> Manifests {
    Manifests::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/e2e/manifests")).unwrap()
}

fn run_in(root: &Path) -> KubeRun {
    let pinned = [(
        "localhost/e2e-gateway".to_owned(),
        "registry.example.com/team/e2e/gateway:aaaa".to_owned(),
    )]
    .into();
    let (stack, _) = shipped().render_kubernetes(&pinned, ClusterKind::Shared).unwrap();
    KubeRun {
        id: serde_json::from_str("\"20261127-103501-42\"").unwrap(),
        namespace: Namespace { context: "staging".into(), name: "e2e-103501-42".into() },
        dir: root.join("target/e2e/runs/1"),
        log: root.join("target/e2e/logs/run-1.log"),
        stack,
        pods: shipped().pods(),
        forwarded: [
            ("data-storage".to_owned(), (8080, 41001)),
            ("gateway".to_owned(), (8080, 41000)),
        ]
        .into(),
        forwards: Mutex::default(),
    }
}

fn suite(run: &KubeRun) -> Vec<Phase<'static>> {
    let mut cmd = Cmd::new("target/e2e/suite/e2e");
    for (k, v) in run.urls() {
        cmd = cmd.env(k, v);
    }
    vec![Phase::new("run E2E suite", vec![Step::Terminal { cmd, doing: "the suite".into() }])]
}

#[test]
fn the_kube_plan_is_the_documented_command_line() {
    let run = run_in(Path::new("/r"));
    let mut plan = step::print(&run.plan(Duration::from_secs(1), suite(&run)));
    plan.extend(run.final_record().teardown().concat().iter().map(ToString::to_string));
    let expected = [
        "kubectl --context staging create namespace e2e-103501-42",
        "kubectl --context staging --namespace e2e-103501-42 apply --filename /r/target/e2e/runs/1/stack.yaml",
        "# until every pod is Ready",
        "#   polls: kubectl --context staging --namespace e2e-103501-42 get pods --output json",
        "kubectl --context staging --namespace e2e-103501-42 port-forward service/data-storage 41001:8080 --address 127.0.0.1",
        "kubectl --context staging --namespace e2e-103501-42 port-forward service/gateway 41000:8080 --address 127.0.0.1",
        "# until each forwarded port here connects",
        "#   polls: connect 127.0.0.1:41001",
        "#   polls: connect 127.0.0.1:41000",
        "DATA_STORAGE_URL=http://127.0.0.1:41001 GATEWAY_URL=http://127.0.0.1:41000 target/e2e/suite/e2e",
        "kubectl --context staging delete namespace e2e-103501-42 --wait=false --ignore-not-found",
    ];
    assert_eq!(plan, expected);
    let bundle: Vec<String> = run
        .namespace
        .bundle(&["gateway".into()])
        .iter()
        .map(|(f, c)| format!("{f}: {c}"))
        .collect();
    assert_eq!(bundle, [
        "events.txt: kubectl --context staging --namespace e2e-103501-42 get events --sort-by=.lastTimestamp",
        "describe-pods.txt: kubectl --context staging --namespace e2e-103501-42 describe pods",
        "gateway.log: kubectl --context staging --namespace e2e-103501-42 logs pod/gateway --all-containers --timestamps",
        "gateway.previous.log: kubectl --context staging --namespace e2e-103501-42 logs pod/gateway --all-containers --timestamps --previous",
    ]);
    assert!(run
        .keep_instructions()
        .contains("remove it: cargo xtask e2e --down 20261127-103501-42"));
}

#[test]
fn the_printed_plan_is_the_executed_plan() {
    let root = std::env::temp_dir().join(format!("xtask-kube-plan-{}", std::process::id()));
    let run = run_in(&root);
    let plan = run.plan(Duration::from_secs(1), suite(&run));
    let mut printed = step::printed_commands(&plan);
    printed.extend(run.final_record().teardown().concat().iter().map(ToString::to_string));
    let rec = step::Recorder::answering(&[("kubectl --context staging", READY_POD)]);
    let record = step::record_run(&rec, &run.dir, &run.log, &[&plan]);
    let record = record.expect("recorded before the namespace exists");
    assert_eq!(record, run.final_record());
    crate::runtime::teardown(&run.dir, &record, &run.log, &Reporter::quiet(), &rec).unwrap();
    assert_eq!(rec.commands(), printed);
    assert!(printed.contains(&"connect 127.0.0.1:41000".to_owned()), "{printed:#?}");
    std::fs::remove_dir_all(root).unwrap();
}

/// In a cluster others use: images pulled (by content-addressed tag), no NodePort (they are
/// the whole cluster's), the Services the suite reaches named with their ports.
#[test]
fn manifests_for_a_shared_cluster_pull_and_use_no_node_ports() {
    let pinned = [(
        "localhost/e2e-gateway".to_owned(),
        "registry.example.com/team/e2e/gateway:aaaa".to_owned(),
    )]
    .into();
    let (yaml, exposed) = shipped().render_kubernetes(&pinned, ClusterKind::Shared).unwrap();
    assert!(yaml.contains("image: registry.example.com/team/e2e/gateway:aaaa"), "{yaml}");
    assert_eq!(yaml.matches("imagePullPolicy: IfNotPresent").count(), 4);
    assert!(!yaml.contains("nodePort") && !yaml.contains("NodePort"), "{yaml}");
    let ports = |port, node_port| ServicePorts { port, node_port };
    assert_eq!(
        exposed,
        BTreeMap::from([
            ("data-storage".to_owned(), ports(8080, 30081)),
            ("gateway".to_owned(), ports(8080, 30080)),
        ])
    );
    assert_eq!(kubectl_parses(&yaml, "kube").len(), 9);
}

/// The objects kubectl itself reads from rendered manifests (offline: `--local`), as `kubectl
/// apply` would; `name` makes the temporary file's name.
pub fn kubectl_parses(yaml: &str, name: &str) -> Vec<String> {
    let file = std::env::temp_dir().join(format!("xtask-{name}-{}.yaml", std::process::id()));
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new("kubectl")
        .args(["label", "--local", "--dry-run=client", "-o", "name", "e2e.check=1", "-f"])
        .arg(&file)
        .env("KUBECONFIG", "/dev/null")
        .output()
        .expect("kubectl is needed for this test: test/e2e/setup-podman.sh installs it (Debian: apt-get install kubernetes-client)");
    std::fs::remove_file(&file).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn the_cluster_pulls_each_image_by_its_registry_reference() {
    let record =
        |name: &str, repository: &str, fingerprint: char| crate::engine_images::ImageRecord {
            name: name.into(),
            repository: repository.into(),
            reference: format!("{repository}:local"),
            id: String::new(),
            fingerprint: fingerprint.to_string().repeat(64),
            size: 0,
        };
    let engine_images = EngineImages {
        engine: crate::engine::Engine::Podman,
        at: "this machine".into(),
        platform: "linux/amd64".into(),
        base_image: String::new(),
        base_image_id: String::new(),
        images: vec![
            record("gateway", "localhost/e2e-gateway", 'a'),
            record("redis", "localhost/e2e-redis", 'b'),
        ],
        built_now: Vec::new(),
    };
    assert_eq!(
        registry_references(&engine_images, "registry.example.com/team/e2e/"),
        BTreeMap::from([
            (
                "localhost/e2e-gateway".to_owned(),
                "registry.example.com/team/e2e/gateway:aaaaaaaaaaaaaaaa".to_owned()
            ),
            (
                "localhost/e2e-redis".to_owned(),
                "registry.example.com/team/e2e/redis:bbbbbbbbbbbbbbbb".to_owned()
            ),
        ])
    );
}

/// The stack file in a shared cluster, as the suite reads it: every service the fault tests need.
#[test]
fn fault_tests_get_a_handle_on_every_service() {
    let run = run_in(Path::new("/r"));
    let control = run.control(5);
    let read = e2e_stack::StackFile::parse(&control.to_json(), &e2e_stack::SERVICES);
    assert_eq!(read, Ok(control.clone()));
    let gateway = &control.services["gateway"];
    assert_eq!(
        gateway.stop.join(" "),
        "kubectl --context staging --namespace e2e-103501-42 delete pod/gateway --wait=true"
    );
    assert_eq!(gateway.start.join(" "), "kubectl --context staging --namespace e2e-103501-42 apply --filename /r/target/e2e/runs/1/stack.yaml");
}

#[test]
fn pod_health_fails_fast_on_crash_loops() {
    let pod = |status: serde_json::Value| serde_json::json!({ "status": status });
    assert_eq!(
        pod_health(&pod(
            serde_json::json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": [{"name": "g", "restartCount": 0, "state": {"running": {}}}]})
        )),
        Health::Ready
    );
    assert!(matches!(
        pod_health(&pod(serde_json::json!({"phase": "Pending"}))),
        Health::Waiting(_)
    ));
    assert!(matches!(
        pod_health(&pod(serde_json::json!({"phase": "Running", "containerStatuses": [{"name": "g", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}))),
        Health::Failed(w) if w.contains("CrashLoopBackOff")
    ));
    assert!(matches!(
        pod_health(&pod(serde_json::json!({"phase": "Running", "containerStatuses": [{"name": "g", "restartCount": 1, "lastState": {"terminated": {"exitCode": 2}}, "state": {"running": {}}}]}))),
        Health::Failed(w) if w.contains("exit code 2")
    ));
    assert!(matches!(
        pod_health(&pod(
            serde_json::json!({"phase": "Pending", "containerStatuses": [{"name": "g", "restartCount": 0, "state": {"waiting": {"reason": "ErrImageNeverPull"}}}]})
        )),
        Health::Failed(_)
    ));
    let failed = pod(serde_json::json!({"phase": "Failed", "message": "evicted"}));
    assert!(matches!(pod_health(&failed), Health::Failed(w) if w.contains("evicted")));
}
