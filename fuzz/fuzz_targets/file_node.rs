//! Fuzz target `file_node`: see `ds_fuzz::file_node` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ds_fuzz::file_node(data));
