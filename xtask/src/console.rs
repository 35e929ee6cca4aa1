//! The text console (COM1): cleaning GRUB's terminal codes and picking out guest bundles.

use std::collections::BTreeMap;

/// Removes ANSI escape sequences (GRUB's serial terminal draws with them), carriage
/// returns and other control characters except newline and tab.
pub fn clean(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            // CSI: parameters and intermediates up to a final byte 0x40..=0x7e; any
            // other escape is a two-character sequence (ESC 7, ESC c) and is dropped whole.
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The cleaned console's lines.
pub fn lines(raw: &str) -> Vec<String> {
    clean(raw).lines().map(str::to_owned).collect()
}

/// Whether `name` may name a bundle file (no path separators, no leading dot).
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Guest bundles found in console text: lines `[NAME] @gk REST` give, per VM NAME, the
/// text of every REST followed by a newline, in order (see docs/contracts.md). Terminal
/// codes are removed first; names that cannot be file names are left out.
pub fn extract_bundles(raw: &str) -> BTreeMap<String, String> {
    let mut bundles = guest_kit::bundle::bundles_from_console(&clean(raw));
    bundles.retain(|name, _| safe_name(name));
    bundles
}

/// The first line that starts with `prefix`, if any.
pub fn find_line<'a>(lines: &'a [String], prefix: &str) -> Option<&'a str> {
    lines
        .iter()
        .map(String::as_str)
        .find(|l| l.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_strips_grub_terminal_codes_and_cr() {
        let raw = "\x1b[2J\x1b[1;1H\x1b[0mBooting `hypervisor'\r\n\r\nhv: hello\r\n\x1b7";
        assert_eq!(clean(raw), "Booting `hypervisor'\n\nhv: hello\n");
    }

    #[test]
    fn bundles_are_split_per_vm_and_prefix_stripped() {
        let raw = "hv: banner\n\
                   [truth] @gk gk-bundle 1\r\n\
                   [truth] hello, not a bundle line\n\
                   [other] @gk gk-bundle 1\n\
                   [truth] @gk vm truth\n\
                   [truth]@gk missing space\n\
                   [../x] @gk path escape\n\
                   [other] @gk vm other\n";
        let b = extract_bundles(raw);
        assert_eq!(b.len(), 2);
        assert_eq!(b["truth"], "gk-bundle 1\nvm truth\n");
        assert_eq!(b["other"], "gk-bundle 1\nvm other\n");
    }

    #[test]
    fn no_bundle_lines_give_no_bundles() {
        assert!(extract_bundles("hv: stop status=0 reason=done\n[vm] plain\n").is_empty());
    }

    #[test]
    fn find_line_matches_prefix_only() {
        let l = lines("x hv: no\nhv: fatal: VMX unavailable: CPUID\n");
        assert_eq!(
            find_line(&l, "hv: fatal: VMX unavailable:"),
            Some("hv: fatal: VMX unavailable: CPUID")
        );
        assert_eq!(find_line(&l, "hv: stop"), None);
    }
}
