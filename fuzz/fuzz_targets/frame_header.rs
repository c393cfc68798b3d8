//! Fuzz target: `FrameHeader::parse` on arbitrary bytes, with the prefix and re-encode
//! properties of `fuzz/checks.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
// Each target uses one of the shared checks.
#[allow(dead_code)]
mod checks {
    use starling::proto;
    include!("../checks.rs");
}

fuzz_target!(|data: &[u8]| {
    let _ = checks::check_frame_header(data);
});
