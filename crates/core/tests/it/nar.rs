//! Tests: nar.
