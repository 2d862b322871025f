//! The README's references stay true: every metric the gateway exports and every config key it takes
//! is documented there.

use crate::support::*;

const README: &str = include_str!("../../README.md");
const SHIPPED_CONFIG: &str = include_str!("../../config/mjgate.toml");

#[tokio::test]
async fn every_exported_metric_family_is_in_the_readme() {
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
            README.contains(&format!("`{family}`")),
            "the README's metrics reference lacks {family}"
        );
    }
}

#[test]
fn every_config_key_is_in_the_readme() {
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in SHIPPED_CONFIG.lines() {
        // The optional sections are shipped commented out (`# [shared_cache]`, `# key = ...`).
        let line = line.strip_prefix("# ").unwrap_or(line).trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{name}.");
        } else if let Some((key, _)) = line.split_once(" = ")
            && !key.starts_with('#')
            && !key.contains(' ')
        {
            keys.push(format!("{section}{key}"));
        }
    }
    assert!(keys.len() >= 40, "{keys:?}");
    for key in keys {
        assert!(
            README.contains(&format!("`{key}`")),
            "the README's configuration reference lacks {key}"
        );
    }
}
