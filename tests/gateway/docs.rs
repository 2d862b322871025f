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

#[test]
fn every_config_key_is_in_the_configuration_reference() {
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
            CONFIGURATION.contains(&format!("`{key}`")),
            "docs/configuration.md lacks {key}"
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
