//! The benchmarks' knobs: environment variables with defaults.

/// `name` parsed, or `default` when it is unset or does not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `name` as a comma-separated list, or `default`'s items.
#[allow(dead_code)] // not every benchmark takes a list
pub fn list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Prints a benchmark's JSON report on stdout: its name, the machine, and
/// one result per run.
pub fn print_report(benchmark: &str, results: Vec<serde_json::Value>) {
    let report = serde_json::json!({
        "benchmark": benchmark,
        "machine": {"cpus": std::thread::available_parallelism().map_or(0, |n| n.get())},
        "results": results,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
