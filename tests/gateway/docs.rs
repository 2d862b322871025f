//! The references stay true: every metric the gateway exports is in `docs/metrics.md`, every config key
//! it takes in `docs/configuration.md`, and every page the README's map names exists.

use crate::support::*;

const README: &str = include_str!("../../README.md");
const METRICS: &str = include_str!("../../docs/metrics.md");
const CONFIGURATION: &str = include_str!("../../docs/configuration.md");
const SHIPPED_CONFIG: &str = include_str!("../../config/mjgate.toml");

#[tokio::test]
async fn every_exported_metric_family_is_in_the_metrics_reference() {
    let (_sim, gw) = start("").await;
    let metrics = scrape(&gw).await;
    let families: Vec<&str> = metrics
        .text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .filter(|name| name.starts_with("mjgate_"))
        .collect();
    assert!(families.len() >= 25, "{families:?}");
    for family in families {
        assert!(
            METRICS.contains(&format!("`{family}`")),
            "docs/metrics.md lacks {family}"
        );
    }
}

/// Every `key = value` of the shipped config (its optional sections are shipped commented out:
/// `# [shared_cache]`, `# key = ...`), by dotted key.
fn shipped_keys() -> Vec<(String, String)> {
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in SHIPPED_CONFIG.lines() {
        let line = line.strip_prefix("# ").unwrap_or(line).trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{name}.");
        } else if let Some((key, value)) = line.split_once(" = ")
            && !key.starts_with('#')
            && !key.contains(' ')
        {
            keys.push((
                format!("{section}{key}"),
                value.trim_matches('"').to_owned(),
            ));
        }
    }
    keys
}

#[test]
fn every_config_key_is_in_the_configuration_reference() {
    let keys = shipped_keys();
    assert!(keys.len() >= 40, "{keys:?}");
    for (key, _) in keys {
        assert!(
            CONFIGURATION.contains(&format!("`{key}`")),
            "docs/configuration.md lacks {key}"
        );
    }
}

/// Defaults are written once, in `src/config/keys.rs`: the reference shows each with its range, and
/// the shipped config sets each to it.
#[test]
fn every_numeric_default_and_range_is_the_one_the_gateway_uses() {
    let shipped = shipped_keys();
    for key in mjgate::config::keys::ALL {
        let default = key.default.text();
        let row = format!("| `{}` | `{default}`", key.name);
        let line = CONFIGURATION
            .lines()
            .find(|line| line.starts_with(&row))
            .unwrap_or_else(|| panic!("docs/configuration.md: no row {row}"));
        assert!(
            line.contains(&format!("| {} |", key.range())),
            "docs/configuration.md: {} has not the range {}: {line}",
            key.name,
            key.range()
        );
        let (_, value) = shipped
            .iter()
            .find(|(name, _)| name == key.name)
            .unwrap_or_else(|| panic!("config/mjgate.toml lacks {}", key.name));
        assert_eq!(value, &default, "config/mjgate.toml sets {}", key.name);
    }
    for setting in mjgate::config::keys::SETTINGS {
        let row = format!("| `{}` | `{}`", setting.name, setting.default);
        assert!(
            CONFIGURATION.lines().any(|line| line.starts_with(&row)),
            "docs/configuration.md: no row {row}"
        );
        let (_, value) = shipped
            .iter()
            .find(|(name, _)| name == setting.name)
            .unwrap_or_else(|| panic!("config/mjgate.toml lacks {}", setting.name));
        assert_eq!(
            value, setting.default,
            "config/mjgate.toml sets {}",
            setting.name
        );
    }
}

#[test]
fn the_readme_is_a_front_door_whose_links_lead_somewhere() {
    assert!(
        README.lines().count() <= 150,
        "README.md grew past 150 lines"
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut linked = 0;
    for (at, _) in README.match_indices("](docs/") {
        let target = README[at + 2..].split(')').next().unwrap();
        let page = target.split('#').next().unwrap();
        assert!(
            root.join(page).is_file(),
            "README links to a missing {page}"
        );
        linked += 1;
    }
    assert!(linked >= 8, "{linked} links into docs/");
}
