//! `cairn export`: serve snapshots over NBD until stopped.

use anyhow::{Context, Result, bail};
use cairn_expose::{Export, Overlay, OverlayDisk};
use cairn_vault::{BlockSource, SnapshotDisk, Vault};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Decoded chunks kept per exported snapshot, shared by all its clients.
const EXPORT_CACHE_CHUNKS: usize = 256;

pub fn export(
    vault: &Arc<Vault>,
    specs: &[String],
    listen: &str,
    name: Option<&str>,
    overlay: Option<&Path>,
    writable: bool,
) -> Result<u8> {
    if writable != overlay.is_some() {
        bail!(
            "--writable needs --overlay PATH (writes go there, never to the vault), and --overlay needs --writable"
        );
    }
    if specs.len() > 1 && (name.is_some() || overlay.is_some()) {
        bail!("--name and --overlay go with a single snapshot");
    }
    let mut exports = Vec::new();
    for spec in specs {
        let snap = vault.resolve(spec)?;
        // NBD clients keep several reads in flight: no read-ahead.
        let disk: Arc<dyn BlockSource> = Arc::new(
            SnapshotDisk::open(vault.clone(), &snap, EXPORT_CACHE_CHUNKS)?.without_read_ahead(),
        );
        let overlay = match overlay {
            Some(p) => Some(Arc::new(
                Overlay::open(p, disk.size())
                    .with_context(|| format!("opening the overlay {}", p.display()))?,
            )),
            None => None,
        };
        exports.push(Export {
            name: name
                .map(String::from)
                .unwrap_or_else(|| format!("{}-{}", snap.name, snap.id.short())),
            disk: Arc::new(OverlayDisk {
                base: disk,
                overlay,
            }),
            description: format!(
                "{}@{} {}",
                snap.name,
                snap.id.short(),
                snap.time.to_rfc3339()
            ),
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            for e in &exports {
                writeln!(out, "nbd://{addr}/{}", e.name)?;
            }
            out.flush()?;
        }
        eprintln!(
            "serving {} export(s){}; stop with Ctrl-C",
            exports.len(),
            if writable {
                " (writes go to the overlay)"
            } else {
                " read-only"
            }
        );
        let exports = Arc::new(exports);
        tokio::select! {
            r = cairn_expose::serve(listener, exports.clone()) => r.context("serving NBD")?,
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate() => {}
        }
        for e in exports.iter() {
            if let Some(o) = &e.disk.overlay {
                o.flush().context("flushing the overlay")?;
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}
