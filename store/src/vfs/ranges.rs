//! A set of disjoint byte ranges: which bytes of a file live in its overlay.
//!
//! Why a dedicated type: the dirty layer's whole point is knowing *exactly*
//! which bytes changed, so that a snapshot re-chunks only around them. Ranges
//! are kept merged (no two touch), so the set stays as small as the number of
//! separate edits.

use std::collections::BTreeMap;
use std::ops::Range;

/// Disjoint, non-touching half-open ranges, keyed by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Total bytes covered.
    pub fn len_bytes(&self) -> u64 {
        self.map.iter().map(|(s, e)| e - s).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(s, e)| *s..*e)
    }

    /// Adds `r`, merging with neighbours it overlaps or touches.
    pub fn insert(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let (mut s, mut e) = (r.start, r.end);
        // A range starting before s may reach into (or touch) s.
        if let Some((&ps, &pe)) = self.map.range(..=s).next_back()
            && pe >= s
        {
            s = ps;
            e = e.max(pe);
            self.map.remove(&ps);
        }
        while let Some((&ns, &ne)) = self.map.range(s..).next() {
            if ns > e {
                break;
            }
            e = e.max(ne);
            self.map.remove(&ns);
        }
        self.map.insert(s, e);
    }

    /// Removes every byte at or after `at`.
    pub fn truncate(&mut self, at: u64) {
        let later: Vec<u64> = self.map.range(at..).map(|(s, _)| *s).collect();
        for s in later {
            self.map.remove(&s);
        }
        if let Some((&s, e)) = self.map.range_mut(..at).next_back()
            && *e > at
        {
            *e = at;
            debug_assert!(s < at);
        }
    }

    /// The ranges that overlap `r`, clipped to it, in order.
    pub fn overlapping(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        if r.is_empty() {
            return out;
        }
        let first = self
            .map
            .range(..=r.start)
            .next_back()
            .map(|(s, _)| *s)
            .unwrap_or(r.start);
        for (&s, &e) in self.map.range(first..r.end) {
            let (a, b) = (s.max(r.start), e.min(r.end));
            if a < b {
                out.push(a..b);
            }
        }
        out
    }

    /// The first range that ends after `pos` (it may start after `pos`).
    pub fn next_after(&self, pos: u64) -> Option<Range<u64>> {
        if let Some((&s, &e)) = self.map.range(..=pos).next_back()
            && e > pos
        {
            return Some(s..e);
        }
        self.map.range(pos..).next().map(|(s, e)| *s..*e)
    }

    pub fn from_ranges(rs: impl IntoIterator<Item = Range<u64>>) -> Self {
        let mut s = RangeSet::default();
        for r in rs {
            s.insert(r);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_clips() {
        let mut s = RangeSet::default();
        s.insert(10..20);
        s.insert(30..40);
        s.insert(20..25); // touches: merges
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![10..25, 30..40]);
        s.insert(5..35);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![5..40]);
        assert_eq!(s.overlapping(0..8), vec![5..8]);
        assert_eq!(s.overlapping(38..50), vec![38..40]);
        s.truncate(12);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![5..12]);
        assert_eq!(s.next_after(0), Some(5..12));
        assert_eq!(s.next_after(12), None);
        assert_eq!(s.len_bytes(), 7);
    }
}
