//! Fuzz target `pack_verify`: see `ds_fuzz::pack_verify` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ds_fuzz::pack_verify(data));
