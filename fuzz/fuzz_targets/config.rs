//! `Config::from_str` on arbitrary TOML text: an operator's typo (or a hostile config
//! management template) is an error naming file:line:col, never a panic, and never a huge
//! allocation from a size the text declares.
#![no_main]

use augur::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match Config::from_str(text, "fuzz.toml") {
        Ok(config) => {
            let _ = config.warnings();
        }
        Err(e) => assert!(e.0.starts_with("fuzz.toml"), "{e}"),
    }
});
