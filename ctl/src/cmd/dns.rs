//! `veilctl dns`: what each daemon's DNS proxy opened for `domains` rules:
//! per pod, the name that allowed an address, the rule (policy and index)
//! and the time left. Read-only (`dns.allowances`).

use std::time::Duration;

use veil_api::{call, method};

use super::target::Target;

/// Arguments of `veilctl dns`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Output format: text or json.
    #[arg(long, default_value = "text")]
    output: String,
}

/// One table line of an allowance (as the daemon sends it).
pub fn format_row(node: &str, a: &serde_json::Value) -> String {
    let s = |k: &str| {
        a.get(k)
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                v => v.to_string(),
            })
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "{:<10} {:<15} {:<30} {:<15} {}#{} {}s\n",
        if node.is_empty() { "-" } else { node },
        s("pod"),
        s("name"),
        s("address"),
        s("policy"),
        s("rule"),
        s("expires_in"),
    )
}

/// Runs the command; returns the exit code.
pub fn run(args: Args) -> i32 {
    let sockets = match args.target.sockets() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("veilctl dns: {e}");
            return 2;
        }
    };
    let mut rows = Vec::new();
    let mut failed = false;
    for (node, socket) in sockets {
        let r: Result<serde_json::Value, _> = call(
            &socket,
            method::DNS_ALLOWANCES,
            &serde_json::Value::Null,
            Duration::from_secs(5),
        );
        match r {
            Ok(v) => {
                for a in v["allowances"].as_array().cloned().unwrap_or_default() {
                    rows.push((node.clone(), a));
                }
            }
            Err(e) => {
                eprintln!("veilctl dns: {e}");
                failed = true;
            }
        }
    }
    if args.output == "json" {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, a)| serde_json::json!({"node": n, "allowance": a}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "{:<10} {:<15} {:<30} {:<15} RULE LEFT",
            "NODE", "POD", "NAME", "ADDRESS"
        );
        for (n, a) in &rows {
            print!("{}", format_row(n, a));
        }
    }
    i32::from(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_names_pod_name_address_and_rule() {
        let a = serde_json::json!({"pod": "10.244.0.5", "name": "api.example.com",
            "address": "203.0.113.10", "policy": "vnp out/app", "rule": 1, "expires_in": 33});
        let r = format_row("node-a", &a);
        assert!(r.contains("api.example.com"), "{r}");
        assert!(r.contains("vnp out/app#1 33s"), "{r}");
    }
}
