//! The `.netrc` file format, as curl (and so Nix) reads it: tokens
//! separated by white space; `machine NAME` (or `default`) starts an entry
//! whose `login` and `password` follow; `macdef NAME` starts a macro that
//! runs to the next blank line and is skipped.

/// Login and password for a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// The user name.
    pub(crate) login: String,
    /// The password.
    pub(crate) password: String,
}

/// One entry: a host (`None` for `default`) and what it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    machine: Option<String>,
    login: Option<String>,
    password: Option<String>,
}

/// A parsed `.netrc` file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Netrc {
    entries: Vec<Entry>,
}

impl Netrc {
    /// Parses the text of a `.netrc` file. Parsing never fails: unknown
    /// tokens are skipped, as by curl.
    pub(crate) fn parse(text: &str) -> Self {
        let mut entries: Vec<Entry> = Vec::new();
        let mut lines = text.lines();
        // Tokens are read line by line so that a `macdef` body (which ends
        // at a blank line) can be skipped.
        let mut pending: Vec<String> = Vec::new();
        loop {
            if pending.is_empty() {
                match lines.next() {
                    Some(line) => {
                        pending = line.split_whitespace().rev().map(str::to_owned).collect();
                        continue;
                    }
                    None => break,
                }
            }
            let Some(token) = pending.pop() else { continue };
            let mut value = |pending: &mut Vec<String>| -> Option<String> {
                loop {
                    if let Some(v) = pending.pop() {
                        return Some(v);
                    }
                    *pending = lines
                        .next()?
                        .split_whitespace()
                        .rev()
                        .map(str::to_owned)
                        .collect();
                }
            };
            match token.as_str() {
                "machine" => {
                    let machine = value(&mut pending);
                    entries.push(Entry {
                        machine: Some(machine.unwrap_or_default()),
                        login: None,
                        password: None,
                    });
                }
                "default" => entries.push(Entry {
                    machine: None,
                    login: None,
                    password: None,
                }),
                "login" | "password" => {
                    let v = value(&mut pending);
                    if let (Some(entry), Some(v)) = (entries.last_mut(), v) {
                        if token == "login" {
                            entry.login = Some(v);
                        } else {
                            entry.password = Some(v);
                        }
                    }
                }
                "account" => {
                    value(&mut pending);
                }
                "macdef" => {
                    pending.clear();
                    for line in lines.by_ref() {
                        if line.trim().is_empty() {
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
        Self { entries }
    }

    /// The credentials for `host`: the first entry naming it, else the
    /// `default` entry. An entry without a login gives none.
    pub(crate) fn lookup(&self, host: &str) -> Option<Credentials> {
        let entry = self
            .entries
            .iter()
            .find(|e| {
                e.machine
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(host))
            })
            .or_else(|| self.entries.iter().find(|e| e.machine.is_none()))?;
        Some(Credentials {
            login: entry.login.clone()?,
            password: entry.password.clone().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(login: &str, password: &str) -> Option<Credentials> {
        Some(Credentials {
            login: login.to_owned(),
            password: password.to_owned(),
        })
    }

    #[test]
    fn machines_default_and_macros() {
        let n = Netrc::parse(
            "machine cache.example.org login alice password s3cret\n\
             macdef init\nmachine evil login x password y\n\n\
             machine other.example\n  login bob\n  password pw\n\
             default login anon password guest\n",
        );
        assert_eq!(n.lookup("cache.example.org"), creds("alice", "s3cret"));
        assert_eq!(n.lookup("CACHE.example.org"), creds("alice", "s3cret"));
        assert_eq!(n.lookup("other.example"), creds("bob", "pw"));
        assert_eq!(n.lookup("evil"), creds("anon", "guest"));
        assert_eq!(Netrc::parse("machine a password p").lookup("a"), None);
        assert_eq!(Netrc::parse("").lookup("a"), None);
        assert_eq!(Netrc::parse("machine").lookup("a"), None);
        assert_eq!(Netrc::parse("login x machine a").lookup("a"), None);
    }
}
