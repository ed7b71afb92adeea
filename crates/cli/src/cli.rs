//! Command-line syntax: subcommands grouped by noun.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Move Nix store closures around: NARs, narinfos, signatures, caches.
#[derive(Debug, Parser)]
#[command(name = "nixferry", version, about, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Set a Nix setting for this command, as `nix --option NAME VALUE`
    /// does (`extra-NAME` adds to a list); it wins over Nix's
    /// configuration files and `NIX_CONFIG`. Repeatable.
    #[arg(
        long = "option",
        global = true,
        num_args = 2,
        value_names = ["NAME", "VALUE"],
        action = clap::ArgAction::Append
    )]
    pub(crate) options: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// NAR archives: dump, restore, list, extract, hash.
    #[command(subcommand)]
    Nar(NarCommand),
    /// Store paths: compute the path Nix would give to content.
    #[command(subcommand, name = "store-path")]
    StorePath(StorePathCommand),
    /// Binary cache signing keys in Nix's format.
    #[command(subcommand)]
    Key(KeyCommand),
    /// .narinfo files: show, sign, verify.
    #[command(subcommand)]
    Narinfo(NarinfoCommand),
    /// Copy the closure of store paths from one store to others.
    Copy(CopyArgs),
    /// Copy closures to or from a host over SSH, taking the arguments of
    /// `nix-copy-closure`.
    #[command(name = "copy-closure")]
    CopyClosure(CopyClosureArgs),
    /// Check, before copying, that a copy to each destination would go
    /// through.
    ///
    /// Every destination at once: reachable and logged in, which paths it
    /// has, room for the rest; for SSH hosts the Nix version and (with -s)
    /// what they would substitute and whether they trust the signatures;
    /// for caches read and write access and the signing keys. Exit code
    /// 0: every copy would go through; 1: some would fail (or, with -s, a
    /// destination would not substitute what its substituters have for
    /// want of a trusted signature); 2: could not run.
    Check(CheckArgs),
    /// Push closures from the local store to caches, now or as paths
    /// appear.
    ///
    /// With --watch, it follows the local store and pushes each path that
    /// becomes valid, through a queue that survives restarts and cache
    /// outages; --enqueue adds to that queue and returns at once (for
    /// Nix's post-build-hook).
    Push(PushArgs),
    /// Print the closure of store paths, references first.
    Closure(ClosureArgs),
    /// Print what a store knows about paths (like `nix path-info`).
    #[command(name = "path-info")]
    PathInfo(PathInfoArgs),
    /// Add a file or directory to a binary cache as the content-addressed
    /// store path `nix-store --add` would make, with a signed narinfo.
    Add(AddArgs),
    /// Print Nix's effective configuration for the settings nixferry uses
    /// (trusted-public-keys, secret-key-files, substituters,
    /// trusted-substituters, netrc-file, connect-timeout), read as Nix
    /// reads it, and where each came from.
    Config {
        /// Print a JSON object: each setting's `value` and `origins`.
        #[arg(long)]
        json: bool,
    },
    /// Serve a store as a binary cache over HTTP.
    Serve(ServeArgs),
    /// The remote end of nixferry's SSH protocol, on stdin and stdout:
    /// what `nixferry copy --to ssh://HOST` runs on HOST when HOST has
    /// nixferry. Not for use by hand.
    Remote {
        /// The store to serve: `local` (the default), or a root directory
        /// for a chroot store, as `nix-store --store` takes it.
        #[arg(long, default_value = "local")]
        store: String,
        /// Where partly received NARs are kept, so that an interrupted add
        /// resumes (default: $XDG_STATE_HOME/nixferry/incoming).
        #[arg(long, value_name = "DIR")]
        spool_dir: Option<PathBuf>,
    },
    /// Look after a binary cache (`file://`, `s3://`; `http(s)://` to
    /// read): verify and repair it, sign it again, pin what a fleet runs
    /// and collect the rest.
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum CacheCommand {
    /// Check every narinfo of a cache (or the closure of PATHS): parses,
    /// signed by a trusted key, NAR file present with its FileSize and
    /// FileHash, NAR of its NarSize and NarHash, references present,
    /// listing right; and NAR files no narinfo names, temporary files
    /// left behind, unfinished multipart uploads (S3). Exit code 0:
    /// clean; 1: problems found; 2: could not run.
    Verify(CacheVerifyArgs),
    /// Sign every narinfo with a new key (key rotation), optionally
    /// removing an old key's signatures; each narinfo is rewritten at
    /// once. Exit code 1 if some narinfos were left unsigned.
    Sign(CacheSignArgs),
    /// Record a deployed generation of PATHS under NAME (one pin per
    /// host or environment, say), in the cache itself: `cache gc` keeps
    /// the closures of each pin's last generations.
    Pin(CachePinArgs),
    /// List the pins of a cache, with their generations and closure sizes.
    Pins {
        /// The cache: `file:///DIR` or `s3://BUCKET[/PREFIX]?…`.
        url: String,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Remove a pin, or one generation of it.
    Unpin {
        /// The cache: `file:///DIR` or `s3://BUCKET[/PREFIX]?…`.
        url: String,
        /// The pin.
        name: String,
        /// Remove only this generation.
        #[arg(long)]
        generation: Option<u64>,
    },
    /// Delete what no pin keeps: keeps the closures of every pin's kept
    /// generations and of paths uploaded recently, deletes the rest
    /// (narinfo first, then NAR files and listings nothing uses), removes
    /// temporary files and unfinished uploads older than --grace.
    Gc(CacheGcArgs),
    /// Print what a cache holds: paths, NAR bytes, stored bytes,
    /// compression ratio, unsigned paths, pins.
    Stats {
        /// The cache: `file:///DIR` or `s3://BUCKET[/PREFIX]?…`.
        url: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CachePinArgs {
    /// The cache: `file:///DIR` or `s3://BUCKET[/PREFIX]?…`.
    pub(crate) url: String,
    /// The pin's name: letters, digits, `.`, `_`, `-`.
    pub(crate) name: String,
    /// The store paths deployed together (they must be in the cache).
    #[arg(required = true)]
    pub(crate) paths: Vec<String>,
    /// How many generations the pin keeps (default: 3, or what it was
    /// set to before).
    #[arg(long)]
    pub(crate) keep: Option<usize>,
    /// Print the pin, with its generations, as a JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CacheGcArgs {
    /// The cache: `file:///DIR` or `s3://BUCKET[/PREFIX]?…`.
    pub(crate) url: String,
    /// Keep paths uploaded less than this long ago, and their closures:
    /// `14d`, `12h`, or seconds.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) keep_newer_than: Option<std::time::Duration>,
    /// Then delete the least recently uploaded unpinned paths until the
    /// cache takes at most this much: `200G`, `500M`, or bytes.
    #[arg(long, value_parser = parse_size)]
    pub(crate) max_size: Option<u64>,
    /// Never delete files younger than this (a writer may be at work).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub(crate) grace: std::time::Duration,
    /// Print what would be deleted, and delete nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Files read or deleted at once.
    #[arg(long, short = 'j', default_value_t = 16)]
    pub(crate) jobs: usize,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A size: a number with an optional unit `K`, `M`, `G` or `T` (powers
/// of 1024).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a size such as 500M, 200G"))?;
    let shift = match unit.trim_end_matches(['B', 'i']) {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("unknown unit in '{s}': use K, M, G or T")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[derive(Debug, Args)]
pub(crate) struct CacheSignArgs {
    /// The cache: `file:///DIR` or `s3://BUCKET[/PREFIX]?…`.
    pub(crate) url: String,
    /// The secret key to sign with; repeatable.
    #[arg(long = "secret-key-file", required = true)]
    pub(crate) secret_key_files: Vec<PathBuf>,
    /// Remove signatures by the key of this name; repeatable.
    #[arg(long = "remove-signatures-by", value_name = "NAME")]
    pub(crate) remove_signatures_by: Vec<String>,
    /// Only sign narinfos that carry a valid signature by this key
    /// (`name:base64`); repeatable. Without it, every narinfo is signed.
    #[arg(long = "trusted-key")]
    pub(crate) trusted_keys: Vec<String>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CacheVerifyArgs {
    /// The cache: `file:///DIR`, `s3://BUCKET[/PREFIX]?…`, or
    /// `http(s)://…` with PATHS.
    pub(crate) url: String,
    /// Check the closures of these store paths only.
    pub(crate) paths: Vec<String>,
    /// A trusted public key, `name:base64`; repeatable (default: Nix's
    /// default key, cache.nixos.org-1).
    #[arg(long = "trusted-key")]
    pub(crate) trusted_keys: Vec<String>,
    /// A file holding a trusted public key; repeatable.
    #[arg(long = "trusted-key-file")]
    pub(crate) trusted_key_files: Vec<PathBuf>,
    /// How many narinfos to check at once (default: twice the cores, 4
    /// to 32).
    #[arg(long, short = 'j')]
    pub(crate) jobs: Option<usize>,
    /// NAR files no narinfo names, temporary files and multipart uploads
    /// younger than this are not reported (a writer may be at work):
    /// `90s`, `30m`, `1h`, `2d`, or seconds.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub(crate) grace: std::time::Duration,
    /// A store that may hold references the cache lacks (a cache its
    /// clients also substitute from, such as `https://cache.nixos.org`):
    /// a reference found there is not a problem; repeatable.
    #[arg(long = "upstream", value_name = "URL")]
    pub(crate) upstreams: Vec<String>,
    /// Copy broken and missing paths again from --from (broken ones are
    /// removed first), then verify again.
    #[arg(long, requires = "from")]
    pub(crate) repair: bool,
    /// The store to repair from (any store URL).
    #[arg(long, value_name = "SRC", requires = "repair")]
    pub(crate) from: Option<String>,
    /// Remove broken paths that are not repaired: narinfo first, then
    /// listing and NAR file.
    #[arg(long)]
    pub(crate) delete_broken: bool,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A duration: a number with an optional unit `s`, `m`, `h` or `d`.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a duration such as 90s, 30m, 1h, 2d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("unknown unit in '{s}': use s, m, h or d")),
    };
    n.checked_mul(scale)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("'{s}' is too long"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum NarCommand {
    /// Write the NAR of PATH (like `nix-store --dump`).
    Dump {
        /// The file, directory or symlink to serialise.
        path: PathBuf,
        /// Write here instead of to stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Unpack a NAR into DEST, checking it strictly (like `nix-store --restore`).
    Restore {
        /// `[FILE|-] DEST`: the NAR file (default: stdin), and where to
        /// create the tree, which must not exist unless --force.
        #[arg(num_args = 1..=2, required = true, value_names = ["FILE", "DEST"])]
        args: Vec<PathBuf>,
        /// Replace DEST if it exists.
        #[arg(long)]
        force: bool,
    },
    /// List the entries of a NAR.
    Ls {
        /// The NAR file, or `-` for stdin.
        file: PathBuf,
        /// Print the `.ls` JSON listing Nix writes to binary caches.
        #[arg(long)]
        json: bool,
    },
    /// Print one file of a NAR without unpacking it.
    Cat {
        /// The NAR file, or `-` for stdin.
        file: PathBuf,
        /// The file inside the NAR, e.g. `bin/hello`.
        path: String,
    },
    /// Print the NAR hash of a path (like `nix hash path`).
    Hash {
        /// The file, directory or symlink to hash.
        path: PathBuf,
        /// How to print the hash.
        #[arg(long, value_enum, default_value_t = HashFormat::Sri, group = "hash_format")]
        format: HashFormat,
        /// Same as `--format base32`, as for `nix hash path`.
        #[arg(long, group = "hash_format")]
        base32: bool,
        /// Same as `--format base16`, as for `nix hash path`.
        #[arg(long, group = "hash_format")]
        base16: bool,
        /// Same as `--format base64`, as for `nix hash path`.
        #[arg(long, group = "hash_format")]
        base64: bool,
        /// Same as `--format sri` (the default), as for `nix hash path`.
        #[arg(long, group = "hash_format")]
        sri: bool,
    },
}

/// Hash output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum HashFormat {
    /// `sha256-<base64>`, as `nix hash path` prints.
    Sri,
    /// Bare nix32, as `nix-hash --type sha256 --base32` prints.
    Base32,
    /// Bare lowercase hex, as `nix-hash --type sha256` prints.
    Base16,
    /// Bare base64, as `nix hash path --base64` prints.
    Base64,
    /// `sha256:<nix32>`, as narinfo files write it.
    Nix32,
}

#[derive(Debug, Subcommand)]
pub(crate) enum StorePathCommand {
    /// Print the store path `nix-store --add PATH` would give.
    Add {
        /// The file or directory.
        path: PathBuf,
        /// The store path name; defaults to the base name of PATH.
        #[arg(long)]
        name: Option<String>,
        /// The store directory the path is computed for.
        #[arg(long, default_value = "/nix/store")]
        store_dir: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Generate a key pair (like `nix-store --generate-binary-cache-key`).
    Generate {
        /// The key name, conventionally `<host>-<n>`, e.g. `cache.example.org-1`.
        name: String,
        /// Where to write the secret key (created with mode 0600).
        #[arg(long)]
        secret_file: PathBuf,
        /// Where to write the public key.
        #[arg(long)]
        public_file: PathBuf,
    },
    /// Print the public key of a secret key file.
    Public {
        /// The secret key file.
        secret_file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum NarinfoCommand {
    /// Show a narinfo's fields and its signature fingerprint.
    Show {
        /// The .narinfo file, or `-` for stdin.
        file: PathBuf,
        /// Print a JSON object instead.
        #[arg(long)]
        json: bool,
    },
    /// Sign a narinfo, writing the signed narinfo to stdout or in place.
    Sign {
        /// The .narinfo file, or `-` for stdin.
        file: PathBuf,
        /// The secret key file; repeat to sign with several keys.
        #[arg(long = "secret-key-file", required = true)]
        secret_key_files: Vec<PathBuf>,
        /// Rewrite FILE instead of printing.
        #[arg(long, short = 'i')]
        in_place: bool,
    },
    /// Verify narinfo signatures. Exit code 0: all verified; 1: some did
    /// not; 2: error.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The .narinfo files.
    #[arg(required = true)]
    pub(crate) files: Vec<PathBuf>,
    /// A trusted public key, `name:base64`; repeatable.
    #[arg(long = "trusted-key")]
    pub(crate) trusted_keys: Vec<String>,
    /// A file holding a trusted public key; repeatable.
    #[arg(long = "trusted-key-file")]
    pub(crate) trusted_key_files: Vec<PathBuf>,
    /// Print a JSON object per narinfo.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CopyArgs {
    /// The source store URL.
    #[arg(long, default_value = "local")]
    pub(crate) from: String,
    /// The destination store URL; repeat it to copy to several stores at
    /// once, reading each path from the source once.
    #[arg(long, required = true)]
    pub(crate) to: Vec<String>,
    /// For `ssh://` destinations with nixferry: a store path or profile on
    /// the host (such as /nix/var/nix/profiles/system) whose closure holds
    /// the preferred bases for deltas (repeatable; the URL parameter
    /// `delta-base`).
    #[arg(long, value_name = "PATH")]
    pub(crate) delta_base: Vec<String>,
    /// Store paths (or symlinks to them, such as `./result`).
    pub(crate) paths: Vec<String>,
    /// Read the paths from stdin, one per line.
    #[arg(long)]
    pub(crate) stdin: bool,
    /// Let the destinations fetch what they can from their own
    /// substituters first.
    #[arg(long = "substitute-on-destination", short = 's')]
    pub(crate) substitute_on_destination: bool,
    #[command(flatten)]
    pub(crate) tuning: CopyTuning,
    #[command(flatten)]
    pub(crate) keys: KeyArgs,
    /// Do not require signatures on paths from untrusted stores.
    #[arg(long)]
    pub(crate) no_check_sigs: bool,
    #[command(flatten)]
    pub(crate) upstream: UpstreamArgs,
    /// Run `nixferry check` on every destination first, and copy nothing
    /// unless every check passes (exit code 1 otherwise).
    #[arg(long)]
    pub(crate) preflight: bool,
    /// Print events as JSON Lines on stdout instead of progress bars.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The source store URL.
    #[arg(long, default_value = "local")]
    pub(crate) from: String,
    /// A destination store URL; repeatable.
    #[arg(long, required = true)]
    pub(crate) to: Vec<String>,
    /// Store paths (or symlinks to them, such as `./result`).
    #[arg(required = true)]
    pub(crate) paths: Vec<String>,
    /// Check what the destinations would substitute from their own
    /// substituters (as `copy -s` lets them), and whether they trust the
    /// signatures of what they would substitute and receive.
    #[arg(long = "substitute-on-destination", short = 's')]
    pub(crate) substitute_on_destination: bool,
    /// A key the copy will sign with; repeatable (default: Nix's
    /// secret-key-files).
    #[arg(long = "secret-key-file")]
    pub(crate) secret_key_files: Vec<PathBuf>,
    /// Seconds one destination may take.
    #[arg(long, default_value_t = 60)]
    pub(crate) timeout: u64,
    /// Print a JSON object per destination (JSON Lines).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Which paths a push leaves to upstream caches: shared by `copy` and
/// `push`.
#[derive(Debug, Args)]
pub(crate) struct UpstreamArgs {
    /// Do not push to binary caches the paths an upstream cache (Nix's
    /// substituters, or --upstream) already serves with a signature by a
    /// trusted key. Default: on when Nix's `substituters` is set (in
    /// nix.conf, NIX_CONFIG or --option), not when it is Nix's built-in
    /// default; a Nix store destination (ssh://, local) always gets
    /// everything.
    #[arg(long, overrides_with = "no_skip_upstream")]
    pub(crate) skip_upstream: bool,
    /// Push every path a destination lacks, whatever upstreams serve.
    #[arg(long, overrides_with = "skip_upstream")]
    pub(crate) no_skip_upstream: bool,
    /// An upstream cache to ask instead of Nix's substituters; repeatable.
    /// Implies --skip-upstream.
    #[arg(long = "upstream", value_name = "URL")]
    pub(crate) upstreams: Vec<String>,
    /// Seconds an upstream may take to answer a batch of 256 paths; one
    /// that does not is left out (its paths are pushed).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub(crate) upstream_timeout: f64,
}

/// The keys of a copy or push: those it signs with and those it trusts.
#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    /// Sign what is copied with this key; repeatable (default: Nix's
    /// `secret-key-files`).
    #[arg(long = "secret-key-file")]
    pub(crate) secret_key_files: Vec<PathBuf>,
    /// A trusted public key, `name:base64`; repeatable (default: Nix's
    /// `trusted-public-keys`). Paths from a store other than this
    /// machine's need a valid signature by one of them, and so do paths
    /// left to an upstream.
    #[arg(long = "trusted-key")]
    pub(crate) trusted_keys: Vec<String>,
    /// A file holding a trusted public key, as --trusted-key; repeatable.
    #[arg(long = "trusted-key-file", value_name = "FILE")]
    pub(crate) trusted_key_files: Vec<PathBuf>,
}

/// How hard a copy works: shared by `copy`, `copy-closure` and `push`.
#[derive(Debug, Args)]
pub(crate) struct CopyTuning {
    /// How many paths to copy at once (default: twice the cores).
    #[arg(long, short = 'j')]
    pub(crate) jobs: Option<usize>,
    /// How many times to retry a path after a failure that may pass, such
    /// as a dropped connection (with exponential backoff).
    #[arg(long, default_value_t = 5)]
    pub(crate) retries: u32,
}

#[derive(Debug, Args)]
pub(crate) struct CopyClosureArgs {
    /// Copy from the local store to the host (the default).
    #[arg(long, conflicts_with = "from")]
    pub(crate) to: bool,
    /// Copy from the host to the local store.
    #[arg(long)]
    pub(crate) from: bool,
    /// `[user@]host`, then the store paths.
    #[arg(required = true, num_args = 2.., value_names = ["HOST", "PATHS"])]
    pub(crate) args: Vec<String>,
    /// Compress the SSH connection (`ssh -C`).
    #[arg(long, visible_aliases = ["bzip2", "xz"])]
    pub(crate) gzip: bool,
    /// Let the receiving side fetch what it can from its substituters.
    #[arg(long = "use-substitutes", short = 's')]
    pub(crate) use_substitutes: bool,
    /// Also copy the outputs of derivations in the closure.
    #[arg(long)]
    pub(crate) include_outputs: bool,
    /// Print events as JSON Lines on stdout instead of progress bars.
    #[arg(long)]
    pub(crate) json: bool,
    /// Say each path as it starts copying; repeatable, as for
    /// nix-copy-closure.
    #[arg(long, short = 'v', action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(flatten)]
    pub(crate) tuning: CopyTuning,
}

#[derive(Debug, Args)]
pub(crate) struct PushArgs {
    /// A cache (or any store) to push to; repeat it to push to several
    /// at once. A path leaves the queue once it is in all of them.
    #[arg(long, required_unless_present = "enqueue", conflicts_with = "enqueue")]
    pub(crate) to: Vec<String>,
    /// Store paths (or symlinks to them, such as `./result`): pushed now,
    /// or queued with --watch and --enqueue. With --enqueue and none
    /// given, those Nix gives its post-build-hook: `$OUT_PATHS`
    /// (separated by spaces), else the outputs of `$DRV_PATH`.
    pub(crate) paths: Vec<String>,
    /// Keep running: push what waits in the queue, follow the local
    /// store and push each path that becomes valid (not .drv files), and
    /// what --enqueue adds, until SIGINT or SIGTERM. A push that fails
    /// is tried again later; nothing leaves the queue before it is in
    /// every destination.
    #[arg(long)]
    pub(crate) watch: bool,
    /// Add the paths to the queue a watcher pushes from, and return at
    /// once, without contacting any cache.
    #[arg(long, conflicts_with = "watch")]
    pub(crate) enqueue: bool,
    /// With --watch, push only what is queued: do not follow the store.
    #[arg(long, requires = "watch")]
    pub(crate) no_follow: bool,
    /// With --watch, follow the store from the database row after this
    /// id instead of where the last run stopped (0: push the whole
    /// store). A first run starts at the current end.
    #[arg(
        long,
        value_name = "ID",
        requires = "watch",
        conflicts_with = "no_follow"
    )]
    pub(crate) since_id: Option<i64>,
    /// Where the queue is kept (in DIR/push); default:
    /// `$XDG_STATE_HOME/nixferry`, else `~/.local/state/nixferry`.
    #[arg(long, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// The local store to push from: `local`, or `local?root=DIR`.
    #[arg(long, value_name = "URL", default_value = "local")]
    pub(crate) from: String,
    /// How long the wait between two tries of a failing push grows at
    /// most, in seconds or with a unit (`90s`, `5m`); a random part of
    /// up to half of it is added, so that many watchers do not retry in
    /// step.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub(crate) max_retry_delay: std::time::Duration,
    #[command(flatten)]
    pub(crate) tuning: CopyTuning,
    #[command(flatten)]
    pub(crate) keys: KeyArgs,
    #[command(flatten)]
    pub(crate) upstream: UpstreamArgs,
    /// Print events as JSON Lines on stdout (the log on stderr stays).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ClosureArgs {
    /// The store URL.
    pub(crate) store: String,
    /// Store paths (or symlinks to them).
    #[arg(required = true)]
    pub(crate) paths: Vec<String>,
    /// Print a JSON array of path objects.
    #[arg(long)]
    pub(crate) json: bool,
    /// Print the closure's total NAR size.
    #[arg(long)]
    pub(crate) size: bool,
}

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub(crate) struct PathInfoArgs {
    /// The store to ask (as `nix path-info --store`); default: `local`.
    /// Without it, a first argument that is a store URL (`local`,
    /// `daemon`, `scheme://…`) names the store.
    #[arg(long)]
    pub(crate) store: Option<String>,
    /// Store paths (or symlinks to them).
    #[arg(required = true, value_name = "PATHS")]
    pub(crate) args: Vec<String>,
    /// Print JSON like `nix path-info --json`.
    #[arg(long)]
    pub(crate) json: bool,
    /// Include the closures of the paths.
    #[arg(long, short = 'r')]
    pub(crate) recursive: bool,
    /// Print each path's NAR size.
    #[arg(long, short = 's')]
    pub(crate) size: bool,
    /// Print each path's closure size.
    #[arg(long = "closure-size", short = 'S')]
    pub(crate) closure_size: bool,
    /// Print sizes as 1.5K, 12.3M… (as Nix does).
    #[arg(long = "human-readable", short = 'h')]
    pub(crate) human_readable: bool,
    /// Print each path's signatures (and `ultimate`, `ca:…`).
    #[arg(long)]
    pub(crate) sigs: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub(crate) help: Option<bool>,
}

#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    /// The file or directory to add.
    pub(crate) path: PathBuf,
    /// The destination cache, `file:///dir`.
    #[arg(long)]
    pub(crate) to: String,
    /// The store path name; defaults to the base name of PATH.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Sign the narinfo with this key; repeatable (default: Nix's
    /// `secret-key-files`).
    #[arg(long = "secret-key-file")]
    pub(crate) secret_key_files: Vec<PathBuf>,
    /// Print the path's information as `nix path-info --json` does,
    /// instead of the path.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The store to serve: `local` (or `local?root=DIR`), `file:///DIR`
    /// (served as its files are), or a binary cache to serve again with
    /// this server's signatures: `s3://BUCKET…`, `http(s)://…`.
    #[arg(long)]
    pub(crate) store: String,
    /// The address to listen on, `HOST:PORT` (`localhost:8080`,
    /// `0.0.0.0:5000`, `[::1]:5000`); port 0 picks a free port (the
    /// address is printed on stderr).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:5000")]
    pub(crate) listen: String,
    /// Sign narinfos of a served Nix store (or s3://, http(s):// cache)
    /// with this key; repeatable.
    #[arg(long = "secret-key-file")]
    pub(crate) secret_key_files: Vec<PathBuf>,
    /// The `Priority` to announce in nix-cache-info.
    #[arg(long)]
    pub(crate) priority: Option<i64>,
    /// The `WantMassQuery` to announce in nix-cache-info.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub(crate) want_mass_query: Option<bool>,
    /// Accept uploads (`PUT`) into a file:// store; needs --token-file,
    /// or a `write` token in --tokens-file.
    #[arg(long)]
    pub(crate) write: bool,
    /// A file holding the token uploads must present (`Authorization:
    /// Bearer TOKEN`, or basic credentials with TOKEN as the password).
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// Make the cache private: reads need a token of FILE, which holds
    /// `read TOKEN` or `write TOKEN` (read and upload) lines; a read
    /// without one gets 401. Read again on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub(crate) tokens_file: Option<PathBuf>,
    /// With --tokens-file, serve nix-cache-info without a token.
    #[arg(long, requires = "tokens_file")]
    pub(crate) public_cache_info: bool,
    /// How NARs of a served Nix store (or s3://, http(s):// cache) are
    /// compressed on the fly.
    #[arg(long, value_enum, default_value_t = ServeCompression::None)]
    pub(crate) compression: ServeCompression,
    /// Fetch what the store lacks from this binary cache (e.g.
    /// `https://cache.nixos.org`), checking signatures against the trusted
    /// keys; repeatable, in order of preference.
    #[arg(long = "upstream", value_name = "URL")]
    pub(crate) upstreams: Vec<String>,
    /// Trust signatures of paths from upstream by this public key,
    /// `name:base64`; repeatable. Default: Nix's (cache.nixos.org-1).
    #[arg(long = "trusted-key", value_name = "KEY", requires = "upstreams")]
    pub(crate) trusted_keys: Vec<String>,
    /// A file holding a public key to trust, as --trusted-key; repeatable.
    #[arg(long = "trusted-key-file", value_name = "FILE", requires = "upstreams")]
    pub(crate) trusted_key_files: Vec<PathBuf>,
    /// Keep the paths served from upstream in this store (e.g.
    /// file:///DIR, or the served file:// store itself), copied and
    /// checked in the background, and serve them from there.
    #[arg(long, value_name = "URL", requires = "upstreams")]
    pub(crate) cache_upstream: Option<String>,
    /// Seconds an upstream may take to answer; one that does not is left
    /// out for a few seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 3.0,
        requires = "upstreams"
    )]
    pub(crate) upstream_timeout: f64,
    /// Log one line per request on stderr, once it is answered: method,
    /// path, status, bytes sent, milliseconds, client.
    #[arg(long, short = 'v')]
    pub(crate) verbose: bool,
    /// How log lines are written: `key=value` pairs, or a JSON object a
    /// line.
    #[arg(long, value_enum, default_value_t = ServeLogFormat::Text)]
    pub(crate) log_format: ServeLogFormat,
    /// Connections kept open at most; more wait until one closes. The
    /// limit of open files is raised to fit, as far as allowed.
    #[arg(long, value_name = "N", default_value_t = nixferry::server::DEFAULT_MAX_CONNECTIONS)]
    pub(crate) max_connections: usize,
    /// Requests worked on or answered at once at most; more wait their
    /// turn.
    #[arg(long, value_name = "N", default_value_t = nixferry::server::DEFAULT_MAX_REQUESTS)]
    pub(crate) max_requests: usize,
    /// Seconds a client may take to send a request head (and an idle
    /// connection stays open).
    #[arg(long, value_name = "SECONDS", default_value_t = nixferry::server::DEFAULT_HEADER_TIMEOUT.as_secs())]
    pub(crate) header_timeout: u64,
    /// Seconds a connection may go without a byte moving while it sends
    /// an upload or reads an answer.
    #[arg(long, value_name = "SECONDS", default_value_t = nixferry::server::DEFAULT_IO_TIMEOUT.as_secs())]
    pub(crate) io_timeout: u64,
}

/// How `serve` writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ServeLogFormat {
    /// `key=value` pairs.
    Text,
    /// A JSON object a line.
    Json,
}

/// How `serve` compresses NARs it makes on the fly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ServeCompression {
    /// Plain NARs.
    None,
    /// zstd.
    Zstd,
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("512"), Ok(512));
        assert_eq!(super::parse_size("500M"), Ok(500 << 20));
        assert_eq!(super::parse_size("200G"), Ok(200 << 30));
        assert_eq!(super::parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(super::parse_size("1T"), Ok(1 << 40));
        assert!(super::parse_size("1X").is_err());
        assert!(super::parse_size("G").is_err());
        assert!(super::parse_size("99999999999T").is_err());
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(super::parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(super::parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(
            super::parse_duration("2d"),
            Ok(Duration::from_secs(172_800))
        );
        assert_eq!(super::parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "h", "1w", "1.5h", "-1s"] {
            assert!(super::parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
