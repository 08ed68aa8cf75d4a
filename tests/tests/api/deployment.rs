//! The deployment files (`command-api/deploy/`: the image, the compose file, Prometheus'
//! scrape configuration) cannot run here (no container engine): this checks that every command,
//! setting, port and path they name exists in the binary and its configuration.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn read(relative: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::read_to_string(root.join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// Every `section.key` of `configuration/base.yaml`, set or shown commented out.
fn configuration_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in read("configuration/base.yaml").lines() {
        if let Some(name) = line
            .strip_suffix(':')
            .filter(|l| !l.starts_with([' ', '#']))
        {
            section = name.to_owned();
            continue;
        }
        let Some(rest) = line.strip_prefix("  ") else {
            continue;
        };
        let rest = rest.strip_prefix("# ").unwrap_or(rest);
        if let Some((key, _)) = rest.split_once(':') {
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                keys.insert(format!("{section}.{key}"));
            }
        }
    }
    keys
}

/// The words in `text` that follow `prefix` and are made of `allowed` characters.
fn words_after(text: &str, prefix: &str, allowed: impl Fn(char) -> bool) -> Vec<String> {
    text.match_indices(prefix)
        .map(|(at, _)| {
            text[at + prefix.len()..]
                .chars()
                .take_while(|c| allowed(*c))
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn every_setting_the_deployment_names_is_in_the_configuration() {
    let compose = read("command-api/deploy/compose.yaml");
    let known = configuration_keys();
    assert!(known.contains("health.port"), "{known:?}");
    let settings = words_after(&compose, "APP_", |c| {
        c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'
    });
    assert!(settings.len() >= 8, "{settings:?}");
    for setting in settings {
        let key = setting.to_ascii_lowercase().replacen("__", ".", 1);
        assert!(
            known.contains(&key),
            "APP_{setting} is not a setting ({key})"
        );
    }
    // The two read outside the APP_ prefix.
    for name in ["DATABASE_URL:", "KAFKA_BROKERS:"] {
        assert!(compose.contains(name), "{name}");
    }
    // The same in the image's environment.
    let image = read("command-api/deploy/Containerfile");
    for setting in words_after(&image, "APP_", |c| {
        c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'
    }) {
        let key = setting.to_ascii_lowercase().replacen("__", ".", 1);
        assert!(
            known.contains(&key) || ["config_dir", "environment"].contains(&key.as_str()),
            "APP_{setting} in the image is not a setting ({key})"
        );
    }
}

#[test]
fn every_command_the_deployment_runs_is_one_of_the_binary() {
    let compose = read("command-api/deploy/compose.yaml");
    let mut commands = words_after(&compose, "command: [", |c| c.is_ascii_lowercase());
    // The broker's command is a list of its own: only one-word commands are the service's.
    commands.retain(|c| compose.contains(&format!("command: [{c}]")));
    let image = read("command-api/deploy/Containerfile");
    commands.extend(words_after(&image, "CMD [\"", |c| c.is_ascii_lowercase()));
    for role in ["api", "relay", "project", "migrate"] {
        assert!(commands.iter().any(|c| c == role), "{role}: {commands:?}");
    }
    for command in commands {
        let status = Command::new(env!("CARGO_BIN_EXE_patient-service-under-test"))
            .args([command.as_str(), "--help"])
            .output()
            .unwrap()
            .status;
        assert!(status.success(), "patient-service {command}");
    }
    // The image builds the one binary, of this package, and ships the configuration.
    let manifest = read("command-api/Cargo.toml");
    assert!(manifest.contains("name = \"command-api\""));
    assert!(manifest.contains("name = \"patient-service\""));
    assert!(image.contains("-p command-api --bin patient-service"));
    assert!(image.contains("COPY configuration /etc/patient-service"));
    assert!(
        image.contains("USER 10001"),
        "the image runs without privileges"
    );
}

#[test]
fn every_port_and_path_the_deployment_probes_is_served() {
    let compose = read("command-api/deploy/compose.yaml");
    let scrape = read("command-api/deploy/prometheus.yml");
    let image = read("command-api/deploy/Containerfile");
    let base = read("configuration/base.yaml");
    // The API's port is the configured default; the roles' is health.port.
    assert!(base.contains("  port: 8080"));
    assert!(compose.contains("APP_HEALTH__PORT: \"9090\""));
    assert!(compose.contains("APP_HTTP__PORT: \"8080\""));
    assert!(image.contains("EXPOSE 8080 9090"));
    assert!(scrape.contains("port: 8080") && scrape.contains("port: 9090"));
    let document = command_api::http::openapi_document();
    for url in words_after(&compose, "http://127.0.0.1:", |c| c != '"') {
        let (port, path) = url.split_once('/').unwrap();
        assert!(["8080", "9090"].contains(&port), "{url}");
        assert!(
            document["paths"].get(format!("/{path}")).is_some(),
            "{url}: no such path"
        );
    }
    assert!(document["paths"].get("/metrics").is_some());
}
