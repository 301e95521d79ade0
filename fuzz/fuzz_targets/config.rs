//! Config parsing and validation: any text gets a typed config or a `ConfigError`, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mfa_gateway::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Relative paths (certificates, keys) resolve against an empty folder.
    let empty = std::env::temp_dir().join("mfa-gateway-fuzz-empty");
    match Config::parse(text, "fuzz.toml", Some(&empty)) {
        Ok(_) => {}
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("fuzz.toml"), "error does not name the file: {msg}");
        }
    }
});
