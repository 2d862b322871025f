//! Leases: the right to call the upstream for one key, across replicas (`SET lease token NX PX`),
//! renewed while the call runs and released with a compare-and-delete script, so only its owner can.
//! A holder that dies leaves its lease to expire after `shared_cache.lease_ttl`.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use super::Inner;
use super::codec::millis;

/// A new lease's token: random, so only its holder can renew or release it.
pub(super) fn token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Releases a lease only if the caller still owns it (its token is the value).
pub(super) const RELEASE: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
/// Extends a lease only if the caller still owns it.
pub(super) const RENEW: &str = r"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

/// The right to call the upstream for one key, across replicas. Renewed while the call runs
/// ([`under_lease`]); released by [`Lease::release`], or on drop if the holder forgot or
/// panicked. A holder that dies leaves it to expire after `shared_cache.lease_ttl`.
pub struct Lease {
    pub(super) inner: Arc<Inner>,
    pub(super) key: Vec<u8>,
    /// Random per lease: only the holder can renew or release it.
    pub(super) token: String,
    pub(super) released: bool,
}

/// Runs `work` while holding `leases`, renewing each every third of its TTL until `work` finishes.
pub async fn under_lease<F: Future>(leases: &[Lease], work: F) -> F::Output {
    if leases.is_empty() {
        return work.await;
    }
    let renew_all = futures_util::future::join_all(leases.iter().map(Lease::keep));
    tokio::pin!(work);
    tokio::select! {
        biased;
        output = &mut work => output,
        // Renewing never ends; were it to, the work still finishes.
        _ = renew_all => work.await,
    }
}

impl Lease {
    /// Renews the lease every third of its TTL, for ever; stops renewing once it is lost.
    async fn keep(&self) {
        loop {
            tokio::time::sleep(self.inner.lease_ttl / 3).await;
            let mut connection = self.inner.connection.clone();
            let renewed: Option<i64> = self
                .inner
                .run(
                    self.inner
                        .renew
                        .key(&self.key)
                        .arg(&self.token)
                        .arg(millis(self.inner.lease_ttl))
                        .invoke_async(&mut connection),
                )
                .await;
            if renewed != Some(1) {
                // Lost (expired and taken, or Redis gone): nothing left to renew.
                return std::future::pending().await;
            }
        }
    }

    /// Gives the lease up (only if still ours).
    pub async fn release(mut self) {
        self.released = true;
        release(
            Arc::clone(&self.inner),
            self.key.clone(),
            self.token.clone(),
        )
        .await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release(
                Arc::clone(&self.inner),
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.token),
            ));
        }
    }
}

/// The most leases kept for releasing when Redis is back.
const MAX_UNRELEASED: usize = 4096;

async fn release(inner: Arc<Inner>, key: Vec<u8>, token: String) {
    let mut connection = inner.connection.clone();
    let released: Option<i64> = inner
        .run(
            inner
                .release
                .key(&key)
                .arg(&token)
                .invoke_async(&mut connection),
        )
        .await;
    if released.is_none() {
        let mut unreleased = inner.unreleased.lock();
        if unreleased.len() < MAX_UNRELEASED {
            unreleased.push((key, token, Instant::now()));
        }
    }
}

/// Releases the leases whose release failed, those not yet expired by themselves; one that fails
/// again is kept for the next time.
pub(super) async fn release_unreleased(inner: &Arc<Inner>) {
    let pending = std::mem::take(&mut *inner.unreleased.lock());
    let live = pending
        .into_iter()
        .filter(|(_, _, at)| at.elapsed() < inner.lease_ttl)
        .map(|(key, token, _)| release(Arc::clone(inner), key, token));
    futures_util::future::join_all(live).await;
}
