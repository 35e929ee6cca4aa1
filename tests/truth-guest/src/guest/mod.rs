//! The bare-metal part (target `x86_64-unknown-none` only).

mod arch;
mod boot;
mod console;
mod cpu;
mod hv;
mod kernel;
mod paging;

use console::kprintln;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    kprintln!("truth-guest: fatal: panic: {info}");
    hv::stop(1)
}
