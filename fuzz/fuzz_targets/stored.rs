//! Fuzz target `stored`: see `ds_fuzz::stored` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ds_fuzz::stored(data));
