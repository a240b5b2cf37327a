//! Fuzz target `snapshot`: see `ds_fuzz::snapshot` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ds_fuzz::snapshot(data));
