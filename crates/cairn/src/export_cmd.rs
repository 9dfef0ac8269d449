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
    json: bool,
) -> Result<u8> {
    if writable != overlay.is_some() {
        crate::usage!(
            "--writable needs --overlay PATH (writes go there, never to the vault), and --overlay needs --writable"
        );
    }
    if specs.len() > 1 && (name.is_some() || overlay.is_some()) {
        crate::usage!("--name and --overlay go with a single snapshot");
    }
    let mut exports = Vec::new();
    for spec in specs {
        let snap = vault.resolve(spec)?;
        crate::warn_if_flagged(vault, &snap);
        // NBD clients keep several reads in flight: no read-ahead.
        let disk: Arc<dyn BlockSource> = Arc::new(
            SnapshotDisk::open(vault.clone(), &snap, EXPORT_CACHE_CHUNKS)?.without_read_ahead(),
        );
        let overlay = match overlay {
            Some(p) => Some(Arc::new(
                Overlay::open(p, disk.size(), &snap.id.0)
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
        let urls: String = if json {
            let list: Vec<_> = exports
                .iter()
                .map(|e| serde_json::json!({"name": e.name, "url": format!("nbd://{addr}/{}", e.name)}))
                .collect();
            format!("{}\n", serde_json::json!({ "exports": list }))
        } else {
            exports
                .iter()
                .map(|e| format!("nbd://{addr}/{}\n", e.name))
                .collect()
        };
        announce(&urls);
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

/// `cairn export --nfs`: one folder per snapshot with `disk.img` and
/// `snapshot.json` on an NFSv3 server.
pub fn export_nfs(
    vault: &Arc<Vault>,
    specs: &[String],
    listen: &str,
    name: Option<&str>,
    overlay_dir: Option<&Path>,
    writable: bool,
    json: bool,
) -> Result<u8> {
    if writable != overlay_dir.is_some() {
        crate::usage!(
            "--writable needs --overlay DIR (writes go there, one file per snapshot, never to the vault), and --overlay needs --writable"
        );
    }
    if specs.len() > 1 && name.is_some() {
        crate::usage!("--name goes with a single snapshot");
    }
    if let Some(d) = overlay_dir {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut exports = Vec::new();
    for spec in specs {
        let snap = vault.resolve(spec)?;
        if snap.source.kind != cairn_vault::SourceKind::Disk {
            bail!(
                "{spec} is a directory snapshot: only disks are exported (use cairn mount for files)"
            );
        }
        // NFS clients read sequentially in modest pieces: read-ahead on.
        let disk: Arc<dyn BlockSource> = Arc::new(SnapshotDisk::open(
            vault.clone(),
            &snap,
            EXPORT_CACHE_CHUNKS,
        )?);
        let folder = name
            .map(String::from)
            .unwrap_or_else(|| format!("{}-{}", snap.name, snap.id.short()));
        if folder.contains('/') || folder.is_empty() || folder.starts_with('.') {
            bail!("{folder:?} cannot be a folder name");
        }
        let overlay = match overlay_dir {
            Some(d) => {
                let p = d.join(format!("{folder}.overlay"));
                Some(Arc::new(
                    Overlay::open(&p, disk.size(), &snap.id.0)
                        .with_context(|| format!("opening the overlay {}", p.display()))?,
                ))
            }
            None => None,
        };
        let description = serde_json::to_vec_pretty(&serde_json::json!({
            "name": snap.name,
            "id": snap.id.0,
            "time": snap.time,
            "size": disk.size(),
            "source": snap.source,
            "tags": snap.tags,
            "writable": overlay.is_some(),
            "overlay": overlay_dir.map(|d| d.join(format!("{folder}.overlay"))),
        }))?;
        exports.push(cairn_expose::NfsExport {
            name: folder,
            snapshot_id: snap.id.0.clone(),
            disk: Arc::new(OverlayDisk {
                base: disk,
                overlay,
            }),
            description,
            time: (
                snap.time.timestamp().clamp(0, u32::MAX as i64) as u32,
                snap.time.timestamp_subsec_nanos(),
            ),
        });
    }
    let overlays: Vec<Arc<Overlay>> = exports
        .iter()
        .filter_map(|e| e.disk.overlay.clone())
        .collect();
    let folders: Vec<String> = exports.iter().map(|e| e.name.clone()).collect();
    let tree = cairn_expose::NfsTree::new(exports)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let addr = listen.to_string();
        let server = tokio::spawn(async move { cairn_expose::nfs::serve(&addr, tree, tx).await });
        let port = match rx.await {
            Ok(p) => p,
            Err(_) => {
                return match server.await {
                    Ok(Err(e)) => Err(anyhow::Error::new(e).context("starting the NFS server")),
                    _ => Err(anyhow::anyhow!("the NFS server did not start")),
                };
            }
        };
        let host = match listen.rsplit_once(':').map(|(h, _)| h) {
            Some("0.0.0.0") | None => "127.0.0.1",
            Some(h) => h,
        };
        let mut hint = format!(
            "nfs://{host}:{port}/\nmount -t nfs -o port={port},mountport={port},nfsvers=3,tcp,nolock {host}:/ /mnt/cairn\n"
        );
        for f in &folders {
            hint.push_str(&format!("  /{f}/disk.img\n"));
        }
        if json {
            let disks: Vec<String> = folders.iter().map(|f| format!("/{f}/disk.img")).collect();
            hint = format!(
                "{}\n",
                serde_json::json!({"url": format!("nfs://{host}:{port}/"), "port": port, "disks": disks})
            );
        }
        announce(&hint);
        eprintln!(
            "serving {} snapshot(s) over NFSv3{}; stop with Ctrl-C",
            folders.len(),
            if writable { " (writes to disk.img go to the overlay)" } else { " read-only" }
        );
        tokio::select! {
            r = server => { r.context("NFS server")?.context("serving NFS")?; }
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate() => {}
        }
        for o in &overlays {
            o.flush().context("flushing the overlay")?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}

/// Prints what a client needs, in one write: a script that reads the
/// first line and closes the pipe must neither cut the rest in half nor
/// stop the server (a closed stdout is not an error for a server).
fn announce(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}
