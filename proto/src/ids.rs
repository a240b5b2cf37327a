//! Names of tasks and runners, checked once where they enter the program
//! (a gRPC field, a CLI argument, a key listed from the bucket), so that
//! everything past that edge holds a name that is safe as an object key
//! and a file name.

use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadName {
    pub what: &'static str,
    pub name: String,
    pub why: &'static str,
}

impl fmt::Display for BadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} {:?}: {}", self.what, self.name, self.why)
    }
}

impl std::error::Error for BadName {}

fn check(what: &'static str, name: &str, max: usize) -> Result<(), BadName> {
    let why = if name.len() > max {
        "too long"
    } else if let Some(why) = ds_format::name::fault(name) {
        why
    } else {
        return Ok(());
    };
    Err(BadName {
        what,
        name: name.to_string(),
        why,
    })
}

macro_rules! name_type {
    ($(#[$m:meta])* $t:ident, $what:literal, $max:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $t(String);

        impl $t {
            pub fn new(s: &str) -> Result<$t, BadName> {
                check($what, s, $max).map(|()| $t(s.to_string()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $t {
            type Err = BadName;
            fn from_str(s: &str) -> Result<$t, BadName> {
                $t::new(s)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A task's id: `t` + 12 hex digits of its submission time in
    /// milliseconds + 8 random hex digits, so ids sort by submission time.
    TaskId,
    "task id",
    64
);
name_type!(
    /// A runner's name, fixed by its token (`ds token --runner NAME`).
    RunnerName,
    "runner name",
    64
);

impl TaskId {
    /// A fresh id for a task submitted at `ms` (Unix milliseconds);
    /// `random` makes ids of one millisecond distinct.
    pub fn generate(ms: u64, random: u32) -> TaskId {
        TaskId(format!("t{ms:012x}{random:08x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_sort_by_time() {
        let a = TaskId::generate(1_700_000_000_000, 0xffff_ffff);
        let b = TaskId::generate(1_700_000_000_001, 0);
        assert!(a < b);
        assert_eq!(TaskId::new(&a).unwrap(), a);
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        for bad in ["", "../x", "a/b", ".hidden", "-x", "nul\0", &"x".repeat(65)] {
            let e = RunnerName::new(bad).unwrap_err();
            assert_eq!(e.what, "runner name");
        }
        assert!(TaskId::new("t0123").is_ok());
    }
}
