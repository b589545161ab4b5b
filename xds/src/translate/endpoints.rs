//! Endpoints (a cluster's `load_assignment`, or an EDS `ClusterLoadAssignment` resolved into
//! one) as the file writes them: which endpoints serve (health, priority), their addresses and
//! metadata.

use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use serde_yaml_ng::{Mapping, Value};

use super::{address, put};

/// Endpoints as the file writes them. Envoy balances over the lowest priority that has healthy
/// endpoints; with no health checking in origdst, every endpoint not reported unhealthy is
/// healthy, so only the lowest priority present is used, and endpoints the control plane reports
/// `UNHEALTHY`, `DRAINING` or `TIMEOUT` are left out (`DEGRADED` ones serve, as Envoy uses them
/// when nothing better is left). Weights do not apply to round robin; hostnames and health-check
/// settings are descriptive. Localities keep their places (empty when of another priority), so
/// a refusal's index is the pushed one.
pub(super) fn load_assignment(a: &ClusterLoadAssignment) -> Result<Value, String> {
    use envoy_types::pb::envoy::config::core::v3::HealthStatus;
    if !a.named_endpoints.is_empty() {
        return Err("load_assignment.named_endpoints: not supported".into());
    }
    if let Some(policy) = &a.policy {
        if !policy.drop_overloads.is_empty() {
            return Err("load_assignment.policy.drop_overloads: not supported".into());
        }
        // (`overprovisioning_factor` and `weighted_priority_health` tune how traffic spills
        // between priorities as hosts turn unhealthy; with no health checking here nothing
        // spills, and they change nothing.)
        if policy.endpoint_stale_after.is_some() {
            return Err(
                "load_assignment.policy.endpoint_stale_after: not supported (endpoints do not go stale here)"
                    .into(),
            );
        }
    }
    let down = [
        HealthStatus::Unhealthy as i32,
        HealthStatus::Draining as i32,
        HealthStatus::Timeout as i32,
    ];
    let lowest = a
        .endpoints
        .iter()
        .filter(|l| {
            l.lb_endpoints
                .iter()
                .any(|e| !down.contains(&e.health_status))
        })
        .map(|l| l.priority)
        .min();
    let mut out = Mapping::new();
    put(
        &mut out,
        "cluster_name",
        Value::from(a.cluster_name.clone()),
    );
    let mut localities = Vec::new();
    for (i, locality) in a.endpoints.iter().enumerate() {
        if locality.lb_config.is_some() {
            return Err(format!(
                "load_assignment.endpoints[{i}].leds_cluster_locality_config: not supported"
            ));
        }
        let mut endpoints = Vec::new();
        for (j, lb) in locality.lb_endpoints.iter().enumerate() {
            let path = format!("load_assignment.endpoints[{i}].lb_endpoints[{j}]");
            if Some(locality.priority) != lowest {
                continue;
            }
            if down.contains(&lb.health_status) {
                continue;
            }
            let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &lb.host_identifier else {
                return Err(format!("{path}.endpoint: required"));
            };
            if !endpoint.additional_addresses.is_empty() {
                return Err(format!(
                    "{path}.endpoint.additional_addresses: not supported"
                ));
            }
            let a = endpoint
                .address
                .as_ref()
                .ok_or(format!("{path}.endpoint.address: required"))?;
            let mut e = Mapping::new();
            put(
                &mut e,
                "address",
                address(a, &format!("{path}.endpoint.address"))?,
            );
            let mut item = Mapping::new();
            put(&mut item, "endpoint", Value::Mapping(e));
            if let Some(m) = &lb.metadata {
                if !m.typed_filter_metadata.is_empty() {
                    return Err(format!(
                        "{path}.metadata.typed_filter_metadata: not supported"
                    ));
                }
                put(&mut item, "metadata", metadata(m));
            }
            endpoints.push(Value::Mapping(item));
        }
        let mut item = Mapping::new();
        put(&mut item, "lb_endpoints", Value::Sequence(endpoints));
        localities.push(Value::Mapping(item));
    }
    put(&mut out, "endpoints", Value::Sequence(localities));
    Ok(Value::Mapping(out))
}

/// An endpoint's metadata as the file writes it (`filter_metadata` only; the validator judges
/// its values).
fn metadata(m: &envoy_types::pb::envoy::config::core::v3::Metadata) -> Value {
    let mut namespaces = Mapping::new();
    for (namespace, fields) in &m.filter_metadata {
        let mut map = Mapping::new();
        for (key, value) in &fields.fields {
            put(&mut map, key, proto_value(value, 0));
        }
        put(&mut namespaces, namespace, Value::Mapping(map));
    }
    let mut out = Mapping::new();
    put(&mut out, "filter_metadata", Value::Mapping(namespaces));
    Value::Mapping(out)
}

/// A protobuf `Value` as YAML (depth bounded: what a control plane sends is text too).
fn proto_value(v: &envoy_types::pb::google::protobuf::Value, depth: usize) -> Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    match &v.kind {
        _ if depth > 32 => Value::Null,
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => Value::from(*n),
        Some(Kind::StringValue(s)) => Value::from(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => {
            let mut map = Mapping::new();
            for (key, value) in &s.fields {
                put(&mut map, key, proto_value(value, depth + 1));
            }
            Value::Mapping(map)
        }
        Some(Kind::ListValue(l)) => {
            Value::Sequence(l.values.iter().map(|v| proto_value(v, depth + 1)).collect())
        }
    }
}
