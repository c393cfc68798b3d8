//! Fuzz target: close payload parsing and building, alone and inside a decoded Close frame.
//! See `check_close_payload` in `fuzz/checks.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
// Each target uses one of the shared checks.
#[allow(dead_code)]
mod checks {
    use starling::proto;
    include!("../checks.rs");
}

fuzz_target!(|data: &[u8]| {
    let _ = checks::check_close_payload(data);
});
