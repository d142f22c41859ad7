//! The one way the xtask waits for something: poll with a deadline (never a sleep as
//! synchronisation), giving up at once on Ctrl-C.

use std::time::{Duration, Instant};

/// Calls `check` every `pause` until done (`Ok(true)`), `Err`, or `timeout` (`Ok(false)`).
pub fn until(
    timeout: Duration,
    pause: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(true);
        }
        crate::interrupt::check()?;
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_until_done_fails_or_times_out() {
        let mut n = 0;
        let done = until(Duration::from_secs(5), Duration::ZERO, || {
            n += 1;
            Ok(n == 3)
        });
        assert_eq!((done.unwrap(), n), (true, 3));
        let failed = until(Duration::from_secs(5), Duration::ZERO, || anyhow::bail!("broken"));
        assert_eq!(failed.unwrap_err().to_string(), "broken");
        let started = Instant::now();
        let late = until(Duration::from_millis(20), Duration::from_millis(5), || Ok(false));
        assert!(!late.unwrap() && started.elapsed() >= Duration::from_millis(20));
    }
}
