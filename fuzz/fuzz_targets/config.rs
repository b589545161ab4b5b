//! Any bytes as a config file: an error naming a field, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use origdst_core::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(err) = Config::from_yaml(text)
    {
        assert!(!err.reason.is_empty());
    }
});
