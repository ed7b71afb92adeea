//! Counters for `/metrics`, in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::route::Kind;

/// Upper bounds (seconds) of the request duration histogram buckets.
const BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// What the server has done since it started.
#[derive(Debug, Default)]
pub(super) struct Metrics {
    requests: Mutex<BTreeMap<(Kind, u16), u64>>,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    narinfo_hits: AtomicU64,
    narinfo_misses: AtomicU64,
    connections: AtomicU64,
    connections_open: AtomicU64,
    in_flight: AtomicU64,
    /// Counts per bucket (not cumulative), then the sum in microseconds.
    durations: [AtomicU64; BUCKETS.len() + 1],
    duration_sum_us: AtomicU64,
    /// What the upstream proxy did, shared with it.
    pub(super) upstream: Arc<UpstreamCounters>,
}

/// What the upstream proxy did: fetches by kind (`narinfo`, `nar`) and
/// result, and the paths kept in the cache of upstream paths.
#[derive(Debug, Default)]
pub(super) struct UpstreamCounters {
    fetches: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    kept: AtomicU64,
    keep_failures: AtomicU64,
}

impl UpstreamCounters {
    /// Records a fetch from an upstream.
    pub(super) fn fetch(&self, kind: &'static str, result: &'static str) {
        if let Ok(mut m) = self.fetches.lock() {
            *m.entry((kind, result)).or_default() += 1;
        }
    }

    /// Records paths kept, and paths that failed to be.
    pub(super) fn kept(&self, copied: usize, failed: usize) {
        self.kept.fetch_add(copied as u64, Ordering::Relaxed);
        self.keep_failures
            .fetch_add(failed as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        let name = "nixferry_upstream_fetches_total";
        let _ = writeln!(
            out,
            "# HELP {name} Lookups and downloads from upstream caches, by kind and result \
             (hit, miss, refused: no valid signature by a trusted key, error, skipped: \
             the upstream was down)."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        if let Ok(m) = self.fetches.lock() {
            for ((kind, result), n) in m.iter() {
                let _ = writeln!(out, "{name}{{kind=\"{kind}\",result=\"{result}\"}} {n}");
            }
        }
        for (name, help, v) in [
            (
                "nixferry_upstream_kept_paths_total",
                "Paths from upstream caches copied into the cache of upstream paths.",
                &self.kept,
            ),
            (
                "nixferry_upstream_keep_failures_total",
                "Paths from upstream caches that failed to be copied into the cache of upstream paths.",
                &self.keep_failures,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
    }
}

impl Metrics {
    /// Records a request answered with `status` after `elapsed` (the time
    /// until the response head was ready).
    pub(super) fn request(&self, kind: Kind, status: u16, elapsed: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((kind, status)).or_default() += 1;
        }
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.durations[bucket].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.duration_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Records body bytes sent.
    pub(super) fn sent(&self, n: usize) {
        self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Records body bytes received (uploads).
    pub(super) fn received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Records a narinfo lookup.
    pub(super) fn narinfo(&self, hit: bool) {
        let c = if hit {
            &self.narinfo_hits
        } else {
            &self.narinfo_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a connection accepted; the guard records its end.
    pub(super) fn connection(self: &Arc<Self>) -> Open {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        Open {
            metrics: Arc::clone(self),
            gauge: Gauge::Connections,
        }
    }

    /// Records a request being worked on or answered; the guard records
    /// its end.
    pub(super) fn in_flight(self: &Arc<Self>) -> Open {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Open {
            metrics: Arc::clone(self),
            gauge: Gauge::InFlight,
        }
    }

    /// The Prometheus text exposition of the counters.
    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP nixferry_http_requests_total Requests answered, by kind and status.\n",
        );
        out.push_str("# TYPE nixferry_http_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((kind, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "nixferry_http_requests_total{{kind=\"{}\",status=\"{status}\"}} {n}",
                    kind.label()
                );
            }
        }
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        counter(
            &mut out,
            "nixferry_http_sent_bytes_total",
            "Response body bytes sent.",
            &self.bytes_sent,
        );
        counter(
            &mut out,
            "nixferry_http_received_bytes_total",
            "Upload body bytes received.",
            &self.bytes_received,
        );
        counter(
            &mut out,
            "nixferry_narinfo_hits_total",
            "narinfo requests for paths the store has.",
            &self.narinfo_hits,
        );
        counter(
            &mut out,
            "nixferry_narinfo_misses_total",
            "narinfo requests for paths the store lacks.",
            &self.narinfo_misses,
        );
        counter(
            &mut out,
            "nixferry_http_connections_total",
            "Connections accepted.",
            &self.connections,
        );
        let gauge = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        gauge(
            &mut out,
            "nixferry_http_connections_open",
            "Connections open.",
            &self.connections_open,
        );
        gauge(
            &mut out,
            "nixferry_http_requests_in_flight",
            "Requests being worked on or answered.",
            &self.in_flight,
        );
        let name = "nixferry_http_request_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Time until the response head was ready.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.durations.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.duration_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
        self.upstream.render(&mut out);
        out
    }
}

/// Which gauge an [`Open`] counts in.
#[derive(Debug, Clone, Copy)]
enum Gauge {
    Connections,
    InFlight,
}

/// Counts one in a gauge while it lives.
#[derive(Debug)]
pub(super) struct Open {
    metrics: Arc<Metrics>,
    gauge: Gauge,
}

impl Drop for Open {
    fn drop(&mut self) {
        let g = match self.gauge {
            Gauge::Connections => &self.metrics.connections_open,
            Gauge::InFlight => &self.metrics.in_flight,
        };
        g.fetch_sub(1, Ordering::Relaxed);
    }
}
