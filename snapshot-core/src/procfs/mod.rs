//! Parsers of the kernel's `/proc` text files, in one place: mount tables
//! ([`mountinfo`]), a process's cgroups ([`cgroup`]), its memory mappings
//! ([`maps`]), its `stat` line ([`stat`]) and its user namespace's ID maps
//! ([`idmap`]).
//!
//! Invariants: parsers read the kernel's text as bytes and skip lines they
//! cannot parse rather than fail, except the ID maps, where a line skipped
//! would leave host IDs in an image (a typed error); every `\ooo` octal escape is decoded by the
//! one [`unescape_octal`], which never decodes a sequence that is not a byte.

pub(crate) mod cgroup;
pub(crate) mod idmap;
pub(crate) mod maps;
pub(crate) mod mountinfo;
pub(crate) mod stat;

/// Decodes the kernel's `\ooo` octal escapes in one field of a `/proc` file,
/// for the escaped bytes `decodes` accepts (a file whose format escapes only
/// some bytes shows every other backslash literally).
///
/// A backslash followed by three octal digits whose value is above `\377`
/// (`\400`–`\777`) is not a byte, so not an escape: it is kept literally, as
/// is a backslash followed by anything else.
fn unescape_octal(field: &[u8], decodes: impl Fn(u8) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'\\'
            && let Some(value) = octal_byte(tail).filter(|&v| decodes(v))
        {
            out.push(value);
            rest = tail.get(3..).unwrap_or_default();
            continue;
        }
        out.push(b);
        rest = tail;
    }
    out
}

/// The value of the three octal digits `s` starts with, when it is a byte.
fn octal_byte(s: &[u8]) -> Option<u8> {
    let digits = s.get(..3)?;
    let value = digits.iter().try_fold(0u16, |acc, &c| {
        (b'0'..=b'7')
            .contains(&c)
            .then(|| acc * 8 + u16::from(c - b'0'))
    })?;
    u8::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(s: &[u8]) -> Vec<u8> {
        unescape_octal(s, |_| true)
    }

    #[test]
    fn octal_escapes() {
        assert_eq!(all(br"/a\040b"), b"/a b");
        assert_eq!(all(br"/a\134"), b"/a\\");
        assert_eq!(all(br"\011\012"), b"\t\n");
        assert_eq!(all(b"/plain"), b"/plain");
        // The highest byte, and a non-UTF-8 result kept byte for byte.
        assert_eq!(all(br"/x\377"), b"/x\xff");
        assert_eq!(all(br"\000"), b"\0");
        // Above \377: not a byte, so not an escape.
        assert_eq!(all(br"/x\400"), br"/x\400");
        assert_eq!(all(br"/x\777"), br"/x\777");
        // Too short, not octal, or at the end: literal.
        assert_eq!(all(br"/x\04"), br"/x\04");
        assert_eq!(all(br"/x\0"), br"/x\0");
        assert_eq!(all(br"/x\"), br"/x\");
        assert_eq!(all(br"/x\08a"), br"/x\08a");
        assert_eq!(all(br"/x\9000"), br"/x\9000");
        // An escaped backslash followed by digits is not an escape again.
        assert_eq!(all(br"\134040"), br"\040");
        // Digits after a three-digit escape are plain text.
        assert_eq!(all(br"\0401"), b" 1");
        // A literal backslash before an escape.
        assert_eq!(all(br"\\040"), br"\ ");
    }

    #[test]
    fn only_the_chosen_escapes_are_decoded() {
        let newline_only = |s: &[u8]| unescape_octal(s, |b| b == b'\n');
        assert_eq!(newline_only(br"a\012b"), b"a\nb");
        assert_eq!(newline_only(br"a\040b\134"), br"a\040b\134");
    }
}
