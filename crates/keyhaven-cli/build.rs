//! Link settings for the `keyhaven` binary.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // Pack the ~42k relative relocations of the position-independent binary as DT_RELR
        // (12 KB instead of 1 MB of `.rela.dyn`, which the dynamic loader reads in full at
        // every start: about 1 MB less resident memory). Needs glibc >= 2.36 at run time
        // and a linker that knows the flag (lld >= 15, GNU ld >= 2.38).
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
