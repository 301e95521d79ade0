//! Keeps `deploy/kubernetes/base/gateway.yaml` honest: the embedded config passes `check` (the real
//! binary), and the manifests agree with it on ports, probes, the config path and the shutdown
//! delays.

use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

const MANIFESTS: &str = include_str!("../deploy/kubernetes/base/gateway.yaml");

fn docs() -> Vec<Yaml> {
    YamlLoader::load_from_str(MANIFESTS).expect("the manifests are YAML")
}

fn of_kind(docs: &[Yaml], kind: &str) -> Yaml {
    docs.iter().find(|d| d["kind"].as_str() == Some(kind)).unwrap_or_else(|| panic!("no {kind}")).clone()
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map_or(&[], Vec::as_slice)
}

/// A TOML value from the embedded config, e.g. `("server", "listen")`.
fn setting(config: &toml::Table, table: &str, key: &str) -> String {
    config[table][key].as_str().unwrap_or_else(|| panic!("{table}.{key} missing")).to_string()
}

fn port_of(addr: &str) -> i64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

fn duration(s: &str) -> Duration {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap());
    let n: u64 = n.parse().unwrap();
    match unit {
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(60 * n),
        "ms" => Duration::from_millis(n),
        other => panic!("unit {other}"),
    }
}

/// The config a ConfigMap carries, after it passed `check` as an operator would run it (with the
/// report's secret where the pod mounts it, here in a temporary folder) with no warning.
fn checked_config(map: &Yaml, what: &str) -> toml::Table {
    let text = map["data"]["gateway.toml"].as_str().expect("gateway.toml in the ConfigMap");
    let config: toml::Table = text.parse().unwrap();
    let token_file = setting(&config, "report", "token_file");
    let dir = std::env::temp_dir().join(format!("mfa-gateway-deploy-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("report-token"), "a-secret-for-the-report-readers").unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, text.replace(&token_file, &dir.join("report-token").display().to_string())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mfa-gateway"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{what}: check refused it: {}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("warning"), "{what}: {said}");
    config
}

#[test]
fn the_sidecar_manifests_agree_with_the_config_they_carry() {
    let docs = docs();
    let map = of_kind(&docs, "ConfigMap");
    let config = checked_config(&map, "sidecar");
    let token_file = setting(&config, "report", "token_file");
    let (listen, admin) =
        (port_of(&setting(&config, "server", "listen")), port_of(&setting(&config, "admin", "listen")));
    assert!(setting(&config, "admin", "listen").starts_with("0.0.0.0:"), "kubelet probes the pod IP");

    let deployment = of_kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    let sidecar = list(&spec["initContainers"])
        .iter()
        .find(|c| c["name"].as_str() == Some("mfa-gateway"))
        .expect("the gateway is an init container");
    assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"), "a native sidecar restarts always");

    // Container ports match the listeners; named ports resolve to them.
    let ports: Vec<(String, i64)> = list(&sidecar["ports"])
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["containerPort"].as_i64().unwrap()))
        .collect();
    let resolve = |p: &Yaml| -> i64 {
        match (p.as_i64(), p.as_str()) {
            (Some(n), _) => n,
            (None, Some(name)) => ports.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no port {name}")).1,
            _ => panic!("bad port {p:?}"),
        }
    };
    assert!(ports.iter().any(|(_, p)| *p == listen), "no container port for server.listen {listen}");
    assert!(ports.iter().any(|(_, p)| *p == admin), "no container port for admin.listen {admin}");

    // Probes: on the admin port, with the gateway's paths.
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")] {
        let get = &sidecar[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(resolve(&get["port"]), admin, "{probe} port");
    }

    // Requests equal limits (Guaranteed), and the container is locked down.
    let res = &sidecar["resources"];
    for what in ["cpu", "memory"] {
        assert!(!res["requests"][what].is_badvalue(), "no {what} request");
        assert_eq!(res["requests"][what], res["limits"][what], "{what} request != limit");
    }
    let sc = &sidecar["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert!(list(&sc["capabilities"]["drop"]).iter().any(|c| c.as_str() == Some("ALL")));
    assert_eq!(spec["securityContext"]["runAsNonRoot"].as_bool(), Some(true));

    // The config comes from the ConfigMap, mounted as a folder (a subPath mount never updates).
    let args: Vec<&str> = list(&sidecar["args"]).iter().filter_map(Yaml::as_str).collect();
    let config_path = args.iter().skip_while(|a| **a != "--config").nth(1).expect("--config in args");
    let mount = list(&sidecar["volumeMounts"])
        .iter()
        .find(|m| config_path.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .expect("the config path is on a mounted volume");
    assert!(mount["subPath"].is_badvalue(), "subPath mounts do not see ConfigMap updates");
    assert_eq!(config_path.rsplit('/').next(), Some("gateway.toml"));
    let volume = list(&spec["volumes"]).iter().find(|v| v["name"] == mount["name"]).expect("the mounted volume");
    assert_eq!(volume["configMap"]["name"], map["metadata"]["name"]);

    // The report's secret comes from a Secret, mounted where token_file looks.
    let mount = list(&sidecar["volumeMounts"])
        .iter()
        .find(|m| token_file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .expect("report.token_file is on a mounted volume");
    let volume = list(&spec["volumes"]).iter().find(|v| v["name"] == mount["name"]).expect("the mounted volume");
    assert!(volume["secret"]["secretName"].as_str().is_some(), "the report's secret is a Secret: {volume:?}");
    assert_eq!(token_file.rsplit('/').next(), Some("token"), "the Secret's key names the file");

    // The grace period covers the lame-duck delay and the drain.
    let delay = duration(&setting(&config, "server", "shutdown_delay"));
    let grace = duration(&setting(&config, "server", "shutdown_grace"));
    let period = Duration::from_secs(spec["terminationGracePeriodSeconds"].as_i64().unwrap() as u64);
    assert!(period >= delay + grace, "terminationGracePeriodSeconds {period:?} < {delay:?} + {grace:?}");

    // Scraped on the admin port; the Service reaches the gateway's port only.
    let notes = &pod["metadata"]["annotations"];
    assert_eq!(notes["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(notes["prometheus.io/port"].as_str().map(|p| p.parse::<i64>().unwrap()), Some(admin));
    assert_eq!(notes["prometheus.io/path"].as_str(), Some("/metrics"));
    let service = of_kind(&docs, "Service");
    let targets: Vec<i64> = list(&service["spec"]["ports"]).iter().map(|p| resolve(&p["targetPort"])).collect();
    assert_eq!(targets, vec![listen], "the Service must target the gateway's port and nothing else");
    let upstream = setting(&config, "upstream", "url");
    assert!(upstream.starts_with("http://127.0.0.1:"), "the app is reached over the pod's loopback: {upstream}");
}

fn load(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&std::fs::read_to_string(path).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Whether `selector` (matchLabels) picks an object with `labels`.
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    let want = selector.as_hash().expect("a selector");
    !want.is_empty() && want.iter().all(|(k, v)| labels[k.as_str().unwrap()] == *v)
}

/// The authz Deployment answers where the front-proxy snippets ask, on the port its config
/// listens on, and its config passes `check`.
#[test]
fn the_authz_manifests_answer_where_the_snippets_ask() {
    let docs = load("deploy/kubernetes/base/authz.yaml");
    let config = checked_config(&of_kind(&docs, "ConfigMap"), "authz");
    let port = port_of(&setting(&config, "authz", "listen"));
    let service = of_kind(&docs, "Service");
    let service_port = &list(&service["spec"]["ports"])[0];
    assert_eq!(service_port["port"].as_i64(), Some(port));
    let pod = &of_kind(&docs, "Deployment")["spec"]["template"];
    assert!(selects(&service["spec"]["selector"], &pod["metadata"]["labels"]), "the Service selects the pods");
    let container = &list(&pod["spec"]["containers"])[0];
    let target = service_port["targetPort"].as_str().unwrap();
    let named = list(&container["ports"]).iter().find(|p| p["name"].as_str() == Some(target)).expect("named port");
    assert_eq!(named["containerPort"].as_i64(), Some(port));

    let kustomization = &load("deploy/kubernetes/base/kustomization.yaml")[0];
    let namespace = kustomization["namespace"].as_str().unwrap();
    let url = format!("{}.{namespace}.svc.cluster.local:{port}", service["metadata"]["name"].as_str().unwrap());
    for snippet in ["ingress-nginx.yaml", "traefik-middleware.yaml", "istio.yaml"] {
        let text = std::fs::read_to_string(format!("deploy/authz/{snippet}")).unwrap();
        let (host, port) = (url.split(':').next().unwrap(), port.to_string());
        assert!(text.contains(&url) || (text.contains(host) && text.contains(&port)), "{snippet} does not ask {url}");
    }
}

/// The admin port: a ServiceMonitor (optional component) that finds every gateway under the job
/// name the alerts expect, and a NetworkPolicy that admits it only from monitoring namespaces.
#[test]
fn the_admin_port_is_scraped_as_the_alerts_expect_and_closed_to_others() {
    let pods: Vec<Yaml> = ["gateway.yaml", "authz.yaml"]
        .iter()
        .map(|f| of_kind(&load(&format!("deploy/kubernetes/base/{f}")), "Deployment")["spec"]["template"].clone())
        .collect();
    let monitoring = load("deploy/kubernetes/components/monitoring/servicemonitor.yaml");
    let (service, monitor) = (of_kind(&monitoring, "Service"), of_kind(&monitoring, "ServiceMonitor"));
    assert!(selects(&monitor["spec"]["selector"]["matchLabels"], &service["metadata"]["labels"]));
    for pod in &pods {
        assert!(selects(&service["spec"]["selector"], &pod["metadata"]["labels"]), "a gateway pod is not scraped");
    }
    let endpoint = &list(&monitor["spec"]["endpoints"])[0];
    let port = list(&service["spec"]["ports"])
        .iter()
        .find(|p| p["name"] == endpoint["port"])
        .expect("the ServiceMonitor's port name is the Service's");
    assert_eq!(port["port"].as_i64(), Some(9901));
    let job = service["metadata"]["labels"][monitor["spec"]["jobLabel"].as_str().unwrap()].as_str().unwrap();
    let rules = std::fs::read_to_string("config/prometheus/rules.yml").unwrap();
    assert!(rules.contains(&format!("job=\"{job}\"")), "the alerts expect another job than {job}");
    assert_eq!(job, mfa_gateway::fleet::DEFAULT_JOB, "the fleet report asks another job by default");

    let policy = of_kind(&load("deploy/kubernetes/base/policy.yaml"), "NetworkPolicy");
    for pod in &pods {
        assert!(selects(&policy["spec"]["podSelector"]["matchLabels"], &pod["metadata"]["labels"]));
    }
    for rule in list(&policy["spec"]["ingress"]) {
        let admin = list(&rule["ports"]).iter().any(|p| p["port"].as_i64() == Some(9901));
        let from = list(&rule["from"]);
        if admin {
            assert!(!from.is_empty() && from.iter().all(|f| !f["namespaceSelector"].is_badvalue()), "{rule:?}");
        }
    }
}
