"""Type stubs for the native module ``nixferry._native``.

Use the public modules (``nixferry``, ``nixferry.nar``, ...) rather than
this one.
"""

import builtins
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Final, Protocol, Self, final

__version__: Final[str]
__all__ = ['BytesCopied', 'CopyPlanned', 'CopyRetrying', 'CopySummary', 'DestinationFailed', 'DumpChunks', 'NarContents', 'NarEntry', 'NarInfo', 'NarReader', 'NarSummary', 'NixHash', 'PathCopied', 'PathFailed', 'PathFoundUpstream', 'PathInfo', 'PathSkipped', 'PathStarted', 'Server', 'SigningKey', 'Store', 'StorePath', 'UpstreamFailed', 'VerifyingKey', '__version__', 'add_path', 'cache_gc', 'cache_pin', 'cache_pins', 'cache_sign', 'cache_stats', 'cache_unpin', 'cache_verify', 'check_json', 'cat', 'copy', 'dump', 'dump_bytes', 'dump_chunks', 'fixed_output_path', 'hash_path', 'is_valid_path', 'list', 'listing_json', 'nix32_decode', 'nix32_encode', 'nix_config_json', 'open_store', 'restore', 'serve', 'text_path', 'validate', 'validate_name']

class _Readable(Protocol):
    def read(self, size: int, /) -> bytes | bytearray | None: ...

class _Writable(Protocol):
    def write(self, data: bytes, /) -> int | None: ...

_StrPath = str | os.PathLike[str]
_Source = _StrPath | bytes | bytearray | memoryview | _Readable
_PathArg = str | StorePath
_Paths = str | StorePath | Iterable[str | StorePath]
_TrustedKeys = str | VerifyingKey | Iterable[str | VerifyingKey]

# Hashes

@final
class NixHash:
    """A hash with its algorithm; ``str()`` is ``algo:<nix32>``."""

    @staticmethod
    def parse(s: str) -> NixHash:
        """Parses ``algo:<nix32|hex|base64>`` or SRI ``algo-<base64>``."""
    @staticmethod
    def parse_unprefixed(s: str, algo: str) -> NixHash:
        """Parses a hash without prefix, of algorithm ``algo``."""
    @staticmethod
    def compute(algo: str, data: bytes) -> NixHash:
        """The hash of ``data`` (``md5``, ``sha1``, ``sha256``, ``sha512``)."""
    @staticmethod
    def from_bytes(algo: str, digest: bytes) -> NixHash:
        """A hash from its raw digest."""
    @property
    def algo(self) -> str:
        """``md5``, ``sha1``, ``sha256`` or ``sha512``."""
    @property
    def raw(self) -> bytes:
        """The raw digest."""
    def to_nix32(self) -> str:
        """The digest in Nix base-32."""
    def to_hex(self) -> str:
        """The digest in lowercase hex."""
    def to_base64(self) -> str:
        """The digest in base64."""
    def to_sri(self) -> str:
        """``algo-<base64>``."""
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

def nix32_encode(data: bytes) -> str:
    """Encodes bytes in Nix base-32."""

def nix32_decode(s: str, size: int) -> bytes:
    """Decodes Nix base-32 into ``size`` bytes; raises ``HashError``."""

# Store paths

@final
class StorePath:
    """A store path; ``str()`` and ``os.fspath()`` give the full path."""

    @staticmethod
    def parse(path: str, store_dir: str = "/nix/store") -> StorePath:
        """Parses a full store path or a base name."""
    @staticmethod
    def from_digest(digest: bytes, name: str, store_dir: str = "/nix/store") -> StorePath:
        """The path with a 20-byte digest and a name."""
    @property
    def hash_part(self) -> str:
        """The 32-character hash part."""
    @property
    def name(self) -> str:
        """The name after the hash part."""
    @property
    def base_name(self) -> str:
        """``<hash>-<name>``."""
    @property
    def store_dir(self) -> str:
        """The store directory."""
    @property
    def digest(self) -> bytes:
        """The 20-byte digest of the hash part."""
    @property
    def is_derivation(self) -> bool:
        """Whether the name ends in ``.drv``."""
    def __fspath__(self) -> str: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __lt__(self, other: StorePath, /) -> bool: ...
    def __le__(self, other: StorePath, /) -> bool: ...
    def __gt__(self, other: StorePath, /) -> bool: ...
    def __ge__(self, other: StorePath, /) -> bool: ...
    def __hash__(self) -> int: ...

def validate_name(name: str) -> None:
    """Checks a store path name; raises ``StorePathError``."""

def is_valid_path(path: str, store_dir: str = "/nix/store") -> bool:
    """Whether ``path`` is a valid full store path or base name."""

def add_path(
    path: _StrPath, *, name: str | None = None, store_dir: str = "/nix/store"
) -> StorePath:
    """The store path ``nix-store --add path`` would give."""

def fixed_output_path(
    name: str,
    hash: NixHash,
    *,
    recursive: bool = True,
    references: builtins.list[_PathArg] | None = None,
    store_dir: str = "/nix/store",
) -> StorePath:
    """The path of a fixed-output path with content hash ``hash``."""

def text_path(
    name: str,
    contents: bytes,
    *,
    references: builtins.list[_PathArg] | None = None,
    store_dir: str = "/nix/store",
) -> StorePath:
    """The path of a text file (``builtins.toFile``)."""

# NAR

@final
class NarSummary:
    """The hash and size of a NAR."""

    @property
    def nar_hash(self) -> NixHash:
        """SHA-256 of the NAR."""
    @property
    def nar_size(self) -> int:
        """Size of the NAR in bytes."""
    def __eq__(self, other: object, /) -> bool: ...

def dump(path: _StrPath, out: _StrPath | _Writable, *, sync: bool = False) -> int:
    """Writes the NAR of ``path`` to a file path or binary stream; returns its size."""

def dump_bytes(path: _StrPath) -> bytes:
    """The NAR of ``path`` as bytes."""

@final
class DumpChunks:
    """An iterator over NAR chunks made on a background thread."""

    def __iter__(self) -> Self: ...
    def __next__(self) -> bytes: ...

def dump_chunks(path: _StrPath, chunk_size: int = 1048576) -> DumpChunks:
    """Iterates over the NAR of ``path`` in chunks."""

def hash_path(path: _StrPath) -> NarSummary:
    """The NAR hash and size of ``path``."""

def validate(source: _Source) -> NarSummary:
    """Reads a whole NAR strictly; returns its hash and size."""

def restore(source: _Source, dest: _StrPath, *, overwrite: bool = False) -> NarSummary:
    """Unpacks a NAR at ``dest``; returns its hash and size."""

def cat(source: _Source, path: str | bytes) -> bytes:
    """The contents of one regular file of a NAR."""

def list(source: _Source) -> builtins.list[NarEntry]:
    """Every entry of a NAR, without contents."""

def listing_json(source: _Source) -> str:
    """The ``.ls`` JSON listing of a NAR, as Nix writes it."""

@final
class NarReader:
    """A streaming reader over the entries of a NAR."""

    def __new__(cls, source: _Source, *, allow_trailing: bool = False) -> Self: ...
    def __iter__(self) -> Self: ...
    def __next__(self) -> NarEntry: ...
    @property
    def summary(self) -> NarSummary | None:
        """The NAR's hash and size once all entries were read."""
    def close(self) -> None:
        """Stops reading."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        *_exc: type[BaseException] | BaseException | TracebackType | None,
    ) -> bool: ...

@final
class NarEntry:
    """One node of a NAR."""

    @property
    def path(self) -> str:
        """The path relative to the root (``""`` for the root)."""
    @property
    def path_bytes(self) -> bytes:
        """The path as raw bytes."""
    @property
    def name(self) -> str:
        """The last component of the path."""
    @property
    def depth(self) -> int:
        """0 for the root, 1 for its entries, ..."""
    @property
    def type(self) -> str:
        """``regular``, ``symlink`` or ``directory``."""
    @property
    def size(self) -> int | None:
        """A regular file's size."""
    @property
    def executable(self) -> bool:
        """Whether a regular file is executable."""
    @property
    def offset(self) -> int | None:
        """The NAR offset of a regular file's contents."""
    @property
    def target(self) -> str | None:
        """A symlink's target."""
    @property
    def target_bytes(self) -> bytes | None:
        """A symlink's target as raw bytes."""
    def read(self, size: int = ...) -> bytes:
        """Reads a regular file's contents while the entry is current."""
    def open(self) -> NarContents:
        """A binary reader over a regular file's contents."""

@final
class NarContents:
    """A read-only binary stream over one file of a NAR."""

    def read(self, size: int = ...) -> bytes:
        """Reads up to ``size`` bytes (all when negative)."""
    def readable(self) -> bool:
        """Always ``True``."""
    def close(self) -> None:
        """Does nothing."""
    def __iter__(self) -> Self: ...
    def __next__(self) -> bytes: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        *_exc: type[BaseException] | BaseException | TracebackType | None,
    ) -> bool: ...

# Keys

@final
class SigningKey:
    """A secret ed25519 key with its name."""

    @staticmethod
    def generate(name: str) -> SigningKey:
        """A new random key."""
    @staticmethod
    def parse(text: str) -> SigningKey:
        """Parses ``name:base64``."""
    @staticmethod
    def from_file(path: _StrPath) -> SigningKey:
        """Reads a secret key file."""
    @staticmethod
    def from_seed(name: str, seed: bytes) -> SigningKey:
        """The key with a 32-byte seed."""
    @property
    def name(self) -> str:
        """The key's name."""
    @property
    def verifying_key(self) -> VerifyingKey:
        """The public half."""
    def sign(self, data: bytes) -> str:
        """Signs ``data``; returns ``name:base64``."""
    def to_file_string(self) -> str:
        """The secret key file's text."""
    def write_file(self, path: _StrPath) -> None:
        """Writes the secret key file (mode 0600)."""

@final
class VerifyingKey:
    """A public ed25519 key with its name."""

    @staticmethod
    def parse(text: str) -> VerifyingKey:
        """Parses ``name:base64``."""
    @staticmethod
    def from_file(path: _StrPath) -> VerifyingKey:
        """Reads a public key file."""
    @property
    def name(self) -> str:
        """The key's name."""
    @property
    def raw(self) -> bytes:
        """The 32 key bytes."""
    def verify(self, data: bytes, signature: str) -> bool:
        """Whether ``signature`` is this key's valid signature of ``data``."""
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

# narinfo

@final
class NarInfo:
    """A ``.narinfo`` document, parsed and rendered losslessly."""

    def __new__(
        cls,
        store_path: _PathArg,
        url: str,
        nar_hash: NixHash,
        nar_size: int,
        *,
        compression: str = "none",
        file_hash: NixHash | None = None,
        file_size: int | None = None,
        references: builtins.list[_PathArg] | None = None,
        deriver: _PathArg | None = None,
        system: str | None = None,
        sigs: builtins.list[str] | None = None,
        ca: str | None = None,
        store_dir: str = "/nix/store",
    ) -> Self: ...
    @staticmethod
    def parse(text: str, store_dir: str = "/nix/store") -> NarInfo:
        """Parses a narinfo."""
    def render(self) -> str:
        """The text."""
    def __eq__(self, other: object, /) -> bool: ...
    @property
    def store_dir(self) -> str:
        """The store directory."""
    @property
    def store_path(self) -> StorePath:
        """``StorePath``."""
    @property
    def url(self) -> str:
        """``URL``."""
    @property
    def compression(self) -> str:
        """``Compression``."""
    @property
    def file_hash(self) -> NixHash | None:
        """``FileHash``."""
    @property
    def file_size(self) -> int | None:
        """``FileSize``."""
    @property
    def nar_hash(self) -> NixHash:
        """``NarHash``."""
    @property
    def nar_size(self) -> int:
        """``NarSize``."""
    @property
    def references(self) -> builtins.list[StorePath]:
        """``References``."""
    @property
    def deriver(self) -> StorePath | None:
        """``Deriver``."""
    @property
    def system(self) -> str | None:
        """``System``."""
    @property
    def signatures(self) -> builtins.list[str]:
        """The ``Sig`` values."""
    @property
    def ca(self) -> str | None:
        """``CA``."""
    @property
    def unknown_fields(self) -> builtins.list[tuple[str, str]]:
        """Lines with unknown keys."""
    def fingerprint(self) -> str:
        """The string signatures sign."""
    def verify(self, trusted_keys: _TrustedKeys) -> str:
        """The name of the trusted key that verified; raises ``VerificationError``."""
    def count_valid_signatures(self, trusted_keys: _TrustedKeys) -> int:
        """The number of distinct valid trusted signatures."""
    def verify_ca(self) -> bool:
        """Whether the ``CA`` claim holds."""
    def check(self) -> None:
        """Checks that the fields agree; raises ``NarInfoError``."""
    def sign(self, key: SigningKey) -> None:
        """Signs with ``key``."""
    def clear_signatures(self) -> None:
        """Removes every ``Sig`` line."""

# Stores

@final
class PathInfo:
    """What a store knows about one of its paths."""

    @property
    def path(self) -> str:
        """The full store path."""
    @property
    def nar_hash(self) -> NixHash:
        """SHA-256 of the NAR."""
    @property
    def nar_size(self) -> int:
        """Size of the NAR."""
    @property
    def references(self) -> builtins.list[str]:
        """Full paths it refers to."""
    @property
    def deriver(self) -> str | None:
        """The deriver's full path."""
    @property
    def signatures(self) -> builtins.list[str]:
        """Signatures."""
    @property
    def ca(self) -> str | None:
        """The content address."""
    @property
    def registration_time(self) -> int:
        """Unix seconds, 0 if unknown."""
    @property
    def ultimate(self) -> bool:
        """Whether it was built on this machine."""
    @property
    def url(self) -> str | None:
        """The NAR file's URL (binary caches)."""
    @property
    def compression(self) -> str | None:
        """The NAR file's compression (binary caches)."""
    @property
    def file_hash(self) -> NixHash | None:
        """The NAR file's hash (binary caches)."""
    @property
    def file_size(self) -> int | None:
        """The NAR file's size (binary caches)."""
    def fingerprint(self) -> str:
        """The string signatures sign."""
    def to_json(self) -> str:
        """The path's object in ``nix path-info --json``."""
    def verify(self, trusted_keys: _TrustedKeys) -> str | None:
        """The key that verified, or ``None`` for a content address."""

@final
class Store:
    """A store opened by URL."""

    @property
    def url(self) -> str:
        """The URL it was opened with."""
    @property
    def store_dir(self) -> str:
        """The store directory."""
    def path_info(self, path: _PathArg) -> PathInfo | None:
        """The info of ``path``, or ``None``."""
    def path_infos(self, paths: _Paths) -> dict[str, PathInfo]:
        """The infos of those of ``paths`` the store has."""
    def has_paths(self, paths: _Paths) -> set[str]:
        """Those of ``paths`` the store has."""
    def closure(self, paths: _Paths) -> builtins.list[PathInfo]:
        """The closure of ``paths``, references first."""
    def path_info_json(self, paths: _Paths, *, recursive: bool = False, closure_size: bool = False) -> str:
        """What ``nix path-info --json`` prints about ``paths``."""
    def add(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        secret_keys: builtins.list[SigningKey] | None = None,
    ) -> PathInfo:
        """Adds ``path`` as ``nix-store --add`` would, signed; returns its info."""

def open_store(url: str) -> Store:
    """Opens the store a URL names."""

# Copies

@final
class CopyPlanned:
    """The plan of a copy."""

    __match_args__ = ("closure", "missing", "nar_bytes")
    @property
    def closure(self) -> int: ...
    @property
    def missing(self) -> int: ...
    @property
    def nar_bytes(self) -> int: ...

@final
class PathSkipped:
    """A path the destination already has."""

    __match_args__ = ("path",)
    @property
    def path(self) -> str: ...

@final
class PathFoundUpstream:
    """A path the destination lacks, not copied because an upstream serves it."""

    __match_args__ = ("path", "upstream")
    @property
    def path(self) -> str: ...
    @property
    def upstream(self) -> str: ...

@final
class UpstreamFailed:
    """An upstream could not be asked; it is left out."""

    __match_args__ = ("upstream", "error")
    @property
    def upstream(self) -> str: ...
    @property
    def error(self) -> str: ...

@final
class PathStarted:
    """A path started copying."""

    __match_args__ = ("path", "nar_size")
    @property
    def path(self) -> str: ...
    @property
    def nar_size(self) -> int: ...

@final
class BytesCopied:
    """More NAR bytes were read."""

    __match_args__ = ("bytes",)
    @property
    def bytes(self) -> int: ...

@final
class PathCopied:
    """A path is in the destination."""

    __match_args__ = ("path", "nar_size", "passthrough")
    @property
    def path(self) -> str: ...
    @property
    def nar_size(self) -> int: ...
    @property
    def passthrough(self) -> bool: ...

@final
class CopyRetrying:
    """A try failed; another follows after ``delay`` seconds."""

    __match_args__ = ("path", "attempt", "delay", "error")
    @property
    def path(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def delay(self) -> float: ...
    @property
    def error(self) -> str: ...

@final
class PathFailed:
    """A path could not be copied."""

    __match_args__ = ("path", "error")
    @property
    def path(self) -> str: ...
    @property
    def error(self) -> str: ...

@final
class DestinationFailed:
    """The destination could not be asked what it has."""

    __match_args__ = ("error",)
    @property
    def error(self) -> str: ...

@final
class CopySummary:
    """What a copy did."""

    @property
    def url(self) -> str: ...
    @property
    def copied(self) -> int: ...
    @property
    def skipped(self) -> int: ...
    @property
    def upstream(self) -> int: ...
    @property
    def nar_bytes(self) -> int: ...
    @property
    def failed(self) -> builtins.list[tuple[str, str]]: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def is_complete(self) -> bool: ...

def copy(
    src: Store | str,
    dst: Store | str,
    paths: _Paths,
    *,
    jobs: int | None = None,
    progress: Callable[[Any], object] | None = None,
    check_sigs: bool = True,
    trusted_keys: _TrustedKeys | None = None,
    secret_keys: builtins.list[SigningKey] | None = None,
    retries: int = 5,
    raise_on_failure: bool = True,
    upstreams: Iterable[Store | str] | None = None,
    upstream_timeout: float = 30.0,
) -> CopySummary:
    """Copies the closure of ``paths`` from ``src`` to ``dst``."""

# Serving

@final
class Server:
    """A running binary cache server; a context manager that closes it."""

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
    @property
    def address(self) -> tuple[str, int]:
        """The address listened on, ``(host, port)``."""
    @property
    def port(self) -> int:
        """The port listened on."""
    @property
    def closed(self) -> bool:
        """Whether the server was closed."""
    def close(self) -> None:
        """Stops the server gracefully."""
    def reload_tokens(self) -> int:
        """Reads the tokens file again; returns how many tokens it holds."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        *_exc: type[BaseException] | BaseException | TracebackType | None,
    ) -> bool: ...

def serve(
    store: Store | str,
    *,
    listen: str = "127.0.0.1:0",
    secret_keys: builtins.list[SigningKey] | None = None,
    priority: int | None = None,
    want_mass_query: bool | None = None,
    writable: bool = False,
    token: str | None = None,
    tokens_file: str | os.PathLike[str] | None = None,
    public_cache_info: bool = False,
    compression: str = "none",
    verbose: bool = False,
    upstreams: builtins.list[Store | str] | None = None,
    trusted_keys: _TrustedKeys | None = None,
    cache_upstream: Store | str | None = None,
    upstream_timeout: float = 3.0,
    log_format: str = "text",
    max_connections: int = 10000,
    max_requests: int = 512,
    header_timeout: float = 30.0,
    io_timeout: float = 60.0,
) -> Server:
    """Serves ``store`` as a Nix binary cache over HTTP."""

def cache_verify(
    url: str,
    paths: _Paths | None = None,
    *,
    trusted_keys: _TrustedKeys | None = None,
    jobs: int | None = None,
    grace: float = 3600.0,
    upstreams: builtins.list[Store | str] | None = None,
    repair_from: Store | str | None = None,
    delete_broken: bool = False,
) -> str: ...
def cache_sign(
    url: str,
    secret_keys: builtins.list[SigningKey],
    *,
    remove_signatures_by: builtins.list[str] | None = None,
    trusted_keys: _TrustedKeys | None = None,
) -> str: ...
def cache_stats(url: str) -> str: ...
def cache_pin(url: str, name: str, paths: _Paths, *, keep: int | None = None) -> str: ...
def cache_pins(url: str) -> str: ...
def cache_unpin(url: str, name: str, *, generation: int | None = None) -> None: ...
def cache_gc(
    url: str,
    *,
    keep_newer_than: float | None = None,
    max_size: int | None = None,
    grace: float = 3600.0,
    dry_run: bool = False,
    jobs: int = 16,
) -> str: ...
def nix_config_json(options: Sequence[tuple[str, str]] = ...) -> str: ...
def check_json(
    src: Store | str,
    dsts: Sequence[str],
    paths: _Paths,
    *,
    substitute: bool = False,
    secret_keys: builtins.list[SigningKey] | None = None,
    timeout: float = 60.0,
) -> str: ...
