//! Finding store path references in content.
