//! The operator's view of the shared tier: every replica's answers for a task, and purging them
//! (`DEL`, then announced on `{prefix}purged` so every replica drops its own copies too). Keys are
//! found with `SCAN MATCH`, bounded in rounds: an operator's look, never a request's.

use redis::AsyncCommands;

use super::{SharedCache, millis};

/// Most `SCAN` rounds one look takes (1,000 keys asked per round).
const MAX_ROUNDS: usize = 10_000;

/// What a purge names, by the names the operator uses: a family, a task of it, and of those the
/// credentials whose fingerprint starts with `credential` (hex). `None` is any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeScope {
    pub family: Option<String>,
    pub id: Option<String>,
    pub credential: Option<String>,
}

impl PurgeScope {
    /// The scope as announced to the other replicas: three fields, each ended by a NUL.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for field in [&self.family, &self.id, &self.credential] {
            out.extend_from_slice(field.as_deref().unwrap_or("").as_bytes());
            out.push(0);
        }
        out
    }

    /// An announced scope, read back.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.split('\0');
        let mut next = || fields.next().map(|f| (!f.is_empty()).then(|| f.to_owned()));
        Some(PurgeScope {
            family: next()?,
            id: next()?,
            credential: next()?,
        })
    }

    /// This scope over a replica's own cache; `None` when it names a family this replica does
    /// not have (nothing of it is here: never read as "every family").
    pub fn local<'s>(
        &'s self,
        families: &crate::family::Families,
    ) -> Option<crate::cache::Scope<'s>> {
        let family = match self.family.as_deref() {
            Some(name) => Some(families.by_name(name)?.id()),
            None => None,
        };
        Some(crate::cache::Scope {
            family,
            id: self.id.as_deref(),
            credential: self.credential.as_deref(),
        })
    }

    /// The `SCAN MATCH` pattern of the task keys in scope under `prefix`.
    fn pattern(&self, prefix: &[u8]) -> Vec<u8> {
        let mut pattern = glob_escaped(prefix);
        pattern.extend_from_slice(b"task:{");
        if let Some(credential) = &self.credential {
            pattern.extend(glob_escaped(credential.to_ascii_lowercase().as_bytes()));
        }
        pattern.push(b'*');
        if let Some(family) = &self.family {
            pattern.push(b':');
            pattern.extend(glob_escaped(family.as_bytes()));
            pattern.push(b':');
            match &self.id {
                Some(id) => {
                    pattern.extend(glob_escaped(id.as_bytes()));
                    pattern.push(b'}');
                }
                None => pattern.push(b'*'),
            }
        }
        pattern
    }
}

/// One answer in Redis, as the operator sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SharedEntry {
    /// The first 8 hex digits of the credential's fingerprint (never the credential).
    pub credential: String,
    pub class: &'static str,
    pub status: u16,
    pub age_ms: u64,
    /// Left before Redis drops it.
    pub ttl_ms: i64,
    pub bytes: usize,
}

impl SharedCache {
    /// Every replica's answer for task `id` of `family` in Redis; `None` when Redis failed.
    pub async fn inspect(&self, family: &str, id: &str) -> Option<Vec<SharedEntry>> {
        let scope = PurgeScope {
            family: Some(family.to_owned()),
            id: Some(id.to_owned()),
            credential: None,
        };
        let keys = self.scan(&scope).await?;
        let mut entries = Vec::with_capacity(keys.len());
        let mut connection = self.inner.connection.clone();
        for key in keys {
            let (value, ttl): (Option<Vec<u8>>, i64) = self
                .run(
                    redis::pipe()
                        .cmd("GET")
                        .arg(&key)
                        .cmd("PTTL")
                        .arg(&key)
                        .query_async(&mut connection),
                )
                .await?;
            let Some(value) = value else { continue };
            let credential = fingerprint_of(&key, &self.inner.prefix);
            let decoded = super::codec::decode(&value, &key, &self.inner.seal, self.inner.max_body);
            entries.push(match decoded {
                Some(task) => SharedEntry {
                    credential,
                    class: task.class().as_str(),
                    status: task.status().as_u16(),
                    age_ms: millis(task.stored_at.elapsed()),
                    ttl_ms: ttl,
                    bytes: task.body.len(),
                },
                None => SharedEntry {
                    credential,
                    class: "unreadable",
                    status: 0,
                    age_ms: 0,
                    ttl_ms: ttl,
                    bytes: value.len(),
                },
            });
        }
        Some(entries)
    }

    /// Deletes the answers `scope` names from Redis and announces the purge to every replica;
    /// how many were deleted, `None` when Redis failed.
    pub async fn purge(&self, scope: &PurgeScope) -> Option<u64> {
        // Deleted round by round, so a purge of everything holds one round's keys, never the whole
        // keyspace's; on a cluster, master by master.
        let pattern = scope.pattern(&self.inner.prefix);
        let mut connection = self.inner.connection.clone();
        let mut deleted = 0u64;
        for target in self.scan_targets().await? {
            let mut cursor = 0u64;
            for _ in 0..MAX_ROUNDS {
                let (next, found) = self.scan_round(&target, &pattern, cursor).await?;
                if !found.is_empty() {
                    let n: u64 = self.run(connection.del(&found)).await?;
                    deleted += n;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        let _: i64 = self
            .run(connection.publish(&self.inner.purge_channel, scope.encode()))
            .await?;
        Some(deleted)
    }

    /// Sets what this replica does when another announces a purge (the scope, encoded).
    pub fn on_purge(&self, handler: super::PurgeHandler) {
        *self.inner.on_purge.write() = Some(handler);
    }

    /// The task keys `scope` names (one task's, for an inspection: a handful).
    async fn scan(&self, scope: &PurgeScope) -> Option<Vec<Vec<u8>>> {
        let pattern = scope.pattern(&self.inner.prefix);
        let mut keys = Vec::new();
        for target in self.scan_targets().await? {
            let mut cursor = 0u64;
            for _ in 0..MAX_ROUNDS {
                let (next, found) = self.scan_round(&target, &pattern, cursor).await?;
                keys.extend(found);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Some(keys)
    }

    /// Where a `SCAN` must look: the server, or every master of a cluster.
    async fn scan_targets(&self) -> Option<Vec<Option<(String, u16)>>> {
        let mut connection = self.inner.connection.clone();
        self.run(async move { connection.scan_targets().await })
            .await
    }

    /// One `SCAN cursor MATCH pattern COUNT 1000` on `target`: the next cursor (0 at the end) and
    /// its keys.
    async fn scan_round(
        &self,
        target: &Option<(String, u16)>,
        pattern: &[u8],
        cursor: u64,
    ) -> Option<(u64, Vec<Vec<u8>>)> {
        let mut connection = self.inner.connection.clone();
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        self.run(async move { connection.query_on(target, &scan).await })
            .await
    }
}

/// The fingerprint's first 8 hex digits in a task key `{prefix}task:{<hex>:...}`.
fn fingerprint_of(key: &[u8], prefix: &[u8]) -> String {
    let rest = key
        .strip_prefix(prefix)
        .and_then(|k| k.strip_prefix(b"task:{"))
        .unwrap_or_default();
    String::from_utf8_lossy(&rest[..rest.len().min(8)]).into_owned()
}

/// `bytes` with the glob characters `SCAN MATCH` reads escaped.
fn glob_escaped(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_travels_between_replicas_and_names_its_keys() {
        let scope = PurgeScope {
            family: Some("midjourney".into()),
            id: Some("t*1".into()),
            credential: Some("AB12".into()),
        };
        assert_eq!(PurgeScope::decode(&scope.encode()), Some(scope.clone()));
        assert_eq!(
            PurgeScope::decode(&PurgeScope::default().encode()),
            Some(PurgeScope::default())
        );
        assert_eq!(
            scope.pattern(b"mjgate:"),
            b"mjgate:task:{ab12*:midjourney:t\\*1}"
        );
        assert_eq!(PurgeScope::default().pattern(b"mj:"), b"mj:task:{*");
        let family = PurgeScope {
            family: Some("suno".into()),
            ..PurgeScope::default()
        };
        assert_eq!(family.pattern(b"mj:"), b"mj:task:{*:suno:*");
    }
}
