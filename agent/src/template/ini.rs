//! INI files (`.ini`, `.cfg`) have no escapes and no one standard. Readers strip the spaces
//! around a value and end it at a line break; many read `;` or `#` as the start of a comment,
//! and Python's `configparser` reads `%` as an interpolation. So a value is written as it is only
//! when every common reader reads it back the same, and any other value is refused at precheck:
//! it never reaches the service altered. (A `|raw` filter writes it anyway, at the plan's risk.)

use std::path::Path;

/// Whether `path` names an INI file.
pub fn is_ini(path: &str) -> bool {
    Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "ini" | "cfg"))
}

/// Why `value` cannot be written as an INI value exactly, if it cannot.
pub fn unwritable(value: &str) -> Option<&'static str> {
    if value.trim() != value {
        Some("INI readers strip the spaces around a value")
    } else if value.contains(['\n', '\r']) {
        Some("a line break ends an INI value")
    } else if value
        .chars()
        .any(|c| c.is_control() || is_line_separator(c))
    {
        Some("INI readers differ on control characters and line separators")
    } else if value.contains('%') {
        Some("`%` starts an interpolation in Python's configparser")
    } else if value.contains([';', '#']) {
        Some("`;` and `#` start a comment in many INI readers")
    } else {
        None
    }
}

/// Characters some readers split lines at (Python's `str.splitlines`).
fn is_line_separator(c: char) -> bool {
    matches!(c, '\u{1c}'..='\u{1e}' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests;
