//! Fuzz target `run`: see `ds_fuzz::run` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ds_fuzz::run(data));
