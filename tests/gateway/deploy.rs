//! The deployment files in `deploy/` are consistent with the gateway they deploy (no Docker engine here:
//! what can be checked without one is checked).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mjgate::Config;
use serde_json::Value;

use crate::support::*;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

fn yaml(path: &str) -> serde_norway::Value {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("deploy/{path} is not YAML: {e}"))
}

/// Metric names a PromQL expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        if (rest.starts_with("mjgate_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..end].to_owned());
            i += end;
        } else {
            i += 1;
        }
    }
    names
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let dashboard: Value =
        serde_json::from_str(&read("grafana/dashboards/mjgate.json")).expect("dashboard JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queried.extend(metric_names(target["expr"].as_str().expect("expr")));
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");

    let (_sim, gw) = start("").await;
    let exported = scrape(&gw).await;
    for name in &queried {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| exported.has_family(f)))
            .unwrap_or(name);
        assert!(
            exported.has_family(family),
            "the dashboard queries {name}, which /metrics lacks"
        );
    }
}

#[test]
fn prometheus_scrapes_the_gateway() {
    let config = yaml("prometheus/prometheus.yml");
    let job = &config["scrape_configs"][0];
    assert_eq!(job["job_name"], "mjgate");
    assert_eq!(job["metrics_path"], "/metrics");
    assert_eq!(job["static_configs"][0]["targets"][0], "mjgate:8080");
}

#[test]
fn compose_runs_the_three_services_with_files_that_exist() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    for name in ["mjgate", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "{name} service missing");
    }
    let dockerfile = compose["services"]["mjgate"]["build"]["dockerfile"]
        .as_str()
        .unwrap();
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(dockerfile)
            .exists(),
        "{dockerfile}"
    );
    for service in services.values() {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            assert!(
                deploy(host).exists(),
                "compose mounts {host}, which does not exist"
            );
        }
    }
    yaml("grafana/provisioning/datasources/prometheus.yml");
    yaml("grafana/provisioning/dashboards/mjgate.yml");
}

#[test]
fn kubernetes_probes_and_grace_period_match_the_configmap() {
    let configmap = yaml("k8s/configmap.yaml");
    let toml = configmap["data"]["mjgate.toml"]
        .as_str()
        .expect("embedded config");
    let config =
        Config::from_toml(toml, &Default::default()).expect("the ConfigMap's config is valid");
    let admin_port = config.admin_listen.expect("admin_listen").port();

    let deployment = yaml("k8s/deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        config.server.shutdown_grace.as_secs() < grace,
        "the drain ({:?}) must end before SIGKILL ({grace}s)",
        config.server.shutdown_grace
    );
    let container = &pod["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let ports = container["ports"].as_sequence().unwrap();
    let admin = ports
        .iter()
        .find(|p| p["name"] == "admin")
        .expect("admin port");
    assert_eq!(admin["containerPort"].as_u64(), Some(u64::from(admin_port)));
    assert!(container["resources"]["limits"]["memory"].is_string());
    let service = yaml("k8s/service.yaml");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn the_image_runs_as_non_root_with_a_health_check_the_binary_supports() {
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("USER nonroot"));
    assert!(dockerfile.contains("HEALTHCHECK"));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_mjgate"))
        .args(["healthcheck", "--help"])
        .output()
        .unwrap()
        .status;
    assert!(status.success(), "the HEALTHCHECK's subcommand exists");
}

#[test]
fn systemd_waits_for_the_drain_before_killing() {
    let unit = read("systemd/mjgate.service");
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec")
        .parse()
        .unwrap();
    let shipped = Config::from_toml(
        include_str!("../../config/mjgate.toml"),
        &Default::default(),
    )
    .unwrap();
    assert!(shipped.server.shutdown_grace.as_secs() < stop);
    assert!(unit.contains("ExecStart=/usr/local/bin/mjgate --config /etc/mjgate/mjgate.toml"));
}

#[tokio::test]
async fn the_healthcheck_subcommand_probes_a_running_gateway() {
    let (_sim, gw) = start("").await;
    let ok =
        mjgate::healthcheck::probe(&gw.url("/readyz"), std::time::Duration::from_secs(5)).await;
    assert!(ok.is_ok(), "{ok:?}");
    let bad = mjgate::healthcheck::probe(
        "http://127.0.0.1:1/healthz",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(bad.is_err());
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names("sum(rate(mjgate_a_total[5m])) / process_b{job=\"x_mjgate_c\"}"),
        ["mjgate_a_total", "process_b"]
    );
}
