//! Thin wrappers over the Linux interfaces the mechanisms share: fd-relative
//! traversal of a tree someone else controls ([`fs`]) and extended attributes
//! ([`xattr`]). Each concern has exactly one implementation here; nothing in
//! this module knows about captures, layers or containers.

pub(crate) mod fs;
pub(crate) mod xattr;
