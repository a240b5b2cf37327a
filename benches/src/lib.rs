//! Shared helpers for the ds benchmarks.
