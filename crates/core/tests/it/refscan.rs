//! Tests: refscan.
