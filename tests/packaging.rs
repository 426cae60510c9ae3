//! Static checks of what ships around the binary: the Dockerfile, the compose
//! stack (docker-compose.yml, its portcullis config, the Keycloak realm),
//! Prometheus's scrape config and alert rules, the Grafana dashboard and the
//! systemd unit. Docker does not run where these tests run, so each file is
//! checked with the real tool that reads it (`docker-compose config`,
//! `promtool`, `systemd-analyze`, `portcullis check`) and against the code
//! (Cargo.toml, the include_str! paths, the registered metrics). A missing
//! tool is a failure that names the package to install, never a skip.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: not YAML: {e}"))
}

fn json(path: &str) -> Json {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: not JSON: {e}"))
}

/// `command` from PATH, or a failure naming the Debian package that has it
/// (scripts/setup.sh installs them all).
fn tool(command: &str, package: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(command).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{command}` is not installed: these checks need the real tool; install the \
         Debian package `{package}` (bash scripts/setup.sh does)"
    );
    let mut c = Command::new(command);
    c.current_dir(root());
    c
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} did not run: {e}"))
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Seconds of a duration written as `30s` (compose and systemd both accept it).
fn seconds(text: &str) -> u64 {
    text.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("`{text}`: expected a duration such as 30s"))
}

/// shutdown.drain_grace + shutdown.close_window at their defaults (5 s +
/// 10 s), which the compose config keeps: a stop timeout must be longer.
const DRAIN_SECONDS: u64 = 15;

fn str_of<'a>(v: &'a Yaml, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {v:?}"))
}

// ---------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------

const COMPOSE: &str = "docker-compose.yml";
const COMPOSE_CONFIG: &str = "conf/compose/portcullis.yaml";
const REALM: &str = "conf/keycloak/portcullis-realm.json";

#[test]
fn the_compose_file_validates_with_docker_compose() {
    let out = run(tool("docker-compose", "docker-compose")
        .args(["-f", COMPOSE, "config", "-q"])
        .env("PORTCULLIS_ADMIN_TOKEN", "test-token"));
    assert!(
        out.status.success(),
        "docker-compose refuses {COMPOSE}: {}",
        describe(&out)
    );
    // The admin token has no default: compose refuses to start without one.
    let out = run(tool("docker-compose", "docker-compose")
        .args(["-f", COMPOSE, "config", "-q"])
        .env_remove("PORTCULLIS_ADMIN_TOKEN"));
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("PORTCULLIS_ADMIN_TOKEN"),
        "{COMPOSE} must require PORTCULLIS_ADMIN_TOKEN: {}",
        describe(&out)
    );

    let compose = yaml(COMPOSE);
    let services = compose["services"]
        .as_mapping()
        .expect("docker-compose.yml has services");
    let names: BTreeSet<&str> = services.keys().filter_map(Yaml::as_str).collect();
    for wanted in [
        "portcullis",
        "keycloak",
        "redis",
        "backend",
        "prometheus",
        "grafana",
    ] {
        assert!(names.contains(wanted), "{COMPOSE}: no `{wanted}` service");
    }
    let grace = str_of(
        &compose["services"]["portcullis"]["stop_grace_period"],
        "stop_grace_period",
    );
    assert!(
        seconds(grace) > DRAIN_SECONDS,
        "{COMPOSE}: stop_grace_period {grace} would SIGKILL portcullis mid-drain"
    );
    // Keycloak shares portcullis's network namespace: that is what makes
    // localhost:8081 the same issuer for the browser and for portcullis.
    assert_eq!(
        compose["services"]["keycloak"]["network_mode"].as_str(),
        Some("service:portcullis"),
        "{COMPOSE}: keycloak must run in portcullis's network namespace"
    );
    for (name, service) in services {
        let name = name.as_str().unwrap();
        // Every bind-mounted file or folder exists in the repository.
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let volume = str_of(volume, "volume");
            if let Some(source) = volume.strip_prefix("./") {
                let source = source.split(':').next().unwrap();
                assert!(
                    root().join(source).exists(),
                    "{COMPOSE}: service {name} mounts ./{source}, which does not exist"
                );
            }
        }
        // Every build context has its Dockerfile.
        if let Some(context) = service["build"]["context"].as_str() {
            let dockerfile = service["build"]["dockerfile"]
                .as_str()
                .unwrap_or("Dockerfile");
            assert!(
                root().join(context).join(dockerfile).is_file(),
                "{COMPOSE}: service {name} builds {context}/{dockerfile}, which does not exist"
            );
        }
        // Published ports stay on the host's loopback.
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let port = str_of(port, "port");
            assert!(
                port.starts_with("127.0.0.1:"),
                "{COMPOSE}: service {name} publishes {port} beyond loopback"
            );
        }
    }
}

/// The value of a service's environment variable in docker-compose.yml.
fn compose_env(compose: &Yaml, service: &str, name: &str) -> Option<String> {
    compose["services"][service]["environment"][name]
        .as_str()
        .map(str::to_string)
}

/// Every `{env: NAME}` in a config.
fn env_names(v: &Yaml, out: &mut BTreeSet<String>) {
    match v {
        Yaml::Mapping(m) => {
            if m.len() == 1 {
                if let Some(name) = m.get("env").and_then(Yaml::as_str) {
                    out.insert(name.to_string());
                }
            }
            m.values().for_each(|v| env_names(v, out));
        }
        Yaml::Sequence(s) => s.iter().for_each(|v| env_names(v, out)),
        _ => {}
    }
}

fn portcullis_check(config: &str, env: &[(String, String)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, config).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    c.arg("check").arg("-c").arg(&path);
    for (k, v) in env {
        c.env(k, v);
    }
    run(&mut c)
}

#[test]
fn the_compose_portcullis_config_passes_portcullis_check() {
    let compose = yaml(COMPOSE);
    let mut config = yaml(COMPOSE_CONFIG);
    assert_eq!(
        compose["services"]["portcullis"]["volumes"][0].as_str(),
        Some("./conf/compose/portcullis.yaml:/etc/portcullis/portcullis.yaml:ro"),
        "{COMPOSE}: portcullis must get {COMPOSE_CONFIG} as its config"
    );
    // Every secret the config reads comes from the service's environment.
    let mut names = BTreeSet::new();
    env_names(&config, &mut names);
    let mut env = Vec::new();
    for name in &names {
        assert!(
            compose_env(&compose, "portcullis", name).is_some(),
            "{COMPOSE_CONFIG} reads ${name}, which {COMPOSE} does not give the portcullis service"
        );
        env.push((name.clone(), "test-value".to_string()));
    }
    // The compose config uses the store the stack is meant for.
    assert_eq!(config["sessions"]["store"].as_str(), Some("redis"));
    let redis_url = str_of(&config["sessions"]["redis"]["url"], "sessions.redis.url");
    assert!(
        redis_url.starts_with("redis://redis:6379/"),
        "{COMPOSE_CONFIG}: the store must be the compose `redis` service, not {redis_url}"
    );
    // `check` resolves upstream host names, and compose service names only
    // resolve inside the compose network: here they become 127.0.0.1.
    let upstreams = config["upstreams"]
        .as_mapping_mut()
        .expect("the compose config has upstreams");
    for (_, upstream) in upstreams.iter_mut() {
        for server in upstream["servers"].as_sequence_mut().unwrap() {
            let text = str_of(server, "upstream server").to_string();
            let port = text.rsplit_once(':').expect("host:port").1;
            *server = Yaml::String(format!("127.0.0.1:{port}"));
        }
    }
    let text = serde_yaml_ng::to_string(&config).unwrap();
    let out = portcullis_check(&text, &env);
    assert!(
        out.status.success(),
        "portcullis check refuses {COMPOSE_CONFIG} (upstream hosts as 127.0.0.1): {}",
        describe(&out)
    );
}

#[test]
fn the_keycloak_realm_matches_the_compose_portcullis_config() {
    let compose = yaml(COMPOSE);
    let config = yaml(COMPOSE_CONFIG);
    let realm = json(REALM);
    let public_url = str_of(&config["public_url"], "public_url").trim_end_matches('/');

    // The provider: Keycloak's realm on the port Keycloak listens on, in the
    // network namespace it shares with portcullis (so: localhost).
    let providers = config["providers"].as_mapping().unwrap();
    assert_eq!(providers.len(), 1, "{COMPOSE_CONFIG}: one provider");
    let provider = providers.values().next().unwrap();
    let command: Vec<&str> = compose["services"]["keycloak"]["command"]
        .as_sequence()
        .expect("keycloak has a command list")
        .iter()
        .map(|v| str_of(v, "command"))
        .collect();
    assert!(command.contains(&"start-dev") && command.contains(&"--import-realm"));
    let kc_port = command
        .iter()
        .find_map(|a| a.strip_prefix("--http-port="))
        .expect("keycloak: --http-port=PORT (8080 is portcullis's in the shared namespace)");
    let realm_name = realm["realm"].as_str().unwrap();
    assert_eq!(
        str_of(&provider["issuer"], "issuer"),
        format!("http://localhost:{kc_port}/realms/{realm_name}"),
        "{COMPOSE_CONFIG}: the issuer must be Keycloak's realm at localhost:{kc_port}"
    );
    let published: Vec<&str> = compose["services"]["portcullis"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| str_of(p, "port"))
        .collect();
    assert!(
        published.contains(&format!("127.0.0.1:{kc_port}:{kc_port}").as_str()),
        "{COMPOSE}: the browser must reach Keycloak at the issuer's localhost:{kc_port}"
    );

    // The client.
    let client_id = str_of(&provider["client_id"], "client_id");
    let clients = realm["clients"].as_array().expect("the realm has clients");
    let client = clients
        .iter()
        .find(|c| c["clientId"] == client_id)
        .unwrap_or_else(|| panic!("{REALM}: no client `{client_id}`"));
    assert_eq!(client["publicClient"], false, "a confidential client");
    assert_eq!(client["standardFlowEnabled"], true, "the code flow");
    let redirect = format!("{public_url}/.auth/callback");
    assert!(
        client["redirectUris"]
            .as_array()
            .unwrap()
            .contains(&Json::from(redirect.as_str())),
        "{REALM}: redirectUris lacks {redirect}"
    );
    assert!(
        client["webOrigins"]
            .as_array()
            .unwrap()
            .contains(&Json::from(public_url)),
        "{REALM}: webOrigins lacks {public_url}"
    );
    let attributes = &client["attributes"];
    assert_eq!(
        attributes["backchannel.logout.url"],
        format!("{public_url}/.auth/backchannel-logout"),
        "{REALM}: the back-channel logout URL is portcullis's (localhost: Keycloak shares its namespace)"
    );
    assert_eq!(attributes["backchannel.logout.session.required"], "true");
    assert_eq!(attributes["pkce.code.challenge.method"], "S256");
    // portcullis sends a same-origin `rd` back to public_url + "/".
    assert!(
        attributes["post.logout.redirect.uris"]
            .as_str()
            .unwrap_or("")
            .split("##")
            .any(|u| u == format!("{public_url}/")),
        "{REALM}: post.logout.redirect.uris lacks {public_url}/"
    );
    // The secret: one variable, given to both services with the same value.
    let secret_var = str_of(&provider["client_secret"]["env"], "client_secret.env");
    assert_eq!(
        client["secret"],
        format!("${{{secret_var}}}"),
        "{REALM}: the secret must be Keycloak's placeholder for ${secret_var}"
    );
    let for_portcullis = compose_env(&compose, "portcullis", secret_var);
    assert!(
        for_portcullis.is_some(),
        "{COMPOSE}: portcullis lacks {secret_var}"
    );
    assert_eq!(
        compose_env(&compose, "keycloak", secret_var),
        for_portcullis,
        "{COMPOSE}: keycloak and portcullis must get the same {secret_var}"
    );

    // Group names in the ID token's `groups` claim.
    let mapper = client["protocolMappers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["protocolMapper"] == "oidc-group-membership-mapper")
        .unwrap_or_else(|| panic!("{REALM}: no group membership mapper"));
    assert_eq!(mapper["config"]["claim.name"], "groups");
    assert_eq!(mapper["config"]["id.token.claim"], "true");
    assert_eq!(
        mapper["config"]["full.path"], "false",
        "group names, not paths"
    );

    // The policy admits alice (in the group), not bob.
    let required: Vec<&str> = config["messengers"]
        .as_mapping()
        .unwrap()
        .values()
        .filter_map(|m| m["authentication"]["require"]["groups_any"].as_sequence())
        .flatten()
        .map(|g| str_of(g, "groups_any"))
        .collect();
    assert_eq!(required, ["customers"], "{COMPOSE_CONFIG}: groups_any");
    let user = |name: &str| {
        realm["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == name)
            .unwrap_or_else(|| panic!("{REALM}: no user {name}"))
            .clone()
    };
    for (name, member) in [("alice", true), ("bob", false)] {
        let u = user(name);
        assert_eq!(u["enabled"], true);
        assert_eq!(u["emailVerified"], true, "{name}: email verified");
        assert!(
            u["credentials"][0]["value"].is_string() && u["credentials"][0]["temporary"] == false,
            "{name}: a permanent password"
        );
        let in_group = u["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == "/customers");
        assert_eq!(in_group, member, "{name} in /customers");
    }
    assert!(realm["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["name"] == "customers"));
}

// ---------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------

/// One Dockerfile instruction: keyword (upper case) and its arguments.
struct Instruction {
    keyword: String,
    args: String,
}

/// The Dockerfile's stages, each a list of instructions (comments dropped,
/// continuation lines joined).
fn dockerfile_stages() -> Vec<Vec<Instruction>> {
    let text = read("Dockerfile");
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push(Instruction {
                keyword,
                args: args.trim().to_string(),
            });
        }
    }
    stages
}

/// The words of a COPY: JSON form or whitespace-separated, flags dropped.
fn copy_words(args: &str) -> (Vec<String>, bool) {
    let words: Vec<String> = if args.starts_with('[') {
        serde_json::from_str(args).expect("COPY in JSON form")
    } else {
        args.split_whitespace().map(str::to_string).collect()
    };
    let from_stage = words.iter().any(|w| w.starts_with("--from="));
    let words = words.into_iter().filter(|w| !w.starts_with("--")).collect();
    (words, from_stage)
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Files under `dir` ending in `.rs`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The triple rustc builds for by default, from `rustc -vV`.
fn host_triple() -> String {
    let out = run(Command::new("rustc").arg("-vV"));
    assert!(out.status.success(), "rustc -vV: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names its host")
        .trim()
        .to_string()
}

/// Top-level paths of the repository that `cargo build --locked --release
/// --bin portcullis` reads, each with why.
fn paths_the_build_needs() -> BTreeMap<String, String> {
    let mut needed = BTreeMap::new();
    needed.insert("Cargo.toml".to_string(), "the manifest".to_string());
    needed.insert("Cargo.lock".to_string(), "--locked".to_string());
    // Filtered to the host, whose packages the build has already fetched:
    // unfiltered, `cargo metadata` resolves every platform's dependencies
    // and, offline on a fresh machine, fails on a Windows-only crate it never
    // downloaded (a CI run failed on `anstyle-wincon` so).
    let host = host_triple();
    let out = run(Command::new(env!("CARGO")).current_dir(root()).args([
        "metadata",
        "--format-version",
        "1",
        "--locked",
        "--offline",
        "--filter-platform",
        &host,
    ]));
    assert!(out.status.success(), "cargo metadata: {}", describe(&out));
    let metadata: Json = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = read("Cargo.toml");
    let top = |path: &Path| -> Option<String> {
        let relative = path.strip_prefix(root()).ok()?;
        Some(
            relative
                .components()
                .next()?
                .as_os_str()
                .to_string_lossy()
                .into_owned(),
        )
    };
    for package in metadata["packages"].as_array().unwrap() {
        if !package["source"].is_null() {
            continue; // from a registry
        }
        let manifest_path = Path::new(package["manifest_path"].as_str().unwrap());
        let name = package["name"].as_str().unwrap();
        if manifest_path != root().join("Cargo.toml") {
            // A path dependency or a [patch] entry inside the repository.
            if let Some(dir) = top(manifest_path) {
                needed.insert(
                    dir,
                    format!("the path package {name} ([patch] or path dependency)"),
                );
            }
            continue;
        }
        for target in package["targets"].as_array().unwrap() {
            let kind = target["kind"][0].as_str().unwrap();
            // Cargo checks every target the manifest declares, even when
            // building one binary; auto-discovered ones may be absent.
            let declared = match kind {
                "lib" | "bin" | "custom-build" | "proc-macro" => true,
                "bench" | "example" | "test" => manifest.contains(&format!("[[{kind}]]")),
                _ => false,
            };
            if declared {
                if let Some(dir) = top(Path::new(target["src_path"].as_str().unwrap())) {
                    needed
                        .entry(dir)
                        .or_insert_with(|| format!("the {kind} target {}", target["name"]));
                }
            }
        }
    }
    // Files compiled into the binary.
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for macro_name in ["include_str!(", "include_bytes!("] {
            for (at, _) in text.match_indices(macro_name) {
                let rest = text[at + macro_name.len()..].trim_start();
                let Some(literal) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) else {
                    panic!(
                        "{}: {macro_name} without a plain string literal; teach this test its path",
                        file.display()
                    );
                };
                let target = normalize(&file.parent().unwrap().join(literal));
                let dir = top(&target).unwrap_or_else(|| {
                    panic!("{}: {literal} is outside the repository", file.display())
                });
                needed.entry(dir).or_insert_with(|| {
                    format!(
                        "{macro_name}) of {}",
                        target.strip_prefix(root()).unwrap().display()
                    )
                });
            }
        }
    }
    needed
}

#[test]
fn the_dockerfile_copies_everything_cargo_build_needs() {
    let stages = dockerfile_stages();
    assert!(
        stages.len() >= 2,
        "Dockerfile: a build stage and a runtime stage"
    );
    let build = &stages[0];
    let mut copied = BTreeSet::new();
    for i in build.iter().filter(|i| i.keyword == "COPY") {
        let (mut words, from_stage) = copy_words(&i.args);
        assert!(
            !from_stage,
            "Dockerfile: the build stage copies from the context"
        );
        words.pop(); // the destination
        for source in words {
            let source = source.trim_start_matches("./").trim_end_matches('/');
            copied.insert(if source.is_empty() {
                ".".to_string()
            } else {
                source.to_string()
            });
        }
    }
    let needed = paths_the_build_needs();
    let missing: Vec<String> = needed
        .iter()
        .filter(|(path, _)| !copied.contains(".") && !copied.contains(path.as_str()))
        .map(|(path, why)| format!("{path} (needed for {why})"))
        .collect();
    assert!(
        missing.is_empty(),
        "the Dockerfile's build stage does not COPY: {}",
        missing.join("; ")
    );
    assert!(
        build.iter().any(|i| i.keyword == "RUN"
            && i.args
                .contains("cargo build --locked --release --bin portcullis")),
        "Dockerfile: the build line is `cargo build --locked --release --bin portcullis`"
    );
    // Nothing the build needs is excluded from the context.
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    for path in needed.keys() {
        assert!(
            !ignored.iter().any(|i| i == path || i == "*" || i == "**"),
            ".dockerignore excludes {path}, which the build needs"
        );
    }
    for wanted in ["target", "tests/e2e/node_modules", ".git"] {
        assert!(
            ignored.iter().any(|i| i == wanted),
            ".dockerignore must exclude {wanted}"
        );
    }
}

const MINIMAL: &str = r#"
listen: [{address: "{PROXY}"}]
threads: 1
admin: {address: "{ADMIN}"}
messengers:
  open: {authentication: {enabled: false}}
upstreams:
  chat: {servers: ["127.0.0.1:9"]}
deployments:
  - {id: site, messenger: open, upstream: chat, allowed_origins: ["https://www.example.com"]}
routes:
  - {path_prefix: /v1}
logging: {format: text, level: info}
"#;

#[tokio::test]
async fn the_runtime_image_runs_portcullis_unprivileged_with_a_working_health_probe() {
    let stages = dockerfile_stages();
    let runtime = stages.last().unwrap();
    let find = |keyword: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|i| i.keyword == keyword)
            .map(|i| i.args.as_str())
            .collect()
    };
    assert_eq!(find("FROM"), ["debian:bookworm-slim"]);
    let user = find("USER");
    assert!(
        user.last()
            .is_some_and(|u| !u.starts_with("root") && !u.starts_with('0')),
        "Dockerfile: the runtime stage must switch to a non-root USER, found {user:?}"
    );
    assert_eq!(find("ENTRYPOINT"), [r#"["portcullis"]"#]);
    assert_eq!(
        find("CMD"),
        [r#"["run", "-c", "/etc/portcullis/portcullis.yaml"]"#]
    );
    let exposed: Vec<&str> = find("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .collect();
    assert!(
        exposed.contains(&"8080") && exposed.contains(&"9090"),
        "EXPOSE {exposed:?}"
    );
    assert!(find("RUN").iter().any(|r| r.contains("ca-certificates")));
    // Files copied from the context into the runtime stage exist; one is
    // the health probe.
    let mut probe = None;
    for args in find("COPY") {
        let (words, from_stage) = copy_words(args);
        if from_stage {
            continue;
        }
        let (dest, sources) = words.split_last().unwrap();
        for source in sources {
            assert!(
                root().join(source).exists(),
                "Dockerfile: COPY {source}: no such file"
            );
            if source.contains("healthcheck") {
                probe = Some((source.clone(), dest.clone()));
            }
        }
    }
    let (probe_source, probe_dest) =
        probe.expect("Dockerfile: the runtime stage copies a health probe");
    let healthcheck = find("HEALTHCHECK");
    assert!(
        healthcheck.len() == 1 && healthcheck[0].contains(&format!("CMD [\"{probe_dest}\"]")),
        "Dockerfile: HEALTHCHECK must run {probe_dest}, found {healthcheck:?}"
    );

    // The probe, run as the image runs it, against a live admin listener.
    let proxy = Proxy::start(MINIMAL).await;
    let probe_at = |addr: String| {
        let mut c = tool("bash", "bash");
        c.arg(&probe_source).env("PORTCULLIS_HEALTH_ADDR", addr);
        run(&mut c)
    };
    let out = probe_at(proxy.admin.to_string());
    assert!(
        out.status.success(),
        "the probe against a live portcullis: {}",
        describe(&out)
    );
    // Against the proxy listener, /healthz is no route: not healthy.
    let out = probe_at(proxy.addr.to_string());
    assert!(
        !out.status.success(),
        "the probe must want a 200 from /healthz"
    );
    let (_dead, port) = refused_port();
    let out = probe_at(format!("127.0.0.1:{port}"));
    assert!(
        !out.status.success(),
        "the probe against a closed port must fail"
    );
}

// ---------------------------------------------------------------------------
// Metrics named by the dashboard and the alert rules
// ---------------------------------------------------------------------------

/// A metric family registered in src/metrics.rs.
#[derive(Debug)]
struct Family {
    histogram: bool,
    labels: BTreeSet<String>,
}

/// The families src/metrics.rs registers. A running portcullis cannot say:
/// the `prometheus` crate leaves a labelled family out of /metrics until it
/// has a first sample, and many (session store, back-channel logouts, JWKS)
/// only get one with a provider or a store around. So the registrations
/// are read from the source, and the live output checks this reading.
fn registered_families() -> BTreeMap<String, Family> {
    let text = read("src/metrics.rs");
    let mut families = BTreeMap::new();
    let starts: Vec<usize> = text
        .match_indices("\"portcullis_")
        .map(|(i, _)| i)
        .collect();
    for (n, &at) in starts.iter().enumerate() {
        let name: String = text[at + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let before = text[..at].trim_end();
        let histogram = before.ends_with("histogram(");
        // The label list: the first &[...] after the name, before the next name.
        let end = starts.get(n + 1).copied().unwrap_or(text.len());
        let span = &text[at..end];
        let labels = span
            .find("&[")
            .map(|open| {
                let list = &span[open + 2..];
                let list = &list[..list.find(']').unwrap()];
                list.split(',')
                    .map(|l| l.trim().trim_matches('"').to_string())
                    .filter(|l| !l.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        families.insert(name, Family { histogram, labels });
    }
    families
}

/// Each metric named in a PromQL text (or prose), with the label names of
/// the `{...}` matcher right after it, if any.
fn metric_references(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("portcullis_") {
        let preceded_by_word = text[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if preceded_by_word {
            continue;
        }
        let name: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let rest = &text[at + name.len()..];
        let mut labels = Vec::new();
        if let Some(matchers) = rest.strip_prefix('{') {
            let matchers = &matchers[..matchers.find('}').unwrap_or(0)];
            for m in matchers.split(',') {
                let label: String = m
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !label.is_empty() {
                    labels.push(label);
                }
            }
        }
        out.push((name, labels));
    }
    out
}

/// The family a sample name belongs to (histograms export _bucket, _sum
/// and _count), if registered.
fn family_of<'a>(
    name: &str,
    families: &'a BTreeMap<String, Family>,
) -> Option<(&'a String, &'a Family, bool)> {
    if let Some((k, f)) = families.get_key_value(name) {
        return Some((k, f, false));
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some((k, f)) = families.get_key_value(base) {
                if f.histogram {
                    return Some((k, f, suffix == "_bucket"));
                }
            }
        }
    }
    None
}

#[tokio::test]
async fn the_dashboard_and_alerts_name_only_metrics_portcullis_exports() {
    let families = registered_families();
    assert!(
        families.len() >= 20,
        "src/metrics.rs: read only {} families",
        families.len()
    );

    // The reading of src/metrics.rs agrees with a live portcullis.
    let backend = start_backend().await;
    let proxy = Proxy::start(&MINIMAL.replace("127.0.0.1:9", &backend.to_string())).await;
    reqwest::get(proxy.url("/v1?deploymentId=site"))
        .await
        .unwrap();
    let live = proxy
        .metrics_when(std::time::Duration::from_secs(5), |t| {
            t.contains("portcullis_request_duration_seconds_bucket")
        })
        .await;
    let mut seen = 0;
    for line in live.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        if !name.starts_with("portcullis_") {
            continue; // process_* from the prometheus crate's process collector
        }
        let family = families.get(name).unwrap_or_else(|| {
            panic!("/metrics exports {name}, which this test did not find in src/metrics.rs")
        });
        assert_eq!(family.histogram, kind == "histogram", "{name}: {kind}");
        seen += 1;
    }
    assert!(seen >= 3, "too few families in the live output:\n{live}");
    for line in live
        .lines()
        .filter(|l| l.starts_with("portcullis_requests_total{"))
    {
        for label in &families["portcullis_requests_total"].labels {
            assert!(
                line.contains(&format!("{label}=\"")),
                "{line} lacks {label}"
            );
        }
    }

    let mut problems = Vec::new();
    let mut named = BTreeSet::new();
    let mut check = |source: &str, text: &str| {
        for (name, labels) in metric_references(text) {
            named.insert(name.clone());
            let Some((family_name, family, bucket)) = family_of(&name, &families) else {
                problems.push(format!(
                    "{source}: {name} is not a metric portcullis exports"
                ));
                continue;
            };
            for label in labels {
                let known = family.labels.contains(&label) || (bucket && label == "le");
                if !known {
                    problems.push(format!(
                        "{source}: {name} has no label `{label}` ({family_name} has {:?})",
                        family.labels
                    ));
                }
            }
        }
    };
    let dashboard = json("conf/grafana/portcullis.json");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has no queries");
    for expr in &exprs {
        check("conf/grafana/portcullis.json", expr);
    }
    check(
        "conf/prometheus/alerts.yml",
        &read("conf/prometheus/alerts.yml"),
    );
    assert!(
        problems.is_empty(),
        "metrics that portcullis does not export:\n  {}",
        problems.join("\n  ")
    );
    // What the dashboard and the alerts are for.
    for wanted in [
        "portcullis_handshakes_total",
        "portcullis_auth_duration_seconds_bucket",
        "portcullis_active_connections",
        "portcullis_forced_closes_total",
        "portcullis_jwks_age_seconds",
        "portcullis_provider_ready",
        "portcullis_token_cache_total",
        "portcullis_logins_total",
        "portcullis_token_api_requests_total",
        "portcullis_session_store_operations_total",
        "portcullis_session_store_operation_seconds_bucket",
        "portcullis_backchannel_logouts_total",
        "portcullis_requests_total",
    ] {
        assert!(
            named.contains(wanted),
            "neither the dashboard nor the alerts use {wanted}"
        );
    }
}

fn collect_exprs(v: &Json, out: &mut Vec<String>) {
    match v {
        Json::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Json::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Json::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Grafana and Prometheus
// ---------------------------------------------------------------------------

fn datasource_uids(v: &Json, out: &mut Vec<String>) {
    match v {
        Json::Object(m) => {
            if let Some(ds) = m.get("datasource") {
                out.push(ds["uid"].as_str().unwrap_or("(none)").to_string());
            }
            m.values().for_each(|v| datasource_uids(v, out));
        }
        Json::Array(a) => a.iter().for_each(|v| datasource_uids(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_is_provisioned_with_the_prometheus_datasource() {
    let dashboard = json("conf/grafana/portcullis.json");
    assert!(
        dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "the dashboard needs a uid"
    );
    let datasources = yaml("conf/grafana/provisioning/datasources/prometheus.yml");
    let ds = &datasources["datasources"][0];
    assert_eq!(ds["type"].as_str(), Some("prometheus"));
    assert_eq!(ds["url"].as_str(), Some("http://prometheus:9090"));
    let uid = str_of(&ds["uid"], "datasource uid");
    let mut uids = Vec::new();
    datasource_uids(&dashboard, &mut uids);
    let panels = dashboard["panels"].as_array().unwrap();
    let queried = panels.iter().filter(|p| p["targets"].is_array()).count();
    assert!(queried >= 10, "only {queried} panels with queries");
    assert!(
        !uids.is_empty() && uids.iter().all(|u| u == uid),
        "every panel and query must use the provisioned datasource uid `{uid}`: {uids:?}"
    );
    let ids: BTreeSet<i64> = panels.iter().map(|p| p["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");

    // The provider's folder is where compose mounts the dashboard.
    let provider = yaml("conf/grafana/provisioning/dashboards/portcullis.yml");
    let folder = str_of(&provider["providers"][0]["options"]["path"], "path");
    let compose = yaml(COMPOSE);
    let mounts: Vec<&str> = compose["services"]["grafana"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| str_of(v, "volume"))
        .collect();
    assert!(
        mounts.contains(
            &format!("./conf/grafana/portcullis.json:{folder}/portcullis.json:ro").as_str()
        ),
        "{COMPOSE}: grafana must mount the dashboard into {folder}: {mounts:?}"
    );
    assert!(mounts.contains(&"./conf/grafana/provisioning:/etc/grafana/provisioning:ro"));
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    // --syntax-only: the credentials file exists only inside the container.
    let out = run(tool("promtool", "prometheus").args([
        "check",
        "config",
        "--syntax-only",
        "conf/prometheus/prometheus.yml",
    ]));
    assert!(
        out.status.success(),
        "promtool check config: {}",
        describe(&out)
    );
    let out =
        run(tool("promtool", "prometheus").args(["check", "rules", "conf/prometheus/alerts.yml"]));
    assert!(
        out.status.success(),
        "promtool check rules: {}",
        describe(&out)
    );
    let out = run(tool("promtool", "prometheus")
        .current_dir(root().join("conf/prometheus"))
        .args(["test", "rules", "alerts.test.yml"]));
    assert!(
        out.status.success(),
        "promtool test rules: {}",
        describe(&out)
    );

    let prometheus = yaml("conf/prometheus/prometheus.yml");
    for file in prometheus["rule_files"].as_sequence().unwrap() {
        let file = str_of(file, "rule_files");
        assert!(
            root().join("conf/prometheus").join(file).is_file(),
            "prometheus.yml: rule file {file} does not exist"
        );
    }
    // The scrape target is portcullis's admin listener on the compose network.
    let job = &prometheus["scrape_configs"][0];
    let target = str_of(&job["static_configs"][0]["targets"][0], "target");
    let admin = yaml(COMPOSE_CONFIG)["admin"]["address"].clone();
    let admin_port = str_of(&admin, "admin.address").rsplit_once(':').unwrap().1;
    assert_eq!(target, format!("portcullis:{admin_port}"));
    assert_eq!(job["authorization"]["type"].as_str(), Some("Bearer"));
    let compose = yaml(COMPOSE);
    let prometheus_command = format!("{:?}", compose["services"]["prometheus"]["command"]);
    let credentials = str_of(
        &job["authorization"]["credentials_file"],
        "credentials_file",
    );
    assert!(
        prometheus_command.contains(credentials),
        "{COMPOSE}: the prometheus service must write the admin token to {credentials}"
    );
    assert_eq!(
        compose_env(&compose, "prometheus", "PORTCULLIS_ADMIN_TOKEN"),
        compose_env(&compose, "portcullis", "PORTCULLIS_ADMIN_TOKEN")
    );
}

// ---------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = read("conf/systemd/portcullis.service");
    let directives: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let value = |key: &str| -> Vec<&str> {
        directives
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    for (key, wanted) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("LimitNOFILE", "65536"),
        ("CapabilityBoundingSet", ""),
        ("DynamicUser", "yes"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("ReadOnlyPaths", "/etc/portcullis"),
    ] {
        assert_eq!(
            value(key),
            [wanted],
            "conf/systemd/portcullis.service: {key}"
        );
    }
    let stop = value("TimeoutStopSec");
    assert!(
        stop.len() == 1 && seconds(stop[0]) > DRAIN_SECONDS,
        "TimeoutStopSec {stop:?} would SIGKILL portcullis mid-drain"
    );
    assert_eq!(
        value("ExecStart"),
        ["/usr/local/bin/portcullis run -c /etc/portcullis/portcullis.yaml"]
    );

    // systemd-analyze checks that the binary exists: point it at this build.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/portcullis",
            env!("CARGO_BIN_EXE_portcullis"),
        ),
    )
    .unwrap();
    let out = run(tool("systemd-analyze", "systemd").arg("verify").arg(&path));
    // Unknown keys and bad values are only warnings (exit 0): any output fails.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {}",
        describe(&out)
    );
}
