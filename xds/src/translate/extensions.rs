//! The typed extensions origdst implements beside `tcp_proxy` and `original_dst`, from their
//! protos into the file's document: the `original_src` listener filter, the `set_filter_state`
//! network filter (Istio's waypoint and ztunnel-style chains set the hand-off key with it), and a
//! cluster's `transport_socket` (`raw_buffer`, or `internal_upstream` around it, which carries
//! endpoint metadata to an internal listener). Anything of them set beyond what origdst does is
//! refused, naming its field.

use envoy_types::pb::envoy::config::core::v3::{
    SubstitutionFormatString, TransportSocket, data_source, substitution_format_string,
    transport_socket,
};
use envoy_types::pb::envoy::extensions::filters::common::set_filter_state::v3::{
    FilterStateValue, filter_state_value,
};
use envoy_types::pb::envoy::extensions::filters::listener::original_src::v3::OriginalSrc;
use envoy_types::pb::envoy::extensions::filters::network::set_filter_state::v3::Config as SetFilterState;
use envoy_types::pb::envoy::extensions::transport_sockets::internal_upstream::v3::InternalUpstreamTransport;
use envoy_types::pb::envoy::r#type::metadata::v3::metadata_kind;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use serde_yaml_ng::{Mapping, Value};

use super::put;

pub(super) const ORIGINAL_SRC: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc";
pub(super) const SET_FILTER_STATE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config";
const RAW_BUFFER: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
const INTERNAL_UPSTREAM: &str = "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport";

/// Transport sockets nest (`internal_upstream` wraps one): this deep at most.
const NESTING_MAX: usize = 4;

/// `original_src`'s typed config.
pub(super) fn original_src(any: &Any, path: &str) -> Result<Value, String> {
    let src = OriginalSrc::decode(any.value.as_slice())
        .map_err(|err| format!("{path}: not an OriginalSrc: {err}"))?;
    let mut m = Mapping::new();
    put(&mut m, "@type", Value::from(ORIGINAL_SRC));
    if src.bind_port {
        put(&mut m, "bind_port", Value::Bool(true));
    }
    if src.mark != 0 {
        put(&mut m, "mark", Value::from(src.mark));
    }
    Ok(Value::Mapping(m))
}

/// `set_filter_state`'s typed config: each value's key, its format (an inline string), and how it
/// is shared.
pub(super) fn set_filter_state(any: &Any, path: &str) -> Result<Value, String> {
    let config = SetFilterState::decode(any.value.as_slice())
        .map_err(|err| format!("{path}: not a set_filter_state Config: {err}"))?;
    if !config.on_downstream_data.is_empty() {
        return Err(format!("{path}.on_downstream_data: not supported"));
    }
    if !config.on_downstream_tls_handshake.is_empty() {
        return Err(format!("{path}.on_downstream_tls_handshake: not supported"));
    }
    let mut values = Vec::new();
    for (i, v) in config.on_new_connection.iter().enumerate() {
        values.push(filter_state_value(
            v,
            &format!("{path}.on_new_connection[{i}]"),
        )?);
    }
    let mut m = Mapping::new();
    put(&mut m, "@type", Value::from(SET_FILTER_STATE));
    put(&mut m, "on_new_connection", Value::Sequence(values));
    Ok(Value::Mapping(m))
}

fn filter_state_value(v: &FilterStateValue, path: &str) -> Result<Value, String> {
    let mut out = Mapping::new();
    match &v.key {
        Some(filter_state_value::Key::ObjectKey(key)) => {
            put(&mut out, "object_key", Value::from(key.clone()));
        }
        None => return Err(format!("{path}.object_key: required")),
    }
    if !v.factory_key.is_empty() {
        return Err(format!("{path}.factory_key: not supported"));
    }
    if v.skip_if_empty {
        return Err(format!("{path}.skip_if_empty: not supported"));
    }
    let Some(filter_state_value::Value::FormatString(format)) = &v.value else {
        return Err(format!("{path}.format_string: required"));
    };
    let text = format_text(format, &format!("{path}.format_string"))?;
    let mut source = Mapping::new();
    put(&mut source, "inline_string", Value::from(text));
    let mut format_string = Mapping::new();
    put(
        &mut format_string,
        "text_format_source",
        Value::Mapping(source),
    );
    put(&mut out, "format_string", Value::Mapping(format_string));
    let shared =
        filter_state_value::SharedWithUpstream::try_from(v.shared_with_upstream).map_err(|_| {
            format!(
                "{path}.shared_with_upstream: {} is not a sharing mode",
                v.shared_with_upstream
            )
        })?;
    if shared != filter_state_value::SharedWithUpstream::None {
        put(
            &mut out,
            "shared_with_upstream",
            Value::from(shared.as_str_name()),
        );
    }
    // Deprecated in Envoy (every value is read-only now), still what older control planes send.
    #[allow(deprecated)]
    let read_only = v.read_only;
    if read_only {
        put(&mut out, "read_only", Value::Bool(true));
    }
    Ok(Value::Mapping(out))
}

/// A format string's text: `text_format_source.inline_string`, or the deprecated `text_format`.
fn format_text(f: &SubstitutionFormatString, path: &str) -> Result<String, String> {
    if f.omit_empty_values
        || !f.content_type.is_empty()
        || !f.formatters.is_empty()
        || f.json_format_options.is_some()
    {
        return Err(format!(
            "{path}: only text_format_source.inline_string is supported"
        ));
    }
    #[allow(deprecated)]
    match &f.format {
        Some(substitution_format_string::Format::TextFormat(text)) => Ok(text.clone()),
        Some(substitution_format_string::Format::TextFormatSource(source))
            if source.watched_directory.is_none() =>
        {
            match &source.specifier {
                Some(data_source::Specifier::InlineString(text)) => Ok(text.clone()),
                _ => Err(format!(
                    "{path}.text_format_source: only inline_string is supported"
                )),
            }
        }
        Some(substitution_format_string::Format::JsonFormat(_)) => {
            Err(format!("{path}.json_format: not supported"))
        }
        _ => Err(format!(
            "{path}: only text_format_source.inline_string is supported"
        )),
    }
}

/// A cluster's transport socket.
pub(super) fn transport_socket(ts: &TransportSocket, path: &str) -> Result<Value, String> {
    transport_socket_at(ts, path, 0)
}

fn transport_socket_at(ts: &TransportSocket, path: &str, depth: usize) -> Result<Value, String> {
    if depth > NESTING_MAX {
        return Err(format!(
            "{path}: transport sockets nested deeper than {NESTING_MAX}"
        ));
    }
    let mut out = Mapping::new();
    put(&mut out, "name", Value::from(ts.name.clone()));
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Ok(Value::Mapping(out));
    };
    let config_path = format!("{path}.typed_config");
    let mut m = Mapping::new();
    match any.type_url.as_str() {
        RAW_BUFFER => put(&mut m, "@type", Value::from(RAW_BUFFER)),
        INTERNAL_UPSTREAM => {
            let upstream = InternalUpstreamTransport::decode(any.value.as_slice())
                .map_err(|err| format!("{config_path}: not an InternalUpstreamTransport: {err}"))?;
            put(&mut m, "@type", Value::from(INTERNAL_UPSTREAM));
            let mut sources = Vec::new();
            for (i, source) in upstream.passthrough_metadata.iter().enumerate() {
                let source_path = format!("{config_path}.passthrough_metadata[{i}]");
                let kind = match source.kind.as_ref().and_then(|k| k.kind.as_ref()) {
                    Some(metadata_kind::Kind::Host(_)) => "host",
                    Some(metadata_kind::Kind::Cluster(_)) => "cluster",
                    Some(_) => {
                        return Err(format!(
                            "{source_path}.kind: only host metadata is supported"
                        ));
                    }
                    None => return Err(format!("{source_path}.kind: required")),
                };
                let mut kind_map = Mapping::new();
                put(&mut kind_map, kind, Value::Mapping(Mapping::new()));
                let mut item = Mapping::new();
                put(&mut item, "kind", Value::Mapping(kind_map));
                put(&mut item, "name", Value::from(source.name.clone()));
                sources.push(Value::Mapping(item));
            }
            if !sources.is_empty() {
                put(&mut m, "passthrough_metadata", Value::Sequence(sources));
            }
            let inner = upstream
                .transport_socket
                .as_ref()
                .ok_or(format!("{config_path}.transport_socket: required"))?;
            put(
                &mut m,
                "transport_socket",
                transport_socket_at(inner, &format!("{config_path}.transport_socket"), depth + 1)?,
            );
        }
        other => {
            return Err(format!(
                "{config_path}: {other:?} is not supported over xDS (supported: {RAW_BUFFER}, {INTERNAL_UPSTREAM})"
            ));
        }
    }
    put(&mut out, "typed_config", Value::Mapping(m));
    Ok(Value::Mapping(out))
}
