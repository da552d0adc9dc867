//! Counters of the server, rendered as Prometheus text for `GET /metrics`.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 12] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Everything `/metrics` reports. Handlers and the engine thread update it concurrently.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<Histogram>,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: AtomicU64,
    /// Tokens sampled.
    pub completion_tokens: AtomicU64,
    /// Requests waiting for a row.
    pub queue_depth: AtomicI64,
    /// Rows in the running batch.
    pub running_rows: AtomicI64,
    /// Decode steps run.
    pub steps: AtomicU64,
    /// Sum over decode steps of the rows in the batch (its mean batch size × steps).
    pub step_rows: AtomicU64,
    /// Rows dropped because their client went away.
    pub cancelled_rows: AtomicU64,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    /// Counts a finished request of `endpoint` answered with `status` after `secs`.
    pub fn request(&self, endpoint: &'static str, status: u16, secs: f64) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((endpoint, status)).or_default() += 1;
        }
        if let Ok(mut h) = self.latency.lock() {
            for (c, &b) in h.counts.iter_mut().zip(&BUCKETS) {
                if secs <= b {
                    *c += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    /// Requests counted for `endpoint` with `status`.
    pub fn requests(&self, endpoint: &str, status: u16) -> u64 {
        self.requests
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|((e, s), _)| *e == endpoint && *s == status)
                    .map(|(_, n)| n)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# HELP serve_requests_total Requests answered, by endpoint and HTTP status."
        );
        let _ = writeln!(s, "# TYPE serve_requests_total counter");
        if let Ok(r) = self.requests.lock() {
            for ((e, st), n) in r.iter() {
                let _ = writeln!(s, "serve_requests_total{{endpoint=\"{e}\",status=\"{st}\"}} {n}");
            }
        }
        if let Ok(h) = self.latency.lock() {
            let _ = writeln!(
                s,
                "# HELP serve_request_duration_seconds Time from request to last byte of the answer."
            );
            let _ = writeln!(s, "# TYPE serve_request_duration_seconds histogram");
            for (c, b) in h.counts.iter().zip(&BUCKETS) {
                let _ = writeln!(s, "serve_request_duration_seconds_bucket{{le=\"{b}\"}} {c}");
            }
            let _ = writeln!(s, "serve_request_duration_seconds_bucket{{le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(s, "serve_request_duration_seconds_sum {}", h.sum);
            let _ = writeln!(s, "serve_request_duration_seconds_count {}", h.count);
        }
        let counters = [
            (
                "serve_prompt_tokens_total",
                "Prompt tokens of admitted requests.",
                g(&self.prompt_tokens),
            ),
            (
                "serve_completion_tokens_total",
                "Tokens sampled.",
                g(&self.completion_tokens),
            ),
            (
                "serve_decode_steps_total",
                "Decode steps of the running batch.",
                g(&self.steps),
            ),
            (
                "serve_decode_step_rows_total",
                "Rows summed over decode steps (divide by steps: mean batch).",
                g(&self.step_rows),
            ),
            (
                "serve_cancelled_rows_total",
                "Rows freed because their client disconnected.",
                g(&self.cancelled_rows),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let gauges = [
            (
                "serve_queue_depth",
                "Requests waiting for a row of the batch.",
                &self.queue_depth,
            ),
            ("serve_running_rows", "Rows in the running batch.", &self.running_rows),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_gauges() {
        let m = Metrics::default();
        m.request("chat", 200, 0.03);
        m.request("chat", 429, 0.001);
        m.queue_depth.store(3, Ordering::Relaxed);
        let t = m.render();
        assert!(
            t.contains("serve_requests_total{endpoint=\"chat\",status=\"200\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("serve_request_duration_seconds_bucket{le=\"0.05\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("serve_request_duration_seconds_bucket{le=\"0.025\"} 1"),
            "{t}"
        );
        assert!(t.contains("serve_queue_depth 3"), "{t}");
        assert_eq!(m.requests("chat", 429), 1);
    }
}
