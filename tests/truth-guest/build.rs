//! Links the bare-metal build at guest-physical 1 MiB with `link.ld`; the host build (a
//! no-op binary plus unit tests) links normally.

fn main() {
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
        println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
        // A plain static executable at its link address: the 32-bit boot code and the
        // exception-stub table use absolute addresses, which a PIE cannot hold.
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
