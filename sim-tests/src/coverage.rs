//! "Sometimes" counters (Antithesis-style): every fault class, route and core transition a sweep
//! is meant to reach gets a counter, and a sweep fails if one stays at zero — coverage becomes a
//! test result instead of a hope.

use std::collections::BTreeMap;

use origdst_core::outcome::Outcome;
use origdst_core::relay::Dir;
use origdst_core::stats::Counter;

use crate::scenario::{Fault, Lifecycle, RouteKind, Scenario};
use crate::world::{End, Report};

/// Counters by name.
#[derive(Debug, Clone, Default)]
pub struct Coverage(BTreeMap<String, u64>);

impl Coverage {
    /// Counts what one run reached.
    pub fn observe(&mut self, scenario: &Scenario, report: &Report) {
        self.hit(format!("family:{}", scenario.family.name()));
        self.hit(if scenario.v6 { "ip:v6" } else { "ip:v4" }.to_string());
        if scenario.forgot_mark_exclusion {
            self.hit("rules:forgot_mark_exclusion".into());
        }
        if let Some(lifecycle) = scenario.lifecycle {
            self.hit(
                match lifecycle {
                    Lifecycle::Drain(_) => "lifecycle:drain",
                    Lifecycle::ProxyCrash(_) => "lifecycle:proxy_crash",
                    Lifecycle::UpstreamCrash(_) => "lifecycle:upstream_crash",
                }
                .into(),
            );
        }
        for flow in &scenario.flows {
            self.hit(format!("fault:{}", fault_name(flow.fault)));
            self.hit(format!("route:{}", route_name(&flow.route)));
        }
        for record in &report.proxy {
            if let Some(outcome) = record.history.outcome {
                self.hit(format!("outcome:{}", outcome.name()));
                if matches!(outcome, Outcome::UpstreamFailed(_))
                    && record.history.eofs[0] == Some(Dir::ClientToUpstream)
                {
                    self.hit("transition:upstream_failed_while_client_half_closed".into());
                }
            }
            match record.history.eofs {
                [Some(Dir::ClientToUpstream), Some(_)] => {
                    self.hit("transition:eof_client_first".into())
                }
                [Some(Dir::UpstreamToClient), Some(_)] => {
                    self.hit("transition:eof_upstream_first".into())
                }
                _ => {}
            }
        }
        for counter in [
            Counter::OrigDstSockOptV4,
            Counter::OrigDstSockOptV6,
            Counter::OrigDstTransparent,
            Counter::OrigDstInternalMetadata,
            Counter::OrigDstInternalFilterState,
        ] {
            if report.stats.get(counter) > 0 {
                self.hit(format!("provenance:{}", counter.name()));
            }
        }
        for result in &report.flows {
            if let Some(client) = &result.client
                && client.end == End::Reset
            {
                self.hit("client_saw:reset".into());
            }
        }
    }

    /// Adds another sweep's counters.
    /// Adds `count` hits of `name` (merging sweep reports).
    pub fn add(&mut self, name: &str, count: u64) {
        *self.0.entry(name.to_string()).or_default() += count;
    }

    /// Adds every counter of `other`.
    pub fn merge(&mut self, other: &Self) {
        for (name, count) in &other.0 {
            *self.0.entry(name.clone()).or_default() += count;
        }
    }

    /// Every counter.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Required counters that were never hit.
    pub fn missing(&self) -> Vec<&'static str> {
        REQUIRED
            .iter()
            .copied()
            .filter(|name| !self.0.contains_key(*name))
            .collect()
    }

    fn hit(&mut self, name: String) {
        *self.0.entry(name).or_default() += 1;
    }
}

fn fault_name(fault: Fault) -> &'static str {
    match fault {
        Fault::None => "none",
        Fault::Refused => "refused",
        Fault::ConnectHold => "connect_hold",
        Fault::UpstreamReset(_) => "upstream_reset",
        Fault::ClientReset(_) => "client_reset",
        Fault::BlackHole => "black_hole",
        Fault::IdlePause => "idle_pause",
    }
}

fn route_name(route: &RouteKind) -> &'static str {
    match route {
        RouteKind::Redirect => "redirect",
        RouteKind::Record => "record",
        RouteKind::RecordQueryFails => "record_query_fails",
        RouteKind::Tproxy => "tproxy",
        RouteKind::Internal(_) => "internal",
        RouteKind::Direct { unrestored: true } => "direct_unrestored",
        RouteKind::Direct { unrestored: false } => "direct_enoent",
        RouteKind::Stale => "stale_conntrack",
        RouteKind::ToListener => "to_listener",
        RouteKind::HandoffStatic => "handoff_static",
        RouteKind::HandoffBlackhole => "handoff_blackhole",
    }
}

/// What a sweep must reach at least once.
pub const REQUIRED: &[&str] = &[
    "family:happy",
    "family:half-close",
    "family:resets",
    "family:connect-failures",
    "family:black-hole",
    "family:backpressure",
    "family:redirect",
    "family:records",
    "family:internal",
    "family:lifecycle",
    "family:swarm",
    "family:handoff",
    "ip:v4",
    "ip:v6",
    "fault:none",
    "fault:refused",
    "fault:connect_hold",
    "fault:upstream_reset",
    "fault:client_reset",
    "fault:black_hole",
    "route:redirect",
    "route:record",
    "route:record_query_fails",
    "route:tproxy",
    "route:internal",
    "route:direct_unrestored",
    "route:direct_enoent",
    "route:stale_conntrack",
    "route:to_listener",
    "route:handoff_static",
    "route:handoff_blackhole",
    "rules:forgot_mark_exclusion",
    "lifecycle:drain",
    "lifecycle:proxy_crash",
    "lifecycle:upstream_crash",
    "outcome:completed",
    "outcome:no_original_dst",
    "outcome:destination_is_listener",
    "outcome:own_mark",
    "outcome:invalid_metadata",
    "outcome:no_healthy_upstream",
    "outcome:redirect_record_query_failed",
    "outcome:upstream_connect_failed",
    "outcome:upstream_connect_timeout",
    "outcome:upstream_failed",
    "outcome:client_failed",
    "outcome:idle_timeout",
    "transition:eof_client_first",
    "transition:eof_upstream_first",
    "transition:upstream_failed_while_client_half_closed",
    "provenance:orig_dst_sockopt_v4",
    "provenance:orig_dst_sockopt_v6",
    "provenance:orig_dst_transparent_local",
    "provenance:orig_dst_internal_metadata",
    "provenance:orig_dst_internal_filter_state",
    "client_saw:reset",
];
