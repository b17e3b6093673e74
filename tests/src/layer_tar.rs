//! Reading a pushed image's top layer as the registry serves it: the blob
//! fetched with curl, and its tar entries parsed here (ustar fields, PAX
//! `path`/`uid`/`gid` records and `SCHILY.xattr.*`), independently of the
//! writer under test.

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;

use crate::{Rig, check_cmd};

/// One entry of a layer tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// The type flag (`b'0'` file, `b'5'` directory, `b'1'` hard link, ...).
    pub typeflag: u8,
    /// Numeric owner (PAX `uid` when present).
    pub uid: u64,
    /// Numeric group (PAX `gid` when present).
    pub gid: u64,
    /// The `SCHILY.xattr.*` records, by xattr name.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// The top layer blob of the pushed image `<registry>/<repo>:<tag>`, which
/// must be an uncompressed one (`Compression::None`).
pub fn top_layer_tar(rig: &Rig, repo: &str, tag: &str) -> Vec<u8> {
    let manifest = rig.inspect_raw(&format!("{}/{repo}:{tag}", rig.registry()));
    let top = manifest["layers"]
        .as_array()
        .and_then(|l| l.last())
        .expect("a layer");
    assert_eq!(
        top["mediaType"], "application/vnd.oci.image.layer.v1.tar",
        "an uncompressed layer"
    );
    let digest = top["digest"].as_str().expect("digest");
    let out = rig.new_dir("blob").join("layer.tar");
    check_cmd(
        Command::new("curl")
            .args(["-sSf", "-o"])
            .arg(&out)
            .arg(format!(
                "http://{}/v2/{repo}/blobs/{digest}",
                rig.registry()
            )),
    );
    fs::read(&out).unwrap()
}

fn octal(field: &[u8]) -> u64 {
    let s = String::from_utf8_lossy(field);
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    u64::from_str_radix(s, 8).unwrap_or_else(|e| panic!("octal field {s:?}: {e}"))
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The PAX records (`LEN KEY=VALUE\n`) of an extended header.
fn pax_records(mut data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(sp) = data.iter().position(|b| *b == b' ') {
        let len: usize = String::from_utf8_lossy(&data[..sp])
            .parse()
            .expect("PAX length");
        let rec = &data[sp + 1..len - 1];
        let eq = rec.iter().position(|b| *b == b'=').expect("PAX '='");
        out.push((
            String::from_utf8_lossy(&rec[..eq]).into_owned(),
            rec[eq + 1..].to_vec(),
        ));
        data = &data[len..];
    }
    out
}

/// Every entry of an uncompressed tar, by path (a directory's ends with
/// `/`).
pub fn tar_entries(tar: &[u8]) -> BTreeMap<String, TarEntry> {
    let mut out = BTreeMap::new();
    let mut pax = Vec::new();
    let mut off = 0;
    while off + 512 <= tar.len() && tar[off..off + 512].iter().any(|b| *b != 0) {
        let h = &tar[off..off + 512];
        let size = octal(&h[124..136]) as usize;
        let data = &tar[off + 512..off + 512 + size];
        off += 512 + size.div_ceil(512) * 512;
        if h[156] == b'x' {
            pax = pax_records(data);
            continue;
        }
        let (prefix, name) = (cstr(&h[345..500]), cstr(&h[..100]));
        let mut path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let mut e = TarEntry {
            typeflag: h[156],
            uid: octal(&h[108..116]),
            gid: octal(&h[116..124]),
            xattrs: BTreeMap::new(),
        };
        let number = |v: &[u8]| String::from_utf8_lossy(v).parse().expect("PAX number");
        for (k, v) in pax.drain(..) {
            match k.as_str() {
                "path" => path = String::from_utf8_lossy(&v).into_owned(),
                "uid" => e.uid = number(&v),
                "gid" => e.gid = number(&v),
                _ => {
                    if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                        e.xattrs.insert(x.to_string(), v);
                    }
                }
            }
        }
        out.insert(path, e);
    }
    out
}
