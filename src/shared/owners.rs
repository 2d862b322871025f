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
        if !self.is_up() {
            return;
        }
        let key = self.owner_key(family, id);
        let mut connection = self.inner.connection.clone();
        let mut command = redis::cmd("SET");
        command
            .arg(&key)
            .arg(member)
            .arg("PX")
            .arg(millis(self.inner.freshness.terminal));
        let _: Option<()> = self.run(command.query_async(&mut connection)).await;
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
        // A member name is at most 64 bytes; anything else is not a value mjgate wrote.
        name.filter(|n| n.len() <= 64)
            .and_then(|n| String::from_utf8(n).ok())
    }
}
