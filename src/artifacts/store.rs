//! Where kept result files live: content-addressed blobs behind the `object_store` crate's one
//! interface, a local directory or any S3-compatible bucket.
//!
//! `object_store` rather than `opendal`: both put local files and S3 behind one API, but
//! `object_store` (Apache Arrow's) is the smaller dependency for the two backends the gateway needs,
//! streams uploads in parts (`WriteMultipart`, a bounded buffer whatever the file's size) and reads
//! byte ranges natively (`GetRange`), which is all a file server needs; `opendal`'s breadth (dozens of
//! services, layers) is weight the gateway would carry unused. Aliyun OSS, Tencent COS and Cloudflare
//! R2 all speak S3.
//!
//! A blob's name is the BLAKE3 hash of its bytes plus an extension for its media type
//! (`blobs/ab/ab12….png`): the same file for two credentials, or two tasks, is kept once. A blob is
//! written under a temporary name while it streams in and copied to its name only once whole and
//! within the size cap, so a reader never sees half a file. On a local directory the blobs are held
//! under `max_disk` bytes, the least recently used evicted first; a bucket's own lifecycle rules are
//! its operator's.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};

/// A blob's name: the hash of its content and its kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobId {
    hash: [u8; 32],
    kind: MediaKind,
}

/// The media types a kept file may have, each with the extension its blob is named by. Anything else
/// is kept as `bin` and served as an attachment (never rendered from the gateway's origin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Png,
    Jpeg,
    Webp,
    Gif,
    Mp4,
    Webm,
    Mov,
    Mpeg,
    Wav,
    M4a,
    Ogg,
    Binary,
}

impl MediaKind {
    pub const ALL: [MediaKind; 12] = [
        MediaKind::Png,
        MediaKind::Jpeg,
        MediaKind::Webp,
        MediaKind::Gif,
        MediaKind::Mp4,
        MediaKind::Webm,
        MediaKind::Mov,
        MediaKind::Mpeg,
        MediaKind::Wav,
        MediaKind::M4a,
        MediaKind::Ogg,
        MediaKind::Binary,
    ];

    /// A byte that stands for the kind (in file tokens).
    pub fn code(self) -> u8 {
        MediaKind::ALL
            .iter()
            .position(|kind| *kind == self)
            .map_or(u8::MAX, |i| i as u8)
    }

    pub fn from_code(code: u8) -> Option<Self> {
        MediaKind::ALL.get(usize::from(code)).copied()
    }

    /// The kind an origin's `Content-Type` names (parameters and case ignored).
    pub fn of_content_type(content_type: &str) -> Self {
        let essence = essence(content_type);
        MediaKind::ALL
            .into_iter()
            .find(|kind| kind.content_type() == essence)
            .unwrap_or(MediaKind::Binary)
    }

    pub fn content_type(self) -> &'static str {
        match self {
            MediaKind::Png => "image/png",
            MediaKind::Jpeg => "image/jpeg",
            MediaKind::Webp => "image/webp",
            MediaKind::Gif => "image/gif",
            MediaKind::Mp4 => "video/mp4",
            MediaKind::Webm => "video/webm",
            MediaKind::Mov => "video/quicktime",
            MediaKind::Mpeg => "audio/mpeg",
            MediaKind::Wav => "audio/wav",
            MediaKind::M4a => "audio/mp4",
            MediaKind::Ogg => "audio/ogg",
            MediaKind::Binary => "application/octet-stream",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            MediaKind::Png => "png",
            MediaKind::Jpeg => "jpg",
            MediaKind::Webp => "webp",
            MediaKind::Gif => "gif",
            MediaKind::Mp4 => "mp4",
            MediaKind::Webm => "webm",
            MediaKind::Mov => "mov",
            MediaKind::Mpeg => "mp3",
            MediaKind::Wav => "wav",
            MediaKind::M4a => "m4a",
            MediaKind::Ogg => "ogg",
            MediaKind::Binary => "bin",
        }
    }

    /// Whether a browser may render it from the gateway's origin (images, audio, video); anything
    /// else is sent as an attachment under a sandbox.
    pub fn is_media(self) -> bool {
        self != MediaKind::Binary
    }
}

/// A `Content-Type`'s type and subtype, lowercase, without its parameters.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

impl BlobId {
    pub fn new(hash: [u8; 32], kind: MediaKind) -> Self {
        BlobId { hash, kind }
    }

    pub fn kind(&self) -> MediaKind {
        self.kind
    }

    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The content's hash in hex: a strong `ETag` for it.
    pub fn hex(&self) -> String {
        crate::hex::to_hex(&self.hash)
    }

    fn path(&self) -> Path {
        let hex = self.hex();
        Path::from(format!(
            "blobs/{}/{hex}.{}",
            &hex[..2],
            self.kind.extension()
        ))
    }

    /// The blob a stored name stands for, if it is one of ours.
    fn from_path(path: &Path) -> Option<Self> {
        let name = path.filename()?;
        let (hex, extension) = name.split_once('.')?;
        let kind = MediaKind::ALL
            .into_iter()
            .find(|kind| kind.extension() == extension)?;
        if hex.len() != 64 {
            return None;
        }
        let mut hash = [0u8; 32];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        let id = BlobId { hash, kind };
        // Only our own spelling (lowercase hex), so a name maps to one blob.
        (id.hex() == hex).then_some(id)
    }
}

/// An S3-compatible bucket (AWS, MinIO, R2, OSS, COS, ...).
#[derive(Clone, PartialEq, Eq)]
pub struct S3Bucket {
    /// `None`: AWS's own endpoint for the region.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// Keys under this prefix (`mjgate/`), so one bucket can hold more than the gateway's files.
    pub prefix: Option<String>,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key` (MinIO, most
    /// self-hosted stores).
    pub path_style: bool,
    /// An access key and its secret, when not from the environment (tests, a local MinIO).
    pub access_key: Option<(String, String)>,
}

/// Never the secret key.
impl std::fmt::Debug for S3Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Bucket")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field(
                "access_key",
                &self
                    .access_key
                    .as_ref()
                    .map(|(id, secret)| (id, crate::redact::redacted(secret.as_bytes()))),
            )
            .finish()
    }
}

/// Why a file was not kept.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the file could not be read from its origin: {0}")]
    Source(String),
    #[error("the store refused the file: {0}")]
    Store(#[from] object_store::Error),
}

/// The blobs, and for a local directory the index that keeps them under their disk budget.
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    max_file: u64,
    /// Local directories only: every blob by size, least recently used evicted past `max_disk`
    /// (the eviction deletes the file).
    local: Option<moka::sync::Cache<BlobId, u64>>,
    /// The local directory, read directly: `object_store`'s local reads go 8 KiB at a time through
    /// a blocking task each, an order of magnitude slower than a file read in large chunks.
    root: Option<std::path::PathBuf>,
    /// Blobs the disk budget evicted so far.
    evicted: Arc<std::sync::atomic::AtomicU64>,
}

/// How much of a local file is read at once when it is served.
const READ_CHUNK: usize = 256 << 10;

/// Upload parts: each is buffered whole before it is sent, so this bounds what one upload holds.
const PART: usize = 5 << 20;

impl BlobStore {
    /// Blobs in the local directory `dir` (created if missing), at most `max_disk` bytes of them,
    /// none larger than `max_file`. What an earlier run kept is indexed again; what it left half
    /// written is removed.
    pub fn local(dir: &std::path::Path, max_disk: u64, max_file: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let _ = std::fs::remove_dir_all(dir.join("incoming"));
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(std::io::Error::other)?
            .with_automatic_cleanup(true);
        let root = dir.to_path_buf();
        let evicted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Arc::clone(&evicted);
        let index = moka::sync::Cache::builder()
            .max_capacity(max_disk)
            .weigher(|_: &BlobId, size: &u64| u32::try_from(*size).unwrap_or(u32::MAX))
            // Least recently used first: a file nobody opens for a while goes before one in use,
            // and a new one is always kept (moka's default would weigh it against older ones).
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .eviction_listener(move |id: Arc<BlobId>, _, cause| {
                if cause.was_evicted() {
                    let _ = std::fs::remove_file(root.join(id.path().as_ref()));
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .build();
        let blobs = BlobStore {
            store: Arc::new(store),
            max_file,
            local: Some(index),
            root: Some(dir.to_path_buf()),
            evicted,
        };
        blobs.reindex(&dir.join("blobs"));
        Ok(blobs)
    }

    /// Blobs in an S3-compatible bucket, none larger than `max_file`; credentials from the usual AWS
    /// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...),
    /// the rest from `bucket`. No disk budget of ours: the bucket's lifecycle rules are its operator's.
    pub fn s3(bucket: &S3Bucket, max_file: u64) -> Result<Self, object_store::Error> {
        // The client's own retries, bounded: a bucket that is down costs a download a few seconds,
        // not object_store's default of 10 tries over 3 minutes (the mirror tries again itself).
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(20),
            ..object_store::RetryConfig::default()
        };
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_retry(retry)
            .with_bucket_name(&bucket.bucket)
            .with_region(&bucket.region)
            .with_virtual_hosted_style_request(!bucket.path_style);
        if let Some((id, secret)) = &bucket.access_key {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        if let Some(endpoint) = &bucket.endpoint {
            builder = builder
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint);
        }
        let s3 = builder.build()?;
        let store: Arc<dyn ObjectStore> = match bucket.prefix.as_deref().filter(|p| !p.is_empty()) {
            Some(prefix) => Arc::new(object_store::prefix::PrefixStore::new(s3, prefix)),
            None => Arc::new(s3),
        };
        Ok(Self::remote(store, max_file))
    }

    /// Blobs in `store`, none larger than `max_file`; no disk budget of ours.
    pub fn remote(store: Arc<dyn ObjectStore>, max_file: u64) -> Self {
        BlobStore {
            store,
            max_file,
            local: None,
            root: None,
            evicted: Arc::default(),
        }
    }

    fn reindex(&self, blobs: &std::path::Path) {
        let Some(index) = &self.local else {
            return;
        };
        let Ok(shards) = std::fs::read_dir(blobs) else {
            return;
        };
        for shard in shards.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                let path = Path::from(format!(
                    "blobs/{}/{}",
                    shard.file_name().to_string_lossy(),
                    name.to_string_lossy()
                ));
                match (BlobId::from_path(&path), file.metadata()) {
                    (Some(id), Ok(meta)) => index.insert(id, meta.len()),
                    _ => {
                        let _ = std::fs::remove_file(file.path());
                    }
                }
            }
        }
        index.run_pending_tasks();
    }

    /// Bytes of blobs on the local disk now (0 for a bucket).
    pub fn disk_used(&self) -> u64 {
        self.local.as_ref().map_or(0, |index| {
            index.run_pending_tasks();
            index.weighted_size()
        })
    }

    /// The blob another replica (or an earlier run) kept `url` as, in a bucket: each kept URL is
    /// noted beside the blobs (`urls/ab/<hash of the URL>`), so replicas sharing the bucket download
    /// a file once. Always `None` for a local directory (one process's; its memory knows).
    pub async fn recall(&self, url: &str) -> Option<(BlobId, u64)> {
        if self.local.is_some() {
            return None;
        }
        let note = self
            .store
            .get(&url_note(url))
            .await
            .ok()?
            .bytes()
            .await
            .ok()?;
        let text = std::str::from_utf8(&note).ok()?;
        let (name, len) = text.trim().split_once(' ')?;
        let id = BlobId::from_path(&Path::from(format!("blobs/xx/{name}")))?;
        let len: u64 = len.parse().ok()?;
        // The note outlives nothing: a blob the bucket's lifecycle removed is downloaded again.
        (self.len(&id).await? == len).then_some((id, len))
    }

    /// Notes that `url` was kept as `id` (a bucket only; see [`recall`](Self::recall)).
    pub async fn note(&self, url: &str, id: &BlobId, len: u64) {
        if self.local.is_some() {
            return;
        }
        let name = id.path().filename().map(str::to_owned).unwrap_or_default();
        let note = Bytes::from(format!("{name} {len}"));
        if let Err(e) = self.store.put(&url_note(url), note.into()).await {
            tracing::debug!(error = %e, "could not note a kept URL in the bucket");
        }
    }

    /// Whether replicas may share this store (a bucket, not a local directory).
    pub fn is_shared(&self) -> bool {
        self.local.is_none()
    }

    /// Blobs the disk budget has evicted since the store was opened.
    pub fn evictions(&self) -> u64 {
        self.evicted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Streams `body` into the store as a blob of `kind`, hashing it as it goes, never holding more
    /// than one upload part; refuses it past `max_file`. The blob's name, and its length.
    pub async fn put<S, E>(&self, mut body: S, kind: MediaKind) -> Result<(BlobId, u64), PutError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let incoming = Path::from(format!("incoming/{:032x}", rand::random::<u128>()));
        let upload = self.store.put_multipart(&incoming).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut hash = blake3::Hasher::new();
        let mut len = 0u64;
        let failed = loop {
            let chunk = match body.next().await {
                None => break None,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => break Some(PutError::Source(e.to_string())),
            };
            len += chunk.len() as u64;
            if len > self.max_file {
                break Some(PutError::TooLarge(self.max_file));
            }
            hash.update(&chunk);
            if let Err(e) = writer.wait_for_capacity(2).await {
                break Some(PutError::Store(e));
            }
            writer.put(chunk);
        };
        if let Some(error) = failed {
            let _ = writer.abort().await;
            return Err(error);
        }
        writer.finish().await?;
        let id = BlobId::new(*hash.finalize().as_bytes(), kind);
        // Moved under its name whole. A blob already kept there (another credential's task had the
        // same file) has the very same bytes, so replacing it loses nothing and needs no
        // conditional write, which S3 stores do not all offer.
        if let Err(e) = self.store.rename(&incoming, &id.path()).await {
            let _ = self.store.delete(&incoming).await;
            return Err(PutError::Store(e));
        }
        if let Some(index) = &self.local {
            index.insert(id.clone(), len);
            index.run_pending_tasks();
        }
        Ok((id, len))
    }

    /// The blob's length, if it is kept (and, on a local disk, marks it used).
    pub async fn len(&self, id: &BlobId) -> Option<u64> {
        if let Some(index) = &self.local {
            return index.get(id);
        }
        self.store.head(&id.path()).await.ok().map(|meta| meta.size)
    }

    /// The blob's bytes in `range` (all of them without one), as a stream: a file is never read
    /// whole into memory. `None` when it is not kept.
    pub async fn read(
        &self,
        id: &BlobId,
        range: Option<Range<u64>>,
    ) -> Option<futures_util::stream::BoxStream<'static, Result<Bytes, object_store::Error>>> {
        if let Some(index) = &self.local {
            index.get(id)?;
        }
        if let Some(root) = &self.root {
            return read_local(&root.join(id.path().as_ref()), range).await;
        }
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = self.store.get_opts(&id.path(), options).await.ok()?;
        Some(result.into_stream())
    }
}

/// Where the note of a kept URL lives: under the hash of the URL (signed links are long, and hold
/// characters object names should not).
fn url_note(url: &str) -> Path {
    let hex = blake3::hash(url.as_bytes()).to_hex();
    Path::from(format!("urls/{}/{hex}", &hex[..2]))
}

/// A local blob's bytes in `range`, in large chunks.
async fn read_local(
    path: &std::path::Path,
    range: Option<Range<u64>>,
) -> Option<futures_util::stream::BoxStream<'static, Result<Bytes, object_store::Error>>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await.ok()?;
    let len = file.metadata().await.ok()?.len();
    let range = range.unwrap_or(0..len);
    file.seek(std::io::SeekFrom::Start(range.start))
        .await
        .ok()?;
    let reader = file.take(range.end.saturating_sub(range.start));
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK).map(|chunk| {
        chunk.map_err(|e| object_store::Error::Generic {
            store: "local",
            source: Box::new(e),
        })
    });
    Some(stream.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|part| Ok(Bytes::from_static(part)))
                .collect::<Vec<_>>(),
        )
    }

    async fn read_all(blobs: &BlobStore, id: &BlobId, range: Option<Range<u64>>) -> Vec<u8> {
        let mut stream = blobs.read(id, range).await.expect("kept");
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mjgate-blobs-{name}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn a_file_is_kept_once_under_its_hash_and_read_whole_or_by_range() {
        let root = dir("once");
        let blobs = BlobStore::local(&root, 1 << 20, 1 << 20).unwrap();
        let (a, len) = blobs
            .put(body(&[b"hello ", b"world"]), MediaKind::Png)
            .await
            .unwrap();
        assert_eq!(len, 11);
        assert_eq!(a.hex(), blake3::hash(b"hello world").to_hex().as_str());
        let (b, _) = blobs
            .put(body(&[b"hello world"]), MediaKind::Png)
            .await
            .unwrap();
        assert_eq!(a, b, "the same bytes are the same blob");
        assert_eq!(read_all(&blobs, &a, None).await, b"hello world");
        assert_eq!(read_all(&blobs, &a, Some(6..11)).await, b"world");
        assert_eq!(blobs.disk_used(), 11, "kept once");
        assert!(
            walk(&root.join("incoming")).is_empty(),
            "no upload left behind"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_file_past_the_cap_or_cut_short_is_not_kept() {
        let root = dir("cap");
        let blobs = BlobStore::local(&root, 1 << 20, 8).unwrap();
        let refused = blobs.put(body(&[b"12345", b"6789"]), MediaKind::Mp4).await;
        assert!(matches!(refused, Err(PutError::TooLarge(8))), "{refused:?}");
        let broken = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"12")),
            Err("connection reset".to_owned()),
        ]);
        let refused = blobs.put(broken, MediaKind::Mp4).await;
        assert!(matches!(refused, Err(PutError::Source(_))), "{refused:?}");
        assert_eq!(blobs.disk_used(), 0);
        let left: Vec<_> = walk(&root);
        assert!(left.is_empty(), "nothing half-written is left: {left:?}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn the_disk_budget_evicts_the_least_recently_used_file() {
        let root = dir("lru");
        let blobs = BlobStore::local(&root, 25, 1 << 20).unwrap();
        let (first, _) = blobs
            .put(body(&[b"0123456789"]), MediaKind::Png)
            .await
            .unwrap();
        let (second, _) = blobs
            .put(body(&[b"abcdefghij"]), MediaKind::Png)
            .await
            .unwrap();
        // The first is used again; the second is now the least recently used.
        for _ in 0..3 {
            assert_eq!(blobs.len(&first).await, Some(10));
        }
        let (third, _) = blobs
            .put(body(&[b"ABCDEFGHIJ"]), MediaKind::Png)
            .await
            .unwrap();
        assert!(blobs.disk_used() <= 25, "{}", blobs.disk_used());
        let kept: Vec<bool> = vec![
            blobs.len(&first).await.is_some(),
            blobs.len(&second).await.is_some(),
            blobs.len(&third).await.is_some(),
        ];
        assert_eq!(kept.iter().filter(|k| **k).count(), 2, "{kept:?}");
        assert_eq!(walk(&root).len(), 2, "the evicted file is gone from disk");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_restart_finds_what_was_kept_and_drops_what_was_half_written() {
        let root = dir("restart");
        let id = {
            let blobs = BlobStore::local(&root, 1 << 20, 1 << 20).unwrap();
            blobs
                .put(body(&[b"kept"]), MediaKind::Webp)
                .await
                .unwrap()
                .0
        };
        std::fs::create_dir_all(root.join("incoming")).unwrap();
        std::fs::write(root.join("incoming/partial"), b"half").unwrap();
        std::fs::write(root.join("blobs").join("zz-not-ours"), b"x").unwrap();
        let blobs = BlobStore::local(&root, 1 << 20, 1 << 20).unwrap();
        assert_eq!(blobs.len(&id).await, Some(4));
        assert_eq!(read_all(&blobs, &id, None).await, b"kept");
        assert!(!root.join("incoming/partial").exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn media_kinds_come_from_the_origins_content_type() {
        assert_eq!(
            MediaKind::of_content_type("image/PNG; charset=x"),
            MediaKind::Png
        );
        assert_eq!(MediaKind::of_content_type("video/mp4"), MediaKind::Mp4);
        for risky in ["text/html", "image/svg+xml", "application/javascript", ""] {
            let kind = MediaKind::of_content_type(risky);
            assert_eq!(kind, MediaKind::Binary, "{risky}");
            assert!(!kind.is_media());
        }
    }

    fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    out.push(path);
                }
            }
        }
        out
    }
}
