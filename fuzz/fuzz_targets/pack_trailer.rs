//! Fuzz target `pack_trailer`: see `ds_fuzz::pack_trailer` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ds_fuzz::pack_trailer(data));
