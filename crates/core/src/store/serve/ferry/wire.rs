//! The frames and messages of nixferry's remote protocol
//! (docs/formats.md §7): a strict decoder, bounded before it allocates,
//! whose errors give the byte offset in the stream.

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::delta::DeltaKind;
use crate::hash::NixHash;
use crate::store::PathInfo;
use crate::store_path::{ContentAddress, StorePath};

/// What the remote end answers the serve protocol's greeting with when it
/// is `nixferry remote`: the bytes `nixferry`.
pub const FERRY_MAGIC: u64 = u64::from_le_bytes(*b"nixferry");

/// The protocol version this side speaks.
pub const VERSION: u64 = 1;

/// The largest message (a JSON object) either side accepts.
pub const MAX_MESSAGE: usize = 64 << 20;

/// The largest data frame either side accepts.
pub const MAX_DATA: usize = 1 << 20;

/// How many bytes a frame header takes: `u32` stream, `u8` kind, `u32`
/// length.
pub const HEADER: usize = 9;

/// The kinds of frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A message: a JSON object (stream 0).
    Message = 0,
    /// Bytes of a stream.
    Data = 1,
    /// The end of a stream's bytes.
    End = 2,
    /// The sender gives up on a stream; the payload says why (UTF-8).
    Abort = 3,
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it is.
    pub kind: Kind,
    /// The stream it belongs to (0 for messages).
    pub stream: u32,
    /// Its payload.
    pub payload: Bytes,
}

impl Frame {
    /// A message frame.
    pub fn message(value: &Value) -> Self {
        Self {
            kind: Kind::Message,
            stream: 0,
            payload: Bytes::from(value.to_string()),
        }
    }

    /// The header of this frame.
    pub fn header(&self) -> [u8; HEADER] {
        let mut h = [0; HEADER];
        h[..4].copy_from_slice(&self.stream.to_le_bytes());
        h[4] = self.kind as u8;
        let len = u32::try_from(self.payload.len()).expect("frames are bounded");
        h[5..].copy_from_slice(&len.to_le_bytes());
        h
    }
}

/// A protocol violation, with where it happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {reason}")]
pub struct WireError {
    /// Offset of the frame in the stream.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

/// Checks a frame header, returning the frame's kind, stream and length.
///
/// # Errors
/// An unknown kind, a message on a stream other than 0, a stream of 0 for
/// data, or a length over the kind's limit.
pub fn parse_header(h: &[u8; HEADER], offset: u64) -> Result<(Kind, u32, usize), WireError> {
    let stream = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let len = u32::from_le_bytes([h[5], h[6], h[7], h[8]]) as usize;
    let bad = |reason: String| WireError { offset, reason };
    let kind = match h[4] {
        0 => Kind::Message,
        1 => Kind::Data,
        2 => Kind::End,
        3 => Kind::Abort,
        k => return Err(bad(format!("unknown frame kind {k}"))),
    };
    let max = match kind {
        Kind::Message => MAX_MESSAGE,
        Kind::Data => MAX_DATA,
        Kind::End => 0,
        Kind::Abort => 4096,
    };
    if len > max {
        return Err(bad(format!(
            "{kind:?} frame of {len} bytes (at most {max})"
        )));
    }
    match (kind, stream) {
        (Kind::Message, 0) => {}
        (Kind::Message, s) => return Err(bad(format!("message on stream {s}"))),
        (_, 0) => return Err(bad(format!("{kind:?} frame on stream 0"))),
        _ => {}
    }
    Ok((kind, stream, len))
}

/// Reads frames from a stream, counting bytes for error messages.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    offset: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads from `inner`, whose first byte is at `offset`.
    pub fn new(inner: R, offset: u64) -> Self {
        Self { inner, offset }
    }

    /// The next frame, or `None` at a clean end (between frames).
    ///
    /// # Errors
    /// [`ReadError::Io`] when reading fails (an end inside a frame
    /// included), [`ReadError::Wire`] for a protocol violation.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        let mut h = [0; HEADER];
        let mut got = 0;
        while got < HEADER {
            let n = self
                .inner
                .read(&mut h[got..])
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            got += n;
        }
        let (kind, stream, len) = parse_header(&h, self.offset).map_err(ReadError::Wire)?;
        let mut payload = BytesMut::zeroed(len);
        self.inner
            .read_exact(&mut payload)
            .await
            .map_err(ReadError::Io)?;
        self.offset += (HEADER + len) as u64;
        Ok(Some(Frame {
            kind,
            stream,
            payload: payload.freeze(),
        }))
    }

    /// The offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream failed or ended inside a frame.
    #[error("{0}")]
    Io(std::io::Error),
    /// The peer broke the protocol.
    #[error("{0}")]
    Wire(WireError),
}

/// Decodes the frames in `data`, as the fuzzer does: every frame is
/// checked, and every message parsed as both a request and a reply.
///
/// # Errors
/// The first violation.
pub fn decode_all(mut data: &[u8]) -> Result<Vec<Frame>, WireError> {
    let mut frames = Vec::new();
    let mut offset = 0u64;
    while !data.is_empty() {
        let bad = |reason: &str| WireError {
            offset,
            reason: reason.to_owned(),
        };
        let h: &[u8; HEADER] = data
            .get(..HEADER)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| bad("truncated frame header"))?;
        let (kind, stream, len) = parse_header(h, offset)?;
        let payload = data
            .get(HEADER..HEADER + len)
            .ok_or_else(|| bad("truncated frame"))?;
        if kind == Kind::Message {
            let value = parse_message(payload, offset)?;
            let _ = Request::parse(&value, offset);
            let _ = Reply::parse(&value, offset);
        }
        frames.push(Frame {
            kind,
            stream,
            payload: Bytes::copy_from_slice(payload),
        });
        data = &data[HEADER + len..];
        offset += (HEADER + len) as u64;
    }
    Ok(frames)
}

/// Parses a message's payload: a JSON object.
///
/// # Errors
/// Not JSON, or not an object.
pub fn parse_message(payload: &[u8], offset: u64) -> Result<Map<String, Value>, WireError> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(WireError {
            offset,
            reason: "a message must be a JSON object".to_owned(),
        }),
        Err(e) => Err(WireError {
            offset,
            reason: format!("invalid message: {e}"),
        }),
    }
}

/// Typed access to a message's fields, with errors that name the field.
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    offset: u64,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(map: &'a Map<String, Value>, offset: u64) -> Self {
        Self { map, offset }
    }

    pub(crate) fn error(&self, reason: impl Into<String>) -> WireError {
        WireError {
            offset: self.offset,
            reason: reason.into(),
        }
    }

    fn get(&self, name: &str) -> Result<&'a Value, WireError> {
        self.map
            .get(name)
            .ok_or_else(|| self.error(format!("message without '{name}'")))
    }

    pub(crate) fn str(&self, name: &str) -> Result<&'a str, WireError> {
        self.get(name)?
            .as_str()
            .ok_or_else(|| self.error(format!("'{name}' is not a string")))
    }

    pub(crate) fn opt_str(&self, name: &str) -> Result<Option<&'a str>, WireError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.str(name).map(Some),
        }
    }

    pub(crate) fn u64(&self, name: &str) -> Result<u64, WireError> {
        self.get(name)?
            .as_u64()
            .ok_or_else(|| self.error(format!("'{name}' is not a number")))
    }

    pub(crate) fn opt_u64(&self, name: &str) -> Result<Option<u64>, WireError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.u64(name).map(Some),
        }
    }

    pub(crate) fn id(&self) -> Result<u32, WireError> {
        let id = self.u64("id")?;
        u32::try_from(id)
            .ok()
            .filter(|&id| id != 0)
            .ok_or_else(|| self.error(format!("bad id {id}")))
    }

    pub(crate) fn bool(&self, name: &str) -> Result<bool, WireError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.error(format!("'{name}' is not a boolean"))),
        }
    }

    pub(crate) fn array(&self, name: &str) -> Result<&'a [Value], WireError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(&[]),
            Some(v) => v
                .as_array()
                .map(Vec::as_slice)
                .ok_or_else(|| self.error(format!("'{name}' is not an array"))),
        }
    }

    pub(crate) fn path(&self, name: &str) -> Result<StorePath, WireError> {
        self.path_of(self.str(name)?, name)
    }

    pub(crate) fn path_of(&self, s: &str, name: &str) -> Result<StorePath, WireError> {
        StorePath::from_base_name(s)
            .map_err(|e| self.error(format!("'{name}': bad store path '{s}': {e}")))
    }

    pub(crate) fn paths(&self, name: &str) -> Result<Vec<StorePath>, WireError> {
        self.array(name)?
            .iter()
            .map(|v| {
                let s = v
                    .as_str()
                    .ok_or_else(|| self.error(format!("'{name}' holds a non-string")))?;
                self.path_of(s, name)
            })
            .collect()
    }

    pub(crate) fn info(&self, name: &str) -> Result<PathInfo, WireError> {
        match self.get(name)? {
            Value::Object(map) => info_from_json(&Fields::new(map, self.offset)),
            _ => Err(self.error(format!("'{name}' is not an object"))),
        }
    }
}

/// A path info as a message holds it.
pub fn info_to_json(info: &PathInfo) -> Value {
    let names = |paths: &[StorePath]| paths.iter().map(ToString::to_string).collect::<Vec<_>>();
    json!({
        "path": info.path.to_string(),
        "narHash": info.nar_hash.to_string(),
        "narSize": info.nar_size,
        "references": names(&info.references),
        "deriver": info.deriver.as_ref().map(ToString::to_string),
        "signatures": info.signatures,
        "ca": info.ca.as_ref().map(ToString::to_string),
        "registrationTime": info.registration_time,
        "ultimate": info.ultimate,
    })
}

fn info_from_json(f: &Fields<'_>) -> Result<PathInfo, WireError> {
    let path = f.path("path")?;
    let hash = f.str("narHash")?;
    let nar_hash: NixHash = hash
        .parse()
        .map_err(|e| f.error(format!("bad narHash '{hash}': {e}")))?;
    let mut info = PathInfo::new(path, nar_hash, f.u64("narSize")?);
    info.references = f.paths("references")?;
    info.references.sort();
    info.references.dedup();
    info.deriver = match f.opt_str("deriver")? {
        Some(d) => Some(f.path_of(d, "deriver")?),
        None => None,
    };
    info.signatures = f
        .array("signatures")?
        .iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| f.error("'signatures' holds a non-string"))
        })
        .collect::<Result<_, _>>()?;
    info.ca = match f.opt_str("ca")? {
        Some(ca) => Some(
            ca.parse::<ContentAddress>()
                .map_err(|e| f.error(format!("bad ca '{ca}': {e}")))?,
        ),
        None => None,
    };
    info.registration_time = f.opt_u64("registrationTime")?.unwrap_or(0);
    info.ultimate = f.bool("ultimate")?;
    Ok(info)
}

/// How an added path's bytes are encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoding {
    /// A zstd stream of the NAR (from the add's offset), possibly several
    /// frames.
    Zstd,
    /// A delta against a base the receiver has: the payload of a kind 1
    /// delta (zstd with the base's NAR as reference prefix, when the
    /// sender has the base too) or of a kind 2 delta (block copies and
    /// literals against the base's signature, when only the receiver has
    /// it), docs/formats.md §8.
    Delta {
        /// Which kind of payload.
        kind: DeltaKind,
        /// The base path, which the receiver has.
        base: StorePath,
        /// Its NAR hash, which the receiver checks its copy against.
        base_hash: NixHash,
        /// Its NAR size.
        base_size: u64,
    },
}

/// What the client asks (docs/formats.md §7.3).
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Which of `paths` the remote has (with their infos), and for the
    /// missing ones what it already has of them and a base for a delta,
    /// preferring paths in the closures of `bases` (store paths or
    /// profiles).
    Query {
        /// Request id.
        id: u32,
        /// The paths.
        paths: Vec<StorePath>,
        /// Whether to look for delta bases.
        want_bases: bool,
        /// Store paths or profile links whose closures are preferred as
        /// bases.
        bases: Vec<String>,
    },
    /// The closure of `paths`, with infos.
    Closure {
        /// Request id.
        id: u32,
        /// The roots.
        paths: Vec<StorePath>,
    },
    /// Add a path: its bytes follow on stream `id`.
    Add {
        /// Stream id.
        id: u32,
        /// The path's info.
        info: Box<PathInfo>,
        /// How its bytes are encoded.
        encoding: Encoding,
        /// The NAR offset the bytes start at; `None` asks the remote to
        /// say where to start (an `offset` reply) first.
        offset: Option<u64>,
    },
    /// Send the block signature (docs/formats.md §8.3) of a base the
    /// remote has, on stream `id`, for a kind 2 delta against it.
    Signature {
        /// Stream id.
        id: u32,
        /// The base.
        base: StorePath,
        /// Its NAR hash, as the client was told.
        base_hash: NixHash,
        /// Its NAR size.
        base_size: u64,
    },
    /// Send a path's NAR, zstd-compressed, on stream `id`.
    Nar {
        /// Stream id.
        id: u32,
        /// The path.
        path: StorePath,
    },
}

impl Request {
    /// The message of this request.
    pub fn to_json(&self) -> Value {
        let names = |paths: &[StorePath]| paths.iter().map(ToString::to_string).collect::<Vec<_>>();
        match self {
            Self::Query {
                id,
                paths,
                want_bases,
                bases,
            } => {
                json!({"op": "query", "id": id, "paths": names(paths), "wantBases": want_bases, "bases": bases})
            }
            Self::Closure { id, paths } => {
                json!({"op": "closure", "id": id, "paths": names(paths)})
            }
            Self::Add {
                id,
                info,
                encoding,
                offset,
            } => {
                let mut v =
                    json!({"op": "add", "id": id, "info": info_to_json(info), "offset": offset});
                match encoding {
                    Encoding::Zstd => v["encoding"] = json!("zstd"),
                    Encoding::Delta {
                        kind,
                        base,
                        base_hash,
                        base_size,
                    } => {
                        v["encoding"] = json!(match kind {
                            DeltaKind::Block => "delta-block",
                            _ => "delta-zstd",
                        });
                        v["base"] = json!(base.to_string());
                        v["baseHash"] = json!(base_hash.to_string());
                        v["baseSize"] = json!(base_size);
                    }
                }
                v
            }
            Self::Nar { id, path } => json!({"op": "nar", "id": id, "path": path.to_string()}),
            Self::Signature {
                id,
                base,
                base_hash,
                base_size,
            } => json!({
                "op": "signature",
                "id": id,
                "base": base.to_string(),
                "baseHash": base_hash.to_string(),
                "baseSize": base_size,
            }),
        }
    }

    /// Parses a request.
    ///
    /// # Errors
    /// An unknown `op`, a missing or malformed field.
    pub fn parse(map: &Map<String, Value>, offset: u64) -> Result<Self, WireError> {
        let f = Fields::new(map, offset);
        Ok(match f.str("op")? {
            "query" => Self::Query {
                id: f.id()?,
                paths: f.paths("paths")?,
                want_bases: f.bool("wantBases")?,
                bases: f
                    .array("bases")?
                    .iter()
                    .map(|b| {
                        b.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| f.error("'bases' holds a non-string"))
                    })
                    .collect::<Result<_, _>>()?,
            },
            "closure" => Self::Closure {
                id: f.id()?,
                paths: f.paths("paths")?,
            },
            "add" => Self::Add {
                id: f.id()?,
                info: Box::new(f.info("info")?),
                encoding: match f.str("encoding")? {
                    "zstd" => Encoding::Zstd,
                    e @ ("delta-zstd" | "delta-block") => {
                        let hash = f.str("baseHash")?;
                        Encoding::Delta {
                            kind: if e == "delta-block" {
                                DeltaKind::Block
                            } else {
                                DeltaKind::ZstdRef
                            },
                            base: f.path("base")?,
                            base_hash: hash
                                .parse()
                                .map_err(|e| f.error(format!("bad baseHash '{hash}': {e}")))?,
                            base_size: f.u64("baseSize")?,
                        }
                    }
                    e => return Err(f.error(format!("unknown encoding '{e}'"))),
                },
                offset: f.opt_u64("offset")?,
            },
            "nar" => Self::Nar {
                id: f.id()?,
                path: f.path("path")?,
            },
            "signature" => {
                let hash = f.str("baseHash")?;
                Self::Signature {
                    id: f.id()?,
                    base: f.path("base")?,
                    base_hash: hash
                        .parse()
                        .map_err(|e| f.error(format!("bad baseHash '{hash}': {e}")))?,
                    base_size: f.u64("baseSize")?,
                }
            }
            op => return Err(f.error(format!("unknown request '{op}'"))),
        })
    }
}

/// A missing path, as a query's reply tells of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Missing {
    /// The path.
    pub path: StorePath,
    /// How many bytes of its NAR the remote kept from an interrupted add.
    pub partial: u64,
    /// A similar path the remote has, to send a delta against.
    pub base: Option<PathInfo>,
}

/// Why an add failed, so the sender knows what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The NAR did not match the info: nothing was imported.
    Mismatch,
    /// The remote's copy of the delta's base is damaged or gone: send the
    /// path without a delta.
    Base,
    /// What the remote kept of an earlier try is gone or shorter than the
    /// offset given: ask for the offset again.
    Offset,
    /// A reference is not in the store.
    Reference,
    /// Anything else.
    Other,
}

impl Failure {
    fn name(self) -> &'static str {
        match self {
            Self::Mismatch => "mismatch",
            Self::Base => "base",
            Self::Offset => "offset",
            Self::Reference => "reference",
            Self::Other => "other",
        }
    }
}

/// What the remote answers (docs/formats.md §7.3).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The answer to a query.
    Paths {
        /// Request id.
        id: u32,
        /// Infos of the paths it has.
        valid: Vec<PathInfo>,
        /// The paths it lacks.
        missing: Vec<Missing>,
    },
    /// The answer to a closure request.
    Closure {
        /// Request id.
        id: u32,
        /// Infos of the closure's paths.
        infos: Vec<PathInfo>,
    },
    /// Where an add's bytes are to start.
    Offset {
        /// Stream id.
        id: u32,
        /// The NAR offset.
        offset: u64,
    },
    /// The path was checked and is valid in the remote store now.
    Added {
        /// Stream id.
        id: u32,
    },
    /// The request failed.
    Failed {
        /// Request or stream id.
        id: u32,
        /// What kind of failure.
        failure: Failure,
        /// The remote's message.
        message: String,
    },
}

impl Reply {
    /// The id the reply is for.
    pub fn id(&self) -> u32 {
        match self {
            Self::Paths { id, .. }
            | Self::Closure { id, .. }
            | Self::Offset { id, .. }
            | Self::Added { id }
            | Self::Failed { id, .. } => *id,
        }
    }

    /// The message of this reply.
    pub fn to_json(&self) -> Value {
        let infos = |infos: &[PathInfo]| infos.iter().map(info_to_json).collect::<Vec<_>>();
        match self {
            Self::Paths { id, valid, missing } => {
                let missing: Vec<Value> = missing
                    .iter()
                    .map(|m| {
                        json!({
                            "path": m.path.to_string(),
                            "partial": m.partial,
                            "base": m.base.as_ref().map(info_to_json),
                        })
                    })
                    .collect();
                json!({"op": "paths", "id": id, "valid": infos(valid), "missing": missing})
            }
            Self::Closure { id, infos: i } => json!({"op": "closure", "id": id, "infos": infos(i)}),
            Self::Offset { id, offset } => json!({"op": "offset", "id": id, "offset": offset}),
            Self::Added { id } => json!({"op": "added", "id": id}),
            Self::Failed {
                id,
                failure,
                message,
            } => json!({"op": "failed", "id": id, "failure": failure.name(), "message": message}),
        }
    }

    /// Parses a reply.
    ///
    /// # Errors
    /// An unknown `op`, a missing or malformed field.
    pub fn parse(map: &Map<String, Value>, offset: u64) -> Result<Self, WireError> {
        let f = Fields::new(map, offset);
        let infos = |name| -> Result<Vec<PathInfo>, WireError> {
            f.array(name)?
                .iter()
                .map(|v| match v {
                    Value::Object(m) => info_from_json(&Fields::new(m, offset)),
                    _ => Err(f.error(format!("'{name}' holds a non-object"))),
                })
                .collect()
        };
        Ok(match f.str("op")? {
            "paths" => Self::Paths {
                id: f.id()?,
                valid: infos("valid")?,
                missing: f
                    .array("missing")?
                    .iter()
                    .map(|v| {
                        let Value::Object(m) = v else {
                            return Err(f.error("'missing' holds a non-object"));
                        };
                        let m = Fields::new(m, offset);
                        Ok(Missing {
                            path: m.path("path")?,
                            partial: m.opt_u64("partial")?.unwrap_or(0),
                            base: match m.map.get("base") {
                                None | Some(Value::Null) => None,
                                Some(_) => Some(m.info("base")?),
                            },
                        })
                    })
                    .collect::<Result<_, _>>()?,
            },
            "closure" => Self::Closure {
                id: f.id()?,
                infos: infos("infos")?,
            },
            "offset" => Self::Offset {
                id: f.id()?,
                offset: f.u64("offset")?,
            },
            "added" => Self::Added { id: f.id()? },
            "failed" => Self::Failed {
                id: f.id()?,
                failure: match f.str("failure")? {
                    "mismatch" => Failure::Mismatch,
                    "base" => Failure::Base,
                    "offset" => Failure::Offset,
                    "reference" => Failure::Reference,
                    _ => Failure::Other,
                },
                message: f.str("message")?.chars().take(4096).collect(),
            },
            op => return Err(f.error(format!("unknown reply '{op}'"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> PathInfo {
        let path =
            StorePath::from_base_name("3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt").unwrap();
        let mut info = PathInfo::new(path.clone(), NixHash::sha256([7; 32]), 120);
        info.references = vec![path];
        info.signatures = vec!["k:abc".to_owned()];
        info
    }

    #[test]
    fn messages_round_trip() {
        let requests = [
            Request::Query {
                id: 1,
                paths: vec![info().path],
                want_bases: true,
                bases: vec!["/nix/var/nix/profiles/system".to_owned()],
            },
            Request::Add {
                id: 3,
                info: Box::new(info()),
                encoding: Encoding::Delta {
                    kind: DeltaKind::Block,
                    base: info().path,
                    base_hash: NixHash::sha256([1; 32]),
                    base_size: 9,
                },
                offset: None,
            },
            Request::Nar {
                id: 5,
                path: info().path,
            },
        ];
        for r in requests {
            let Value::Object(map) = r.to_json() else {
                panic!()
            };
            assert_eq!(Request::parse(&map, 0).unwrap(), r);
        }
        let replies = [
            Reply::Paths {
                id: 1,
                valid: vec![info()],
                missing: vec![Missing {
                    path: info().path,
                    partial: 5,
                    base: Some(info()),
                }],
            },
            Reply::Failed {
                id: 2,
                failure: Failure::Base,
                message: "x".to_owned(),
            },
        ];
        for r in replies {
            let Value::Object(map) = r.to_json() else {
                panic!()
            };
            assert_eq!(Reply::parse(&map, 0).unwrap(), r);
        }
    }

    #[test]
    fn bad_frames_say_where() {
        let mut data = Frame::message(&json!({"op": "added", "id": 1}))
            .header()
            .to_vec();
        data.extend_from_slice(br#"{"op":"added","id":1}"#);
        assert!(decode_all(&data).is_ok());
        let good = data.len() as u64;
        data.extend_from_slice(&[1, 0, 0, 0, 9, 0, 0, 0, 0]);
        let e = decode_all(&data).unwrap_err();
        assert_eq!(e.offset, good);
        assert!(e.reason.contains("unknown frame kind 9"), "{e}");
        let big = [1, 0, 0, 0, 1, 0, 0, 0x20, 0];
        assert!(decode_all(&big).unwrap_err().reason.contains("at most"));
        let on_zero = [0, 0, 0, 0, 1, 0, 0, 0, 0];
        assert!(decode_all(&on_zero).is_err());
        let msg_on_stream = [5, 0, 0, 0, 0, 2, 0, 0, 0, b'{', b'}'];
        assert!(decode_all(&msg_on_stream).is_err());
        let not_object = [0, 0, 0, 0, 0, 2, 0, 0, 0, b'[', b']'];
        assert!(decode_all(&not_object).is_err());
        let Value::Object(map) = json!({"op": "added", "id": 0}) else {
            panic!()
        };
        assert!(Reply::parse(&map, 0).is_err(), "id 0 is refused");
        let Value::Object(map) = json!({"op": "add", "id": 4, "info": {"path": "x"}}) else {
            panic!()
        };
        assert!(Request::parse(&map, 7)
            .unwrap_err()
            .to_string()
            .starts_with("at byte 7:"));
    }
}
