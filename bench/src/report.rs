//! Medians and ratios from one run, written as Markdown, JSON and an SVG bar chart. The chart is
//! a few dozen rectangles and labels written directly: a plotting library would pull in font and
//! rendering stacks for that.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// One idle-scale measurement.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IdleSample {
    pub(crate) rss_kib: Option<u64>,
    pub(crate) iou_wrk: Option<u64>,
    pub(crate) pipes: Option<u64>,
    pub(crate) kernel_stack_kib: u64,
    pub(crate) slab_kib: u64,
}

/// Everything measured, in candidate order of first appearance.
pub(crate) struct Results {
    reps: usize,
    seconds: f64,
    order: Vec<String>,
    samples: BTreeMap<(String, String), Vec<f64>>,
    idle: BTreeMap<String, BTreeMap<usize, IdleSample>>,
    idle_failures: BTreeMap<String, BTreeMap<usize, String>>,
}

/// The metrics in table order: (key, header, lower is better).
const METRICS: &[(&str, &str, bool)] = &[
    ("bulk1_gbit_s", "1-stream Gbit/s", false),
    ("bulk1_cpu_s_per_gib", "1-stream CPU s/GiB", true),
    ("bulk8_gbit_s", "8-stream Gbit/s", false),
    ("bulk8_cpu_s_per_gib", "8-stream CPU s/GiB", true),
    ("rr_p50_us", "64 B RR p50 µs", true),
    ("rr_p99_us", "p99 µs", true),
    ("rr_p999_us", "p99.9 µs", true),
    ("rr_tps", "RR tx/s", false),
    ("conn_per_s", "conn/s", false),
    ("conn_cpu_us", "CPU µs/conn", true),
    ("conn_errors", "conn errors", true),
    ("conn2_per_s", "conn/s, shard per core", false),
    ("conn2_cpu_us", "CPU µs/conn, shard per core", true),
    ("conn2_errors", "conn errors, shard per core", true),
];

const REFERENCE: &str = "haproxy-splice";
const DIRECT: &str = "direct";

impl Results {
    pub(crate) fn new(reps: usize, seconds: f64) -> Self {
        Self {
            reps,
            seconds,
            order: Vec::new(),
            samples: BTreeMap::new(),
            idle: BTreeMap::new(),
            idle_failures: BTreeMap::new(),
        }
    }

    pub(crate) fn add_idle_failure(&mut self, candidate: &str, connections: usize, why: String) {
        self.idle_failures
            .entry(candidate.to_string())
            .or_default()
            .insert(connections, why);
    }

    pub(crate) fn add(&mut self, candidate: &str, metric: &str, value: f64) {
        if !self.order.iter().any(|c| c == candidate) {
            self.order.push(candidate.to_string());
        }
        self.samples
            .entry((candidate.to_string(), metric.to_string()))
            .or_default()
            .push(value);
    }

    pub(crate) fn add_idle(&mut self, candidate: &str, connections: usize, sample: IdleSample) {
        self.idle
            .entry(candidate.to_string())
            .or_default()
            .insert(connections, sample);
    }

    /// The median of a candidate's values for a metric.
    pub(crate) fn median(&self, candidate: &str, metric: &str) -> Option<f64> {
        let mut values = self
            .samples
            .get(&(candidate.to_string(), metric.to_string()))?
            .clone();
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        Some(if values.len() % 2 == 1 {
            values[mid]
        } else {
            (values[mid - 1] + values[mid]) / 2.0
        })
    }

    fn ratio(&self, candidate: &str, metric: &str, to: &str) -> Option<f64> {
        let reference = self.median(to, metric)?;
        (reference != 0.0).then(|| self.median(candidate, metric).map(|v| v / reference))?
    }

    /// Whether the sidecar topology was measured.
    fn has_sidecar(&self) -> bool {
        self.has("sidecar_")
    }

    /// Whether the topology whose metric keys start `prefix` was measured.
    fn has(&self, prefix: &str) -> bool {
        self.order
            .iter()
            .any(|c| self.median(c, &format!("{prefix}bulk1_gbit_s")).is_some())
    }

    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Gateway topology (client ns → router ns with iptables REDIRECT → server ns), {} interleaved repetition(s), medians; bulk and connection rate {} s each; whole-system CPU from /proc/stat. `×hs`: ratio to HAProxy forced splice, `×d`: to direct, both from this run.\n",
            self.reps, self.seconds
        );
        if self.has("") {
            self.table(&mut out, "");
        }
        if self.has_sidecar() {
            let _ = writeln!(
                out,
                "\nSidecar topology (the client in the proxy's namespace, `OUTPUT` REDIRECT to the server subnet excluding mark 1337 and uid 1337 → server ns), same run:\n"
            );
            self.table(&mut out, "sidecar_");
        }
        if self.has("node_") {
            let _ = writeln!(
                out,
                "\nNode topology ({} pods behind a bridge on the router, what they send captured where the node routes it: `PREROUTING -i pods0` REDIRECT → server ns; one stream and latency from the first pod, 8 streams and the connection rates spread over all of them), same run:\n",
                crate::POD_COUNT
            );
            self.table(&mut out, "node_");
        }
        if !self.idle.is_empty() {
            let _ = writeln!(
                out,
                "\nIdle connections held open (each echoed one byte first):\n\n| candidate | connections | proxy RSS KiB | iou-wrk threads | pipes held | kernel stack +KiB | slab +KiB |\n|---|---|---|---|---|---|---|"
            );
            for candidate in &self.order {
                for (n, why) in self.idle_failures.get(candidate).into_iter().flatten() {
                    let _ = writeln!(out, "| {candidate} | {n} | failed: {why} | | | | |");
                }
                for (n, s) in self.idle.get(candidate).into_iter().flatten() {
                    let opt = |v: Option<u64>| v.map_or("–".to_string(), |v| v.to_string());
                    let _ = writeln!(
                        out,
                        "| {candidate} | {n} | {} | {} | {} | {} | {} |",
                        opt(s.rss_kib),
                        opt(s.iou_wrk),
                        opt(s.pipes),
                        s.kernel_stack_kib,
                        s.slab_kib
                    );
                }
            }
        }
        out
    }

    /// One row per candidate measured with metric keys starting `prefix`.
    fn table(&self, out: &mut String, prefix: &str) {
        let _ = write!(*out, "| candidate |");
        for (_, header, _) in METRICS {
            let _ = write!(*out, " {header} |");
        }
        let _ = write!(*out, "\n|---|");
        for _ in METRICS {
            let _ = write!(*out, "---|");
        }
        out.push('\n');
        for candidate in &self.order {
            if self
                .median(candidate, &format!("{prefix}bulk1_gbit_s"))
                .is_none()
            {
                continue;
            }
            let _ = write!(*out, "| {candidate} |");
            for (metric, _, _) in METRICS {
                let metric = &format!("{prefix}{metric}");
                match self.median(candidate, metric) {
                    None => {
                        let _ = write!(*out, " – |");
                    }
                    Some(value) => {
                        let _ = write!(*out, " {}", format_value(value));
                        if !metric.ends_with("_errors")
                            && let Some(r) = self.ratio(candidate, metric, REFERENCE)
                        {
                            let _ = write!(*out, " ({r:.2}×hs");
                            match self.ratio(candidate, metric, DIRECT) {
                                Some(d) => {
                                    let _ = write!(*out, ", {d:.2}×d)");
                                }
                                None => out.push(')'),
                            }
                        }
                        out.push_str(" |");
                    }
                }
            }
            out.push('\n');
        }
    }

    pub(crate) fn json(&self) -> String {
        #[derive(Serialize)]
        struct Metric {
            median: f64,
            values: Vec<f64>,
            ratio_to_haproxy_splice: Option<f64>,
            ratio_to_direct: Option<f64>,
        }
        #[derive(Serialize)]
        struct Out<'a> {
            reps: usize,
            seconds: f64,
            candidates: BTreeMap<&'a str, BTreeMap<&'a str, Metric>>,
            idle: &'a BTreeMap<String, BTreeMap<usize, IdleSample>>,
            idle_failures: &'a BTreeMap<String, BTreeMap<usize, String>>,
        }
        let mut candidates: BTreeMap<&str, BTreeMap<&str, Metric>> = BTreeMap::new();
        for ((candidate, metric), values) in &self.samples {
            let entry = candidates.entry(candidate).or_default();
            entry.insert(
                metric,
                Metric {
                    median: self.median(candidate, metric).unwrap_or(f64::NAN),
                    values: values.clone(),
                    ratio_to_haproxy_splice: self.ratio(candidate, metric, REFERENCE),
                    ratio_to_direct: self.ratio(candidate, metric, DIRECT),
                },
            );
        }
        serde_json::to_string_pretty(&Out {
            reps: self.reps,
            seconds: self.seconds,
            candidates,
            idle: &self.idle,
            idle_failures: &self.idle_failures,
        })
        .unwrap_or_default()
    }

    /// Two panels of horizontal bars: bulk throughput (1 and 8 streams) and whole-system CPU
    /// seconds per GiB, one row per candidate.
    pub(crate) fn svg(&self) -> String {
        self.bars_svg(&[
            (
                "Throughput, Gbit/s (1 stream, 8 streams)",
                &["bulk1_gbit_s", "bulk8_gbit_s"],
            ),
            (
                "Whole-system CPU s/GiB (1 stream, 8 streams)",
                &["bulk1_cpu_s_per_gib", "bulk8_cpu_s_per_gib"],
            ),
        ])
    }

    /// The 64-byte request/response latency distribution: p50, p99 and p99.9 per candidate, the
    /// gateway and (if measured) the sidecar side by side.
    pub(crate) fn latency_svg(&self) -> String {
        let gateway: (&str, &[&str]) = (
            "Gateway 64 B RR latency, µs (p50, p99, p99.9)",
            &["rr_p50_us", "rr_p99_us", "rr_p999_us"],
        );
        let sidecar: (&str, &[&str]) = (
            "Sidecar 64 B RR latency, µs (p50, p99, p99.9)",
            &[
                "sidecar_rr_p50_us",
                "sidecar_rr_p99_us",
                "sidecar_rr_p999_us",
            ],
        );
        if self.has_sidecar() {
            self.bars_svg(&[gateway, sidecar])
        } else {
            self.bars_svg(&[gateway])
        }
    }

    /// Panels of horizontal bars side by side, one row per candidate, one bar per metric (at
    /// most three) in each panel; each panel scaled to its own largest value.
    fn bars_svg(&self, panels: &[(&str, &[&str])]) -> String {
        const COLOURS: [&str; 3] = ["#4878b0", "#e08a3c", "#6a9f58"];
        let bars = panels.iter().map(|(_, m)| m.len()).max().unwrap_or(1);
        assert!(bars <= COLOURS.len(), "at most three bars per row");
        let rows = self.order.len().max(1);
        let row_h = 8.0 + bars as f64 * 14.0;
        let panel_w = 420.0;
        let label_w = 190.0;
        let height = 70.0 + rows as f64 * row_h;
        let width = label_w + panels.len() as f64 * (panel_w + 30.0) + 30.0;
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        for (p, (title, metrics)) in panels.iter().enumerate() {
            let x0 = label_w + p as f64 * (panel_w + 30.0);
            let _ = writeln!(
                out,
                r#"<text x="{x0}" y="20" font-weight="bold">{title}</text>"#
            );
            let max = self
                .order
                .iter()
                .flat_map(|c| metrics.iter().filter_map(move |m| self.median(c, m)))
                .filter(|v| v.is_finite())
                .fold(0.0f64, f64::max)
                .max(f64::MIN_POSITIVE);
            for (i, candidate) in self.order.iter().enumerate() {
                let y = 40.0 + i as f64 * row_h;
                if p == 0 {
                    let _ = writeln!(out, r#"<text x="8" y="{}">{candidate}</text>"#, y + 18.0);
                }
                for (k, metric) in metrics.iter().enumerate() {
                    let Some(value) = self.median(candidate, metric).filter(|v| v.is_finite())
                    else {
                        continue;
                    };
                    let w = value / max * (panel_w - 70.0);
                    let yy = y + k as f64 * 14.0;
                    let _ = writeln!(
                        out,
                        r#"<rect x="{x0}" y="{yy}" width="{w:.1}" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
                        COLOURS[k],
                        x0 + w + 4.0,
                        yy + 10.0,
                        format_value(value)
                    );
                }
            }
        }
        out.push_str("</svg>\n");
        out
    }
}

fn format_value(value: f64) -> String {
    if value >= 1000.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}
