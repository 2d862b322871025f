//! Keeping a result file once, however many ask: every request for one URL while its download runs
//! waits on that one download (collapsed, as fetches are), a kept URL is answered from memory, and a
//! URL that failed for good is not tried again for a while. Downloads run at most `concurrency` at
//! once; a transient failure (the origin's 5xx or 429, a timeout, a broken connection) is tried again
//! after a backoff, a few times.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OnceCell, Semaphore};

use super::download::{DownloadError, Downloader};
use super::store::{BlobId, BlobStore};

/// How often a replica waiting on another's download looks for its note in the bucket.
const NOTE_POLL: Duration = Duration::from_millis(250);

/// Attempts per file, the first included.
pub const ATTEMPTS: u32 = 3;

/// How long a URL that failed for good (refused, a 4xx, an unsafe type, too large) is not tried
/// again.
const REFUSED_FOR: Duration = Duration::from_secs(600);

/// Most URLs waiting on a download at once: past it a new URL is turned away (`busy`, tried again
/// on the task's next store) rather than queued without bound.
pub const MAX_IN_FLIGHT: usize = 4096;

/// What became of a URL: kept as a blob of this length, or why not.
pub type Kept = Result<(BlobId, u64), Arc<DownloadError>>;

/// The downloads in flight, what was kept, and what was refused.
pub struct Mirror {
    downloader: Downloader,
    store: Arc<BlobStore>,
    slots: Semaphore,
    first_backoff: Duration,
    in_flight: Mutex<HashMap<String, Arc<OnceCell<Kept>>>>,
    kept: moka::sync::Cache<String, (BlobId, u64)>,
    refused: moka::sync::Cache<String, Arc<DownloadError>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// With the Redis tier: one replica downloads each file, the others wait for its note.
    shared: Option<crate::shared::SharedCache>,
}

impl Mirror {
    /// `concurrency` downloads at once; `remembered` URLs kept in memory (each a few hundred bytes).
    pub fn new(
        downloader: Downloader,
        store: Arc<BlobStore>,
        concurrency: usize,
        remembered: u64,
        first_backoff: Duration,
    ) -> Self {
        Mirror {
            downloader,
            store,
            slots: Semaphore::new(concurrency.max(1)),
            first_backoff,
            in_flight: Mutex::default(),
            kept: moka::sync::Cache::new(remembered),
            refused: moka::sync::Cache::builder()
                .max_capacity(remembered)
                .time_to_live(REFUSED_FOR)
                .build(),
            metrics: None,
            shared: None,
        }
    }

    /// This mirror, taking the Redis tier's lease on each download so that replicas sharing a
    /// bucket download each file once.
    pub fn leased(mut self, shared: Option<crate::shared::SharedCache>) -> Self {
        self.shared = shared;
        self
    }

    /// This mirror, counting what it downloads and what it could not keep in `metrics`.
    pub fn counted(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Puts reloaded download terms in force; what was refused under the old ones is asked again.
    pub fn set_terms(&self, terms: super::download::Terms) {
        self.downloader.set_terms(terms);
        self.refused.invalidate_all();
    }

    /// A download's deadline and idle bound.
    pub fn bounds(&self) -> (Duration, Duration) {
        self.downloader.bounds()
    }

    /// The store files are kept in.
    pub fn store(&self) -> &Arc<BlobStore> {
        &self.store
    }

    /// Forgets what `url` was kept as (its blob is gone: evicted): the next keep downloads it.
    pub fn forget(&self, url: &str) {
        self.kept.invalidate(url);
    }

    /// The blob `url` was kept as, if it was (no download).
    pub fn known(&self, url: &str) -> Option<(BlobId, u64)> {
        self.kept.get(url)
    }

    /// Keeps `url`'s file, downloading it unless it is kept already or being downloaded (then this
    /// waits on that download). A caller that goes away mid-download leaves it to the next waiter.
    pub async fn keep(&self, url: &str) -> Kept {
        if let Some(kept) = self.kept.get(url) {
            return Ok(kept);
        }
        if let Some(refused) = self.refused.get(url) {
            return Err(refused);
        }
        let cell = {
            let mut in_flight = self.in_flight.lock();
            if in_flight.len() >= MAX_IN_FLIGHT && !in_flight.contains_key(url) {
                return Err(Arc::new(DownloadError::Busy));
            }
            Arc::clone(in_flight.entry(url.to_owned()).or_default())
        };
        let waiting = Waiting {
            mirror: self,
            url,
            cell: &cell,
        };
        let kept = cell.get_or_init(|| self.download(url)).await.clone();
        drop(waiting);
        kept
    }

    /// Keeps `url`: what the bucket notes another replica kept, else a download (under the Redis
    /// tier's lease, waiting on the replica holding it).
    async fn download(&self, url: &str) -> Kept {
        if let Some(kept) = self.store.recall(url).await {
            self.kept.insert(url.to_owned(), kept.clone());
            return Ok(kept);
        }
        let lease = match &self.shared {
            Some(shared) if self.store.is_shared() => self.lease(shared, url).await,
            _ => None,
        };
        if let Some(Err(kept)) = lease {
            self.kept.insert(url.to_owned(), kept.clone());
            return Ok(kept);
        }
        let lease: Vec<crate::shared::Lease> = lease.and_then(Result::ok).into_iter().collect();
        let kept = crate::shared::under_lease(&lease, self.attempts(url)).await;
        if let Ok((id, len)) = &kept {
            self.store.note(url, id, *len).await;
        }
        for lease in lease {
            lease.release().await;
        }
        kept
    }

    /// The lease on downloading `url` (`Ok`), or what the replica that held it kept (`Err`);
    /// `None` to download without one (Redis down, or the holder never noted the file).
    async fn lease(
        &self,
        shared: &crate::shared::SharedCache,
        url: &str,
    ) -> Option<Result<crate::shared::Lease, (BlobId, u64)>> {
        let deadline = tokio::time::Instant::now() + self.downloader.bounds().0;
        loop {
            match shared.file_lease(url).await? {
                Some(lease) => {
                    // Noted by a holder that released its lease just before it was taken: the
                    // lease is no news, the note is.
                    if let Some(kept) = self.store.recall(url).await {
                        lease.release().await;
                        return Some(Err(kept));
                    }
                    return Some(Ok(lease));
                }
                None => {
                    tokio::time::sleep(NOTE_POLL).await;
                    if let Some(kept) = self.store.recall(url).await {
                        return Some(Err(kept));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return None;
                    }
                }
            }
        }
    }

    async fn attempts(&self, url: &str) -> Kept {
        let mut backoff = self.first_backoff;
        let mut attempt = 1;
        loop {
            let result = {
                let Ok(_slot) = self.slots.acquire().await else {
                    return Err(Arc::new(DownloadError::Timeout));
                };
                self.downloader.fetch(url, &self.store).await
            };
            match result {
                Ok(kept) => {
                    self.kept.insert(url.to_owned(), kept.clone());
                    if let Some(metrics) = &self.metrics {
                        metrics.artifact_stored(kept.1);
                    }
                    return Ok(kept);
                }
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "artifact download failed; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    tracing::info!(error = %e, "result file not kept; the answer keeps the upstream's link");
                    if let Some(metrics) = &self.metrics {
                        metrics.artifact_failed(e.cause());
                    }
                    let e = Arc::new(e);
                    if !e.is_transient() {
                        self.refused.insert(url.to_owned(), Arc::clone(&e));
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// One caller waiting on a URL's download. The last to leave, whether it got the result or went away
/// mid-download (its future dropped), takes the URL's entry out, so the map holds only downloads
/// someone still waits on; a later caller finds the result in `kept` or `refused`, or starts again.
struct Waiting<'a> {
    mirror: &'a Mirror,
    url: &'a str,
    cell: &'a Arc<OnceCell<Kept>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.mirror.in_flight.lock();
        // Two holders left, the map's and ours: nobody else waits on this download.
        if in_flight
            .get(self.url)
            .is_some_and(|c| Arc::ptr_eq(c, self.cell))
            && Arc::strong_count(self.cell) <= 2
        {
            in_flight.remove(self.url);
        }
    }
}
