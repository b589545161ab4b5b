//! Bounds checked on the raw text before the YAML parser sees it. libyaml (under serde_yaml_ng)
//! keeps one "possible simple key" per open flow collection and revisits all of them for every
//! token, so its time grows with the square of the flow nesting depth: 400 kB of `[[[[…` took
//! 77 s of CPU. A config is also never megabytes. Both limits are checked in one linear pass and
//! name themselves in the error.

use super::ConfigError;

/// The largest config file origdst reads (a static bootstrap with hundreds of listeners is
/// under 1 MiB).
pub const CONFIG_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The largest document the xDS client makes of pushed resources (the bootstrap with them
/// added): 10 000 service listeners with their clusters come to about 4 MiB; what a control
/// plane can send is bounded again by the gRPC message limit.
pub const PUSHED_CONFIG_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The deepest flow nesting (`[`/`{`) accepted. Envoy configs written as YAML or JSON nest about
/// 15 levels; serde's own recursion limit (128) would refuse deeper documents after parsing them.
pub const FLOW_DEPTH_MAX: usize = 64;

/// Refuses text over `bytes_max` or nested deeper than [`FLOW_DEPTH_MAX`].
pub(crate) fn preflight(text: &str, bytes_max: usize) -> Result<(), ConfigError> {
    if text.len() > bytes_max {
        return Err(ConfigError::new(
            "",
            format!(
                "the config is {} bytes, more than the limit of {bytes_max} bytes",
                text.len()
            ),
        ));
    }
    let (depth, line) = flow_depth(text);
    if depth > FLOW_DEPTH_MAX {
        return Err(ConfigError::new(
            "",
            format!(
                "flow collections (`[` / `{{`) nest {depth} deep at line {line}, more than the limit of {FLOW_DEPTH_MAX}"
            ),
        ));
    }
    Ok(())
}

/// The deepest flow nesting in `text` (and the line where it is first reached), stopping early
/// past the limit. Errs on the deep side: every `[`/`{` outside a quoted scalar opens a level, a
/// quote is taken to start a scalar wherever YAML could start one (after whitespace, an indicator
/// or at a line start), and a closing bracket counts only outside quotes. Over-counting can only
/// refuse an absurd config; under-counting would let the parser's quadratic through.
fn flow_depth(text: &str) -> (usize, usize) {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Plain,
        Single,
        Double,
        Comment,
    }
    let mut state = State::Plain;
    let mut depth = 0usize;
    let mut deepest = (0usize, 1usize);
    let mut line = 1usize;
    let mut previous = b'\n';
    let mut escaped = false;
    let bytes = text.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        index += 1;
        if byte == b'\n' {
            line += 1;
        }
        match state {
            State::Comment => {
                if byte == b'\n' {
                    state = State::Plain;
                }
            }
            State::Single => {
                if byte == b'\'' {
                    if bytes.get(index) == Some(&b'\'') {
                        index += 1; // '' is an escaped quote
                    } else {
                        state = State::Plain;
                    }
                }
            }
            State::Double => {
                if escaped {
                    escaped = false;
                } else if byte == b'\\' {
                    escaped = true;
                } else if byte == b'"' {
                    state = State::Plain;
                }
            }
            State::Plain => {
                let at_token_start = previous.is_ascii_whitespace()
                    || matches!(previous, b'[' | b'{' | b',' | b':' | b'-' | b'?');
                match byte {
                    b'[' | b'{' => {
                        depth += 1;
                        if depth > deepest.0 {
                            deepest = (depth, line);
                            if depth > FLOW_DEPTH_MAX {
                                return deepest;
                            }
                        }
                    }
                    b']' | b'}' => depth = depth.saturating_sub(1),
                    b'\'' if at_token_start => state = State::Single,
                    b'"' if at_token_start => state = State::Double,
                    b'#' if previous.is_ascii_whitespace() => state = State::Comment,
                    _ => {}
                }
            }
        }
        previous = byte;
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flow_nesting_is_refused_in_linear_time_naming_the_limit() {
        // The reported case: 400 kB of nested flow sequences (77 s in the parser before).
        let text = format!(
            "static_resources:\n  listeners: {}{}\n",
            "[".repeat(200_000),
            "]".repeat(200_000)
        );
        // The scan stops at the first level past the limit, before the parser sees anything.
        let err = preflight(&text, CONFIG_BYTES_MAX).unwrap_err();
        assert!(err.reason.contains("limit of 64"), "{err}");
        assert!(err.reason.contains("line 2"), "{err}");
        let err = crate::config::Config::from_yaml(&text).unwrap_err();
        assert!(err.to_string().contains("nest 65 deep"), "{err}");
    }

    #[test]
    fn size_limit_names_itself() {
        let text = format!("# {}\n", "x".repeat(CONFIG_BYTES_MAX));
        let err = preflight(&text, CONFIG_BYTES_MAX).unwrap_err();
        assert!(err.to_string().contains("limit of 4194304 bytes"), "{err}");
    }

    #[test]
    fn brackets_inside_quotes_and_comments_do_not_count() {
        let text = format!(
            "a: \"{}\"\nb: '{}'\n# {}\nc: [[1, 2], {{x: \"]]]\"}}]\n",
            "[".repeat(100),
            "{".repeat(100),
            "[".repeat(100)
        );
        assert_eq!(flow_depth(&text).0, 2);
        preflight(&text, CONFIG_BYTES_MAX).unwrap();
    }

    #[test]
    fn a_quoted_close_cannot_hide_real_nesting() {
        // `[ "]" [ "]" …`: the quoted brackets are skipped, the real ones counted.
        let text = format!("a: {}\n", "[ \"]\", ".repeat(100));
        assert!(flow_depth(&text).0 > FLOW_DEPTH_MAX);
        // An apostrophe inside a plain scalar does not open a quote that hides what follows.
        let text = format!("a: don't\nb: {}\n", "[".repeat(100));
        assert!(flow_depth(&text).0 > FLOW_DEPTH_MAX);
    }

    #[test]
    fn the_embedded_default_and_json_style_configs_pass() {
        preflight(crate::config::DEFAULT_YAML, CONFIG_BYTES_MAX).unwrap();
        let json = r#"{"static_resources": {"listeners": [{"name": "a", "filter_chains": [{"filters": []}]}]}}"#;
        assert_eq!(flow_depth(json).0, 7);
    }
}
