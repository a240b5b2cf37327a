//! Object keys ↔ paths in a tree, reversibly.
//!
//! Why: an S3 key is any UTF-8 string up to 1,024 bytes, and many are not
//! paths a filesystem accepts: `a//b` (an empty component), `../x`, `a/`
//! (a "directory marker"), components longer than NAME_MAX (255 bytes),
//! or a key `a` beside keys `a/b` (a name that is both a file and a
//! directory). A mirror must keep every key and say which ones it mapped;
//! an export must give back the exact keys. So each `/`-separated segment
//! of a key becomes one or more path components by these rules:
//!
//! - **plain**: a segment that is a valid name (1–255 bytes, not `.` or
//!   `..`, no NUL) and does not start with `%` is kept as it is. Almost every
//!   real key is all plain, and maps to itself.
//! - **escaped**: otherwise the segment becomes `%` followed by the segment
//!   with every byte outside `[A-Za-z0-9._~-]` written as `%XX`: the empty
//!   segment is `%`, `..` is `%..`, `%x` is `%%25x`.
//! - **file beside a directory**: the last segment of a key that is also
//!   a directory of other keys is written `%!` + the escaped form; a
//!   directory component never starts with `%!` (`!` is always escaped),
//!   so the two cannot meet.
//! - **long**: a form longer than 255 bytes is cut into pieces of at most
//!   253 bytes; every piece but the last becomes a directory `%+piece`, the
//!   last is a component of its own (a cut never makes a piece start with
//!   `%`, and escaped forms never contain `%+`, since `+` is escaped).
//!
//! Decoding reads components left to right: `%+p` pieces are joined with
//! what follows, then the joined form is decoded (plain as is, `%!`/`%`
//! forms percent-decoded); segments are joined by `/`. Since decoding is a
//! function of the path alone, two different keys can never map to one
//! path.

use std::collections::HashSet;

/// The longest component a path may have (Linux's NAME_MAX: what the
/// filesystems ds restores onto accept).
pub const NAME_MAX: usize = 255;
const PIECE: usize = 253;

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-')
}

fn is_plain(seg: &str) -> bool {
    !seg.is_empty()
        && seg.len() <= NAME_MAX
        && seg != "."
        && seg != ".."
        && !seg.starts_with('%')
        && !seg.contains('\0')
}

fn escape(seg: &str, out: &mut String) {
    for &b in seg.as_bytes() {
        if is_unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The single-string form of one segment.
fn form(seg: &str, file_beside_dir: bool) -> String {
    if file_beside_dir {
        let mut s = String::from("%!");
        escape(seg, &mut s);
        s
    } else if is_plain(seg) {
        seg.to_string()
    } else {
        let mut s = String::from("%");
        escape(seg, &mut s);
        s
    }
}

/// Cuts a form into components (see the module doc).
fn pieces(form: String, out: &mut Vec<String>) {
    if form.len() <= NAME_MAX {
        out.push(form);
        return;
    }
    let mut rest = form.as_str();
    while rest.len() > NAME_MAX {
        let mut cut = PIECE;
        while !rest.is_char_boundary(cut) || rest[cut..].starts_with('%') && cut > 1 {
            cut -= 1;
        }
        out.push(format!("%+{}", &rest[..cut]));
        rest = &rest[cut..];
    }
    out.push(rest.to_string());
}

/// The path components of `key`; `file_beside_dir` when other keys have
/// `key/` as a prefix (see [`map_all`]).
pub fn key_to_path(key: &str, file_beside_dir: bool) -> Vec<String> {
    let segs: Vec<&str> = key.split('/').collect();
    let mut out = Vec::with_capacity(segs.len());
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        pieces(form(seg, last && file_beside_dir), &mut out);
    }
    out
}

/// Whether a key maps to itself (every segment plain, no file beside a
/// directory of the same name).
pub fn is_identity(key: &str, path: &[String]) -> bool {
    path.len() == key.split('/').count() && path.iter().zip(key.split('/')).all(|(p, s)| p == s)
}

/// Maps a whole key space: every key's path, with the file-beside-directory
/// rule applied where keys need it. The result is in the input's order.
pub fn map_all<'a>(keys: impl Iterator<Item = &'a str> + Clone) -> Vec<Vec<String>> {
    // Directories (as key prefixes ending in '/') that some key implies.
    let mut dirs: HashSet<&str> = HashSet::new();
    for k in keys.clone() {
        let mut from = 0;
        while let Some(i) = k[from..].find('/') {
            dirs.insert(&k[..from + i]);
            from += i + 1;
        }
    }
    keys.map(|k| key_to_path(k, dirs.contains(k))).collect()
}

/// Why a path is not one [`key_to_path`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPath(pub String);

fn unescape(body: &str) -> Result<String, BadPath> {
    let b = body.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = body
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| BadPath(format!("bad escape in {body:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| BadPath(format!("{body:?} decodes to bytes that are not UTF-8")))
}

/// The key a path (its components) stands for.
pub fn path_to_key<S: AsRef<str>>(components: &[S]) -> Result<String, BadPath> {
    let mut key = String::new();
    let mut joined = String::new();
    let mut segments = 0;
    for c in components {
        let c = c.as_ref();
        if let Some(p) = c.strip_prefix("%+") {
            joined.push_str(p);
            continue;
        }
        joined.push_str(c);
        let seg = if let Some(body) = joined.strip_prefix("%!") {
            unescape(body)?
        } else if let Some(body) = joined.strip_prefix('%') {
            unescape(body)?
        } else {
            std::mem::take(&mut joined)
        };
        if segments > 0 {
            key.push('/');
        }
        key.push_str(&seg);
        segments += 1;
        joined.clear();
    }
    if !joined.is_empty() {
        return Err(BadPath("a path that ends inside a long segment".into()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(c: &str) -> bool {
        !c.is_empty() && c.len() <= NAME_MAX && c != "." && c != ".." && !c.contains(['/', '\0'])
    }

    #[test]
    fn plain_keys_map_to_themselves() {
        for k in ["a", "data/train.csv", "x y/é+z", "a.b/c~d-e_f"] {
            let p = key_to_path(k, false);
            assert!(is_identity(k, &p), "{k}: {p:?}");
            assert_eq!(path_to_key(&p).unwrap(), k);
        }
    }

    #[test]
    fn awkward_keys_map_to_valid_paths_and_back() {
        let long = "x".repeat(1024);
        let long_multibyte = "é".repeat(400);
        let keys = [
            "a//b",
            "../x",
            "a/",
            "/lead",
            ".",
            "..",
            "%",
            "%41",
            "a/%!b",
            "%+a",
            "",
            "a\0b",
            long.as_str(),
            long_multibyte.as_str(),
            "a/b",
            "a",
        ];
        let paths = map_all(keys.iter().copied());
        let mut seen = HashSet::new();
        for (k, p) in keys.iter().zip(&paths) {
            assert!(p.iter().all(|c| valid(c)), "{k:?} → {p:?}");
            assert_eq!(&path_to_key(p).unwrap(), k, "{p:?}");
            assert!(seen.insert(p.clone()), "two keys on {p:?}");
        }
        // `a` is a file beside the directory `a` of `a/b`.
        assert_eq!(paths[15], vec!["%!a".to_string()]);
        assert_eq!(paths[0], vec!["a", "%", "b"]);
        // `a/` is a file beside the directory `a/` of `a//b`.
        assert_eq!(paths[2], vec!["a", "%!"]);
    }

    proptest::proptest! {
        /// Any key set over an alphabet of awkward bytes: every path is
        /// valid, decodes to its key, and no file lies where another key
        /// needs a directory.
        #[test]
        fn any_key_space_maps_to_a_valid_tree(
            keys in proptest::collection::btree_set("[a/.%!+é]{0,12}|[ab/]{250,600}", 1..40)
        ) {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let paths = map_all(keys.iter().copied());
            let files: HashSet<&Vec<String>> = paths.iter().collect();
            proptest::prop_assert_eq!(files.len(), keys.len(), "two keys on one path");
            for (k, p) in keys.iter().zip(&paths) {
                proptest::prop_assert!(p.iter().all(|c| valid(c)), "{:?} → {:?}", k, p);
                proptest::prop_assert_eq!(&path_to_key(p).unwrap(), k);
                for n in 1..p.len() {
                    proptest::prop_assert!(!files.contains(&p[..n].to_vec()), "{:?} is a file and a directory", &p[..n]);
                }
            }
        }
    }
}
