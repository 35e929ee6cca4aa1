fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.contains("vmm") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
        // Keep file offsets small: the Multiboot2 header must sit in the first 32 KiB.
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
        println!("cargo:rerun-if-changed=linker.ld");
        println!("cargo:rerun-if-changed=src/boot/entry.s");
    }
}
