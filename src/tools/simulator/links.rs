//! The simulator's result files, linked as the real ones are: Midjourney's like Discord's CDN
//! (`/attachments/{id}/{file}?ex=<hex expiry>&is=<hex issued>&hm=<signature>`), the other APIs' like a
//! signed CDN or bucket URL (`/files/{api}/{id}.mp4?Expires=<unix>&Signature=<sig>`). Each link is
//! signed over its path and expiry and answers `403` once that passes, as Discord's and S3's do; the
//! files are served from the simulator itself (on loopback), and every download is counted.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use parking_lot::Mutex;

const SIGNING_KEY: &[u8; 32] = b"mjgate simulator result links!!!";

/// The APIs whose result links are plain (no signature seen, no documented lifetime).
const UNSIGNED: [&str; 2] = ["suno", "luma"];

/// Where the files are, how long a link lives, and how often each file was downloaded.
pub(super) struct Links {
    origin: std::sync::OnceLock<String>,
    /// `None` (the default): links carry no signature and never expire, so answers stay what they
    /// were before links were signed; `Some`: signed, expiring this long after their task was made.
    ttl: Mutex<Option<Duration>>,
    downloads: Mutex<HashMap<String, u64>>,
}

impl Default for Links {
    fn default() -> Self {
        Links {
            origin: std::sync::OnceLock::new(),
            ttl: Mutex::new(None),
            downloads: Mutex::default(),
        }
    }
}

impl Links {
    /// The simulator's own origin (`http://127.0.0.1:PORT`), once it is listening.
    pub(super) fn set_origin(&self, origin: String) {
        let _ = self.origin.set(origin);
    }

    pub(super) fn set_ttl(&self, ttl: Option<Duration>) {
        *self.ttl.lock() = ttl;
    }

    /// Downloads of the file at `path` (`/attachments/t1/t1.png`) that were served whole or in part.
    pub(super) fn downloads(&self, path: &str) -> u64 {
        self.downloads.lock().get(path).copied().unwrap_or(0)
    }

    /// Counts a download of `path` served elsewhere (OpenAI videos' content route).
    pub(super) fn count(&self, path: &str) {
        *self.downloads.lock().entry(path.to_owned()).or_default() += 1;
    }

    /// Downloads of every file, in all.
    pub(super) fn all_downloads(&self) -> u64 {
        self.downloads.lock().values().sum()
    }

    /// A Midjourney result link for task `id`, issued `issued` (Unix seconds): Discord's shape.
    pub(super) fn discord(&self, id: &str, issued: u64) -> String {
        let path = format!("/attachments/{id}/{id}.png");
        let Some(ttl) = *self.ttl.lock() else {
            return format!("{}{path}", self.origin());
        };
        let expires = issued + ttl.as_secs();
        format!(
            "{}{path}?ex={expires:x}&is={issued:x}&hm={}&",
            self.origin(),
            signature(&path, expires)
        )
    }

    /// Another API's result link for task `id` of `api`, issued `issued`: a signed CDN link, except
    /// for the APIs whose links carry no signature (Suno's `cdn1.suno.ai/<uuid>.mp3`, Luma's assets),
    /// which never expire here.
    pub(super) fn signed(&self, api: &str, id: &str, issued: u64) -> String {
        let path = format!("/files/{api}/{id}.mp4");
        let ttl = *self.ttl.lock();
        let Some(ttl) = ttl.filter(|_| !UNSIGNED.contains(&api)) else {
            return format!("{}{path}", self.origin());
        };
        let expires = issued + ttl.as_secs();
        format!(
            "{}{path}?Expires={expires}&Signature={}",
            self.origin(),
            signature(&path, expires)
        )
    }

    fn origin(&self) -> &str {
        self.origin.get().map_or("http://127.0.0.1", String::as_str)
    }

    /// The answer to `GET path?query` if `path` is a result file: its bytes while the link is good,
    /// `403` once it expired or when its signature is wrong.
    pub(super) fn serve(&self, path: &str, query: Option<&str>) -> Option<Response<Full<Bytes>>> {
        let content_type = if path.starts_with("/attachments/") && path.ends_with(".png") {
            "image/png"
        } else if path.starts_with("/files/") && path.ends_with(".mp4") {
            "video/mp4"
        } else {
            return None;
        };
        let params: HashMap<&str, &str> = query
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .collect();
        let expires = match content_type {
            "image/png" => params
                .get("ex")
                .and_then(|hex| u64::from_str_radix(hex, 16).ok()),
            _ => params.get("Expires").and_then(|text| text.parse().ok()),
        };
        let signed = match content_type {
            "image/png" => params.get("hm"),
            _ => params.get("Signature"),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let unsigned = self.ttl.lock().is_none()
            || UNSIGNED
                .iter()
                .any(|api| path.starts_with(&format!("/files/{api}/")));
        let valid = unsigned
            || matches!((expires, signed), (Some(at), Some(sig)) if *sig == signature(path, at) && at > now);
        if !valid {
            // Discord's words for an expired attachment link.
            let mut response = Response::new(Full::new(Bytes::from_static(
                b"This content is no longer available.",
            )));
            *response.status_mut() = StatusCode::FORBIDDEN;
            return Some(response);
        }
        *self.downloads.lock().entry(path.to_owned()).or_default() += 1;
        let bytes = file_bytes(path);
        let mut response = Response::new(Full::new(bytes.clone()));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        Some(response)
    }
}

fn signature(path: &str, expires: u64) -> String {
    let mut hash = blake3::Hasher::new_keyed(SIGNING_KEY);
    hash.update(path.as_bytes());
    hash.update(&expires.to_le_bytes());
    hash.finalize().to_hex()[..32].to_owned()
}

/// A deterministic 256 KiB "file" for `path`, the same on every download.
fn file_bytes(path: &str) -> Bytes {
    let seed = path.bytes().fold(0u8, u8::wrapping_add);
    (0..256 * 1024)
        .map(|i: usize| (i as u8).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}
