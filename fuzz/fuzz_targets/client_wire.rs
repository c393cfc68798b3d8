//! Fuzz target: the client-facing JSON protocol (`starling::hub::wire`) on arbitrary bytes.
//! See `check_client_wire` in `fuzz/client_wire_checks.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod checks {
    use starling::{hub::wire, proto};
    include!("../client_wire_checks.rs");
}

fuzz_target!(|data: &[u8]| {
    let _ = checks::check_client_wire(data);
});
