//! Multipart uploads of the cache that were begun and neither completed
//! nor aborted: listed with S3's `ListMultipartUploads` (which
//! `object_store` does not offer), aborted through `object_store`.
//!
//! The listing is `GET /<bucket>?uploads&prefix=<prefix>` (path-style,
//! as every request of the store), signed (SigV4) with the client's
//! credentials and sent through the client's connections, page by page
//! (`key-marker`, `upload-id-marker`) while the answer `IsTruncated`. An
//! answer is read up to [`MAX_PAGE`] bytes, and at most [`MAX_PAGES`]
//! pages; failures are told apart and tried again as for other requests
//! (see [`super::failure`]).

use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use object_store::aws::AwsAuthorizer;
use object_store::client::{HttpError, HttpErrorKind, HttpRequest, HttpRequestBody};
use object_store::multipart::MultipartStore as _;
use quick_xml::events::Event;

use super::failure::{self, Failure};
use super::{StoreError, S3};
use crate::cache::UploadEntry;
use crate::store::remote::Blobs as _;

/// The most bytes of one page of the listing that are read.
const MAX_PAGE: usize = 16 << 20;

/// The most pages read (S3 gives up to 1000 uploads a page).
const MAX_PAGES: usize = 1000;

/// What a failed listing is called in messages.
const LISTING: &str = "listing the multipart uploads under";

/// The uploads of one page of a `ListMultipartUploads` answer, and where
/// the next page starts.
#[derive(Debug, Default, PartialEq, Eq)]
struct Page {
    /// Key (in the bucket), upload id, when it was begun.
    uploads: Vec<(String, String, Option<SystemTime>)>,
    truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

/// Parses a `ListMultipartUploadsResult` document.
fn parse_page(xml: &str) -> Result<Page, String> {
    const ROOT: &str = "ListMultipartUploadsResult";
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut page = Page::default();
    // The names of the open elements, and the text of the innermost.
    let mut open: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut upload: (Option<String>, Option<String>, Option<SystemTime>) = (None, None, None);
    let mut seen_root = false;
    loop {
        let event = reader.read_event().map_err(|e| e.to_string())?;
        let (name, ends) = match &event {
            Event::Start(e) => (Some(e.local_name().as_ref().to_vec()), false),
            Event::Empty(e) => (Some(e.local_name().as_ref().to_vec()), true),
            Event::End(_) => (None, true),
            Event::Text(t) => {
                text.push_str(&t.xml_content().map_err(|e| e.to_string())?);
                continue;
            }
            Event::CData(t) => {
                text.push_str(&t.decode().map_err(|e| e.to_string())?);
                continue;
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|e| e.to_string())?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| format!("unknown entity '&{name};'"))?
                            .to_owned()
                    }
                };
                text.push_str(&c);
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        if let Some(name) = name {
            let name = String::from_utf8(name).map_err(|_| "a name that is not UTF-8")?;
            if open.is_empty() {
                if name != ROOT || seen_root {
                    return Err(format!("not a {ROOT}"));
                }
                seen_root = true;
            }
            open.push(name);
            text.clear();
            if !ends {
                continue;
            }
        }
        let path: Vec<&str> = open.iter().map(String::as_str).collect();
        let value = std::mem::take(&mut text);
        match path[1..] {
            ["IsTruncated"] => page.truncated = value.trim() == "true",
            ["NextKeyMarker"] => page.next_key_marker = Some(value),
            ["NextUploadIdMarker"] => page.next_upload_id_marker = Some(value),
            ["Upload", "Key"] => upload.0 = Some(value),
            ["Upload", "UploadId"] => upload.1 = Some(value),
            ["Upload", "Initiated"] => upload.2 = parse_time(value.trim()),
            ["Upload"] => match std::mem::take(&mut upload) {
                (Some(key), Some(id), initiated) => page.uploads.push((key, id, initiated)),
                _ => return Err("an Upload without its Key or UploadId".to_owned()),
            },
            _ => {}
        }
        open.pop();
    }
    if !seen_root || !open.is_empty() {
        return Err(format!("not a whole {ROOT}"));
    }
    Ok(page)
}

/// An ISO 8601 time in UTC as S3 writes them,
/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`.
fn parse_time(s: &str) -> Option<SystemTime> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let mut d = date.splitn(3, '-');
    let (year, month, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':');
    let (hour, minute, second) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
    let valid = (1970..=9999).contains(&year)
        && (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour < 24
        && minute < 60
        && second < 61;
    if !valid || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y % 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    let nanos = match fraction.get(..fraction.len().min(9)) {
        Some("") | None => 0,
        Some(f) => f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32),
    };
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// A query value, percent-encoded (all but the unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a request that failed so may pass if sent again: no answer,
/// or one that may change (5xx, throttling).
fn may_pass(e: &HttpError) -> bool {
    match Failure::of(e) {
        Some(f) => failure::transient(f.status),
        None => matches!(
            e.kind(),
            HttpErrorKind::Connect
                | HttpErrorKind::Request
                | HttpErrorKind::Timeout
                | HttpErrorKind::Interrupted
        ),
    }
}

/// An [`HttpError`] as the `object_store` error the store maps.
fn as_store_error(e: HttpError) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: Box::new(e),
    }
}

impl S3 {
    /// The unfinished multipart uploads under the cache's prefix, keyed
    /// relative to it.
    pub(super) async fn unfinished_uploads(&self) -> Result<Vec<UploadEntry>, StoreError> {
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> = None;
        for _ in 0..MAX_PAGES {
            let page = self.uploads_page(marker.as_ref()).await?;
            let last = page
                .uploads
                .last()
                .map(|(key, id, _)| (key.clone(), id.clone()));
            for (key, id, initiated) in page.uploads {
                if let Some(rel) = key.strip_prefix(&self.prefix) {
                    out.push(UploadEntry {
                        key: rel.to_owned(),
                        id,
                        initiated,
                    });
                }
            }
            if !page.truncated {
                return Ok(out);
            }
            let next = match (page.next_key_marker, page.next_upload_id_marker) {
                (Some(key), id) if !key.is_empty() => Some((key, id.unwrap_or_default())),
                _ => last,
            };
            if next.is_none() || next == marker {
                return Err(
                    self.bad_listing("the answer is truncated, but where it goes on is not said")
                );
            }
            marker = next;
        }
        Err(self.bad_listing(&format!(
            "more than {MAX_PAGES} pages of uploads; not read further"
        )))
    }

    /// Aborts an upload; one the server no longer knows is no error.
    pub(super) async fn abort_unfinished(&self, upload: &UploadEntry) -> Result<(), StoreError> {
        let key = self.key(&upload.key)?;
        match self.client.abort_multipart(&key, &upload.id).await {
            Ok(()) => Ok(()),
            // `NoSuchUpload`: aborted already, or completed.
            Err(e) if failure::status(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.failed("aborting the multipart upload of", &upload.key, e)),
        }
    }

    /// A listing the server answered wrongly.
    fn bad_listing(&self, why: &str) -> StoreError {
        StoreError::Remote {
            store: self.url.clone(),
            message: format!("{LISTING} {}: {why}", self.locate("")),
        }
    }

    /// One page of the listing: the first, or the one after `marker`
    /// (key, upload id). Tried again as other requests are.
    async fn uploads_page(&self, marker: Option<&(String, String)>) -> Result<Page, StoreError> {
        let mut url = format!("{}?uploads", self.bucket_url);
        if !self.prefix.is_empty() {
            url.push_str(&format!("&prefix={}", encode(&self.prefix)));
        }
        if let Some((key, id)) = marker {
            url.push_str(&format!("&key-marker={}", encode(key)));
            if !id.is_empty() {
                url.push_str(&format!("&upload-id-marker={}", encode(id)));
            }
        }
        let mut attempt = 0;
        loop {
            let failed = match self.get_page(&url).await? {
                Ok(body) => {
                    let text = String::from_utf8_lossy(&body);
                    return parse_page(&text).map_err(|e| {
                        self.bad_listing(&format!("the answer is not a listing: {e}"))
                    });
                }
                Err(e) => e,
            };
            if attempt >= self.retries || !may_pass(&failed) {
                return Err(self.failed(LISTING, "", as_store_error(failed)));
            }
            let backoff = Duration::from_millis(100).saturating_mul(1 << attempt.min(8));
            tokio::time::sleep(backoff.min(Duration::from_secs(15))).await;
            attempt += 1;
        }
    }

    /// Sends a signed `GET url`: the body of the answer (at most
    /// [`MAX_PAGE`] bytes), or the request's failure.
    async fn get_page(&self, url: &str) -> Result<Result<Vec<u8>, HttpError>, StoreError> {
        let credential = self
            .client
            .credentials()
            .get_credential()
            .await
            .map_err(|e| self.failed(LISTING, "", e))?;
        let mut request = HttpRequest::new(HttpRequestBody::empty());
        *request.uri_mut() = url
            .parse()
            .map_err(|e| self.bad_listing(&format!("cannot make the URL '{url}': {e}")))?;
        AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut request, None);
        let response = match self.http.execute(request).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let status = response.status();
        if !status.is_success() {
            return Err(self.bad_listing(&format!("the server answered {status}")));
        }
        let mut body = response.into_body().bytes_stream();
        let mut data = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            };
            if chunk.len() > MAX_PAGE - data.len() {
                return Err(
                    self.bad_listing(&format!("an answer longer than {} MiB", MAX_PAGE >> 20))
                );
            }
            data.extend_from_slice(&chunk);
        }
        Ok(Ok(data))
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::Instant;

    use object_store::path::Path as Key;

    use super::*;
    use crate::cache::{verify, Cache, ProblemKind, VerifyOptions};
    use crate::store::s3::S3Store;
    use crate::store::StoreUrl;

    fn at(secs: u64, nanos: u32) -> Option<SystemTime> {
        SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), at(0, 0));
        assert_eq!(parse_time("2010-11-10T20:48:33.000Z"), at(1_289_422_113, 0));
        assert_eq!(
            parse_time("2000-02-29T12:00:00.5Z"),
            at(951_825_600, 500_000_000)
        );
        assert_eq!(
            parse_time("2024-12-31T23:59:59.123456789Z"),
            at(1_735_689_599, 123_456_789)
        );
        for bad in [
            "",
            "2010-11-10T20:48:33",
            "2010-11-10 20:48:33Z",
            "2010-13-10T20:48:33Z",
            "2010-11-10T24:00:00Z",
            "1969-12-31T23:59:59Z",
            "2010-11-10T20:48:3xZ",
            "2010-11-10T20:48:33.x1Z",
            "+010-11-10T20:48:33Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_values() {
        assert_eq!(encode("sub/dir a+b~_.-"), "sub%2Fdir%20a%2Bb~_.-");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn pages() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker/><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>p/nar/b&amp;c.nar</NextKeyMarker>
  <NextUploadIdMarker>id-2</NextUploadIdMarker>
  <Prefix>p/</Prefix><MaxUploads>2</MaxUploads>
  <IsTruncated>true</IsTruncated>
  <Upload>
    <Key>p/nar/a.nar.xz</Key><UploadId>id-1</UploadId>
    <Initiator><ID>arn:x</ID><DisplayName>u</DisplayName></Initiator>
    <Owner><ID>o</ID></Owner><StorageClass>STANDARD</StorageClass>
    <Initiated>2010-11-10T20:48:33.000Z</Initiated>
  </Upload>
  <!-- a comment -->
  <Upload><Key>p/nar/b&amp;c&#46;nar</Key><UploadId><![CDATA[id-2]]></UploadId></Upload>
</ListMultipartUploadsResult>"#;
        let page = parse_page(xml).unwrap();
        assert_eq!(
            page,
            Page {
                uploads: vec![
                    ("p/nar/a.nar.xz".into(), "id-1".into(), at(1_289_422_113, 0)),
                    ("p/nar/b&c.nar".into(), "id-2".into(), None),
                ],
                truncated: true,
                next_key_marker: Some("p/nar/b&c.nar".into()),
                next_upload_id_marker: Some("id-2".into()),
            }
        );
        let empty = parse_page(
            "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert_eq!(empty, Page::default());
        for bad in [
            "",
            "<Error><Code>X</Code></Error>",
            "<ListMultipartUploadsResult><Upload><Key>k</Key></Upload></ListMultipartUploadsResult>",
            "<ListMultipartUploadsResult><Upload>",
            "<ListMultipartUploadsResult><Upload><Key>&bogus;</Key></Upload></ListMultipartUploadsResult>",
            "<ListMultipartUploadsResult/><ListMultipartUploadsResult/>",
        ] {
            assert!(parse_page(bad).is_err(), "{bad}");
        }
    }

    /// The S3 server of the command's tests (moto, signatures checked),
    /// with the bucket `cache`; killed when dropped.
    struct Moto {
        child: Child,
        port: u16,
        key_id: String,
        secret: String,
        dir: tempfile::TempDir,
    }

    impl Moto {
        /// Starts it, if its Python is there (`NIXFERRY_TEST_PYTHON`, else
        /// the test command's virtualenv); when it is not, the test skips,
        /// or fails in CI or with `NIXFERRY_REQUIRE_NIX` set.
        fn start() -> Option<Self> {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
            let python = std::env::var_os("NIXFERRY_TEST_PYTHON")
                .filter(|p| !p.is_empty())
                .map_or_else(|| root.join("target/py-venv/bin/python"), PathBuf::from);
            let found = Command::new(&python)
                .args(["-c", "import moto.server, boto3"])
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                let required = ["CI", "NIXFERRY_REQUIRE_NIX"]
                    .iter()
                    .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
                assert!(!required, "{} cannot import moto[server]", python.display());
                eprintln!(
                    "note: {} cannot import moto[server]; skipping a test",
                    python.display()
                );
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let (port_file, creds) = (dir.path().join("port"), dir.path().join("creds.json"));
            let mut child = Command::new(&python)
                .arg(root.join("crates/cli/tests/it/s3_server.py"))
                .arg("serve")
                .arg("--port-file")
                .arg(&port_file)
                .arg("--creds-file")
                .arg(&creds)
                .args(["--bucket", "cache", "--tmp-dir"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            let start = Instant::now();
            let port = loop {
                if let Ok(p) = std::fs::read_to_string(&port_file) {
                    break p.trim().parse().unwrap();
                }
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("the S3 server exited: {status}");
                }
                assert!(start.elapsed() < Duration::from_secs(60), "no S3 server");
                std::thread::sleep(Duration::from_millis(20));
            };
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
            let field = |name: &str| v[name].as_str().unwrap().to_owned();
            Some(Self {
                child,
                port,
                key_id: field("access_key_id"),
                secret: field("secret_access_key"),
                dir,
            })
        }

        /// The cache at `bucket_and_prefix`, with the server's
        /// credentials and nothing else from the environment.
        fn store(&self, bucket_and_prefix: &str) -> S3Store {
            let url = format!(
                "s3://{bucket_and_prefix}?endpoint=127.0.0.1:{}&scheme=http",
                self.port
            );
            let none = self.dir.path().join("none");
            let env = |name: &str| match name {
                "AWS_ACCESS_KEY_ID" => Some(OsString::from(&self.key_id)),
                "AWS_SECRET_ACCESS_KEY" => Some(OsString::from(&self.secret)),
                "AWS_SHARED_CREDENTIALS_FILE" | "AWS_CONFIG_FILE" => Some(none.clone().into()),
                "XDG_STATE_HOME" => Some(self.dir.path().join("state").into()),
                _ => None,
            };
            S3Store::open_in(&StoreUrl::parse(&url).unwrap(), &env).unwrap()
        }
    }

    impl Drop for Moto {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Against the S3 server: uploads begun and left are listed under the
    /// cache's prefix, keyed relative to it, reported by `verify`, and
    /// gone once aborted (twice is no error).
    #[tokio::test]
    async fn uploads_in_the_s3_server() {
        let Some(server) = Moto::start() else { return };
        let store = server.store("cache/sub");
        let whole = server.store("cache");
        let s3 = &store.inner.blobs;
        let ours = s3
            .client
            .create_multipart(&s3.key("nar/1abc.nar.xz").unwrap())
            .await
            .unwrap();
        let theirs = s3
            .client
            .create_multipart(&Key::from("elsewhere/nar/2def.nar"))
            .await
            .unwrap();

        let files = store.files();
        let uploads = files.list_uploads().await.unwrap();
        assert_eq!(uploads.len(), 1, "{uploads:?}");
        assert_eq!(
            (uploads[0].key.as_str(), &uploads[0].id),
            ("nar/1abc.nar.xz", &ours)
        );
        assert!(uploads[0].initiated.is_some());
        let mut all: Vec<_> = whole
            .files()
            .list_uploads()
            .await
            .unwrap()
            .into_iter()
            .map(|u| (u.key, u.id))
            .collect();
        all.sort();
        assert_eq!(
            all,
            [
                ("elsewhere/nar/2def.nar".to_owned(), theirs.clone()),
                ("sub/nar/1abc.nar.xz".to_owned(), ours.clone()),
            ]
        );

        let cache = Cache::from_parts(Arc::new(store.clone()), Arc::clone(&files));
        let opts = VerifyOptions {
            grace: Duration::ZERO,
            ..VerifyOptions::default()
        };
        let report = verify(&cache, &opts, &|_| {}).await.unwrap();
        let found: Vec<_> = report
            .problems
            .iter()
            .map(|p| (p.kind, p.key.as_str()))
            .collect();
        assert_eq!(found, [(ProblemKind::UnfinishedUpload, "nar/1abc.nar.xz")]);

        files.abort_upload(&uploads[0]).await.unwrap();
        files.abort_upload(&uploads[0]).await.unwrap();
        assert_eq!(files.list_uploads().await.unwrap(), []);
        assert!(verify(&cache, &opts, &|_| {}).await.unwrap().is_clean());
        let left = whole.files().list_uploads().await.unwrap();
        assert_eq!(left.len(), 1);
        whole.files().abort_upload(&left[0]).await.unwrap();
        assert_eq!(whole.files().list_uploads().await.unwrap(), []);
    }
}
