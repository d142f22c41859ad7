//! How much memory builds may use, and whether one more fits: pure decisions, then the readers.

use std::path::Path;

use anyhow::Context;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const MEMINFO: &str = "/proc/meminfo";
/// Values at or above this mean "no limit" in cgroup files.
const UNLIMITED: u64 = 1 << 60;
/// What one rustc job of this workspace is planned to need at most.
pub const RUSTC_JOB: u64 = 1536 * MIB;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    pub source: String,
}

/// Memory available now (`MemAvailable`, or the cgroup's limit less its usage when that is
/// tighter), less a margin for everything else: 10%, at least 512 MiB.
pub fn default_budget(available: u64, (limit, usage): (Option<u64>, Option<u64>)) -> Budget {
    match limit.filter(|l| *l < UNLIMITED).map(|l| l.saturating_sub(usage.unwrap_or(0))) {
        Some(cgroup_free) if cgroup_free < available => {
            less_margin(cgroup_free, "free (the cgroup's limit less its usage)")
        }
        _ => less_margin(available, "free (MemAvailable)"),
    }
}

/// The budget of an engine on another machine: its free memory (else total), less a margin.
pub fn engine_budget(mem_free: Option<u64>, mem_total: u64) -> Budget {
    let what = if mem_free.is_some() { "free" } else { "total" };
    less_margin(mem_free.unwrap_or(mem_total), &format!("(the engine machine's {what} memory)"))
}

/// The budget of an engine on another machine from its `MemAvailable` (read in a container
/// there), less a margin.
pub fn engine_available_budget(available: u64) -> Budget {
    less_margin(available, "(MemAvailable on the engine's machine, read in a container there)")
}

fn less_margin(free: u64, from: &str) -> Budget {
    let margin = (free / 10).max(512 * MIB);
    Budget {
        bytes: free.saturating_sub(margin),
        source: format!("{} {from} less a {} margin", human(free), human(margin)),
    }
}

/// One more build may start when fewer than `jobs` run and all caps with its own fit the budget
/// (one too big alone is refused before anything runs, see [`too_big`]).
pub fn admit(running_caps: &[u64], next_cap: u64, budget: u64, jobs: usize) -> bool {
    running_caps.len() < jobs.max(1) && running_caps.iter().sum::<u64>() + next_cap <= budget
}

/// Images whose cap alone exceeds the budget: they can never start.
pub fn too_big<'a>(caps: &[(&'a str, u64)], budget: u64) -> Vec<(&'a str, u64)> {
    caps.iter().filter(|(_, cap)| *cap > budget).copied().collect()
}

/// How many builds can ever run at once: the smallest caps that fit together, 1 to `jobs`.
pub fn max_parallel(caps: &[u64], budget: u64, jobs: usize) -> usize {
    let mut sorted = caps.to_vec();
    sorted.sort_unstable();
    let fit = (1..=sorted.len()).take_while(|&n| sorted[..n].iter().sum::<u64>() <= budget).count();
    fit.min(jobs.max(1)).max(1)
}

/// A `cargo build -j` that fits the budget: one rustc job per `RUSTC_JOB`, 1 to one per CPU.
pub fn cargo_jobs(budget: u64, cpus: usize) -> usize {
    ((budget / RUSTC_JOB) as usize).clamp(1, cpus.max(1))
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn human(bytes: u64) -> String {
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{} MiB", bytes.div_ceil(MIB))
    }
}

/// A Kubernetes memory quantity in bytes, rounded up: `128974848`, `129e6`, `129M`, `123Mi`,
/// `1.5Gi` (binary suffixes Ki to Ei, decimal k to E, and m, u, n for fractions).
pub fn parse_quantity(quantity: &str) -> Option<u64> {
    let quantity = quantity.trim();
    let at = quantity.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(at);
    let number: f64 = number.parse().ok()?;
    let binary = |power: i32| 2f64.powi(power);
    let factor = match suffix {
        "" => 1.0,
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exponent => 10f64.powi(exponent.strip_prefix(['e', 'E'])?.parse().ok()?),
    };
    Some((number * factor).ceil() as u64)
}

/// Pods whose memory requests add up to more than the engine's memory, largest first; `None`
/// when they fit.
pub fn requests_over(requests: &[(String, u64)], total: u64) -> Option<Vec<&(String, u64)>> {
    let sum: u64 = requests.iter().map(|(_, bytes)| bytes).sum();
    if sum <= total {
        return None;
    }
    let mut pods: Vec<_> = requests.iter().collect();
    pods.sort_by_key(|(pod, bytes)| (std::cmp::Reverse(*bytes), pod.clone()));
    Some(pods)
}

/// `MemAvailable` (or, on old kernels, `MemFree`) in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    meminfo_field(text, "MemAvailable").or_else(|| meminfo_field(text, "MemFree"))
}

/// A `/proc/meminfo` field (`MemTotal:  24683656 kB`), in bytes.
fn meminfo_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

pub fn total() -> Option<u64> {
    meminfo_field(&std::fs::read_to_string(MEMINFO).ok()?, "MemTotal")
}

/// Memory in use on the machine now (`MemTotal - MemAvailable`), for peak sampling.
pub fn used_now() -> Option<u64> {
    let text = std::fs::read_to_string(MEMINFO).ok()?;
    Some(meminfo_field(&text, "MemTotal")?.saturating_sub(parse_meminfo(&text)?))
}

/// This machine's [`default_budget`] now.
pub fn read() -> anyhow::Result<Budget> {
    let available = parse_meminfo(&std::fs::read_to_string(MEMINFO)?)
        .context("no MemAvailable in /proc/meminfo")?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .map_or((None, None), |text| cgroup_memory(&text, Path::new("/sys/fs/cgroup")));
    Ok(default_budget(available, cgroup))
}

/// The memory limit and usage of this process's cgroup (v2, or v1's memory controller).
fn cgroup_memory(proc_self_cgroup: &str, root: &Path) -> (Option<u64>, Option<u64>) {
    let read =
        |p: &Path| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':').skip(1).map(|p| p.trim_start_matches('/'));
        let controllers = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("");
        if controllers.split(',').any(|c| c == "memory") {
            for dir in [root.join("memory").join(path), root.join("memory")] {
                if let Some(limit) = read(&dir.join("memory.limit_in_bytes")) {
                    return (Some(limit), read(&dir.join("memory.usage_in_bytes")));
                }
            }
        }
        if controllers.is_empty() {
            let dir = root.join(path);
            if let Ok(max) = std::fs::read_to_string(dir.join("memory.max")) {
                let limit = max.trim().parse().ok(); // "max" means none
                return (limit, read(&dir.join("memory.current")));
            }
        }
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_available_memory_less_a_margin() {
        let budget = default_budget(20 * GIB, (None, None));
        assert_eq!(budget.bytes, 18 * GIB);
        assert_eq!(budget.source, "20.0 GiB free (MemAvailable) less a 2.0 GiB margin");
        let small = default_budget(2 * GIB, (None, None));
        assert_eq!(small.bytes, 2 * GIB - 512 * MIB, "at least 512 MiB stays free");
        let here = read().expect("this machine's memory");
        assert!(here.source.contains("free"), "{}", here.source);
    }

    #[test]
    fn a_cgroup_limit_tighter_than_the_machine_wins() {
        let budget = default_budget(20 * GIB, (Some(4 * GIB), Some(GIB)));
        assert_eq!(budget.bytes, 3 * GIB - 512 * MIB);
        assert!(budget.source.contains("cgroup"), "{}", budget.source);
        let unlimited = default_budget(GIB, (Some(9_223_372_036_854_771_712), Some(0)));
        assert!(unlimited.source.contains("MemAvailable"));
        // A limit looser than the machine's available memory: the machine's counts.
        let loose = default_budget(2 * GIB, (Some(8 * GIB), None));
        assert!(loose.source.contains("MemAvailable"), "{}", loose.source);
    }

    #[test]
    fn an_engine_elsewhere_is_budgeted_from_its_own_memory() {
        let free = engine_budget(Some(4 * GIB), 8 * GIB);
        assert_eq!(free.bytes, 4 * GIB - 512 * MIB);
        assert!(free.source.contains("free memory"), "{}", free.source);
        let total = engine_budget(None, 8 * GIB);
        assert_eq!(total.bytes, 8 * GIB - 8 * GIB / 10);
        assert!(total.source.contains("total memory"), "{}", total.source);
        assert_eq!((human(GIB), human(MIB + 1)), ("1.0 GiB".to_owned(), "2 MiB".to_owned()));
    }

    #[test]
    fn admission_needs_a_free_job_slot_and_room_in_the_budget() {
        let gib = GIB;
        assert!(admit(&[], 2 * gib, 2 * gib, 1));
        assert!(!admit(&[gib], gib, 4 * gib, 1), "one job at a time by default");
        assert!(admit(&[gib], gib, 4 * gib, 2));
        assert!(!admit(&[gib, gib], gib, 4 * gib, 2), "no third while --jobs 2");
        assert!(!admit(&[3 * gib], 2 * gib, 4 * gib, 4), "caps must fit the budget together");
        assert!(admit(&[2 * gib], 2 * gib, 4 * gib, 4));
        assert!(admit(&[], gib, gib, 0), "--jobs 0 still runs one");
    }

    #[test]
    fn caps_larger_than_the_budget_are_found_up_front() {
        let caps = [("small", 100 * MIB), ("huge", 8 * GIB)];
        assert_eq!(too_big(&caps, 4 * GIB), vec![("huge", 8 * GIB)]);
    }

    #[test]
    fn parallelism_is_what_fits() {
        assert_eq!(max_parallel(&[GIB, GIB, GIB], 2 * GIB, 8), 2);
        assert_eq!(max_parallel(&[GIB, GIB, GIB], 10 * GIB, 2), 2);
        assert_eq!(max_parallel(&[GIB], 10 * GIB, 1), 1);
        assert_eq!(max_parallel(&[3 * GIB], GIB, 4), 1);
    }

    #[test]
    fn cargo_jobs_fit_the_budget_and_the_cpus() {
        assert_eq!(cargo_jobs(20 * GIB, 2), 2);
        assert_eq!(cargo_jobs(2 * GIB, 8), 1);
        assert_eq!(cargo_jobs(0, 8), 1);
        assert_eq!(cargo_jobs(6 * GIB, 8), 4);
    }

    #[test]
    fn kubernetes_quantities() {
        assert_eq!(parse_quantity("128974848"), Some(128974848));
        assert_eq!(parse_quantity("129e6"), Some(129_000_000));
        assert_eq!(parse_quantity("129M"), Some(129_000_000));
        assert_eq!(parse_quantity("123Mi"), Some(123 * MIB));
        assert_eq!(parse_quantity("1.5Gi"), Some(3 * GIB / 2));
        assert_eq!(parse_quantity("1E"), Some(1_000_000_000_000_000_000));
        assert_eq!(parse_quantity("1500m"), Some(2), "fractions of a byte round up");
        for bad in ["", "Mi", "12 Mi", "12MB", "1.2.3Gi", "-1Gi", "1e"] {
            assert_eq!(parse_quantity(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn requests_beyond_the_engine_memory_name_every_pod_largest_first() {
        let requests = [("a".to_owned(), GIB), ("b".to_owned(), 2 * GIB), ("c".to_owned(), GIB)];
        assert_eq!(requests_over(&requests, 4 * GIB), None, "4 GiB requested of 4 GiB fits");
        let over = requests_over(&requests, 4 * GIB - 1).expect("over by a byte");
        let names: Vec<&str> = over.iter().map(|(pod, _)| pod.as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert_eq!(requests_over(&[], 0), None, "pods without requests count nothing");
    }

    #[test]
    fn meminfo_and_cgroup_files() {
        let text = "MemTotal:       24684092 kB\nMemFree:        21382400 kB\nMemAvailable:   24243012 kB\n";
        assert_eq!(parse_meminfo(text), Some(24_243_012 * 1024));
        assert_eq!(parse_meminfo("MemFree: 10 kB\n"), Some(10240));

        let root = std::env::temp_dir().join(format!("xtask-cgroup-{}", std::process::id()));
        let v1 = root.join("memory/job/1");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "4294967296\n").unwrap();
        std::fs::write(v1.join("memory.usage_in_bytes"), "1073741824\n").unwrap();
        assert_eq!(cgroup_memory("4:memory:/job/1\n0::/\n", &root), (Some(4 * GIB), Some(GIB)));
        let v2 = root.join("user.slice");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        std::fs::write(v2.join("memory.current"), "5\n").unwrap();
        assert_eq!(cgroup_memory("0::/user.slice\n", &root), (None, Some(5)));
        std::fs::remove_dir_all(root).unwrap();
    }
}
