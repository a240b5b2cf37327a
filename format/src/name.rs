//! The one rule for names that become file names and object keys
//! (workspaces, tasks, runners): letters, digits, `.`, `_` and `-`, not
//! starting with `.` or `-`, not empty. Each caller adds its own length
//! limit and error type.

/// Why `name` breaks the rule, or `None` if it keeps it.
pub fn fault(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.starts_with(['.', '-']) {
        Some("starts with '.' or '-'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        Some("only letters, digits, '.', '_' and '-' are allowed")
    } else {
        None
    }
}
