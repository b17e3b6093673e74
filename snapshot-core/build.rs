//! Compiles the frozen window's watchdog program (`src/freeze/watchdog/helper.c`)
//! for the target, with the same C compiler the other native dependencies
//! use. The library embeds the executable (`include_bytes!`) and runs it from
//! a memfd: see `src/freeze/watchdog/mod.rs` for why it is a program of its own.

use std::env;
use std::path::PathBuf;

const SOURCE: &str = "src/freeze/watchdog/helper.c";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("seamless-watchdog");
    let compiler = cc::Build::new()
        .cargo_metadata(false)
        .opt_level_str("s")
        .debug(false)
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .get_compiler();
    let mut cmd = compiler.to_command();
    cmd.arg("-std=c11")
        .arg("-s")
        .arg("-o")
        .arg(&out)
        .arg(SOURCE);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cmd:?}: {e}"));
    assert!(
        status.success(),
        "compiling {SOURCE} failed: {cmd:?} exited {status}"
    );
}
