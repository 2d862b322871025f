//! Where a family's finished answers point at their result files: JSON pointers (RFC 6901) with one
//! addition, a `*` segment that stands for every element of an array (or every member of an object),
//! so `/imageUrls/*/url` names each image's URL and `/output/*` each of Runway's outputs. Written as
//! data in each family's description (`results`), so an operator's family says where its files are
//! the same way.

use serde_json::Value;

/// One `results` pointer, split into its segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultPointer {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// A member name or an array index, unescaped (`~1` is `/`, `~0` is `~`).
    Key(String),
    /// `*`: every element or member (RFC 6901 has no escape for a member named `*`; no task API
    /// names one so).
    Any,
}

/// One result file an answer names: where (a concrete pointer, wildcards resolved) and its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultUrl {
    pub at: String,
    pub url: String,
}

/// The most result URLs one answer is taken to name: a hostile upstream's array of a million links
/// costs a bounded walk, and no real task has more (Midjourney's grid is 4, Suno's clips 2).
pub const MAX_RESULTS: usize = 64;

impl ResultPointer {
    /// `pointer` as a results pointer; it must already be a valid JSON pointer (empty, or `/...`).
    pub fn parse(pointer: &str) -> Self {
        let segments = pointer
            .split('/')
            .skip(1)
            .map(|segment| match segment {
                "*" => Segment::Any,
                other => Segment::Key(other.replace("~1", "/").replace("~0", "~")),
            })
            .collect();
        ResultPointer { segments }
    }

    /// Adds every `http` or `https` URL this pointer reaches in `value` to `out`, with its concrete
    /// pointer, up to [`MAX_RESULTS`] in all.
    fn collect(&self, value: &Value, out: &mut Vec<ResultUrl>) {
        walk(&self.segments, value, &mut String::new(), out);
    }
}

fn walk(segments: &[Segment], value: &Value, at: &mut String, out: &mut Vec<ResultUrl>) {
    if out.len() >= MAX_RESULTS {
        return;
    }
    let Some((first, rest)) = segments.split_first() else {
        if let Value::String(url) = value
            && is_web_url(url)
            && !out.iter().any(|seen| seen.url == *url)
        {
            out.push(ResultUrl {
                at: at.clone(),
                url: url.clone(),
            });
        }
        return;
    };
    let mut step = |name: &str, child: &Value, out: &mut Vec<ResultUrl>| {
        let before = at.len();
        at.push('/');
        at.push_str(&name.replace('~', "~0").replace('/', "~1"));
        walk(rest, child, at, out);
        at.truncate(before);
    };
    match (first, value) {
        (Segment::Any, Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                step(&i.to_string(), item, out);
            }
        }
        (Segment::Any, Value::Object(members)) => {
            for (name, member) in members {
                step(name, member, out);
            }
        }
        (Segment::Key(name), Value::Object(members)) => {
            if let Some(member) = members.get(name) {
                step(name, member, out);
            }
        }
        (Segment::Key(index), Value::Array(items)) => {
            // RFC 6901 array indices: digits, no leading zero.
            let canonical = index == "0" || !index.starts_with('0');
            if let Some(item) = index
                .parse::<usize>()
                .ok()
                .filter(|_| canonical)
                .and_then(|i| items.get(i))
            {
                step(index, item, out);
            }
        }
        _ => {}
    }
}

/// An absolute `http` or `https` URL: what could be downloaded (a relative path, a `data:` URL or an
/// empty string is not a file the gateway could keep).
fn is_web_url(text: &str) -> bool {
    let lower = text.get(..8).map(str::to_ascii_lowercase);
    matches!(lower.as_deref(), Some(start) if start.starts_with("http://") || start == "https://")
}

/// Every result file `pointers` reach in `answer`, in the order of the pointers, each URL once.
pub fn result_urls(pointers: &[ResultPointer], answer: &Value) -> Vec<ResultUrl> {
    let mut out = Vec::new();
    for pointer in pointers {
        pointer.collect(answer, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn urls(pointers: &[&str], answer: &Value) -> Vec<(String, String)> {
        let pointers: Vec<ResultPointer> =
            pointers.iter().map(|p| ResultPointer::parse(p)).collect();
        result_urls(&pointers, answer)
            .into_iter()
            .map(|r| (r.at, r.url))
            .collect()
    }

    #[test]
    fn a_wildcard_takes_every_element_and_names_each_by_its_index() {
        let answer = json!({
            "imageUrl": "https://cdn.discordapp.com/a/grid.png?ex=1&is=2&hm=3",
            "imageUrls": [{"url": "https://cdn.discordapp.com/a/0.png"}, {"url": "https://cdn.discordapp.com/a/1.png"}],
        });
        assert_eq!(
            urls(&["/imageUrl", "/imageUrls/*/url", "/videoUrl"], &answer),
            vec![
                (
                    "/imageUrl".into(),
                    "https://cdn.discordapp.com/a/grid.png?ex=1&is=2&hm=3".into()
                ),
                (
                    "/imageUrls/0/url".into(),
                    "https://cdn.discordapp.com/a/0.png".into()
                ),
                (
                    "/imageUrls/1/url".into(),
                    "https://cdn.discordapp.com/a/1.png".into()
                ),
            ]
        );
    }

    #[test]
    fn only_absolute_web_urls_count_and_each_once() {
        let answer = json!({"output": ["https://a/x.mp4", "", "/relative.mp4", "data:image/png;base64,AA", 7, null, "HTTPS://a/y.mp4", "https://a/x.mp4"]});
        assert_eq!(
            urls(&["/output/*"], &answer),
            vec![
                ("/output/0".into(), "https://a/x.mp4".into()),
                ("/output/6".into(), "HTTPS://a/y.mp4".into()),
            ]
        );
    }

    #[test]
    fn indices_escapes_and_object_wildcards_follow_rfc_6901() {
        let answer = json!({"a/b": {"x": "http://h/1", "y": "http://h/2"}, "list": ["http://h/3"]});
        assert_eq!(
            urls(&["/a~1b/*", "/list/0", "/list/00"], &answer),
            vec![
                ("/a~1b/x".into(), "http://h/1".into()),
                ("/a~1b/y".into(), "http://h/2".into()),
                ("/list/0".into(), "http://h/3".into()),
            ]
        );
    }

    #[test]
    fn a_hostile_answer_costs_a_bounded_walk() {
        let many: Vec<String> = (0..100_000).map(|i| format!("https://h/{i}")).collect();
        let answer = json!({"output": many});
        assert_eq!(urls(&["/output/*"], &answer).len(), MAX_RESULTS);
    }
}

/// `body` (a JSON document) with every string value `replace` has a new text for replaced by it, and
/// every other byte as it was: keys, order, spacing and the upstream's own escapes (Go's encoder
/// writes `&` as `\u0026`, others `/` as `\/`) are kept, so a rewritten answer differs from the
/// upstream's only in the URLs. `None` when nothing was replaced.
pub fn replace_strings(body: &[u8], replace: impl Fn(&str) -> Option<String>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len() + 256);
    let mut copied = 0;
    let mut replaced = false;
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'"' {
            i += 1;
            continue;
        }
        // A string token: find its closing quote, stepping over escapes.
        let start = i;
        i += 1;
        while i < body.len() && body[i] != b'"' {
            i += if body[i] == b'\\' { 2 } else { 1 };
        }
        let end = (i + 1).min(body.len());
        i = end;
        let token = &body[start..end];
        let is_key = body[end..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b':');
        // Cheap filter first: a URL's token holds `http` (escapes never split those letters).
        if is_key || !token.windows(4).any(|w| w.eq_ignore_ascii_case(b"http")) {
            continue;
        }
        let Ok(text) = serde_json::from_slice::<String>(token) else {
            continue;
        };
        if let Some(new) = replace(&text) {
            out.extend_from_slice(&body[copied..start]);
            out.extend_from_slice(
                serde_json::to_string(&new)
                    .unwrap_or_else(|_| "\"\"".to_owned())
                    .as_bytes(),
            );
            copied = end;
            replaced = true;
        }
    }
    if !replaced {
        return None;
    }
    out.extend_from_slice(&body[copied..]);
    Some(out)
}

#[cfg(test)]
mod replace_tests {
    use super::replace_strings;

    fn swap(text: &str) -> Option<String> {
        (text == "https://cdn.discordapp.com/a/x.png?ex=1&is=2&hm=3")
            .then(|| "https://gw.test/_mjgate/files/T".to_owned())
    }

    #[test]
    fn only_the_urls_change_and_every_other_byte_stays() {
        // Go's encoder (new-api) escapes `&` as \u0026; keys, spacing and order stay as they were.
        let body = br#"{"imageUrl" : "https:\/\/cdn.discordapp.com\/a\/x.png?ex=1\u0026is=2\u0026hm=3", "prompt":"https://cdn.discordapp.com/a/x.png?ex=1&is=2&hm=3 as text", "z":1}"#;
        let out = replace_strings(body, swap).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"imageUrl" : "https://gw.test/_mjgate/files/T", "prompt":"https://cdn.discordapp.com/a/x.png?ex=1&is=2&hm=3 as text", "z":1}"#
        );
    }

    #[test]
    fn keys_and_answers_without_a_known_url_are_left_alone() {
        let key = br#"{"https://cdn.discordapp.com/a/x.png?ex=1&is=2&hm=3":"v"}"#;
        assert_eq!(replace_strings(key, swap), None);
        assert_eq!(replace_strings(br#"{"a":"b\"c","d":[1,2]}"#, swap), None);
        assert_eq!(replace_strings(br#"{"a":"unterminated"#, swap), None);
    }

    #[test]
    fn every_place_the_url_appears_as_a_value_is_replaced() {
        let body = br#"{"imageUrl":"https://cdn.discordapp.com/a/x.png?ex=1&is=2&hm=3","imageUrls":[{"url":"https://cdn.discordapp.com/a/x.png?ex=1&is=2&hm=3"}]}"#;
        let out = String::from_utf8(replace_strings(body, swap).unwrap()).unwrap();
        assert_eq!(out.matches("/_mjgate/files/T").count(), 2, "{out}");
        assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
    }

    #[test]
    fn any_bytes_are_survived_and_valid_json_stays_valid() {
        // A bounded sweep over generated documents and byte soup (the fuzz targets go further).
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let parts: [&[u8]; 12] = [
            b"{",
            b"}",
            b"[",
            b"]",
            b":",
            b",",
            b"\"",
            b"\\",
            b"http://h/x",
            b"\\u0026",
            b" ",
            b"1",
        ];
        for _ in 0..20_000 {
            let mut doc = Vec::new();
            for _ in 0..(next() % 24) {
                doc.extend_from_slice(parts[(next() % 12) as usize]);
            }
            let out = replace_strings(&doc, |t| {
                t.starts_with("http").then(|| "https://g/\"q\"".to_owned())
            });
            if serde_json::from_slice::<serde_json::Value>(&doc).is_ok()
                && let Some(out) = out
            {
                assert!(
                    serde_json::from_slice::<serde_json::Value>(&out).is_ok(),
                    "{:?} -> {:?}",
                    String::from_utf8_lossy(&doc),
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }
}
