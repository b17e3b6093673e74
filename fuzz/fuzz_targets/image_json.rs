//! Base image documents (manifest, index, config) read from containerd's
//! content store, and assembling the new image on them: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_snapshot::fuzzing;

const MEDIA_TYPES: [&str; 5] = [
    "",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/x-unknown",
];

fuzz_target!(|data: &[u8]| {
    let Some((&m, json)) = data.split_first() else {
        return;
    };
    fuzzing::image_json(MEDIA_TYPES[usize::from(m) % MEDIA_TYPES.len()], json);
});
