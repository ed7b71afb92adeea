//! The security regression suite: hostile input at every entry point, each
//! case with its expected outcome.

mod tamper;
