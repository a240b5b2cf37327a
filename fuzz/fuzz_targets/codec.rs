//! Fuzz target `codec`: see `ds_fuzz::codec` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ds_fuzz::codec(data));
