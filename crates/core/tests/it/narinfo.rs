//! Tests: narinfo.
