//! Fuzz target `store_config`: see `ds_fuzz::store_config` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ds_fuzz::store_config(data));
