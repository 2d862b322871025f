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

/// Every document of a multi-document YAML file.
fn yaml_documents(path: &str) -> Vec<serde_norway::Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("deploy/{path} is not YAML: {e}"))
        })
        .collect()
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
    let named = compose["volumes"].as_mapping().cloned().unwrap_or_default();
    assert!(
        named.contains_key("artifacts"),
        "kept files live on a named volume"
    );
    for service in services.values() {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            if named.contains_key(host) {
                continue;
            }
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
    let configmap = yaml("k8s/base/configmap.yaml");
    let toml = configmap["data"]["mjgate.toml"]
        .as_str()
        .expect("embedded config");
    let config =
        Config::from_toml(toml, &Default::default()).expect("the ConfigMap's config is valid");
    let admin_port = config.admin_listen.expect("admin_listen").port();

    let deployment = yaml("k8s/base/deployment.yaml");
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
    let service = yaml("k8s/base/service.yaml");
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
        mjgate::tools::healthcheck::probe(&gw.url("/readyz"), std::time::Duration::from_secs(5))
            .await;
    assert!(ok.is_ok(), "{ok:?}");
    let bad = mjgate::tools::healthcheck::probe(
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

#[test]
fn the_scale_out_compose_runs_three_replicas_on_one_redis_behind_a_hashing_balancer() {
    let compose = yaml("scale-out/docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    let replicas = ["mjgate-1", "mjgate-2", "mjgate-3"];
    for name in replicas {
        let env = &compose["services"][name]["environment"];
        assert_eq!(env["MJGATE_REDIS_URL"], "redis://redis:6379", "{name}");
        assert!(
            env["MJGATE_FINGERPRINT_SECRET"]
                .as_str()
                .is_some_and(|v| v.starts_with("${MJGATE_FINGERPRINT_SECRET:?")),
            "{name}: the secret comes from the environment and is required"
        );
        let dockerfile = compose["services"][name]["build"]["dockerfile"]
            .as_str()
            .unwrap();
        assert!(deploy(&format!("../{dockerfile}")).exists(), "{dockerfile}");
    }
    let redis = compose["services"]["redis"]["command"]
        .as_sequence()
        .unwrap();
    let args: Vec<&str> = redis.iter().filter_map(|a| a.as_str()).collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--maxmemory-policy", "allkeys-lru"])
    );
    for service in services.values() {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            assert!(
                deploy(&format!("scale-out/{host}")).exists(),
                "compose mounts {host}, which does not exist"
            );
        }
    }
    let nginx = read("scale-out/nginx.conf");
    assert!(nginx.contains("hash $mjgate_route consistent;"));
    // Fetches, long-polls and streams of one task share a route key: its id.
    let pattern = nginx
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("\"~")
                .and_then(|l| l.split('"').next())
        })
        .expect("the task-id map");
    assert!(pattern.contains("/mj/task/(?<task>") && pattern.contains("(fetch|events)$"));
    for name in replicas {
        assert!(
            nginx.contains(&format!("server {name}:8080")),
            "{name} is balanced"
        );
    }
    let prometheus = yaml("scale-out/prometheus.yml");
    let targets = &prometheus["scrape_configs"][0]["static_configs"][0]["targets"];
    assert_eq!(targets.as_sequence().unwrap().len(), 3);
}

#[test]
fn the_kubernetes_scale_out_overlay_adds_redis_a_shared_secret_and_a_hashing_ingress() {
    let base = yaml("k8s/base/kustomization.yaml");
    for resource in base["resources"].as_sequence().unwrap() {
        yaml(&format!("k8s/base/{}", resource.as_str().unwrap()));
    }
    let overlay = yaml("k8s/scale-out/kustomization.yaml");
    assert_eq!(overlay["bases"][0], "../base");
    let resources: Vec<&str> = overlay["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    for resource in &resources {
        let documents = yaml_documents(&format!("k8s/scale-out/{resource}"));
        assert!(
            documents.iter().all(|d| d["kind"].is_string()),
            "{resource}"
        );
    }
    let patch_path = overlay["patchesStrategicMerge"][0].as_str().unwrap();
    let patch = yaml(&format!("k8s/scale-out/{patch_path}"));
    let deployment = yaml("k8s/base/deployment.yaml");
    assert_eq!(patch["metadata"]["name"], deployment["metadata"]["name"]);
    assert_eq!(patch["spec"]["replicas"].as_u64(), Some(3));
    let container = &patch["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["name"],
        deployment["spec"]["template"]["spec"]["containers"][0]["name"]
    );
    let env = container["env"].as_sequence().unwrap();
    let var = |name: &str| env.iter().find(|e| e["name"] == name).cloned().unwrap();
    assert_eq!(
        var("MJGATE_REDIS_URL")["value"],
        "redis://mjgate-redis:6379"
    );
    assert!(var("MJGATE_FINGERPRINT_SECRET")["valueFrom"]["secretKeyRef"].is_mapping());

    // The base ConfigMap plus the patch's environment is a valid shared-tier config.
    let configmap = yaml("k8s/base/configmap.yaml");
    let toml = configmap["data"]["mjgate.toml"].as_str().unwrap();
    let overrides = mjgate::config::Overrides {
        redis_url: Some("redis://mjgate-redis:6379".into()),
        fingerprint_secret: Some("0123456789abcdef0123456789abcdef".into()),
        ..Default::default()
    };
    let config = Config::from_toml(toml, &overrides).expect("valid with the overlay's env");
    assert!(config.shared_cache.is_some());

    let redis = yaml_documents("k8s/scale-out/redis.yaml");
    let args: Vec<&str> = redis[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--maxmemory-policy", "allkeys-lru"])
    );
    assert_eq!(redis[1]["kind"], "Service");
    assert_eq!(
        redis[1]["metadata"]["name"], "mjgate-redis",
        "the URL's host"
    );
    let ingress = yaml("k8s/scale-out/ingress.yaml");
    assert_eq!(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"],
        "$uri"
    );
    let service = yaml("k8s/base/service.yaml");
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        service["metadata"]["name"]
    );
}

#[test]
fn systemd_checks_the_config_it_then_runs() {
    let unit = read("systemd/mjgate.service");
    let line = |prefix: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line"))
            .to_owned()
    };
    assert_eq!(
        line("ExecStartPre="),
        format!("{} check-config", line("ExecStart="))
    );
}

/// `kubectl kustomize` of `dir` (under `deploy/`), as the documents it renders.
fn rendered(dir: &str) -> Vec<serde_norway::Value> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(dir);
    let output = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&root)
        .output()
        .expect("kubectl (Debian's kubernetes-client) renders the deploy kit; .ci/run installs it");
    assert!(
        output.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    text.split("\n---\n")
        .map(|doc| serde_norway::from_str(doc).unwrap())
        .collect()
}

fn deployment_named<'a>(docs: &'a [serde_norway::Value], name: &str) -> &'a serde_norway::Value {
    docs.iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no Deployment {name}"))
}

#[test]
fn kubectl_renders_the_base_as_one_replica_and_the_overlay_as_three_on_redis() {
    for dir in ["k8s", "k8s/base"] {
        let docs = rendered(dir);
        let mjgate = deployment_named(&docs, "mjgate");
        assert_eq!(
            mjgate["spec"]["replicas"].as_u64(),
            Some(1),
            "{dir}: no Redis, one replica"
        );
        let container = &mjgate["spec"]["template"]["spec"]["containers"][0];
        assert_ne!(container["image"], "mjgate:latest", "a tag, not latest");
        assert_eq!(container["imagePullPolicy"], "IfNotPresent");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    }
    let docs = rendered("k8s/scale-out");
    let mjgate = deployment_named(&docs, "mjgate");
    assert_eq!(mjgate["spec"]["replicas"].as_u64(), Some(3));
    let env = mjgate["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .unwrap();
    assert!(env.iter().any(|e| e["name"] == "MJGATE_REDIS_URL"));
    deployment_named(&docs, "mjgate-redis");
    assert!(docs.iter().any(|d| d["kind"] == "Ingress"));
}

/// The compose files of the production Redis layouts: their services, the files they mount, and a
/// gateway config that loads as the layout it is for.
#[test]
fn the_redis_cluster_and_sentinel_kits_run_their_layouts_with_configs_that_load() {
    let overrides = mjgate::config::Overrides {
        fingerprint_secret: Some("0123456789abcdef0123456789abcdef".into()),
        ..Default::default()
    };
    for (kit, nodes) in [
        (
            "redis-cluster",
            &[
                "redis-1", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6",
            ][..],
        ),
        (
            "redis-sentinel",
            &[
                "redis-master",
                "redis-replica",
                "sentinel-1",
                "sentinel-2",
                "sentinel-3",
            ][..],
        ),
    ] {
        let mut compose = yaml(&format!("{kit}/docker-compose.yml"));
        compose.apply_merge().expect("merge keys resolve");
        let services = compose["services"].as_mapping().expect("services");
        for name in nodes.iter().chain(&["mjgate-1", "mjgate-2"]) {
            assert!(services.contains_key(*name), "{kit}: no {name}");
        }
        for name in ["mjgate-1", "mjgate-2"] {
            let env = &compose["services"][name]["environment"];
            assert!(
                env["MJGATE_REDIS_PASSWORD"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("${MJGATE_REDIS_PASSWORD:?")),
                "{kit}/{name}: the password comes from the environment and is required"
            );
        }
        for service in services.values() {
            for volume in service["volumes"].as_sequence().into_iter().flatten() {
                let host = volume.as_str().unwrap().split(':').next().unwrap();
                if host.starts_with('.') {
                    assert!(
                        deploy(&format!("{kit}/{host}")).exists(),
                        "{kit} mounts {host}"
                    );
                }
            }
        }
        // The CA the kit makes at first start, here a stand-in at a path of the test's own.
        let ca = std::env::temp_dir().join(format!("mjgate-kit-ca-{}.pem", std::process::id()));
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let text =
            read(&format!("{kit}/mjgate.toml")).replace("/certs/ca.pem", &ca.display().to_string());
        let config = mjgate::Config::from_toml(&text, &overrides)
            .unwrap_or_else(|e| panic!("{kit}/mjgate.toml: {e}"));
        let topology = &config
            .shared_cache
            .as_ref()
            .expect("the shared tier")
            .topology;
        match (kit, topology) {
            ("redis-cluster", mjgate::config::RedisTopology::Cluster(seeds)) => {
                assert_eq!(seeds.len(), 3);
                assert!(topology.is_tls());
            }
            ("redis-sentinel", mjgate::config::RedisTopology::Sentinel(s)) => {
                assert_eq!(s.master, "mymaster");
                assert_eq!(s.nodes.len(), 3);
            }
            _ => panic!("{kit}: {topology:?}"),
        }
    }
}
