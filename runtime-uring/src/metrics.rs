//! `/metrics` (OpenMetrics text, which Prometheus scrapes) and `/stats` (JSON), both computed at
//! scrape time from the shards' published rows: the data path never takes a lock or formats
//! anything. Every core counter keeps its Envoy-style name (`origdst_downstream_cx_total`,
//! `origdst_upstream_cx_connect_fail_total`, …); refusals and original-destination provenance are
//! also exported as one labelled family each, so a dashboard can sum them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use origdst_core::stats::Counter;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::observed::Observed;
use crate::published::{Gauge, gauge_sum, merged};

/// Renders `/metrics`.
pub fn render_prometheus(observed: &Arc<Observed>) -> String {
    let mut registry = Registry::with_prefix("origdst");
    registry.register_collector(Box::new(Scrape(Arc::clone(observed))));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Scrape(Arc<Observed>);

/// Counter names already ending in `_total` lose it: OpenMetrics appends it to every counter.
fn family_name(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    let family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(family)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    let family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(family)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let observed = &self.0;
        let total = merged(&observed.rows);
        for &c in Counter::ALL {
            counter(
                &mut encoder,
                family_name(c.name()),
                c.help().trim(),
                total.get(c),
            )?;
        }
        {
            let mut family = encoder.encode_descriptor(
                "downstream_cx_refused",
                "Connections refused, by reason (each also has its own counter).",
                None,
                MetricType::Counter,
            )?;
            for &c in Counter::ALL {
                if let Some(reason) = c.refusal_reason() {
                    ConstCounter::new(total.get(c))
                        .encode(family.encode_family(&[("reason", reason)])?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "orig_dst",
                "Original destinations found, by where they came from.",
                None,
                MetricType::Counter,
            )?;
            for &c in Counter::ALL {
                if let Some(provenance) = c.provenance() {
                    ConstCounter::new(total.get(c))
                        .encode(family.encode_family(&[("provenance", provenance)])?)?;
                }
            }
        }
        gauge(
            &mut encoder,
            "downstream_cx_active",
            "Open downstream connections.",
            total.active() as i64,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "shard_connections_active",
                "Open connections per shard (thread per core).",
                None,
                MetricType::Gauge,
            )?;
            for (index, row) in observed.rows.iter().enumerate() {
                let shard = index.to_string();
                ConstGauge::new(row.gauge(Gauge::ConnectionsActive) as i64)
                    .encode(family.encode_family(&[("shard", shard.as_str())])?)?;
            }
        }
        for g in Gauge::ALL {
            if g == Gauge::ConnectionsActive {
                continue;
            }
            let sum: u64 = gauge_sum(&observed.rows, g);
            if g.is_counter() {
                counter(&mut encoder, g.name(), g.help(), sum)?;
            } else {
                gauge(&mut encoder, g.name(), g.help(), sum as i64)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "server_info",
                "Always 1; the labels say what runs.",
                None,
                MetricType::Gauge,
            )?;
            let labels = [
                ("version", env!("CARGO_PKG_VERSION")),
                ("backend", observed.backend),
                ("data_path", observed.data_path),
            ];
            ConstGauge::new(1).encode(family.encode_family(&labels)?)?;
        }
        gauge(
            &mut encoder,
            "server_shards",
            "Shard threads.",
            observed.rows.len() as i64,
        )?;
        gauge(
            &mut encoder,
            "server_draining",
            "1 after SIGTERM/SIGINT: no new connections, open ones finishing.",
            i64::from(observed.draining.load(Ordering::Relaxed)),
        )?;
        gauge(
            &mut encoder,
            "server_uptime_seconds",
            "Seconds since start-up.",
            observed.started_at.elapsed().as_secs() as i64,
        )?;
        gauge(
            &mut encoder,
            "config_generation",
            "1 at start-up, +1 per accepted reload (SIGHUP).",
            observed.running().generation as i64,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "config_reloads",
                "Reloads (SIGHUP), by result.",
                None,
                MetricType::Counter,
            )?;
            for (result, value) in [
                ("accepted", &observed.reloads_ok),
                ("rejected", &observed.reloads_rejected),
            ] {
                ConstCounter::new(value.load(Ordering::Relaxed))
                    .encode(family.encode_family(&[("result", result)])?)?;
            }
        }
        if let Some(log) = &observed.access_log {
            for (name, help, value) in [
                (
                    "access_log_written",
                    "Access-log lines written.",
                    &log.written,
                ),
                (
                    "access_log_dropped",
                    "Access-log records dropped: the writer fell behind.",
                    &log.dropped,
                ),
                (
                    "access_log_failed",
                    "Access-log lines that could not be written.",
                    &log.failed,
                ),
            ] {
                counter(&mut encoder, name, help, value.load(Ordering::Relaxed))?;
            }
        }
        if let Some(pods) = &observed.pods {
            encode_pods(&mut encoder, observed, pods)?;
        }
        encode_listeners(&mut encoder, observed)?;
        if let Some(xds) = &observed.xds {
            encode_xds(&mut encoder, xds)?;
        }
        counter(
            &mut encoder,
            "admin_connections_evicted",
            "Admin connections closed unanswered to make room (more than 32 open at once).",
            crate::admin::EVICTED.load(Ordering::Relaxed),
        )?;
        Ok(())
    }
}

/// In-pod mode: the pod manager's gauges, and each pod's connections (labelled by pod).
fn encode_pods(
    encoder: &mut DescriptorEncoder<'_>,
    observed: &Observed,
    pods: &crate::pods::PodGauges,
) -> Result<(), std::fmt::Error> {
    let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    gauge(
        encoder,
        "pods",
        "Pods served (in-pod mode).",
        load(&pods.pods) as i64,
    )?;
    gauge(
        encoder,
        "pod_listeners",
        "Listening sockets held in pods, over every shard.",
        load(&pods.listeners) as i64,
    )?;
    counter(
        encoder,
        "pods_added",
        "Pods added since start.",
        load(&pods.added),
    )?;
    counter(
        encoder,
        "pods_removed",
        "Pods removed since start.",
        load(&pods.removed),
    )?;
    counter(
        encoder,
        "pod_requests_refused",
        "Pod-interface requests refused (malformed, over the limit, a namespace that could not be set up).",
        load(&pods.refused),
    )?;
    let per_pod = crate::published::pods(&observed.rows);
    let families: [(&str, &str, bool, GroupField); 5] = [
        ("pod_cx", "Connections accepted in the pod.", true, |g| {
            g.accepted
        }),
        (
            "pod_cx_active",
            "Open connections of the pod.",
            false,
            |g| g.active,
        ),
        (
            "pod_rx_bytes",
            "Bytes from the pod's clients relayed upstream (closed connections).",
            true,
            |g| g.bytes_up,
        ),
        (
            "pod_tx_bytes",
            "Bytes relayed to the pod's clients (closed connections).",
            true,
            |g| g.bytes_down,
        ),
        (
            "pod_cx_drain_reset",
            "The pod's connections reset at the end of its drain after removal.",
            true,
            |g| g.drain_reset,
        ),
    ];
    per_group(encoder, "pod", &per_pod, &families)
}

/// A family per field of `families` (name, help, counter?, field), one sample per group,
/// labelled `label` = the group's name.
fn per_group(
    encoder: &mut DescriptorEncoder<'_>,
    label: &str,
    groups: &[crate::published::GroupReport],
    families: &[(&str, &str, bool, GroupField)],
) -> Result<(), std::fmt::Error> {
    for &(name, help, is_counter, field) in families {
        let kind = if is_counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        };
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for report in groups {
            let labels = [(label, &*report.name)];
            if is_counter {
                ConstCounter::new(field(report)).encode(family.encode_family(&labels)?)?;
            } else {
                ConstGauge::new(field(report) as i64).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

/// One number of a group's report.
type GroupField = fn(&crate::published::GroupReport) -> u64;

/// The control plane's stream: up or not, pushes accepted and refused, the versions in force.
fn encode_xds(
    encoder: &mut DescriptorEncoder<'_>,
    xds: &crate::xds_client::XdsGauges,
) -> Result<(), std::fmt::Error> {
    let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    gauge(
        encoder,
        "xds_connected",
        "1 while the ADS stream to the control plane is up.",
        load(&xds.connected) as i64,
    )?;
    counter(
        encoder,
        "xds_streams",
        "ADS streams opened (the first, then one per reconnect).",
        load(&xds.streams),
    )?;
    let types = crate::xds_client::TYPES;
    {
        let mut family = encoder.encode_descriptor(
            "xds_updates",
            "Pushes by type and result (accepted and ACKed, or refused and NACKed).",
            None,
            MetricType::Counter,
        )?;
        for (i, kind) in types.iter().enumerate() {
            for (result, value) in [
                ("accepted", &xds.accepted[i]),
                ("rejected", &xds.rejected[i]),
            ] {
                ConstCounter::new(load(value))
                    .encode(family.encode_family(&[("type", *kind), ("result", result)])?)?;
            }
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "xds_resources_set_aside",
            "Resources not taken from pushes whose rest went into force (NACKed, named), by type.",
            None,
            MetricType::Counter,
        )?;
        for (i, kind) in types.iter().enumerate() {
            ConstCounter::new(load(&xds.set_aside[i]))
                .encode(family.encode_family(&[("type", *kind)])?)?;
        }
    }
    let versions = xds
        .versions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut family = encoder.encode_descriptor(
        "xds_version",
        "Always 1; the label is the version in force, by type.",
        None,
        MetricType::Gauge,
    )?;
    for (kind, version) in types.iter().zip(&versions) {
        ConstGauge::new(1)
            .encode(family.encode_family(&[("type", *kind), ("version", version.as_str())])?)?;
    }
    let warming = xds
        .pushed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .warming
        .clone();
    let mut warming_family = encoder.encode_descriptor(
        "xds_warming",
        "Pushed resources taken but not in force yet: clusters waiting for their endpoints (EDS), listeners waiting for a cluster.",
        None,
        MetricType::Gauge,
    )?;
    for (kind, resources) in ["cds", "lds"].iter().zip(&warming) {
        ConstGauge::new(resources.len() as i64)
            .encode(warming_family.encode_family(&[("type", *kind)])?)?;
    }
    Ok(())
}

/// Each listener's connections (labelled by listener): what a reload adds and removes.
fn encode_listeners(
    encoder: &mut DescriptorEncoder<'_>,
    observed: &Observed,
) -> Result<(), std::fmt::Error> {
    let per_listener = crate::published::listeners(&observed.rows);
    let families: [(&str, &str, bool, GroupField); 4] = [
        (
            "listener_cx",
            "Connections the listener accepted.",
            true,
            |g| g.accepted,
        ),
        (
            "listener_cx_active",
            "Open connections of the listener.",
            false,
            |g| g.active,
        ),
        (
            "listener_draining",
            "1 while a listener a reload removed drains its connections.",
            false,
            |g| u64::from(g.removed),
        ),
        (
            "listener_cx_drain_reset",
            "The listener's connections reset at the end of its drain after a reload removed it.",
            true,
            |g| g.drain_reset,
        ),
    ];
    per_group(encoder, "listener", &per_listener, &families)
}

/// `/stats`: the same numbers as JSON.
pub fn render_json(observed: &Observed) -> String {
    let total = merged(&observed.rows);
    let counters: serde_json::Map<String, serde_json::Value> = total
        .iter()
        .map(|(name, value)| (name.to_string(), value.into()))
        .collect();
    let gauges: serde_json::Map<String, serde_json::Value> = Gauge::ALL
        .iter()
        .map(|&g| {
            let sum: u64 = gauge_sum(&observed.rows, g);
            (g.name().to_string(), sum.into())
        })
        .collect();
    let shards: Vec<serde_json::Value> = observed
        .rows
        .iter()
        .enumerate()
        .map(|(index, row)| {
            serde_json::json!({
                "shard": index,
                "connections_active": row.gauge(Gauge::ConnectionsActive),
                "downstream_cx_total": row.counters().get(Counter::DownstreamCxTotal),
            })
        })
        .collect();
    let running = observed.running();
    let value = serde_json::json!({
        "server": {
            "version": env!("CARGO_PKG_VERSION"),
            "backend": observed.backend,
            "data_path": observed.data_path,
            "ready": observed.ready(),
            "draining": observed.draining.load(Ordering::Relaxed),
            "uptime_seconds": observed.started_at.elapsed().as_secs(),
            "config_generation": running.generation,
            "config_reloads_accepted": observed.reloads_ok.load(Ordering::Relaxed),
            "config_reloads_rejected": observed.reloads_rejected.load(Ordering::Relaxed),
        },
        "counters": counters,
        "gauges": gauges,
        "shards": shards,
    });
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}
