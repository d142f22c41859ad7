use super::*;
use crate::runtime::step;
use std::path::Path;

pub(crate) fn run(root: &Path) -> PodmanRun {
    let m = crate::manifests::Manifests::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../test/e2e/manifests"),
    )
    .unwrap();
    let id: RunId = serde_json::from_str("\"20261127-103501-42\"").unwrap();
    let stack = m
        .render_podman(
            &BTreeMap::new(),
            id.suffix(),
            Some(crate::manifests::Subnet {
                base: std::net::Ipv4Addr::new(10, 89, 7, 64),
                prefix: 27,
            }),
            || Ok(40000),
        )
        .unwrap();
    let project = Project {
        root: root.into(),
        target_dir: root.join("target"),
        e2e_dir: root.join("target/e2e"),
    };
    PodmanRun::new(&project, id, stack)
}

/// The readiness loop of an exec probe after its first line, as `--dry-run` prints it.
const PROBE_LINES: &str = "\n#          \"$@\"\n#          }\n#          tries=$((3 * 20))\n#          until probe \"$@\" >/dev/null 2>&1; do\n#            tries=$((tries - 1))\n#            [ \"$tries\" -gt 0 ] || exit 1\n#            sleep 0.05\n#          done";

#[test]
fn the_podman_plan_is_exact() {
    let run = run(Path::new("/r"));
    let lines = step::print(&run.plan(Duration::from_secs(1), vec![]));
    assert_eq!(
        lines,
        [
            "podman network create --label e2e.xtask=1 --subnet 10.89.7.64/27 --ip-range 10.89.7.80/28 e2e-20261127-103501-42",
            "podman secret create postgres-credentials-103501-42 /r/target/e2e/runs/20261127-103501-42/secret-postgres-credentials-103501-42.json",
            "# at once, 4 commands:",
            "podman kube play --network e2e-20261127-103501-42 --ip 10.89.7.66 --mac-address 02:e2:0a:59:07:42 /r/target/e2e/runs/20261127-103501-42/pods/postgres-103501-42.yaml",
            "podman kube play --network e2e-20261127-103501-42 --ip 10.89.7.67 --mac-address 02:e2:0a:59:07:43 /r/target/e2e/runs/20261127-103501-42/pods/redis-103501-42.yaml",
            "podman kube play --network e2e-20261127-103501-42 --ip 10.89.7.68 --mac-address 02:e2:0a:59:07:44 /r/target/e2e/runs/20261127-103501-42/pods/data-storage-103501-42.yaml",
            "podman kube play --network e2e-20261127-103501-42 --ip 10.89.7.69 --mac-address 02:e2:0a:59:07:45 /r/target/e2e/runs/20261127-103501-42/pods/gateway-103501-42.yaml",
            "# until each container's readinessProbe passes (each container on its own; while one does not, its state is read too)",
            &format!("#   polls: podman exec postgres-103501-42-postgres bash -c 'probe() {{{PROBE_LINES}' ready pg_isready -h 127.0.0.1 -p 5432"),
            &format!("#   polls: podman exec redis-103501-42-redis bash -c 'probe() {{{PROBE_LINES}' ready redis-cli ping"),
            "#   polls: GET http://127.0.0.1:40000/health/ready",
            "#   polls: GET http://127.0.0.1:40000/ready",
        ]
    );
    let down: Vec<String> =
        run.final_record().teardown().concat().iter().map(ToString::to_string).collect();
    assert_eq!(
        down,
        [
            "podman pod stop --ignore --time 0 postgres-103501-42",
            "podman pod stop --ignore --time 0 redis-103501-42",
            "podman pod stop --ignore --time 0 data-storage-103501-42",
            "podman pod stop --ignore --time 0 gateway-103501-42",
            "podman pod rm --force --ignore postgres-103501-42",
            "podman pod rm --force --ignore redis-103501-42",
            "podman pod rm --force --ignore data-storage-103501-42",
            "podman pod rm --force --ignore gateway-103501-42",
            "podman secret rm postgres-credentials-103501-42",
            "podman network rm --force e2e-20261127-103501-42",
        ]
    );
    assert_eq!(run.urls()["GATEWAY_URL"], "http://127.0.0.1:40000");
}

#[test]
fn the_printed_plan_is_the_executed_plan() {
    let root = std::env::temp_dir().join(format!("xtask-podman-plan-{}", std::process::id()));
    let run = run(&root);
    let suite = crate::cmd::Cmd::new("cargo").args(["test", "-p", "e2e-suite"]);
    let tests = || {
        vec![Phase::new(
            "run E2E suite",
            vec![Step::Terminal { cmd: suite.clone(), doing: "the E2E suite failed".into() }],
        )]
    };
    let plan = run.plan(Duration::from_secs(1), tests());
    let mut printed = step::printed_commands(&plan);
    printed.extend(run.final_record().teardown().concat().iter().map(ToString::to_string));
    let rec = step::Recorder::answering(&[("podman container inspect", "running 0 0")]);
    let record = step::record_run(&rec, &run.dir, &run.log, &[&plan]);
    let record = record.expect("the run recorded what it made");
    let reporter = crate::report::Reporter::quiet();
    assert_eq!(record, run.final_record(), "the last record is everything");
    assert!(run.dir.join("state.json").exists(), "recorded on disk before creating");
    crate::runtime::teardown(&run.dir, &record, &run.log, &reporter, &rec).unwrap();
    assert_eq!(rec.commands(), printed);
    assert!(
        printed.iter().any(|l| l.starts_with("GET http://127.0.0.1:")),
        "the readiness polls are in the plan: {printed:#?}"
    );
    assert_eq!(
        rec.interruptible(),
        ["cargo test -p e2e-suite"],
        "only the suite stops mid-way on Ctrl-C: a podman step killed mid-write can leave \
         podman's own state broken (its secret database empty)"
    );
    assert!(!run.dir.join("state.json").exists(), "nothing left: the record is gone");
    assert!(
        !run.dir.join("secret-postgres-credentials-103501-42.json").exists(),
        "secret payloads never stay on disk"
    );
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn early_pods_start_first_and_the_rest_after() {
    let root = std::env::temp_dir().join(format!("xtask-podman-early-{}", std::process::id()));
    let mut run = run(&root);
    run.early = ["postgres-103501-42".to_owned(), "redis-103501-42".to_owned()].into();
    let early = step::printed_commands(&run.plan_early());
    assert_eq!(early.len(), 4, "network, secret, postgres, redis: {early:#?}");
    assert!(early[3].ends_with("pods/redis-103501-42.yaml"), "{early:#?}");
    let rest = step::printed_commands(&run.plan(Duration::from_secs(1), vec![]));
    let played: Vec<&String> = rest.iter().filter(|l| l.starts_with("podman kube play")).collect();
    assert_eq!(played.len(), 2, "data-storage and gateway: {rest:#?}");
    assert_eq!(rest.len(), 2 + 4, "then the readiness of each of the 4 containers: {rest:#?}");
    // Executed, the two parts record everything, and tear it all down.
    let rec = step::Recorder::answering(&[("podman container inspect", "running 0 0")]);
    let plans = [run.plan_early(), run.plan(Duration::from_secs(1), vec![])];
    let record = step::record_run(&rec, &run.dir, &run.log, &[&plans[0], &plans[1]]);
    assert_eq!(record.unwrap(), run.final_record());
    let mut printed = early;
    printed.extend(rest);
    assert_eq!(rec.commands(), printed);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn early_pods_of_an_archive_wait_for_their_images_before_they_play() {
    let root = std::env::temp_dir().join(format!("xtask-podman-arriving-{}", std::process::id()));
    let mut run = run(&root);
    run.early = ["postgres-103501-42".to_owned()].into();
    run.awaited = Some(AwaitedImages {
        images: vec![("localhost/e2e-postgres:1".into(), "a".repeat(64))],
        arrivals: Default::default(),
    });
    let lines = step::print(&run.plan_early());
    let wait = lines
        .iter()
        .position(|l| l.starts_with("# until the archive's load has put localhost/e2e-postgres:1"))
        .expect("a wait step");
    let play = lines.iter().position(|l| l.starts_with("podman kube play")).expect("a kube play");
    assert!(wait < play, "{lines:#?}");
    // The rest of the run does not wait: its images are in when it deploys.
    let rest = step::print(&run.plan(Duration::from_secs(1), vec![]));
    assert!(!rest.iter().any(|l| l.contains("until the archive")), "{rest:#?}");
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn images_the_load_told_of_are_not_asked_of_the_engine() {
    let awaited = AwaitedImages {
        images: vec![("localhost/e2e-postgres:1".into(), "a".repeat(64))],
        arrivals: Default::default(),
    };
    awaited.arrivals.image("localhost/e2e-postgres:1");
    let recorder = step::Recorder::default();
    awaited.wait(&Reporter::new(), &recorder).unwrap();
    assert_eq!(recorder.commands(), Vec::<String>::new());
}

#[test]
fn a_load_that_ends_without_the_images_ends_the_wait() {
    let awaited = AwaitedImages {
        images: vec![("localhost/e2e-no-such-image:0".into(), "b".repeat(64))],
        arrivals: Arc::new(Arrivals { ended: AtomicBool::new(true), ..Default::default() }),
    };
    let err = awaited.wait(&Reporter::new(), &step::RealExec).unwrap_err().to_string();
    assert!(
        err.contains("the archive's load ended without localhost/e2e-no-such-image:0"),
        "{err}"
    );
}

#[test]
fn teardown_removes_exactly_what_was_recorded() {
    let half = Created { network: Some("e2e-1".into()), ..Created::default() };
    let cmds: Vec<String> = half.teardown().iter().flatten().map(ToString::to_string).collect();
    assert_eq!(cmds, ["podman network rm --force e2e-1"], "nothing was played yet");
    let full = Created { secrets: vec!["pg-1".into()], pods: vec!["gateway-1".into()], ..half };
    let cmds: Vec<String> = full.teardown().iter().flatten().map(ToString::to_string).collect();
    assert_eq!(
        cmds,
        [
            "podman pod stop --ignore --time 0 gateway-1",
            "podman pod rm --force --ignore gateway-1",
            "podman secret rm pg-1",
            "podman network rm --force e2e-1"
        ]
    );
    // A remote podman 4's `pod stop` ignores --time: its pods are killed first.
    let remote = Created { remote: true, version: "4.3.1".into(), ..full.clone() };
    let first: Vec<String> = remote.teardown()[0].iter().map(ToString::to_string).collect();
    assert_eq!(first, ["podman pod kill gateway-1"]);
    // podman 5, local or remote: one `pod rm --time 0`, no kill or stop before it.
    for remote in [false, true] {
        let five = Created { remote, version: "5.4.2".into(), ..full.clone() };
        let cmds: Vec<String> = five.teardown().concat().iter().map(ToString::to_string).collect();
        assert_eq!(
            cmds,
            [
                "podman pod rm --force --ignore --time 0 gateway-1",
                "podman secret rm pg-1",
                "podman network rm --force e2e-1"
            ]
        );
    }
}

#[test]
fn fault_tests_get_a_handle_on_every_service() {
    let run = run(Path::new("/r"));
    let c = run.control(5);
    assert_eq!(c.services.len(), 4);
    let pg = &c.services["postgres"];
    assert_eq!(pg.stop, ["podman", "pod", "stop", "--time", "10", "postgres-103501-42"]);
    assert_eq!(pg.start, ["podman", "pod", "start", "postgres-103501-42"]);
    assert_eq!(pg.exec, ["podman", "exec", "-i", "postgres-103501-42-postgres"]);
    assert_eq!(pg.pod.as_deref(), Some("postgres-103501-42"), "a stop waits for the clean-up");
    assert_eq!(c.dedup_ttl_seconds, 5);
    let remote = PodmanRun { remote: true, ..run }.control(5);
    assert_eq!(remote.services["postgres"].pod, None, "a remote engine's conmon is not here");
    // The file as the xtask writes it, read as the suite reads it.
    let read = e2e_stack::StackFile::parse(&c.to_json(), &e2e_stack::SERVICES);
    assert_eq!(read, Ok(c));
}

/// After a live update the stack names the image still to be built; a probe on a remote
/// engine runs in a new container of the image the container was created from.
#[test]
fn a_synced_containers_probe_runs_in_the_image_it_was_created_from() {
    let mut run = run(Path::new("/r"));
    let (pod, c) = run.stack.containers().find(|(p, _)| p.base == "gateway").unwrap();
    let name = container_name(&pod.name, &c.name);
    let rendered = c.image.clone();
    assert_eq!(run.image_of(&name, c), rendered);
    run.created_from.insert(name.clone(), "localhost/e2e-gateway:old".into());
    let (_, c) = run.stack.containers().find(|(p, _)| p.base == "gateway").unwrap();
    assert_eq!(run.image_of(&name, c), "localhost/e2e-gateway:old");
}

/// Two runs that read the same free subnet: the first makes its network on it, the second's
/// `network create` is refused ("already used"), and it chooses again. Against the real podman.
#[test]
fn two_runs_on_the_same_free_subnet_both_get_a_network() {
    let ids: Vec<RunId> = ["a", "b"]
        .iter()
        .map(|n| serde_json::from_str(&format!("\"20261206-000000-{}-{n}\"", std::process::id())))
        .collect::<Result<_, _>>()
        .unwrap();
    let before = engine_subnets().expect("podman answers");
    let reporter = crate::report::Reporter::new();
    // The second run's id is made to choose what the first chooses, from the same listing.
    let first = Subnet::choose(ids[0].as_str(), 4, &before).unwrap();
    let second_id = (0..100_000)
        .map(|i| -> RunId {
            serde_json::from_str(&format!("\"{}-{i}\"", ids[1].as_str())).unwrap()
        })
        .find(|id| Subnet::choose(id.as_str(), 4, &before).unwrap() == first)
        .expect("an id that hashes to the same slot");
    let a = claim_subnet(&ids[0], 4, &reporter, engine_subnets).unwrap();
    // The second read the engine's networks before the first made its own.
    let b = claim_subnet(&second_id, 4, &reporter, || Ok(before.clone()));
    let names = [ids[0].network(), second_id.network()];
    let removed = names.iter().map(|n| Podman.network_rm(n).read()).collect::<Vec<_>>();
    let b = b.unwrap();
    assert_eq!(a, first);
    assert_ne!(a, b, "the second run chose again");
    assert!(removed.iter().all(Result::is_ok), "{removed:?}");
}

/// From podman 4.4 a Secret is played as Kubernetes gives it; before, made from JSON
/// (containers/podman#16269). Either way its payload is on disk only while the command runs.
#[test]
fn secrets_are_made_as_the_engines_version_reads_them() {
    let root = std::env::temp_dir().join(format!("xtask-podman-secret-{}", std::process::id()));
    for (version, made) in [
        ("4.3.1", "podman secret create postgres-credentials-103501-42 ROOT/target/e2e/runs/20261127-103501-42/secret-postgres-credentials-103501-42.json"),
        ("5.4.2", "podman kube play --network e2e-20261127-103501-42 ROOT/target/e2e/runs/20261127-103501-42/secret-postgres-credentials-103501-42.yaml"),
    ] {
        let mut run = run(&root);
        run.version = version.into();
        let plan = run.plan(Duration::from_secs(1), vec![]);
        let printed = step::printed_commands(&plan);
        let made = made.replace("ROOT", &root.display().to_string());
        assert_eq!(printed[1], made, "{version}");
        let rec = step::Recorder::answering(&[("podman container inspect", "running 0 0")]);
        step::record_run(&rec, &run.dir, &run.log, &[&plan]);
        let left: Vec<_> = std::fs::read_dir(&run.dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.iter().all(|f| !f.to_string_lossy().starts_with("secret-")), "{left:?}");
    }
    std::fs::remove_dir_all(root).unwrap();
}
