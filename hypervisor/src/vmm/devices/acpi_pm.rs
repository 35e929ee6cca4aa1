//! The ACPI hardware-reduced power-management registers the guest's FADT points at
//! (`loader::acpi`): the sleep control register (S5 = power off), the sleep status register
//! and the reset register. They are all a guest needs to power itself off or restart.
//!
//! ACPI 6.4 section 4.8.3.7: writing SLP_TYP with SLP_EN set to the sleep control register
//! enters that sleep state; our DSDT's `_S5_` package gives SLP_TYP 5 for S5.

use loader::acpi::{RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, SLP_EN};

/// Bits 2..=4 of the sleep control register: the sleep type.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// The sleep type our `_S5_` object announces.
const SLP_TYP_S5: u8 = loader::acpi::SLP_TYP_S5;

/// What a write asked of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmRequest {
    None,
    /// S5: the VM powers off.
    PowerOff,
    /// The reset register: the VM restarts (the hypervisor stops it, reporting the reset).
    Reset,
    /// SLP_EN with a sleep type other than S5 (S1-S4 are not offered): ignored, counted.
    UnsupportedSleep(u8),
}

/// The registers' state: nothing survives a write but the last sleep control value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcpiPm {
    sleep_control: u8,
}

impl AcpiPm {
    /// Whether `port` is one of the three registers.
    pub fn decodes(port: u16) -> bool {
        port == SLEEP_CONTROL_PORT || port == SLEEP_STATUS_PORT || port == RESET_PORT
    }

    /// A guest IN: sleep control reads back without SLP_EN (write-only bit); status and
    /// reset read 0 (no wake event pending).
    pub fn read(&self, port: u16) -> u8 {
        if port == SLEEP_CONTROL_PORT {
            self.sleep_control & !SLP_EN
        } else {
            0
        }
    }

    /// A guest OUT.
    pub fn write(&mut self, port: u16, value: u8) -> PmRequest {
        if port == SLEEP_CONTROL_PORT {
            self.sleep_control = value;
            if value & SLP_EN == 0 {
                return PmRequest::None;
            }
            let kind = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
            if kind == SLP_TYP_S5 {
                PmRequest::PowerOff
            } else {
                PmRequest::UnsupportedSleep(kind)
            }
        } else if port == RESET_PORT && value == RESET_VALUE {
            PmRequest::Reset
        } else {
            PmRequest::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_poweroff_write_is_s5() {
        let mut pm = AcpiPm::default();
        // drivers/acpi/acpica/hwxfsleep.c: SLP_TYP first, then SLP_TYP | SLP_EN.
        assert_eq!(pm.write(SLEEP_CONTROL_PORT, 5 << 2), PmRequest::None);
        assert_eq!(pm.read(SLEEP_CONTROL_PORT), 5 << 2);
        assert_eq!(
            pm.write(SLEEP_CONTROL_PORT, (5 << 2) | 0x20),
            PmRequest::PowerOff
        );
        assert_eq!(pm.read(SLEEP_CONTROL_PORT), 5 << 2, "SLP_EN reads as 0");
    }

    #[test]
    fn other_sleep_states_and_resets() {
        let mut pm = AcpiPm::default();
        assert_eq!(
            pm.write(SLEEP_CONTROL_PORT, (3 << 2) | 0x20),
            PmRequest::UnsupportedSleep(3)
        );
        assert_eq!(pm.write(RESET_PORT, RESET_VALUE), PmRequest::Reset);
        assert_eq!(pm.write(RESET_PORT, RESET_VALUE ^ 0xff), PmRequest::None);
        assert_eq!(pm.read(SLEEP_STATUS_PORT), 0);
        assert!(AcpiPm::decodes(RESET_PORT) && !AcpiPm::decodes(0x3f8));
    }
}
