//! Task owners kept in the shared tier, so every replica routes a task's follow-ups to the pool
//! member whose submit made it, whichever replica forwarded that submit:
//! `{prefix}owner:{BLAKE3 of family name and id, hex}` holds the member's name (names, not numbers:
//! they mean the same in every replica's config), kept as long as a finished task's answer is.

use super::{SharedCache, millis};
use crate::family::FamilyId;
use crate::hex::push_hex;

impl SharedCache {
    fn owner_key(&self, family: FamilyId, id: &str) -> Vec<u8> {
        let families = self.inner.families.load();
        let mut hasher = blake3::Hasher::new();
        hasher.update(families.get(family).name().as_bytes());
        hasher.update(b"\0");
        hasher.update(id.as_bytes());
        let mut key = self.inner.prefix.clone();
        key.extend_from_slice(b"owner:");
        push_hex(&mut key, &hasher.finalize().as_bytes()[..16]);
        key
    }

    /// Records that member `member` owns task `id` of `family` (best effort: a replica that misses
    /// it finds the owner by asking every member).
    pub async fn set_owner(&self, family: FamilyId, id: &str, member: &str) {
        self.set_owners(family, &[(id, member)]).await;
    }

    /// [`set_owner`](Self::set_owner) for several `(id, member)` pairs, in one round trip.
    pub async fn set_owners(&self, family: FamilyId, owners: &[(&str, &str)]) {
        if !self.is_up() || owners.is_empty() {
            return;
        }
        let mut pipes = super::Pipes::new(&self.inner.connection);
        for (id, member) in owners {
            let key = self.owner_key(family, id);
            pipes
                .on(&key)
                .cmd("SET")
                .arg(&key)
                .arg(*member)
                .arg("PX")
                .arg(millis(self.inner.freshness.terminal))
                .ignore();
        }
        let _: Option<()> = self.run(pipes.run(&self.inner.connection)).await;
    }

    /// The member names recorded for tasks `ids` of `family`, in order (`None` where none is, and
    /// for all when Redis did not answer).
    pub async fn owners(&self, family: FamilyId, ids: &[&str]) -> Vec<Option<String>> {
        let nothing = || vec![None; ids.len()];
        if !self.is_up() || ids.is_empty() {
            return nothing();
        }
        let mut command = redis::cmd("MGET");
        for id in ids {
            command.arg(self.owner_key(family, id));
        }
        let mut connection = self.inner.connection.clone();
        let names: Option<Vec<Option<Vec<u8>>>> =
            self.run(command.query_async(&mut connection)).await;
        match names {
            Some(names) if names.len() == ids.len() => names
                .into_iter()
                .map(|name| name.and_then(member_name))
                .collect(),
            _ => nothing(),
        }
    }

    /// The member name recorded as owning task `id` of `family`, if any (and Redis answered).
    pub async fn owner(&self, family: FamilyId, id: &str) -> Option<String> {
        if !self.is_up() {
            return None;
        }
        let key = self.owner_key(family, id);
        let mut connection = self.inner.connection.clone();
        let mut command = redis::cmd("GET");
        command.arg(&key);
        let name: Option<Vec<u8>> = self.run(command.query_async(&mut connection)).await?;
        name.and_then(member_name)
    }
}

/// A member name is at most 64 bytes of UTF-8; anything else is not a value mjgate wrote.
fn member_name(value: Vec<u8>) -> Option<String> {
    (value.len() <= 64)
        .then(|| String::from_utf8(value).ok())
        .flatten()
}
