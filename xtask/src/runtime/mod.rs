//! Where the stack runs. Podman (`kube play` on a network of the run's own) for now.

pub mod kind;
pub mod podman;

use std::time::{SystemTime, UNIX_EPOCH};

/// A run id that sorts by time and is unique per process: `20261127-103501-4242`.
pub fn run_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{}-{}", timestamp(secs), std::process::id())
}

/// The short, unique part of a run id that podman object names get: `103501-4242`.
pub fn suffix(run_id: &str) -> String {
    run_id
        .split_once('-')
        .map_or(run_id, |(_, rest)| rest)
        .to_owned()
}

/// `YYYYMMDD-HHMMSS` (UTC) from Unix seconds, by the days-from-civil algorithm.
pub fn timestamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps() {
        assert_eq!(super::timestamp(0), "19700101-000000");
        assert_eq!(super::timestamp(1_795_775_701), "20261127-103501");
        assert_eq!(super::timestamp(951_782_400), "20000229-000000");
    }
}
