//! Tests: signing.
