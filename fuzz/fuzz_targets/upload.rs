//! Fuzz target `upload`: see `fuzz/src/upload.rs` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../src/upload.rs"]
mod upload;

fuzz_target!(|data: &[u8]| upload::upload(data, ds_fuzz::verified_pack));
