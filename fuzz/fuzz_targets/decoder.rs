//! Fuzz target: the incremental decoder on an arbitrary stream split at arbitrary points
//! (first two input bytes choose role, size limit and split); whole, split and paused runs
//! must agree. See `check_decoder` in `fuzz/checks.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
// Each target uses one of the shared checks.
#[allow(dead_code)]
mod checks {
    use starling::proto;
    include!("../checks.rs");
}

fuzz_target!(|data: &[u8]| {
    let _ = checks::check_decoder(data);
});
