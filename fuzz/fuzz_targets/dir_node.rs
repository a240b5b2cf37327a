//! Fuzz target `dir_node`: see `ds_fuzz::dir_node` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ds_fuzz::dir_node(data));
