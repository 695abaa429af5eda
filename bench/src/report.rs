//! Medians, targets and the text and Markdown tables of a benchmark.

use std::fmt::Write as _;

use crate::seed::SeedReport;
use crate::server::Backend;
use crate::wrk::WrkResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Registration,
    CreateCallUrl,
    CallUrlInfo,
    PlaceCall,
    ListCalls,
}

/// The bar from issue 3: at least 10× Mozilla's loop-server 0.17.8 (Node 20,
/// Redis) measured with `wrk -t2 -c32 -d15s` on the same kind of machine.
pub struct Target {
    pub min_rps: f64,
    pub max_p99_ms: Option<f64>,
    pub original_rps: f64,
    pub original_p99_ms: f64,
}

pub const MAX_RSS_MIB: f64 = 100.0;
/// Big-database throughput must stay within this fraction of the empty one.
pub const BIG_DB_TOLERANCE: f64 = 0.20;

impl Route {
    pub const ALL: [Route; 5] = [
        Route::Registration,
        Route::CreateCallUrl,
        Route::CallUrlInfo,
        Route::PlaceCall,
        Route::ListCalls,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Route::Registration => "POST /registration",
            Route::CreateCallUrl => "POST /call-url (Hawk)",
            Route::CallUrlInfo => "GET /calls/{token}",
            Route::PlaceCall => "POST /calls/{token}",
            Route::ListCalls => "GET /calls?version=0 (Hawk)",
        }
    }

    /// Short name for `--routes` and log files.
    pub fn key(self) -> &'static str {
        match self {
            Route::Registration => "registration",
            Route::CreateCallUrl => "call-url",
            Route::CallUrlInfo => "call-info",
            Route::PlaceCall => "place-call",
            Route::ListCalls => "list-calls",
        }
    }

    pub fn parse(key: &str) -> anyhow::Result<Self> {
        Route::ALL
            .into_iter()
            .find(|route| route.key() == key)
            .ok_or_else(|| {
                let keys: Vec<_> = Route::ALL.iter().map(|route| route.key()).collect();
                anyhow::anyhow!(
                    "--routes: unknown route {key:?}; routes are {}",
                    keys.join(", ")
                )
            })
    }

    /// `--routes`: the routes named, or every route when none is.
    pub fn parse_list(keys: &[String]) -> anyhow::Result<Vec<Self>> {
        if keys.is_empty() {
            return Ok(Route::ALL.to_vec());
        }
        keys.iter().map(|key| Route::parse(key.trim())).collect()
    }

    pub fn target(self) -> Option<Target> {
        let (min_rps, max_p99_ms, original_rps, original_p99_ms) = match self {
            Route::Registration => (8_300.0, None, 833.0, 77.0),
            Route::CallUrlInfo => (22_000.0, None, 2_168.0, 32.0),
            Route::PlaceCall => (5_700.0, Some(10.0), 567.0, 91.0),
            Route::ListCalls => (9_500.0, None, 947.0, 59.0),
            Route::CreateCallUrl => return None,
        };
        Some(Target {
            min_rps,
            max_p99_ms,
            original_rps,
            original_p99_ms,
        })
    }
}

pub struct RouteResult {
    pub route: Route,
    pub runs: Vec<WrkResult>,
}

/// The median of the finite values; NaN when there are none.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

impl RouteResult {
    pub fn rps(&self) -> f64 {
        median(
            self.runs
                .iter()
                .map(WrkResult::requests_per_second)
                .collect(),
        )
    }

    pub fn p50_ms(&self) -> f64 {
        median(self.runs.iter().map(|run| run.p50_us / 1000.0).collect())
    }

    pub fn p99_ms(&self) -> f64 {
        median(self.runs.iter().map(|run| run.p99_us / 1000.0).collect())
    }

    pub fn server_cpu_us(&self) -> f64 {
        median(
            self.runs
                .iter()
                .map(WrkResult::server_cpu_us_per_request)
                .collect(),
        )
    }

    pub fn database_cores(&self) -> f64 {
        median(self.runs.iter().map(WrkResult::database_cores).collect())
    }

    pub fn other_cores(&self) -> f64 {
        median(self.runs.iter().map(WrkResult::other_cores).collect())
    }

    pub fn completed(&self) -> u64 {
        self.runs.iter().map(|run| run.requests).sum()
    }

    /// Every failed run's reasons; empty when all runs were clean.
    pub fn failures(&self) -> Vec<String> {
        self.runs
            .iter()
            .enumerate()
            .filter_map(|(i, run)| run.failure().map(|why| format!("run {}: {why}", i + 1)))
            .collect()
    }

    /// "met", "MISSED (…)", "FAILED" or "" when the route has no target.
    pub fn verdict(&self) -> String {
        if !self.failures().is_empty() {
            return "FAILED".into();
        }
        let Some(target) = self.route.target() else {
            return String::new();
        };
        let mut missed = Vec::new();
        if self.rps() < target.min_rps {
            missed.push("req/s");
        }
        if target.max_p99_ms.is_some_and(|max| self.p99_ms() > max) {
            missed.push("p99");
        }
        if missed.is_empty() {
            "met".into()
        } else {
            format!("MISSED ({})", missed.join(", "))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    Empty,
    Big,
}

pub struct PhaseResult {
    pub backend: Backend,
    pub dataset: Dataset,
    pub seed: Option<SeedReport>,
    pub routes: Vec<RouteResult>,
    pub peak_rss_kib: u64,
    pub pushes: u64,
    pub malformed_pushes: u64,
}

impl PhaseResult {
    pub fn title(&self) -> String {
        match (&self.dataset, &self.seed) {
            (Dataset::Empty, _) => format!("{}: empty database", self.backend.name()),
            (Dataset::Big, Some(seed)) => format!(
                "{}: {} call URLs and {} sessions stored",
                self.backend.name(),
                thousands(seed.counts.call_urls as f64),
                thousands(seed.counts.sessions as f64)
            ),
            (Dataset::Big, None) => format!("{}: seeded database", self.backend.name()),
        }
    }

    pub fn calls_placed(&self) -> u64 {
        self.routes
            .iter()
            .filter(|r| r.route == Route::PlaceCall)
            .map(RouteResult::completed)
            .sum()
    }

    pub fn failed(&self) -> bool {
        self.routes.iter().any(|route| !route.failures().is_empty())
    }

    fn route(&self, route: Route) -> Option<&RouteResult> {
        self.routes.iter().find(|r| r.route == route)
    }
}

pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".into();
    }
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds for a report: two decimals under 10 ms, one above, "n/a" for none.
pub fn ms(value: f64) -> String {
    if !value.is_finite() {
        "n/a".into()
    } else if value < 10.0 {
        format!("{value:.2} ms")
    } else {
        format!("{value:.1} ms")
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Markdown for a list of phases; a big-database phase is compared with the
/// empty-database phase of the same backend when there is one.
pub fn markdown(phases: &[PhaseResult]) -> String {
    let mut out = String::new();
    for phase in phases {
        let _ = writeln!(out, "### {}\n", phase.title());
        if let Some(seed) = &phase.seed {
            let _ = writeln!(
                out,
                "Seeded with bulk INSERTs in {:.1} s before the fixtures were created.\n",
                seed.seconds
            );
        }
        let baseline = match phase.dataset {
            Dataset::Big => phases
                .iter()
                .find(|p| p.backend == phase.backend && p.dataset == Dataset::Empty),
            Dataset::Empty => None,
        };
        if baseline.is_some() {
            let _ = writeln!(
                out,
                "| route | req/s | p50 | p99 | empty-DB req/s | ratio | within 20% | server CPU/req | PostgreSQL | other procs |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|");
        } else {
            let _ = writeln!(
                out,
                "| route | req/s | p50 | p99 | target | original (req/s, p99) | verdict | server CPU/req | PostgreSQL | other procs |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---|---|---|---:|---:|---:|");
        }
        for route in &phase.routes {
            let (rps, p50, p99) = (
                thousands(route.rps()),
                ms(route.p50_ms()),
                ms(route.p99_ms()),
            );
            let label = route.route.label();
            let cpu = format!(
                "{:.0} µs | {:.2} cores | {:.2} cores",
                route.server_cpu_us(),
                route.database_cores(),
                route.other_cores()
            );
            match baseline.and_then(|b| b.route(route.route)) {
                Some(empty) => {
                    let ratio = route.rps() / empty.rps();
                    let verdict = if !route.failures().is_empty() {
                        "FAILED".to_string()
                    } else if ratio >= 1.0 - BIG_DB_TOLERANCE {
                        "yes".to_string()
                    } else {
                        "NO".to_string()
                    };
                    let _ = writeln!(
                        out,
                        "| {label} | {rps} | {p50} | {p99} | {} | {ratio:.2} | {verdict} | {cpu} |",
                        thousands(empty.rps())
                    );
                }
                None if baseline.is_some() => {
                    let _ = writeln!(
                        out,
                        "| {label} | {rps} | {p50} | {p99} | n/a | n/a | {} | {cpu} |",
                        route.verdict()
                    );
                }
                None => {
                    let (target, original) = match route.route.target() {
                        Some(t) => (
                            format!(
                                "≥ {}{}",
                                thousands(t.min_rps),
                                t.max_p99_ms
                                    .map(|p| format!(", p99 ≤ {p:.0} ms"))
                                    .unwrap_or_default()
                            ),
                            format!("{}, {:.0} ms", thousands(t.original_rps), t.original_p99_ms),
                        ),
                        None => ("-".into(), "-".into()),
                    };
                    let _ = writeln!(
                        out,
                        "| {label} | {rps} | {p50} | {p99} | {target} | {original} | {} | {cpu} |",
                        route.verdict()
                    );
                }
            }
        }
        let rss = mib(phase.peak_rss_kib);
        let _ = writeln!(
            out,
            "\nPeak RSS of the server (VmHWM): {rss:.1} MiB ({} the ≤ {MAX_RSS_MIB:.0} MB target; the original used 142–170 MB).",
            if rss <= MAX_RSS_MIB {
                "within"
            } else {
                "ABOVE"
            }
        );
        let _ = writeln!(
            out,
            "Push pings received by the sink during the measured `POST /calls/{{token}}` runs: {} for {} calls \
             completed (wrk does not count the calls still in flight when a run stops){}.",
            thousands(phase.pushes as f64),
            thousands(phase.calls_placed() as f64),
            if phase.malformed_pushes > 0 {
                format!(
                    ", and {} malformed",
                    thousands(phase.malformed_pushes as f64)
                )
            } else {
                String::new()
            }
        );
        for route in &phase.routes {
            for failure in route.failures() {
                let _ = writeln!(out, "- **{} failed**: {failure}", route.route.label());
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_thousands() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
