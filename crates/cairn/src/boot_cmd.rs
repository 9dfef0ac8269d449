//! `cairn boot`: boot a snapshot in the isolated environment
//! (`cairn_expose::boot`) and print the verdict.

use anyhow::Result;
pub use cairn_expose::boot::{BootOptions, boot_check};
use cairn_vault::Vault;
use std::sync::Arc;

pub fn boot(
    vault: &Arc<Vault>,
    spec: &str,
    o: &BootOptions,
    json: bool,
    quiet: bool,
) -> Result<u8> {
    let snap = vault.resolve(spec)?;
    // A boot takes up to the timeout with nothing to show until it ends:
    // say what is being waited for, so it does not look hung.
    if !json && !quiet {
        eprintln!(
            "booting {}@{} in an isolated QEMU; waiting up to {} s for {} ...",
            snap.name,
            snap.id.short(),
            o.timeout,
            match (&o.expect, o.probe) {
                (Some(text), _) => format!("{text:?} on the console"),
                (None, Some(port)) => format!("port {port} to answer"),
                (None, None) => "the guest to come up".into(),
            }
        );
    }
    let report = boot_check(vault, &snap, o)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} {} ({}, {:.1} s): {}{}",
            report.snapshot,
            report.result,
            report.accel,
            report.seconds,
            report.reason,
            if report.console_log.is_empty() {
                String::new()
            } else {
                format!("; console: {}", report.console_log)
            }
        );
    }
    Ok(if report.result == "booted" { 0 } else { 3 })
}
