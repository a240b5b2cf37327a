//! `--dataset NAME[@SNAP]:PATH`: the one parser of a task's dataset
//! mounts and the one check of where they may go, used by the CLI (to
//! fail before submitting), the hub (to refuse a bad spec from any
//! client) and the runner (which trusts nothing it is sent).
//!
//! A relative PATH is under the workload's home (the workspace); it must
//! be plain components, so no mount can land outside the home or over it.
//! An absolute PATH is a place in the container (docker executor only),
//! never `/`, nor the home itself or a system directory the container
//! needs to start.

use std::fmt;

use crate::runner::DatasetMount;

/// Where a dataset appears to the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Under the home directory: its components.
    Home(Vec<String>),
    /// An absolute path in the container.
    Container(String),
}

impl Target {
    /// The path as given in the spec (relative paths joined with `/`).
    pub fn spec_path(&self) -> String {
        match self {
            Target::Home(c) => c.join("/"),
            Target::Container(p) => p.clone(),
        }
    }
}

/// Why a dataset mount was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMount(pub String);

impl fmt::Display for BadMount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadMount {}

/// Most datasets one task may mount.
pub const MAX_DATASETS: usize = 32;

/// Directories a container needs as its image made them.
const RESERVED: &[&str] = &[
    "/bin", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin", "/sys", "/usr",
];

/// Parses `NAME[@SNAP]:PATH` (NAME and SNAP hold no `:`; PATH may).
pub fn parse(arg: &str) -> Result<DatasetMount, BadMount> {
    let (what, path) = arg.split_once(':').ok_or_else(|| {
        BadMount(format!(
            "{arg:?} is not NAME[@SNAPSHOT]:PATH (e.g. images:data/images, or \
             images@3fa9c1:/data in a container)"
        ))
    })?;
    let (name, at) = match what.split_once('@') {
        Some((n, a)) => (n, a),
        None => (what, ""),
    };
    if name.is_empty() {
        return Err(BadMount(format!("{arg:?} names no dataset")));
    }
    if what.contains('@') && at.is_empty() {
        return Err(BadMount(format!("{arg:?}: empty snapshot after '@'")));
    }
    let m = DatasetMount {
        name: name.to_string(),
        at: at.to_string(),
        snapshot: Vec::new(),
        path: path.to_string(),
    };
    target(&m)?;
    Ok(m)
}

/// Checks a mount's `at` and `path`; returns where it goes.
pub fn target(m: &DatasetMount) -> Result<Target, BadMount> {
    let bad = |why: &str| {
        Err(BadMount(format!(
            "dataset {:?} at {:?}: {why}",
            m.name, m.path
        )))
    };
    if !m.at.is_empty() && (m.at.len() > 64 || !m.at.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(BadMount(format!(
            "dataset {:?}: {:?} is not a snapshot id (hex digits, a prefix will do)",
            m.name, m.at
        )));
    }
    let p = m.path.as_str();
    if p.is_empty() {
        return bad("no path to mount it at");
    }
    if p.len() > 1024 || p.contains('\0') {
        return bad("not a usable path");
    }
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == "." || *c == "..") {
        return bad("'.' and '..' are not allowed in the path");
    }
    if parts.iter().any(|c| c.len() > 255) {
        return bad("a component is longer than 255 bytes");
    }
    if parts.is_empty() {
        return bad("it cannot replace the root or the home directory");
    }
    if !p.starts_with('/') {
        return Ok(Target::Home(parts.iter().map(|c| c.to_string()).collect()));
    }
    let abs = format!("/{}", parts.join("/"));
    // Inside the container's home: the same as the relative path.
    let home = crate::HOME_IN_CONTAINER;
    if abs == home {
        return bad("it cannot replace the home directory (the workspace)");
    }
    if let Some(rest) = abs.strip_prefix(&format!("{home}/")) {
        return Ok(Target::Home(rest.split('/').map(str::to_string).collect()));
    }
    if RESERVED
        .iter()
        .any(|r| abs == *r || abs.starts_with(&format!("{r}/")))
    {
        return bad("a system directory of the container");
    }
    Ok(Target::Container(abs))
}

/// Checks a task's mounts together: how many, and no two at one place or
/// one inside another.
pub fn check_all(ms: &[DatasetMount]) -> Result<Vec<Target>, BadMount> {
    if ms.len() > MAX_DATASETS {
        return Err(BadMount(format!(
            "{} datasets; a task may mount at most {MAX_DATASETS}",
            ms.len()
        )));
    }
    let ts: Vec<Target> = ms.iter().map(target).collect::<Result<_, _>>()?;
    let key = |t: &Target| match t {
        Target::Home(c) => format!("{}/{}/", crate::HOME_IN_CONTAINER, c.join("/")),
        Target::Container(p) => format!("{p}/"),
    };
    for (i, a) in ts.iter().enumerate() {
        for b in &ts[i + 1..] {
            let (ka, kb) = (key(a), key(b));
            if ka.starts_with(&kb) || kb.starts_with(&ka) {
                return Err(BadMount(format!(
                    "two datasets mounted at {:?} and {:?}: one would hide the other",
                    a.spec_path(),
                    b.spec_path()
                )));
            }
        }
    }
    Ok(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_places() {
        let m = parse("imgs@ab12:data/imgs").unwrap();
        assert_eq!((m.name.as_str(), m.at.as_str()), ("imgs", "ab12"));
        assert_eq!(
            target(&m).unwrap(),
            Target::Home(vec!["data".into(), "imgs".into()])
        );
        let m = parse("imgs:/data").unwrap();
        assert_eq!(target(&m).unwrap(), Target::Container("/data".into()));
        let m = parse("imgs://home/ds//x/").unwrap();
        assert_eq!(target(&m).unwrap(), Target::Home(vec!["x".into()]));
        let m = parse("imgs:/mnt/a:b").unwrap();
        assert_eq!(m.path, "/mnt/a:b");
    }

    #[test]
    fn refuses_what_could_escape_or_hide() {
        for bad in [
            "imgs",
            ":x",
            "imgs@:x",
            "imgs@xyz:x",
            "imgs:",
            "imgs:/",
            "imgs:.",
            "imgs:a/../b",
            "imgs:../x",
            "imgs:/home/ds",
            "imgs:/etc",
            "imgs:/usr/lib",
            "imgs:/proc/x",
            "imgs:a\0b",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        let two = |a: &str, b: &str| check_all(&[parse(a).unwrap(), parse(b).unwrap()]);
        assert!(two("a:x", "b:x/y").is_err());
        assert!(two("a:/home/ds/x", "b:x").is_err());
        assert!(two("a:/data", "b:/data/more").is_err());
        assert!(two("a:x", "b:xy").is_ok());
        assert!(two("a:/data", "b:data").is_ok());
    }
}
