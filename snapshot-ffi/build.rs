//! Sets the SONAME of libseamless.so, so that programs linked against it
//! record `libseamless.so.0` and keep working across compatible updates
//! (install.sh installs the libseamless.so.0 symlink chain).

fn main() {
    // Applies to the cdylib only; the staticlib and the test binaries are
    // linked without it.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libseamless.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}
