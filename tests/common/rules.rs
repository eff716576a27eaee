//! The monitoring mixin's alerts evaluated by `promtool test rules` on series recorded from a
//! real run: a relay's `/metrics` scraped before and after a pattern becomes the input series
//! of a promtool unit test, and the alerts that fire are read back.

use std::collections::BTreeSet;
use std::process::Command;

/// The mixin's directory.
pub const MIXIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/veil/mixin");

/// Every alert the mixin defines.
pub fn alert_names() -> Vec<String> {
    let text = std::fs::read_to_string(format!("{MIXIN}/alerts.yaml")).unwrap();
    let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect()
}

/// Samples of a scrape: (series as written, value).
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            Some((series.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The input series of one relay's run: its scrape `before` and `after` a pattern that took
/// `secs`, labelled as one target. A gauge holds its value after; a counter named in
/// `sustained` goes on at the run's rate for the 40 minutes evaluated (a storm is a rate); any
/// other counter steps from its value before to its value after at the third minute (the
/// pattern happened once).
pub fn recorded(before: &str, after: &str, secs: f64, sustained: &[&str]) -> Vec<(String, String)> {
    let kinds: std::collections::HashMap<&str, &str> = after
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let was: std::collections::HashMap<String, f64> = samples(before).into_iter().collect();
    samples(after)
        .into_iter()
        .filter(|(s, _)| s.starts_with("veil_"))
        .map(|(series, v)| {
            let name = series.split(['{', ' ']).next().unwrap();
            let family = name
                .strip_suffix("_bucket")
                .or_else(|| name.strip_suffix("_sum"))
                .or_else(|| name.strip_suffix("_count"))
                .filter(|f| kinds.get(f) == Some(&"histogram"))
                .unwrap_or(name);
            let labelled = match series.split_once('{') {
                Some((n, rest)) => format!("{n}{{job=\"veil-relay\",instance=\"r1\",{rest}"),
                None => format!("{series}{{job=\"veil-relay\",instance=\"r1\"}}"),
            };
            let b = was.get(&series).copied().unwrap_or(0.0);
            let values = match kinds.get(family) {
                Some(&"counter") if sustained.contains(&family) => {
                    format!("{b}+{}x40", (v - b).max(0.0) / secs.max(0.001) * 60.0)
                }
                Some(&"counter") | Some(&"histogram") => format!("{b}x2 {v}x38"),
                _ => format!("{v}x40"),
            };
            (labelled, values)
        })
        .collect()
}

/// The alerts that fire at `at` (`14m`) on `series`: promtool tests every alert expecting none,
/// and what it reports it got instead is what fires.
pub fn firing(series: &[(String, String)], at: &str) -> BTreeSet<String> {
    let dir = std::env::temp_dir().join(format!(
        "veil-rules-{}-{}",
        std::process::id(),
        series.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!(
        "{}.yaml",
        std::thread::current()
            .name()
            .unwrap_or("t")
            .replace("::", "-")
    ));
    let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut y = format!(
        "rule_files: [{}, {}]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
        q(&format!("{MIXIN}/alerts.yaml")),
        q(&format!("{MIXIN}/rules.yaml"))
    );
    for (s, v) in series {
        y += &format!("      - series: {}\n        values: {}\n", q(s), q(v));
    }
    y += "    alert_rule_test:\n";
    for a in alert_names() {
        y += &format!("      - eval_time: {at}\n        alertname: {a}\n");
    }
    std::fs::write(&file, &y).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .expect("promtool is required: apt-get install prometheus (.ci/run installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let fired: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("alertname: "))
        .filter_map(|l| l.split(',').next())
        .map(str::to_string)
        .collect();
    assert!(
        out.status.success() || !fired.is_empty(),
        "promtool test rules failed without naming an alert:\n{text}\n{y}"
    );
    let _ = std::fs::remove_file(&file);
    fired
}
