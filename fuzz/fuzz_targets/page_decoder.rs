//! Any bytes through every B-tree page decoder: they return `Ok` or `Err`, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Short inputs are padded to a page so that the decoders behind the size check run too.
    let mut page = data.to_vec();
    if page.len() < runtime::btree::PAGE_BYTES {
        page.resize(runtime::btree::PAGE_BYTES, 0);
    }
    let _ = runtime::btree::fuzz_decode_page(&page);
    let _ = runtime::btree::fuzz_decode_page(data);
});
