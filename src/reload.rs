//! Reload without restart: `SIGHUP` (or `POST /admin/reload`, what `mjgate reload` sends) reads the
//! config file again and swaps in what can change under running connections; `check-config --diff`
//! compares a file with what a gateway runs.
//!
//! A new config is validated whole first; one that fails is refused and the old one keeps serving. A
//! valid one that changes a key only a restart can apply (the listeners, the upstream client, the
//! Redis tier, the sizes of the memory budgets, turning webhooks or artifacts on or off, ...) is
//! refused too, naming those keys: half a reload would leave the operator guessing which config
//! runs. The keys a reload applies are [`RELOADABLE`]: the request settings and the families are
//! swapped in whole for the requests after it (connections, held requests and the cache carry on;
//! a removed family's entries are dropped), the cache's TTLs change in place, webhook delivery and
//! result downloads take their new terms at their next attempt, and the binary re-applies its log
//! filter, format and access-log destination.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::Config;

/// The keys a reload applies, as [`describe`] names them (a key applies when it is one of these or
/// lies under one).
pub const RELOADABLE: &[&str] = &[
    "admin_token",
    "cache.in_progress_ttl",
    "cache.not_found_ttl",
    "cache.max_stale",
    "batch.max_body",
    "batch.max_ids",
    "server.trusted_proxies",
    "server.max_request_body",
    "server.passthrough_buffer",
    "server.body_read_timeout",
    "server.per_client_rps",
    "server.per_client_burst",
    "server.per_client_connections",
    "log",
    "families",
    "webhooks.secret",
    "webhooks.allow_private",
    "webhooks.finished_only",
    "webhooks.retry",
    "webhooks.timeout",
    "webhooks.max_pending",
    "webhooks.max_pending_per_credential",
    "webhooks.public_url",
    "artifacts.allow_private",
    "artifacts.timeout",
    "artifacts.idle_timeout",
    "artifacts.public_url",
];

/// The config as flat `key = value` lines, named like the file's keys where the two agree
/// (`cache.in_progress_ttl`); secrets are redacted. Read from the config's `{:#?}` output, so that
/// every key a type adds is covered without a list to keep.
pub fn describe(config: &Config) -> BTreeMap<String, String> {
    numberless(flatten(&format!("{config:#?}"), true))
}

/// The same with secrets kept, to tell a changed secret from an unchanged one in this process.
fn describe_raw(config: &Config) -> BTreeMap<String, String> {
    numberless(flatten(&format!("{config:#?}"), false))
}

/// Without the families' numbers: a file numbers them in its order, a running gateway keeps the
/// numbers it started with (see [`crate::family::Families::rebase`]), and neither is a setting.
fn numberless(mut described: BTreeMap<String, String>) -> BTreeMap<String, String> {
    described.retain(|key, _| {
        !(key.starts_with("families.") && key.ends_with(".id") && key.matches('.').count() == 2)
    });
    described
}

fn is_secret(path: &str) -> bool {
    ["token", "secret", "password", "access_key"]
        .iter()
        .any(|word| path.contains(word))
}

/// Reads `{:#?}` output: one field per line, a line ending in `{`, `[` or `(` opens a level that
/// its matching closing line ends, and a value without a name (an item of a list) is named by its
/// place.
fn flatten(pretty: &str, redact: bool) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut stack: Vec<Level> = Vec::new();
    for (n, line) in pretty.lines().enumerate() {
        let line = line.trim().trim_end_matches(',');
        if n == 0 {
            // `Config {`: the root.
            continue;
        }
        if matches!(line, "}" | "]" | ")") {
            stack.pop();
            continue;
        }
        let parent = stack.last().map(|level| level.path.clone());
        let parent = parent.as_deref();
        let (path, value) = match (field(line), stack.last_mut()) {
            (Some((name, value)), _) => (join(parent, name), value),
            // `Some(x)` and its like: the value of the key that holds it.
            (None, Some(level)) if level.tuple => (level.path.clone(), line),
            (None, level) => {
                let index = level.map_or(0, |level| {
                    level.items += 1;
                    level.items - 1
                });
                (join(parent, &index.to_string()), line)
            }
        };
        if let Some(opener) = value.strip_suffix(['{', '[', '(']) {
            let tuple = value.ends_with('(');
            let kind = opener.trim();
            if !kind.is_empty() && kind != "Some" {
                // `UpstreamConfig {`, `Local {`: which kind of value this is.
                out.insert(path.clone(), kind.to_owned());
            }
            stack.push(Level {
                path,
                items: 0,
                tuple,
            });
            continue;
        }
        // Secrets a type shows as its digest already (`<redacted #...>`) stay as they are.
        let digest;
        let value = if redact && is_secret(&path) && value != "None" && !value.contains("<redacted")
        {
            digest = crate::redact::redacted(value.as_bytes());
            digest.as_str()
        } else {
            value
        };
        out.entry(path)
            .and_modify(|held| {
                held.push(' ');
                held.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    out
}

/// An open level of `{:#?}` output.
struct Level {
    path: String,
    /// Unnamed items so far (a list's).
    items: usize,
    /// Opened by `(`: a wrapper (`Some(...)`) whose items are its key's value.
    tuple: bool,
}

fn join(parent: Option<&str>, name: &str) -> String {
    match parent {
        Some(parent) => format!("{parent}.{name}"),
        None => name.to_owned(),
    }
}

/// `name: value`, where `name` is an identifier: `in_progress_ttl: 3s`.
fn field(line: &str) -> Option<(&str, &str)> {
    // A map's entry: `"x-api-key": value`, named by its key.
    if let Some(rest) = line.strip_prefix('"')
        && let Some((name, value)) = rest.split_once("\": ")
        && !name.contains('"')
    {
        return Some((name, value));
    }
    let (name, value) = line.split_once(": ")?;
    // `-` for the family names (`[families.my-api]`).
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        .then_some((name, value))
}

/// One key that differs between two configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// A reload applies it; otherwise only a restart does.
    pub reloadable: bool,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".to_owned());
        write!(
            f,
            "{}: {} -> {}{}",
            self.key,
            show(&self.from),
            show(&self.to),
            if self.reloadable {
                ""
            } else {
                "  (needs a restart)"
            }
        )
    }
}

pub fn reloadable(key: &str) -> bool {
    RELOADABLE
        .iter()
        .any(|prefix| key == *prefix || key.starts_with(&format!("{prefix}.")))
}

/// What differs between two described configs, key by key.
pub fn diff(from: &BTreeMap<String, String>, to: &BTreeMap<String, String>) -> Vec<Change> {
    let mut keys: Vec<&String> = from.keys().chain(to.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|key| from.get(*key) != to.get(*key))
        .map(|key| Change {
            key: key.clone(),
            from: from.get(key).cloned(),
            to: to.get(key).cloned(),
            reloadable: reloadable(key),
        })
        .collect()
}

/// What a reload from `old` to `new` changes, secrets compared as they are but shown redacted.
pub fn changes(old: &Config, new: &Config) -> Vec<Change> {
    let (old_raw, new_raw) = (describe_raw(old), describe_raw(new));
    let (old_shown, new_shown) = (describe(old), describe(new));
    diff(&old_raw, &new_raw)
        .into_iter()
        .map(|mut change| {
            change.from = old_shown.get(&change.key).cloned();
            change.to = new_shown.get(&change.key).cloned();
            change
        })
        .collect()
}

/// Where a reload reads its config, and what the binary re-applies once it is taken (the log's
/// filter, format and access-log destination live outside the gateway).
pub struct Source {
    /// Reads and validates the config file again, with the command line's overrides.
    pub load: Box<Load>,
    /// Applies a checked config's log settings; an error refuses the reload.
    pub apply: Box<Apply>,
}

type Load = dyn Fn() -> Result<Config, String> + Send + Sync;
type Apply = dyn Fn(&Config) -> Result<(), String> + Send + Sync;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Invalid(String),
    #[error("this gateway was not started from a config file: nothing to reload")]
    NoSource,
    #[error("these keys need a restart, so nothing was reloaded: {}", .0.join(", "))]
    NeedsRestart(Vec<String>),
}

impl Refused {
    pub fn label(&self) -> &'static str {
        match self {
            Refused::Invalid(_) | Refused::NoSource => "invalid",
            Refused::NeedsRestart(_) => "needs_restart",
        }
    }
}

/// Checks that a reload from `old` to `new` may be applied; the changes it makes if so.
pub fn check(old: &Config, new: &Config) -> Result<Vec<Change>, Refused> {
    let changes = changes(old, new);
    let restart: Vec<String> = changes
        .iter()
        .filter(|change| !change.reloadable)
        .map(|change| change.key.clone())
        .collect();
    if restart.is_empty() {
        Ok(changes)
    } else {
        Err(Refused::NeedsRestart(restart))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn config(extra: &str) -> Config {
        Config::from_toml(
            &format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n{extra}"),
            &Overrides::default(),
        )
        .unwrap()
    }

    #[test]
    fn a_config_is_described_key_by_key_with_its_secrets_redacted() {
        let described = describe(&config(
            "[admin]\ntoken = \"0123456789abcdef-secret\"\n[cache]\nin_progress_ttl = \"7s\"\n",
        ));
        assert_eq!(described["cache.in_progress_ttl"], "7s");
        assert!(
            described["admin_token"].starts_with("<redacted #"),
            "a digest only: {}",
            described["admin_token"]
        );
        assert!(
            !described.values().any(|v| v.contains("0123456789abcdef")),
            "{described:#?}"
        );
        assert!(described.contains_key("upstream.max_in_flight"));
    }

    #[test]
    fn no_secret_of_any_section_shows_in_the_description() {
        let described = describe(&config(
            "[shared_cache]
redis_url = \"redis://mjgate:redis-pass-7f3a@127.0.0.1:6379\"
             fingerprint_secret = \"fp-secret-0123456789abcdef0123456789\"
             [webhooks]
secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"
             [trace]
otlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"
             otlp_headers = { \"x-api-key\" = \"otlp-key-5e1d\" }
",
        ));
        let text = format!("{described:#?}");
        for secret in [
            "redis-pass-7f3a",
            "fp-secret-0123456789",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "otlp-key-5e1d",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    #[test]
    fn a_ttl_change_reloads_and_a_listener_change_needs_a_restart() {
        let old = config("");
        let ttl = config("[cache]\nin_progress_ttl = \"9s\"\n");
        let changes = check(&old, &ttl).unwrap();
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].key, "cache.in_progress_ttl");
        assert_eq!(changes[0].to.as_deref(), Some("9s"));

        let mut moved = config("[cache]\nin_progress_ttl = \"9s\"\n");
        moved.listen = "127.0.0.1:9999".parse().unwrap();
        match check(&old, &moved) {
            Err(Refused::NeedsRestart(keys)) => assert_eq!(keys, ["listen"]),
            other => panic!("{other:?}"),
        }
        let token = config("[admin]\ntoken = \"0123456789abcdef-other\"\n");
        let changes = check(&old, &token).unwrap();
        assert_eq!(changes[0].key, "admin_token");
        assert!(changes[0].to.as_deref().unwrap().starts_with("<redacted #"));
    }

    #[test]
    fn per_address_limits_reload() {
        let old = config("[server]\nper_client_rps = 5\nper_client_burst = 5\n");
        let new = config(
            "[server]\nper_client_rps = 10\nper_client_burst = 20\nper_client_connections = 3\n",
        );
        let changes = check(&old, &new).unwrap();
        let mut keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "server.per_client_burst",
                "server.per_client_connections",
                "server.per_client_rps"
            ]
        );
    }

    #[test]
    fn a_rotated_secret_shows_as_a_change_and_its_value_never_does() {
        let hook = |secret: &str, key: &str| {
            config(&format!(
                "[webhooks]\nsecret = \"{secret}\"\n[trace]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\n\
                 otlp_headers = {{ \"x-api-key\" = \"{key}\" }}\n"
            ))
        };
        let old = hook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "otlp-key-1");
        let rotated = hook("whsec_AAAQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "otlp-key-1");
        let changes = check(&old, &rotated).unwrap();
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["webhooks.secret"], "reloadable, and named");
        // The collector's key is sent by the exporter built at start-up: a restart changes it.
        let new_key = hook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "otlp-key-2");
        match check(&old, &new_key) {
            Err(Refused::NeedsRestart(keys)) => {
                assert_eq!(keys, ["trace.headers.x-api-key"]);
            }
            other => panic!("{other:?}"),
        }
        // Across processes alike: the file's description differs where the running one would.
        assert_ne!(
            describe(&old)["webhooks.secret"],
            describe(&rotated)["webhooks.secret"]
        );
        let text = format!("{:?}", diff(&describe(&old), &describe(&new_key)));
        assert!(!text.contains("otlp-key"), "{text}");
    }

    #[test]
    fn families_are_added_changed_and_removed_by_a_reload() {
        let old = config("[families.suno]\nfinished_ttl = \"1h\"\n");
        let new = config(
            "[families.suno]\nfinished_ttl = \"2h\"\n\
             [families.my-api]\nstatus_routes = [\"/my/{id}\"]\nstatus_at = [\"/s\"]\n",
        );
        let changes = check(&old, &new).unwrap();
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert!(keys.contains(&"families.suno.finished_ttl"), "{keys:?}");
        assert!(
            keys.iter().any(|k| k.starts_with("families.my-api.")),
            "{keys:?}"
        );
        assert!(changes.iter().all(|c| c.reloadable));
        // Taken away again: the numbers a running gateway keeps are not a change of their own.
        let back = check(&new, &old).unwrap();
        assert!(back.iter().all(|c| !c.key.ends_with(".id")), "{back:?}");
        assert!(back.iter().any(|c| c.key.starts_with("families.my-api.")));
    }

    #[test]
    fn webhook_and_artifact_terms_reload_and_their_budgets_and_switches_need_a_restart() {
        let hooks = |extra: &str| {
            config(&format!(
                "[webhooks]\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n{extra}"
            ))
        };
        let old = hooks("");
        let new = hooks(
            "timeout = \"3s\"\nfirst_retry = \"1s\"\nmax_pending = 5\n\
             [artifacts]\npublic_url = \"https://files.example\"\nallow_private = true\n",
        );
        let changes = check(&old, &new).unwrap();
        assert!(changes.len() >= 5, "{changes:?}");
        for sized in ["max_memory = \"1MiB\"", "max_in_flight = 2"] {
            match check(&old, &hooks(sized)) {
                Err(Refused::NeedsRestart(keys)) => assert!(keys[0].starts_with("webhooks.max_")),
                other => panic!("{sized}: {other:?}"),
            }
        }
        match check(&config(""), &old) {
            Err(Refused::NeedsRestart(keys)) => assert!(keys.contains(&"webhooks".to_owned())),
            other => panic!("{other:?}"),
        }
        let moved = config("[artifacts]\ndir = \"/tmp/elsewhere\"\n");
        assert!(matches!(
            check(&config(""), &moved),
            Err(Refused::NeedsRestart(_))
        ));
    }

    #[test]
    fn an_unchanged_config_changes_nothing() {
        assert!(check(&config(""), &config("")).unwrap().is_empty());
    }
}
