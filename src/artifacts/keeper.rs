//! Keeping a finished task's result files and pointing its answer at them. When a finished answer
//! is stored (from a fetch, a batch, a callback or the shared tier), its result URLs (the family's
//! `results` pointers) are kept by the [`Mirror`] in a tracked task of their own, and the cache
//! entry is then replaced by the same bytes with each kept file's upstream URL swapped for the
//! gateway's (`{base}/_mjgate/files/{token}.{ext}`, one token per credential and file). A file that
//! could not be kept keeps the upstream's URL, so an answer never carries a link that does not work;
//! the rewritten answer's expiry is read again, from the links it still has.
//!
//! The Redis tier holds the upstream's own answer: every replica rewrites its copy to links it can
//! serve (with a bucket, the same files; with local disks, each its own).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::header::HOST;
use parking_lot::Mutex;
use tokio::sync::watch;

use arc_swap::ArcSwap;

use super::download::{Downloader, Terms};
use super::mirror::Mirror;
use super::store::{BlobId, BlobStore, MediaKind};
use super::token::{FILES_PREFIX, FileTokens};
use crate::cache::{CacheKey, CachedTask, TaskCache};
use crate::config::{ArtifactStore, ArtifactsConfig, Config};
use crate::credential::{CredentialFingerprint, FINGERPRINT_LEN};
use crate::family::results::{ResultUrl, replace_strings};
use crate::family::{FamilyId, KeepFiles, LiveFamilies};
use crate::metrics::Metrics;
use crate::work::{Work, WorkKind};

/// Downloads at once, across every task.
const CONCURRENCY: usize = 16;

/// URLs whose kept blob is remembered in memory (a few hundred bytes each).
const REMEMBERED: u64 = 100_000;

/// Tasks mirroring at once; a finished answer stored past it keeps its links (counted `busy`) and is
/// mirrored on its next store.
const MAX_PENDING: usize = 10_000;

/// The wait before a failed download's second attempt (doubling after).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The result files of finished tasks: kept, and linked to from their answers.
pub struct Keeper {
    mirror: Mirror,
    tokens: FileTokens,
    cache: TaskCache,
    families: LiveFamilies,
    work: Work,
    metrics: Arc<Metrics>,
    /// `artifacts.public_url`, without a trailing slash (a reload may change it).
    public_url: ArcSwap<Option<Arc<str>>>,
    /// Tasks whose files are being kept now, and a flag raised when they are done.
    pending: Mutex<HashMap<CacheKey, watch::Receiver<bool>>>,
    /// Download routes' files kept, by credential, family, task and query.
    downloads: moka::sync::Cache<Box<[u8]>, (BlobId, u64)>,
    /// One download route's file being downloaded: later requests for it wait on the first.
    downloading: Mutex<HashMap<Box<[u8]>, TurnLock>>,
}

impl Keeper {
    /// The keeper `config.artifacts` describes, or `None` when it is off. Opens (creates) the store.
    pub fn new(
        config: &Config,
        cache: TaskCache,
        work: Work,
        shared: Option<crate::shared::SharedCache>,
        families: LiveFamilies,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, crate::Error> {
        let Some(artifacts) = &config.artifacts else {
            return Ok(None);
        };
        let store = match &artifacts.store {
            ArtifactStore::Local { dir, max_disk } => {
                BlobStore::local(dir, *max_disk, artifacts.max_file)
                    .map_err(|e| crate::Error::Artifacts(format!("{}: {e}", dir.display())))?
            }
            ArtifactStore::S3(bucket) => BlobStore::s3(bucket, artifacts.max_file)
                .map_err(|e| crate::Error::Artifacts(e.to_string()))?,
        };
        // Its own secret, else the shared tier's: either way every replica opens every token. Else,
        // for a local directory, a key kept beside the files, so links outlive a restart.
        let kept_key = match (&artifacts.secret, &config.shared_cache, &artifacts.store) {
            (None, None, ArtifactStore::Local { dir, .. }) => Some(
                local_key(dir)
                    .map_err(|e| crate::Error::Artifacts(format!("{}: {e}", dir.display())))?,
            ),
            _ => None,
        };
        let secret = artifacts
            .secret
            .as_deref()
            .map(str::as_bytes)
            .or(config
                .shared_cache
                .as_ref()
                .map(|shared| shared.fingerprint_secret.as_bytes()))
            .or(kept_key.as_deref());
        // Every member the operator configured may link to itself, inside addresses or not.
        let mut downloader = Downloader::new(
            crate::tls::client_config(crate::tls::Roots::Webpki, None)?,
            terms_of(artifacts),
        );
        for member in config.all_members() {
            let (host, port) = member.url.origin();
            downloader = downloader.trusting(&host, port);
        }
        metrics.artifacts_disk(store.disk_used());
        let mirror = Mirror::new(
            downloader,
            Arc::new(store),
            CONCURRENCY,
            REMEMBERED,
            FIRST_BACKOFF,
        )
        .counted(Arc::clone(&metrics))
        .leased(shared);
        Ok(Some(Keeper {
            mirror,
            tokens: FileTokens::new(secret),
            cache,
            families,
            work,
            metrics,
            public_url: ArcSwap::from_pointee(public_url_of(artifacts)),
            pending: Mutex::default(),
            downloads: moka::sync::Cache::new(REMEMBERED),
            downloading: Mutex::default(),
        }))
    }

    /// Applies a reloaded `[artifacts]`: where downloads may connect, their deadlines, and where
    /// links point. The store, `max_file` and the token secret need a restart.
    pub fn reconfigure(&self, artifacts: &ArtifactsConfig) {
        self.mirror.set_terms(terms_of(artifacts));
        self.public_url.store(Arc::new(public_url_of(artifacts)));
    }

    pub fn store(&self) -> &BlobStore {
        self.mirror.store()
    }

    pub fn tokens(&self) -> &FileTokens {
        &self.tokens
    }

    /// Brings the store's gauges up to date.
    pub fn count_store(&self) {
        self.metrics.artifacts_disk(self.store().disk_used());
        self.metrics.artifacts_evicted(self.store().evictions());
    }

    /// Where links to kept files start for a client that sent `headers` (over TLS or not):
    /// `artifacts.public_url`, else the scheme and `Host` it used. `None` without either (or for
    /// a `Host` that is not a plain name or address and port).
    pub fn base_for(&self, headers: &HeaderMap, tls: bool) -> Option<Arc<str>> {
        if let Some(public) = &**self.public_url.load() {
            return Some(Arc::clone(public));
        }
        let host = headers.get(HOST)?.to_str().ok().filter(|h| is_host(h))?;
        let scheme = if tls { "https" } else { "http" };
        Some(Arc::from(format!(
            "{scheme}://{}",
            host.to_ascii_lowercase()
        )))
    }

    /// Whether `task`'s links may need [`rebased`](Self::rebased) for a client that sent `headers`:
    /// its links are on a `Host` other than this one. The hit path's cheap look (the scheme is
    /// compared on the slow path).
    #[inline]
    pub fn may_rebase(&self, task: &CachedTask, headers: &HeaderMap) -> bool {
        let Some(from) = task.files_base.as_deref() else {
            return false;
        };
        // Stored under another `public_url` (a reload changed it): rebased to the new one.
        if let Some(public) = &**self.public_url.load() {
            return **public != *from;
        }
        let host = headers.get(HOST).map_or(&b""[..], |h| h.as_bytes());
        let stored = from.split_once("://").map_or("", |(_, host)| host);
        !stored.as_bytes().eq_ignore_ascii_case(host)
    }

    /// `task` as the client that sent `headers` is to get it: its links to kept files rebased to
    /// the scheme and `Host` this client used when another client's were stored (an inside name
    /// and an outside one, say); `None` when it is fine as it is (the common case: one name, or
    /// `artifacts.public_url`). With `public_url`, only entries stored under an earlier one (before
    /// a reload) are rebased, to the one in force.
    pub fn rebased(
        &self,
        task: &CachedTask,
        family: FamilyId,
        headers: &HeaderMap,
        tls: bool,
    ) -> Option<Arc<CachedTask>> {
        let from = task.files_base.as_deref()?;
        let to = self.base_for(headers, tls)?;
        if *to == *from {
            return None;
        }
        let body = Bytes::from(replace_bytes(
            &task.body,
            format!("{from}{FILES_PREFIX}").as_bytes(),
            format!("{to}{FILES_PREFIX}").as_bytes(),
        ));
        let span = self.families.load().get(family).task_span(&body);
        Some(Arc::new(task.rewritten(
            body,
            span,
            task.keep_until,
            Some(to),
        )))
    }

    /// `task` was just stored for `key` (of `family`): when it is finished and names result files
    /// not kept yet, they are kept in the background and the entry rewritten to link to them. The
    /// entry now held when it was rewritten at once (a lazy family's), for the caller to serve.
    /// `base` is where the links start (see [`base_for`](Self::base_for)); `None` for an answer
    /// stored without a client.
    pub fn finished(
        self: &Arc<Self>,
        key: &CacheKey,
        family: FamilyId,
        task: &Arc<CachedTask>,
        base: Option<Arc<str>>,
    ) -> Option<Arc<CachedTask>> {
        if !task.is_finished() {
            return None;
        }
        let keep = self.families.load().get(family).keep_files();
        if keep == KeepFiles::Off {
            return None;
        }
        let Some(base) = base.or_else(|| (**self.public_url.load()).clone()) else {
            // Nobody's `Host` to link on (a callback, another replica's answer): kept when a
            // client next asks for the task (never on another client's name).
            if !task.set_files_pending(true)
                && !self
                    .families
                    .load()
                    .get(family)
                    .result_urls(&task.body)
                    .is_empty()
            {
                self.metrics.artifacts_skipped("no_base");
            }
            return None;
        };
        task.set_files_pending(false);
        let urls: Vec<ResultUrl> = self
            .families
            .load()
            .get(family)
            .result_urls(&task.body)
            .into_iter()
            .filter(|result| !is_ours(&result.url, &base))
            .collect();
        if urls.is_empty() {
            return None;
        }
        if keep == KeepFiles::Lazy {
            return self.link_lazily(key, family, task, &urls, &base);
        }
        let done = {
            let mut pending = self.pending.lock();
            if pending.contains_key(key) {
                return None;
            }
            if pending.len() >= MAX_PENDING {
                self.metrics.artifacts_skipped("busy");
                return None;
            }
            let (done, waiting) = watch::channel(false);
            pending.insert(key.clone(), waiting);
            done
        };
        let keeper = Arc::clone(self);
        let (key, task) = (key.clone(), Arc::clone(task));
        self.work.spawn(WorkKind::Mirror, async move {
            let pending = Pending {
                keeper: &keeper,
                key: &key,
                done,
            };
            keeper.keep(&key, family, &task, &urls, &base).await;
            drop(pending);
        });
        None
    }

    /// Waits, at most `bound`, for the files of the task stored under `key` to be kept if they are
    /// being kept now: a webhook then delivers the answer with the gateway's links.
    pub async fn settled(&self, key: &[u8], bound: Duration) {
        let waiting = self.pending.lock().get(key).cloned();
        if let Some(mut waiting) = waiting {
            let _ = tokio::time::timeout(bound, waiting.wait_for(|done| *done)).await;
        }
    }

    async fn keep(
        &self,
        key: &CacheKey,
        family: FamilyId,
        task: &Arc<CachedTask>,
        urls: &[ResultUrl],
        base: &str,
    ) {
        let kept =
            futures_util::future::join_all(urls.iter().map(|result| self.mirror.keep(&result.url)))
                .await;
        self.count_store();
        let Some(credential) = key_credential(key) else {
            return;
        };
        let links: HashMap<&str, String> = urls
            .iter()
            .zip(kept)
            .filter_map(|(result, kept)| {
                let (blob, _len) = kept.ok()?;
                Some((
                    result.url.as_str(),
                    self.link(base, &blob, &credential, &result.url),
                ))
            })
            .collect();
        // The gateway's links do not expire: the answer's expiry is what its other links still say.
        let _ = self.swap_links(key, family, task, &links, base, |family, body| {
            family.rewritten_keep_until(body, task.stored_at)
        });
    }

    /// Replaces the entry `task` for `key` with its body, `links` swapped in (each upstream URL for
    /// the gateway's), linked on `base`, servable until what `keep_until` says of the new body.
    fn swap_links(
        &self,
        key: &CacheKey,
        family: FamilyId,
        task: &Arc<CachedTask>,
        links: &HashMap<&str, String>,
        base: &str,
        keep_until: impl FnOnce(&crate::family::Family, &[u8]) -> Option<std::time::Instant>,
    ) -> Option<Arc<CachedTask>> {
        if links.is_empty() {
            return None;
        }
        let body = replace_strings(&task.body, |text| links.get(text).cloned())?;
        let families = self.families.load();
        let family = families.get(family);
        let body = Bytes::from(body);
        let span = family.task_span(&body);
        let until = keep_until(family, &body);
        let rewritten = Arc::new(task.rewritten(body, span, until, Some(Arc::from(base))));
        if !self.cache.replace(key, task, Arc::clone(&rewritten)) {
            return None;
        }
        self.metrics.artifacts_rewritten();
        Some(rewritten)
    }

    /// The file a download route's request (`key`: its credential, task and query) was kept as.
    pub fn downloaded(&self, key: &[u8]) -> Option<(BlobId, u64)> {
        self.downloads.get(key)
    }

    /// Notes that a download route's file was kept.
    pub fn remember_download(&self, key: &[u8], kept: (BlobId, u64)) {
        self.downloads.insert(key.into(), kept);
    }

    /// Keeps a download route's file from the upstream's answer `body` (of `kind`) for `key`, in
    /// tracked work of its own under the downloads' deadline and idle bound: a client that hangs
    /// up does not cut it short, and a stalled upstream ends it.
    pub async fn keep_download(
        self: &Arc<Self>,
        key: &[u8],
        body: hyper::body::Incoming,
        kind: MediaKind,
    ) -> Result<(BlobId, u64), super::download::DownloadError> {
        let (deadline, idle) = self.mirror.bounds();
        let keeper = Arc::clone(self);
        let key: Box<[u8]> = key.into();
        let kept = self.work.spawn(WorkKind::Mirror, async move {
            let put = keeper
                .store()
                .put(super::download::idle_bounded(body, idle), kind);
            let kept = match tokio::time::timeout(deadline, put).await {
                Ok(kept) => kept.map_err(super::download::DownloadError::from),
                Err(_) => Err(super::download::DownloadError::Timeout),
            };
            match &kept {
                Ok(kept) => {
                    keeper.metrics.artifact_stored(kept.1);
                    keeper.remember_download(&key, kept.clone());
                }
                Err(e) => keeper.metrics.artifact_failed(e.cause()),
            }
            keeper.count_store();
            kept
        });
        kept.await
            .unwrap_or(Err(super::download::DownloadError::Timeout))
    }

    /// Waits for any download of `key` in flight, then holds `key` until the guard goes: one
    /// upstream download per file however many ask at once.
    pub async fn download_turn(&self, key: &[u8]) -> DownloadTurn<'_> {
        let lock = Arc::clone(self.downloading.lock().entry(key.into()).or_default());
        let guard = Arc::clone(&lock).lock_owned().await;
        DownloadTurn {
            keeper: self,
            key: key.into(),
            lock,
            _guard: guard,
        }
    }

    /// A lazy family's finished answer, its result links swapped for the gateway's at once: each
    /// opens to the file kept already, or downloads it when first asked for. Its expiry stays the
    /// upstream links': a file nobody opened in time is not kept. The entry now held, when swapped.
    fn link_lazily(
        &self,
        key: &CacheKey,
        family: FamilyId,
        task: &Arc<CachedTask>,
        urls: &[ResultUrl],
        base: &str,
    ) -> Option<Arc<CachedTask>> {
        let credential = key_credential(key)?;
        let links: HashMap<&str, String> = urls
            .iter()
            .filter_map(|result| {
                let link = match self.mirror.known(&result.url) {
                    Some((blob, _)) => self.link(base, &blob, &credential, &result.url),
                    None => {
                        let token = self.tokens.issue_for_url(&result.url, &credential)?;
                        match extension_of(&result.url) {
                            Some(extension) => format!("{base}{FILES_PREFIX}{token}.{extension}"),
                            None => format!("{base}{FILES_PREFIX}{token}"),
                        }
                    }
                };
                Some((result.url.as_str(), link))
            })
            .collect();
        // Until a file is kept its link is only as good as the upstream's: the same expiry.
        self.swap_links(key, family, task, &links, base, |_, _| task.keep_until)
    }

    /// The file a lazy link names, kept now if it is not yet (collapsed with every other request
    /// for it): its blob, or why it could not be kept.
    pub async fn keep_lazily(&self, url: &str) -> super::mirror::Kept {
        let kept = self.mirror.keep(url).await;
        self.count_store();
        kept
    }

    /// A kept file no longer in the store (evicted, or kept by another replica on its own disk),
    /// kept again from `url`, the link it came from.
    pub async fn keep_again(&self, url: &str) -> super::mirror::Kept {
        self.mirror.forget(url);
        self.keep_lazily(url).await
    }

    /// The gateway's URL for `blob` (kept from `url`), for `credential`.
    pub fn link(
        &self,
        base: &str,
        blob: &BlobId,
        credential: &CredentialFingerprint,
        url: &str,
    ) -> String {
        format!(
            "{base}{FILES_PREFIX}{}.{}",
            self.tokens.issue(blob, credential, Some(url)),
            blob.kind().extension()
        )
    }
}

/// A task's entry in `pending`, taken out (and its waiters woken) however its mirroring ends.
struct Pending<'a> {
    keeper: &'a Keeper,
    key: &'a CacheKey,
    done: watch::Sender<bool>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.keeper.pending.lock().remove(self.key);
        let _ = self.done.send(true);
    }
}

/// Held by the one request downloading a download route's file.
type TurnLock = Arc<tokio::sync::Mutex<()>>;

/// The key of a local store's file tokens without a configured secret: read from `dir/token.key`,
/// made (32 random bytes, readable by this user only) when missing.
fn local_key(dir: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let path = dir.join("token.key");
    match std::fs::read(&path) {
        Ok(key) if key.len() == 32 => return Ok(key),
        Ok(_) => {
            return Err(std::io::Error::other(
                "token.key is not 32 bytes; remove it to make a new one (links issued under it die)",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)?;
    let key: [u8; 32] = rand::random();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            std::io::Write::write_all(&mut file, &key)?;
            file.sync_all()?;
            Ok(key.to_vec())
        }
        // Another process made it first: theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(&path),
        Err(e) => Err(e),
    }
}

/// A download route's file, held for one request's download.
pub struct DownloadTurn<'a> {
    keeper: &'a Keeper,
    key: Box<[u8]>,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for DownloadTurn<'_> {
    fn drop(&mut self) {
        let mut downloading = self.keeper.downloading.lock();
        // Ours, the map's and the guard's: nobody else waits for this file.
        if Arc::strong_count(&self.lock) <= 3 {
            downloading.remove(&self.key);
        }
    }
}

/// The credential a cache key is partitioned by.
fn key_credential(key: &CacheKey) -> Option<CredentialFingerprint> {
    let bytes: &[u8] = std::borrow::Borrow::borrow(key);
    Some(CredentialFingerprint::from_bytes(
        bytes.get(..FINGERPRINT_LEN)?.try_into().ok()?,
    ))
}

/// The extension of a URL's last path segment, when it is one of a media type we keep (`png`,
/// `mp4`, ...): the lazy link ends in it too.
fn extension_of(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next()?;
    let (_, extension) = path.rsplit('/').next()?.rsplit_once('.')?;
    let extension = extension.to_ascii_lowercase();
    MediaKind::ALL
        .into_iter()
        .filter(|kind| kind.is_media())
        .map(MediaKind::extension)
        .find(|known| *known == extension)
}

/// `body` with every `from` replaced by `to`.
fn replace_bytes(body: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut rest = body;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// Whether `url` is already one of this gateway's file links.
fn is_ours(url: &str, base: &str) -> bool {
    url.strip_prefix(base)
        .is_some_and(|path| path.starts_with(FILES_PREFIX))
}

/// A `Host` header fit to build a URL on: a name or address and an optional port, nothing else.
fn is_host(host: &str) -> bool {
    if host.is_empty() || host.len() > 255 {
        return false;
    }
    // `[v6]` or a name, then an optional `:port` (1-65535).
    let (name, after) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((address, after)) if address.parse::<std::net::Ipv6Addr>().is_ok() => {
                (None, after)
            }
            _ => return false,
        },
        None => {
            let at = host.find(':').unwrap_or(host.len());
            (Some(&host[..at]), &host[at..])
        }
    };
    let port_ok = after.is_empty()
        || after.strip_prefix(':').is_some_and(|port| {
            port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
    let name_ok = name.is_none_or(|name| {
        // A trailing dot (`example.`) is a name too.
        let name = name.strip_suffix('.').unwrap_or(name);
        !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    });
    port_ok && name_ok
}

fn terms_of(artifacts: &ArtifactsConfig) -> Terms {
    Terms {
        allow_private: artifacts.allow_private,
        timeout: artifacts.timeout,
        idle: artifacts.idle_timeout,
    }
}

fn public_url_of(artifacts: &ArtifactsConfig) -> Option<Arc<str>> {
    artifacts
        .public_url
        .as_deref()
        .map(|url| Arc::from(url.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_host_and_port_make_a_link_base() {
        for good in [
            "gw.example",
            "127.0.0.1:8080",
            "[::1]:80",
            "[::1]",
            "a-b.c",
            "gw.example.",
        ] {
            assert!(is_host(good), "{good}");
        }
        for bad in [
            "",
            "evil.example/x",
            "a b",
            "h\"><script>",
            "user@host",
            "h?q",
            "[",
            "[::1",
            "[]",
            "[x]",
            "[::1]]",
            ":80",
            "a:b:c",
            "a:",
            "-a",
            "a..b",
            "h:99999",
            "h:0",
            "h:+80",
        ] {
            assert!(!is_host(bad), "{bad}");
        }
    }

    #[test]
    fn a_lazy_link_ends_in_a_media_extension_only() {
        assert_eq!(extension_of("https://c.example/a/b.PNG?ex=1"), Some("png"));
        assert_eq!(extension_of("https://c.example/v.mp4#t=1"), Some("mp4"));
        assert_eq!(extension_of("https://c.example/page.html"), None);
        assert_eq!(extension_of("https://c.example/file"), None);
        assert_eq!(extension_of("https://c.example.png/file"), None);
    }

    #[test]
    fn a_link_of_ours_is_not_kept_again() {
        assert!(is_ours(
            "http://127.0.0.1:8080/_mjgate/files/abc.png",
            "http://127.0.0.1:8080"
        ));
        assert!(!is_ours(
            "http://127.0.0.1:8081/_mjgate/files/abc.png",
            "http://127.0.0.1:8080"
        ));
        assert!(!is_ours(
            "http://127.0.0.1:8080/attachments/1.png",
            "http://127.0.0.1:8080"
        ));
    }
}
