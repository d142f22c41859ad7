//! The machine's memory in use, sampled every 100 ms on a thread while builds run: for builds'
//! and benchmarks' peaks and the report's chart.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::memory;

/// The samples; the thread samples until the sampler is dropped.
pub struct Sampler(Arc<Mutex<Vec<(Instant, u64)>>>);

impl Sampler {
    /// Starts sampling, the first sample taken at once (every later start has a level to compare).
    pub fn start() -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        sample(&samples);
        let weak = Arc::downgrade(&samples);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            let Some(samples) = weak.upgrade() else { break };
            sample(&samples);
        });
        Sampler(samples)
    }

    /// The highest use in `[from, to or now]` above the use at `from`; sampled now, so a span
    /// shorter than the period has one.
    pub fn peak_between(&self, from: Instant, to: Option<Instant>) -> Option<u64> {
        sample(&self.0);
        let samples = self.0.lock().unwrap();
        peak_above_start(&samples, from, to.unwrap_or_else(Instant::now))
    }

    /// Stops sampling and returns every sample.
    pub fn stop(self) -> Vec<(Instant, u64)> {
        self.0.lock().unwrap().clone()
    }
}

fn sample(samples: &Mutex<Vec<(Instant, u64)>>) {
    if let Some(used) = memory::used_now() {
        samples.lock().unwrap().push((Instant::now(), used));
    }
}

/// The peak in `[from, to]` above the last sample at or before `from` (else the first).
pub fn peak_above_start(samples: &[(Instant, u64)], from: Instant, to: Instant) -> Option<u64> {
    let base = samples.iter().rev().find(|(t, _)| *t <= from).or_else(|| samples.first())?.1;
    let peak = samples.iter().filter(|(t, _)| *t >= from && *t <= to).map(|(_, u)| *u).max()?;
    Some(peak.saturating_sub(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_measured_from_the_level_at_the_start() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let samples = [(at(0), 100), (at(100), 150), (at(200), 400), (at(300), 120)];
        assert_eq!(peak_above_start(&samples, at(50), at(300)), Some(300));
        assert_eq!(peak_above_start(&samples, at(250), at(300)), Some(0));
        assert_eq!(peak_above_start(&samples, at(0), at(100)), Some(50));
        assert_eq!(peak_above_start(&[], at(0), at(1)), None);
    }

    #[test]
    fn a_short_span_still_gets_a_sample() {
        let s = Sampler::start();
        let from = Instant::now();
        assert!(s.peak_between(from, None).is_some(), "a sample is taken on asking");
        assert!(s.stop().len() >= 2);
    }
}
