//! Any bytes through the WAL's record decoder: it returns `Ok` or `Err`, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = runtime::wal::fuzz_decode_record(data);
});
