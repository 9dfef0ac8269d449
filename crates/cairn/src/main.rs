//! The `cairn` command: parse, call a library, print.

mod boot_cmd;
mod export_cmd;
mod guest_cmds;
mod insight_cmd;
mod mount_cmd;
mod scan_cmd;
mod util;

use anyhow::{Context, Result, bail};
use cairn_ingest::{BackupOptions, Progress};
use cairn_recover::{DiskRestoreOptions, TreeRestoreOptions};
use cairn_vault::prune::KeepPolicy;
use cairn_vault::{
    InitOptions, Location, S3InitOptions, Snapshot, SnapshotDisk, SourceKind, Vault,
};
use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use util::{Bar, bytes, parse_duration, password};

/// Exit code for "something was found" (damage, an anomaly, a hit).
pub(crate) const FOUND: u8 = 3;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Ransomware recovery: immutable snapshots of VM disks and file trees, and the way back"
)]
struct Cli {
    /// The vault directory.
    #[arg(
        long,
        env = "CAIRN_VAULT",
        global = true,
        help_heading = "Global options"
    )]
    vault: Option<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,
    /// Less output: no progress bars, and a rollback prints only its
    /// summary (no line per file).
    #[arg(long, short, global = true, help_heading = "Global options")]
    quiet: bool,
    /// --vault was given on the command line (not only through
    /// CAIRN_VAULT, which may well be set on a host that also backs up
    /// through a server).
    #[arg(skip)]
    vault_given: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new vault.
    Init {
        /// Minimum time every object is kept, e.g. 30d or 6mo (nothing is deleted
        /// sooner; units s, min, h, d, w, mo, y).
        #[arg(long, default_value = "30d")]
        retention: String,
        /// Fixed chunk size for disks, in KiB (a multiple of 64, up to 4096).
        #[arg(long, default_value_t = 128,
              value_parser = clap::value_parser!(u32).range(64..=4096))]
        disk_chunk_kib: u32,
        /// Target size of pack objects, in MiB (1 to 1024).
        #[arg(long, default_value_t = 16,
              value_parser = clap::value_parser!(u32).range(1..=1024))]
        pack_mib: u32,
        /// zstd level for compressible data (1 to 19).
        #[arg(long, default_value_t = 1,
              value_parser = clap::value_parser!(i32).range(1..=19))]
        compression_level: i32,
        /// S3: create the bucket, with versioning and Object Lock.
        #[arg(long)]
        create_bucket: bool,
        /// S3: accept a bucket without Object Lock (nothing then stops a
        /// stolen key from deleting the vault).
        #[arg(long)]
        no_lock: bool,
    },
    /// Back up a disk image, block device, qcow2 image or directory.
    ///
    /// Exit 0: saved, and insight found nothing. Exit 3: saved, but the
    /// snapshot looks suspicious or compromised, or some files could not
    /// be read (the warning says which). Exit 1: nothing saved.
    Backup {
        /// A raw disk image, block device, qcow2 image or directory.
        source: PathBuf,
        /// The snapshot name (one per source: later backups of it are incremental).
        #[arg(long)]
        name: String,
        /// When the data is from (RFC 3339); default now.
        #[arg(long, value_parser = parse_time)]
        time: Option<chrono::DateTime<chrono::Utc>>,
        /// A label kept with the snapshot (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Back up through a Cairn server (`cairn serve`) instead of
        /// --vault: only chunks the server lacks are sent.
        #[arg(long, requires = "token")]
        server: Option<String>,
        /// The agent token for --server.
        #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// List snapshots.
    Snapshots { name: Option<String> },
    /// Restore a snapshot: a disk to a file or block device, a directory to a
    /// directory; with NAME@SNAP:/path, just those files.
    Restore {
        /// NAME@latest, NAME@-N or NAME@<id prefix>, optionally :/path.
        snapshot: String,
        /// Partition to read files from (default: the largest readable).
        #[arg(long)]
        partition: Option<u32>,
        /// Where to: a new image file or a block device for disks (an existing
        /// disk with --delta), a new or empty folder for directories and paths
        /// (a single file given a new name is written under that name; into a
        /// folder that exists, under its own).
        #[arg(long)]
        to: PathBuf,
        /// Replace an existing image file (or write over a block device),
        /// restore a directory snapshot into a non-empty folder, or put one
        /// file (NAME@SNAP:/path/file) in place of the one there.
        #[arg(long)]
        overwrite: bool,
        /// Read a restored disk back and compare it with the snapshot.
        #[arg(long)]
        verify: bool,
        /// Bring an existing disk image or device to the snapshot by
        /// writing only the blocks that differ.
        #[arg(long)]
        delta: bool,
        /// Check the target and say what would be written; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --delta: the target has not changed since this later
        /// snapshot was taken of it, so its digests are compared instead
        /// of reading the target (found by itself when the latest snapshot
        /// was read from this very file and the file is untouched since).
        #[arg(long, requires = "delta")]
        since: Option<String>,
        /// With --delta: let a target file of another size than the
        /// snapshot's disk be cut or grown to it (refused otherwise: a
        /// target of the wrong size is usually the wrong file).
        #[arg(long, requires = "delta")]
        resize: bool,
        /// Give restored files back their setuid and setgid bits (and file
        /// capabilities). Left out by default: a snapshot's program, a
        /// hostile guest's or one planted before the backup, must not
        /// become a privileged program on the machine restored to.
        #[arg(long)]
        keep_setid: bool,
    },
    /// Least-data-loss rollback: the newest snapshot, with every file the
    /// attack damaged taken from before the damage and every file it
    /// created left out; writes a provenance manifest.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["to_dir", "in_place"])))]
    Rollback {
        /// The source name (its newest snapshot is the starting point).
        name: String,
        /// Write the rolled-back tree into this new or empty directory.
        #[arg(long, conflicts_with = "in_place")]
        to_dir: Option<PathBuf>,
        /// Repair a directory source where it lives: only damaged files
        /// are replaced, attack-created ones removed.
        #[arg(long)]
        in_place: Option<PathBuf>,
        /// Count damage from this snapshot on (default: after the clean point).
        #[arg(long)]
        since: Option<String>,
        /// Partition of a disk snapshot (default: the largest readable).
        #[arg(long)]
        partition: Option<u32>,
        /// Where to write the provenance manifest (default: beside the target).
        #[arg(long)]
        provenance: Option<PathBuf>,
        /// Say what would be written and dropped; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Give files back their setuid and setgid bits (left out by
        /// default, as by restore).
        #[arg(long)]
        keep_setid: bool,
        /// Do not scan the newest snapshot first when no scan of it is
        /// stored (files only a scan recognises as planted, a startup
        /// script, are then kept).
        #[arg(long)]
        no_scan: bool,
    },
    /// Check the vault; with --read-data decrypt and re-hash every chunk.
    Verify {
        /// Also decrypt and re-hash every chunk (reads the whole vault).
        #[arg(long)]
        read_data: bool,
    },
    /// Forget snapshots that a keep policy does not keep (never pinned ones,
    /// never before their retention ends).
    Forget {
        /// Only these snapshot names (default: all).
        names: Vec<String>,
        /// Keep the newest N snapshots.
        #[arg(long)]
        keep_last: Option<usize>,
        /// Keep everything this close to the newest snapshot, e.g. 7d or 3mo
        /// (units s, min, h, d, w, mo, y).
        #[arg(long)]
        keep_within: Option<String>,
        /// Keep the newest snapshot of each of the last N hours that have one.
        #[arg(long)]
        keep_hourly: Option<usize>,
        /// Keep the newest snapshot of each of the last N days that have one.
        #[arg(long)]
        keep_daily: Option<usize>,
        /// Keep the newest snapshot of each of the last N weeks that have one.
        #[arg(long)]
        keep_weekly: Option<usize>,
        /// Keep the newest snapshot of each of the last N months that have one.
        #[arg(long)]
        keep_monthly: Option<usize>,
        /// Keep the newest snapshot of each of the last N years that have one.
        #[arg(long)]
        keep_yearly: Option<usize>,
        /// Say what would be forgotten; forget nothing.
        #[arg(long)]
        dry_run: bool,
        /// Prune right after.
        #[arg(long)]
        prune: bool,
        /// Accept as lost the snapshots whose manifests were deleted
        /// outside Cairn or cannot be read (those `verify` names; prune
        /// stops while there are any): prune may then delete what only
        /// they used.
        #[arg(long)]
        missing: bool,
    },
    /// Delete data no snapshot uses, once its retention has ended.
    Prune {
        /// Say what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the partitions of a disk snapshot and their filesystems.
    Partitions { snapshot: String },
    /// List files in a snapshot: NAME@SNAP:/path.
    Ls {
        /// NAME@SNAP:/path (a bare NAME@SNAP lists the top folder).
        path: String,
        /// Long listing: mode, owner, size, mtime.
        #[arg(short = 'l')]
        long: bool,
        /// Everything below the path.
        #[arg(short = 'R')]
        recursive: bool,
        /// Partition number (default: the largest readable; see `cairn partitions`).
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Print a file from a snapshot: NAME@SNAP:/path/file.
    Cat {
        /// NAME@SNAP:/path/file.
        path: String,
        /// Partition number (default: the largest readable; see `cairn partitions`).
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Change rate, entropy, file signals, score and verdict of every
    /// snapshot of a source, and the last clean point.
    ///
    /// Exit 3 when a snapshot is suspicious or compromised.
    Timeline {
        /// The source name.
        name: String,
        /// Also draw the timeline as an SVG chart.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Files added, deleted, modified and renamed between two snapshots.
    Diff {
        /// The earlier snapshot (NAME@SNAP).
        old: String,
        /// The later snapshot (NAME@SNAP).
        new: String,
        /// Partition number (default: the largest readable; see `cairn partitions`).
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Serve snapshots as NBD block devices (QEMU boots them directly), or
    /// with --nfs as raw disk files on an NFSv3 server (for hypervisors
    /// that attach NFS datastores); prints the URL first, then serves until
    /// stopped.
    Export {
        /// Snapshots to serve (NAME@SNAP), each as its own export.
        #[arg(required = true)]
        snapshots: Vec<String>,
        /// Default 127.0.0.1:10809 (NBD) or 127.0.0.1:11111 (NFS).
        #[arg(long)]
        listen: Option<String>,
        /// Export name (default NAME-ID).
        #[arg(long)]
        name: Option<String>,
        /// Accept writes, into --overlay (never into the vault).
        #[arg(long)]
        writable: bool,
        /// Copy-on-write overlay: a file for NBD, a folder for NFS (one
        /// file per snapshot); kept across restarts.
        #[arg(long)]
        overlay: Option<PathBuf>,
        /// Serve over NFSv3 instead of NBD.
        #[arg(long)]
        nfs: bool,
    },
    /// Mount a snapshot read-only with FUSE: the guest's files, or with
    /// --disk the raw disk as disk.img. Runs until stopped.
    Mount {
        /// The snapshot to mount (NAME@SNAP).
        snapshot: String,
        /// An existing empty folder.
        mountpoint: PathBuf,
        /// Show the raw disk as disk.img instead of the guest's files.
        #[arg(long)]
        disk: bool,
        /// Partition number (default: the largest readable; see `cairn partitions`).
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Boot a snapshot in an isolated QEMU (no network by default) and say
    /// whether it booted: exit 0 booted, 3 failed.
    Boot {
        /// The snapshot to boot (NAME@SNAP).
        snapshot: String,
        /// Keep the guest's writes here (default: a temporary overlay).
        #[arg(long)]
        overlay: Option<PathBuf>,
        #[command(flatten)]
        boot: BootArgs,
        /// Where to keep the serial console log.
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// Scan a snapshot without trusting it: malware (YARA rules),
    /// persistence and tampering against the previous clean snapshot, and
    /// vulnerable packages. Exit 3 when anything is found.
    Scan {
        /// NAME@latest, NAME@-N or NAME@<id prefix>; several, or a bare
        /// NAME for every snapshot of it (then --json prints a list).
        #[arg(required = true)]
        snapshots: Vec<String>,
        /// Operator YARA rules, added to Cairn's: a folder of *.yar and
        /// *.yara files, or one rule file.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Partition number (default: the largest readable; see `cairn partitions`).
        #[arg(long)]
        partition: Option<u32>,
    },
    /// The offline vulnerability database (OSV advisories).
    Vulndb {
        #[command(subcommand)]
        action: VulndbAction,
    },
    /// Find the newest recovery point that passes every check, walking
    /// back from just before the first suspicious snapshot.
    Recover {
        /// The source name.
        name: String,
        /// Walk back to the newest clean point (the only mode so far).
        #[arg(long, required = true)]
        find_clean: bool,
        /// Operator YARA rules, added to Cairn's: a folder of *.yar and
        /// *.yara files, or one rule file.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Partition number (default: the largest readable; see `cairn partitions`).
        #[arg(long)]
        partition: Option<u32>,
        /// Accept a point whose worst finding is a warning.
        #[arg(long)]
        accept_warnings: bool,
        /// Also boot each candidate in the isolated environment (the boot
        /// options below say how to recognise a good boot).
        #[arg(long)]
        boot_check: bool,
        #[command(flatten)]
        boot: BootArgs,
    },
    /// Save a snapshot plus the writes in its recovery overlay as a new
    /// snapshot derived from it (the remediated state).
    Commit {
        /// The snapshot the overlay was written over (NAME@SNAP).
        snapshot: String,
        /// The overlay file written by `cairn export --writable --overlay`.
        #[arg(long)]
        overlay: PathBuf,
        /// Name of the new snapshot (default: the base's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Bring back an S3 vault whose objects were deleted (`aws s3 rm
    /// --recursive` by someone holding the keys) or overwritten (garbage or
    /// a re-encrypted copy put over them): Object Lock kept every version;
    /// the delete markers on top are taken away and Cairn's original
    /// versions copied back on top. Needs the bucket's credentials, not the
    /// vault's password.
    Undelete,
    /// Copy snapshots to another vault (local or s3://) that lacks them:
    /// only the missing objects, each verified, manifests last (an
    /// interrupted run resumes). A new target becomes a replica (same id
    /// and keys); verdicts and pins come along.
    Replicate {
        /// Source vault (default: --vault / CAIRN_VAULT).
        #[arg(long)]
        from: Option<String>,
        /// Target vault: a directory or s3://BUCKET/PREFIX.
        #[arg(long)]
        to: String,
        /// Only the snapshots of these names.
        names: Vec<String>,
        /// S3 target: create the bucket with versioning and Object Lock.
        #[arg(long)]
        create_bucket: bool,
        /// S3 target: accept a bucket without Object Lock.
        #[arg(long)]
        no_lock: bool,
    },
    /// Serve the vault over HTTP(S): the API agents back up through (they
    /// can only add), the operators' API and web console, the scheduler,
    /// /metrics. Prints the URL first, then serves until stopped.
    Serve {
        /// Default 127.0.0.1:8080 (or `listen` in the config).
        #[arg(long)]
        listen: Option<String>,
        /// TOML: listen, tls_cert/tls_key, webhook, [[source]] policies.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// API tokens for `cairn serve` (stored hashed beside the vault).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// The server's audit log: list it, or verify its hash chain (exit 3
    /// when it is broken).
    Audit {
        #[command(subcommand)]
        action: Option<AuditAction>,
    },
    /// Pin a snapshot: it is never forgotten.
    Pin { snapshot: String },
    /// Unpin a snapshot.
    Unpin { snapshot: String },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token; prints it as the last line (it is not shown again).
    Create {
        /// agent (append-only), operator or admin.
        #[arg(long)]
        role: String,
        /// Agent tokens: a source name it may back up (repeat; '*' for any).
        #[arg(long = "source")]
        sources: Vec<String>,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check the hash chain; exit 3 when an entry was edited, removed or moved.
    Verify,
}

#[derive(Subcommand)]
enum VulndbAction {
    /// Import OSV advisories: a zip as OSV publishes per ecosystem (for
    /// example Debian/all.zip) or a folder of .json records.
    Import { path: PathBuf },
    /// How many advisories are imported, per ecosystem.
    Status,
}

/// How the isolated environment boots a snapshot and judges the boot.
#[derive(clap::Args, Clone)]
struct BootArgs {
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long, default_value = "console=ttyS0")]
    append: String,
    #[arg(long, default_value = "512M")]
    memory: String,
    /// none: no network device; restricted: user networking with no
    /// route out (only forwarded ports reach the guest).
    #[arg(long, default_value = "none")]
    network: String,
    /// Console text that means the boot worked.
    #[arg(long)]
    expect: Option<String>,
    /// Guest TCP port that answers when the boot worked.
    #[arg(long)]
    probe: Option<u16>,
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

impl BootArgs {
    fn options(&self, overlay: Option<PathBuf>, log: Option<PathBuf>) -> boot_cmd::BootOptions {
        boot_cmd::BootOptions {
            overlay,
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            append: self.append.clone(),
            memory: self.memory.clone(),
            network: self.network.clone(),
            expect: self.expect.clone(),
            probe: self.probe,
            timeout: self.timeout,
            log,
        }
    }
}

/// Buffers of up to 32 MiB (8 MiB read pieces, decoded chunks, packs) come
/// from the heap and are reused there, instead of each being mapped
/// fresh and paid for with a page fault per 4 KiB on first touch (costly
/// in a VM). glibc raises its threshold this way by itself after freeing
/// one such mapping, but only after, and only to that mapping's size.
fn keep_large_buffers_in_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator tunables; called before any
    // thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// `println!` panics when stdout cannot be written (a full disk, a file
/// closed under it): that is reported like any other error, on one line
/// with exit 1, instead of a crash with a backtrace. A broken pipe never
/// gets here: commands that only print die of SIGPIPE, and the others
/// report it the same way.
fn report_unwritable_output() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") {
            eprintln!("error: {msg}");
            std::process::exit(1);
        }
        // A guest filesystem reader that panicked on crafted structures:
        // the guard reports it as an error naming the partition.
        if cairn_guest::in_guarded_reader() {
            tracing::debug!(
                "a filesystem reader panicked on damaged structures: {msg} ({})",
                info.location().map(|l| l.to_string()).unwrap_or_default()
            );
            return;
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    keep_large_buffers_in_the_heap();
    report_unwritable_output();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            // The FAT reader warns about legal but unusual boot sectors
            // (mkfs.vfat's own defaults), the FUSE library about requests
            // a read-only mount does not serve (xattrs, ioctls) and about
            // an unmount already done: not the operator's concern.
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| "warn,fatfs=error,fuser=error".into()),
        )
        .init();
    let matches = <Cli as clap::CommandFactory>::command()
        .try_get_matches()
        .unwrap_or_else(|e| usage_exit(e));
    let mut cli =
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli.vault_given = given_on_command_line(&matches, "vault");
    // Commands that only print die quietly when their reader goes away
    // (`cairn snapshots | head`), like other tools, instead of panicking
    // on a broken pipe. Every other command keeps SIGPIPE ignored: a
    // server's client, or clamd on a scan's socket, hanging up must be an
    // error to handle, not the end of the process.
    let only_prints = matches!(
        cli.command,
        Command::Snapshots { .. }
            | Command::Ls { .. }
            | Command::Cat { .. }
            | Command::Diff { .. }
            | Command::Timeline { .. }
            | Command::Partitions { .. }
            | Command::Audit { .. }
    );
    if only_prints {
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // Commands that give a snapshot's data back: when the vault cannot,
    // because an object is damaged, that is damage found (exit 3, as
    // `verify` says it). Elsewhere 3 means a result with findings (a
    // backup made but incomplete, a scan that found something), which a
    // command that failed is not. (Verify too: damage is its finding,
    // and a damaged config or key stops it early.)
    let gives_data_back = matches!(
        cli.command,
        Command::Restore { .. }
            | Command::Cat { .. }
            | Command::Verify { .. }
            | Command::Rollback { .. }
    );
    let json = cli.json;
    let result = run(cli).and_then(|code| {
        // Output still buffered is written now, and failing to is an error.
        std::io::Write::flush(&mut std::io::stdout())
            .context("writing the output")
            .map(|()| code)
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            // (A request that does not fit the snapshot — a partition of
            // a directory snapshot, one the disk lacks, a disk's view of
            // files — is a mistake in the command line too.)
            let usage = e.downcast_ref::<util::Usage>().is_some()
                || e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<cairn_vault::Error>(),
                        Some(cairn_vault::Error::BadSpec(_) | cairn_vault::Error::WrongKind(_))
                    ) || matches!(
                        c.downcast_ref::<cairn_guest::GuestError>(),
                        Some(
                            cairn_guest::GuestError::Invalid(_)
                                | cairn_guest::GuestError::Vault(cairn_vault::Error::WrongKind(_))
                        )
                    )
                });
            let code = if usage {
                2
            } else if gives_data_back && caused_by_damage(&e) {
                FOUND
            } else {
                1
            };
            // A script asking for JSON gets its answer as JSON, failures
            // too (stderr keeps the line for a person).
            if json {
                println!(
                    "{}",
                    serde_json::json!({"error": error_chain(&e), "exit_code": code})
                );
            }
            ExitCode::from(code)
        }
    }
}

/// A command line clap refused: said as clap says it, and, when the
/// line asks for `--json`, as JSON on stdout too (a script's parser
/// would otherwise meet an empty answer).
fn usage_exit(e: clap::Error) -> ! {
    use clap::error::ErrorKind::*;
    let informational = matches!(
        e.kind(),
        DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !informational && std::env::args_os().any(|a| a == "--json") {
        let text = e.render().to_string();
        let first = text
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ");
        println!("{}", json!({"error": first, "exit_code": 2}));
    }
    e.exit()
}

/// `--time`: RFC 3339, with a clear word for the usual slip (no zone).
fn parse_time(s: &str) -> std::result::Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            format!(
                "{s:?} is not an RFC 3339 time with its zone ({e}); for example 2026-11-20T18:00:00Z or 2026-11-20T19:00:00+01:00"
            )
        })
}

/// Whether a damaged object in the vault is behind `e` (however deep: I/O
/// errors carry the vault's error inside them through readers).
fn caused_by_damage(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| cairn_vault::error::damage_in(c).is_some())
}

/// `--create-bucket` and `--no-lock` say something only of a bucket: given
/// for another kind of vault they are a mistake, said as one (exit 2),
/// not ignored.
fn s3_options_only_for_s3(loc: &Location, create_bucket: bool, no_lock: bool) -> Result<()> {
    if !matches!(loc, Location::S3(_)) && (create_bucket || no_lock) {
        let which = if create_bucket {
            "--create-bucket"
        } else {
            "--no-lock"
        };
        return Err(util::Usage(format!(
            "{which} is for a vault on S3 (s3://BUCKET/PREFIX); a local vault has no bucket"
        ))
        .into());
    }
    Ok(())
}

/// Whether option `id` was typed on the command line, at the top or in
/// the subcommand (a global option can be in either).
fn given_on_command_line(m: &clap::ArgMatches, id: &str) -> bool {
    use clap::parser::ValueSource;
    m.value_source(id) == Some(ValueSource::CommandLine)
        || m.subcommand()
            .is_some_and(|(_, sub)| given_on_command_line(sub, id))
}

/// The error and its causes on one line, leaving out a cause whose text
/// the message already holds (the vault's errors print their source).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn vault_path(cli: &Cli) -> Result<PathBuf> {
    cli.vault
        .clone()
        .context("no vault given: pass --vault DIR or set CAIRN_VAULT")
}

/// The vault's location: a directory, or `s3://BUCKET/PREFIX`.
fn location(cli: &Cli) -> Result<Location> {
    let path = vault_path(cli)?;
    Ok(Location::parse(&path.to_string_lossy())?)
}

fn open(cli: &Cli) -> Result<Arc<Vault>> {
    let loc = location(cli)?;
    if let Location::Local(path) = &loc
        && !path.join("config").is_file()
    {
        // Say so before asking for a password.
        return Err(cairn_vault::Error::NotAVault { path: path.clone() }.into());
    }
    Ok(Arc::new(Vault::open_at(&loc, &password(false)?)?))
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("json"));
}

/// Commands that read snapshot data hold the vault's lock shared while
/// they run, so a prune (which holds it exclusively) cannot delete data
/// under an export, a mount or a restore.
fn reading_lock(cli: &Cli) -> Result<Option<cairn_vault::lock::VaultLock>> {
    let reads = matches!(
        cli.command,
        Command::Restore { .. }
            | Command::Rollback { .. }
            | Command::Verify { .. }
            | Command::Partitions { .. }
            | Command::Ls { .. }
            | Command::Cat { .. }
            | Command::Diff { .. }
            | Command::Timeline { .. }
            | Command::Export { .. }
            | Command::Mount { .. }
            | Command::Boot { .. }
            | Command::Commit { .. }
            | Command::Scan { .. }
            | Command::Recover { .. }
    );
    match location(cli) {
        Ok(Location::Local(path)) if reads && path.join("config").is_file() => {
            Ok(Some(cairn_vault::lock::VaultLock::shared(&path)?))
        }
        Ok(loc @ Location::S3(_)) if reads => {
            // This machine's lock beside the bucket (no lock spans hosts).
            let dir = loc.local_dir();
            std::fs::create_dir_all(dir.join("locks"))
                .with_context(|| format!("creating {}", dir.display()))?;
            Ok(Some(cairn_vault::lock::VaultLock::shared(&dir)?))
        }
        _ => Ok(None),
    }
}

fn run(cli: Cli) -> Result<u8> {
    let _reading = reading_lock(&cli)?;
    match &cli.command {
        Command::Init {
            retention,
            disk_chunk_kib,
            pack_mib,
            compression_level,
            create_bucket,
            no_lock,
        } => {
            let loc = location(&cli)?;
            let opts = InitOptions {
                disk_chunk_size: disk_chunk_kib
                    .checked_mul(1024)
                    .context("chunk size too large")?,
                pack_size: pack_mib
                    .checked_mul(1 << 20)
                    .context("pack size too large")?,
                compression_level: *compression_level,
                retention_secs: parse_duration("--retention", retention)?
                    .num_seconds()
                    .max(0) as u64,
            };
            s3_options_only_for_s3(&loc, *create_bucket, *no_lock)?;
            if let Location::Local(path) = &loc
                && path.join("config").exists()
            {
                return Err(cairn_vault::Error::AlreadyAVault { path: path.clone() }.into());
            }
            let v = Vault::init_at(
                &loc,
                &password(true)?,
                &opts,
                &S3InitOptions {
                    create_bucket: *create_bucket,
                    no_lock: *no_lock,
                },
            )?;
            if cli.json {
                print_json(v.config());
            } else {
                println!(
                    "created vault {} at {}{}",
                    v.config().id,
                    v.backend().describe(),
                    if v.config().object_lock {
                        " (every object under Object Lock, compliance mode)"
                    } else {
                        ""
                    }
                );
            }
            Ok(0)
        }
        Command::Backup {
            source,
            name,
            time,
            tags,
            server,
            token,
        } => match server {
            Some(_) if cli.vault_given => {
                usage!("--server and --vault do not go together: a backup goes to one vault")
            }
            Some(url) => remote_backup(&cli, source, name, *time, tags, url, token.as_deref()),
            None => backup(&cli, source, name, *time, tags),
        },
        Command::Serve { listen, config } => serve(&cli, listen.as_deref(), config.as_deref()),
        Command::Token { action } => token(&cli, action),
        Command::Audit { action } => audit(&cli, action.as_ref()),
        Command::Snapshots { name } => snapshots(&cli, name.as_deref()),
        Command::Restore {
            snapshot,
            partition,
            to,
            overwrite,
            verify,
            delta,
            dry_run,
            since,
            resize,
            keep_setid,
        } => {
            if *delta {
                if snapshot.contains(':') || partition.is_some() || *overwrite {
                    usage!(
                        "--delta restores a whole disk snapshot over an existing disk (no :/path, --partition or --overwrite)"
                    );
                }
                let opts = DeltaFlags {
                    verify: *verify,
                    dry_run: *dry_run,
                    resize: *resize,
                };
                return restore_delta(&cli, snapshot, to, opts, since.as_deref());
            }
            if snapshot.contains(':') {
                if *verify || *dry_run {
                    usage!("--verify and --dry-run apply to whole-snapshot restores");
                }
                let vault = open(&cli)?;
                outside_vault(&vault, to)?;
                guest_cmds::restore_files(
                    &vault,
                    snapshot,
                    to,
                    *partition,
                    *keep_setid,
                    *overwrite,
                    cli.json,
                )
            } else {
                if partition.is_some() {
                    usage!("--partition applies to file restores (NAME@SNAP:/path)");
                }
                restore(
                    &cli,
                    snapshot,
                    to,
                    *overwrite,
                    *verify,
                    *dry_run,
                    *keep_setid,
                )
            }
        }
        Command::Partitions { snapshot } => {
            guest_cmds::partitions(&open(&cli)?, snapshot, cli.json)
        }
        Command::Ls {
            path,
            long,
            recursive,
            partition,
        } => guest_cmds::ls(&open(&cli)?, path, *long, *recursive, *partition, cli.json),
        Command::Cat { path, partition } => {
            if cli.json {
                usage!(
                    "cat writes the file's bytes as they are: --json does not apply (`cairn ls --json` describes the file)"
                );
            }
            guest_cmds::cat(&open(&cli)?, path, *partition)
        }
        Command::Export {
            snapshots,
            listen,
            name,
            writable,
            overlay,
            nfs,
        } => {
            let serve = if *nfs {
                export_cmd::export_nfs
            } else {
                export_cmd::export
            };
            let default_listen = if *nfs {
                "127.0.0.1:11111"
            } else {
                "127.0.0.1:10809"
            };
            serve(
                &open(&cli)?,
                snapshots,
                listen.as_deref().unwrap_or(default_listen),
                name.as_deref(),
                overlay.as_deref(),
                *writable,
                cli.json,
            )
        }
        Command::Mount {
            snapshot,
            mountpoint,
            disk,
            partition,
        } => mount_cmd::mount(&open(&cli)?, snapshot, mountpoint, *disk, *partition),
        Command::Boot {
            snapshot,
            overlay,
            boot,
            log,
        } => boot_cmd::boot(
            &open(&cli)?,
            snapshot,
            &boot.options(overlay.clone(), log.clone()),
            cli.json,
            cli.quiet,
        ),
        Command::Scan {
            snapshots,
            rules,
            partition,
        } => scan_cmd::scan(
            &open(&cli)?,
            snapshots,
            rules.as_deref(),
            *partition,
            cli.json,
            cli.quiet,
        ),
        Command::Vulndb { action } => match action {
            VulndbAction::Import { path } => scan_cmd::vulndb_import(&open(&cli)?, path, cli.json),
            VulndbAction::Status => scan_cmd::vulndb_status(&open(&cli)?, cli.json),
        },
        Command::Recover {
            name,
            find_clean: _,
            rules,
            partition,
            accept_warnings,
            boot_check,
            boot,
        } => scan_cmd::find_clean(
            &{
                // Said before the walk starts, not at its first boot.
                if *boot_check {
                    cairn_expose::boot::check_options(&boot.options(None, None))
                        .context("--boot-check")?;
                }
                open(&cli)?
            },
            name,
            &scan_cmd::FindClean {
                rules: rules.as_deref(),
                partition: *partition,
                accept_warnings: *accept_warnings,
                boot: boot_check.then(|| boot.options(None, None)),
            },
            cli.json,
            cli.quiet,
        ),
        Command::Commit {
            snapshot,
            overlay,
            name,
        } => commit(&cli, snapshot, overlay, name.as_deref()),
        Command::Diff {
            old,
            new,
            partition,
        } => guest_cmds::diff(&open(&cli)?, old, new, *partition, cli.json),
        Command::Rollback {
            name,
            to_dir,
            in_place,
            since,
            partition,
            provenance,
            dry_run,
            keep_setid,
            no_scan,
        } => insight_cmd::rollback(
            &{
                let vault = open(&cli)?;
                for target in [to_dir, in_place].into_iter().flatten() {
                    outside_vault(&vault, target)?;
                }
                vault
            },
            name,
            insight_cmd::RollbackTarget {
                to_dir: to_dir.as_deref(),
                in_place: in_place.as_deref(),
            },
            since.as_deref(),
            *partition,
            provenance.as_deref(),
            cairn_recover::rollback::RollbackOptions {
                dry_run: *dry_run,
                keep_setid: *keep_setid,
            },
            !*no_scan,
            cli.json,
            cli.quiet,
        ),
        Command::Timeline { name, svg } => {
            insight_cmd::timeline(&open(&cli)?, name, svg.as_deref(), cli.json, cli.quiet)
        }
        Command::Verify { read_data } => verify(&cli, *read_data),
        Command::Forget {
            names,
            keep_last,
            keep_within,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            dry_run,
            prune,
            missing,
        } => {
            let vault = open(&cli)?;
            let policy = KeepPolicy {
                last: *keep_last,
                within: keep_within
                    .as_deref()
                    .map(|w| parse_duration("--keep-within", w))
                    .transpose()?,
                hourly: *keep_hourly,
                daily: *keep_daily,
                weekly: *keep_weekly,
                monthly: *keep_monthly,
                yearly: *keep_yearly,
            };
            if *missing {
                if *dry_run || !names.is_empty() || !policy.is_empty() {
                    usage!(
                        "--missing takes no names, policy or --dry-run: `cairn verify` names what it would accept as lost"
                    );
                }
                let lost = vault.accept_missing()?;
                let pr = if *prune {
                    Some(cairn_vault::prune::prune(&vault, false)?)
                } else {
                    None
                };
                if cli.json {
                    print_json(&json!({"accepted_missing": lost, "prune": pr}));
                } else {
                    for m in &lost {
                        println!(
                            "lost    {} (named by {})",
                            m.id.get(..8).unwrap_or(&m.id),
                            m.named_by
                        );
                    }
                    println!(
                        "accepted {} missing or unreadable snapshot(s) as lost{}",
                        lost.len(),
                        if lost.is_empty() || pr.is_some() {
                            ""
                        } else {
                            "; prune may now delete what only they used"
                        }
                    );
                    if let Some(p) = pr {
                        print_prune(&p, false);
                    }
                }
                return Ok(0);
            }
            if policy.is_empty() {
                usage!(
                    "this policy keeps nothing: give at least one --keep-* option above zero (forgetting everything is not a policy)"
                );
            }
            let r = cairn_vault::prune::forget(&vault, names, &policy, *dry_run)?;
            let pr = if *prune && !*dry_run {
                Some(cairn_vault::prune::prune(&vault, false)?)
            } else {
                None
            };
            if cli.json {
                print_json(&json!({"forget": r, "prune": pr}));
            } else {
                let verb = if *dry_run { "would forget" } else { "forgot" };
                for d in &r.kept {
                    println!(
                        "keep    {} {} {} ({})",
                        &d.id[..8],
                        d.name,
                        d.time,
                        d.reasons.join(", ")
                    );
                }
                for d in &r.retained {
                    println!(
                        "retain  {} {} {} ({})",
                        &d.id[..8],
                        d.name,
                        d.time,
                        d.reasons.join(", ")
                    );
                }
                for d in &r.forgotten {
                    println!("forget  {} {} {}", &d.id[..8], d.name, d.time);
                }
                let pinned = r
                    .kept
                    .iter()
                    .filter(|d| d.reasons.iter().any(|w| w.contains("pinned")))
                    .count();
                println!(
                    "{verb} {} snapshot(s); kept {}{}; {} still under retention",
                    r.forgotten.len(),
                    r.kept.len(),
                    if pinned > 0 {
                        format!(" ({pinned} of them pinned)")
                    } else {
                        String::new()
                    },
                    r.retained.len()
                );
                if let Some(p) = pr {
                    print_prune(&p, false);
                }
            }
            Ok(0)
        }
        Command::Undelete => {
            let Location::S3(l) = location(&cli)? else {
                return Err(util::Usage(
                    "undelete is for a vault on S3 (s3://BUCKET/PREFIX): a local vault's files are not kept after a delete".into(),
                )
                .into());
            };
            let client = cairn_vault::s3::S3Client::new(l.clone())?;
            let back = client.undelete()?;
            // Markers first: an object deleted and overwritten has its
            // newest version current again before the originals are looked for.
            let restored = client.restore_overwritten()?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "undeleted": back, "overwritten_restored": restored })
                );
            } else if back.is_empty() && restored.is_empty() {
                println!(
                    "{}: nothing was deleted or overwritten (no delete markers on top of any object, no write-once object with a newer version)",
                    l.url()
                );
            } else {
                if !back.is_empty() {
                    println!(
                        "{}: {} objects brought back (their delete markers taken away)",
                        l.url(),
                        back.len()
                    );
                }
                if !restored.is_empty() {
                    println!(
                        "{}: {} overwritten objects put back as Cairn wrote them (their original version copied on top)",
                        l.url(),
                        restored.len()
                    );
                }
                println!("`cairn verify --read-data` checks the vault");
            }
            Ok(0)
        }
        Command::Replicate {
            from,
            to,
            names,
            create_bucket,
            no_lock,
        } => {
            let from = match from {
                Some(f) => Location::parse(f)?,
                None => location(&cli)?,
            };
            let to = Location::parse(to)?;
            s3_options_only_for_s3(&to, *create_bucket, *no_lock)?;
            if let (Ok(a), Ok(b)) = (
                std::fs::canonicalize(from.local_dir()),
                std::fs::canonicalize(to.local_dir()),
            ) && a == b
            {
                usage!("--to names the vault being replicated: give another place");
            }
            let pass = password(false)?;
            let src = Vault::open_at(&from, &pass)?;
            let dst = if Vault::exists_at(&to)? {
                Vault::open_at(&to, &pass)?
            } else {
                Vault::create_replica(
                    &src,
                    &to,
                    &pass,
                    &S3InitOptions {
                        create_bucket: *create_bucket,
                        no_lock: *no_lock,
                    },
                )?
            };
            let _reading = cairn_vault::lock::VaultLock::shared(src.root())?;
            let quiet = cli.quiet || cli.json;
            let r = cairn_vault::replicate::replicate(&src, &dst, names, &mut |s| {
                if !quiet {
                    eprintln!(
                        "copying {}@{} ({})",
                        s.name,
                        s.id.short(),
                        s.time.format("%Y-%m-%d %H:%M")
                    );
                }
            })?;
            if cli.json {
                print_json(&r);
            } else {
                println!(
                    "{} snapshot(s) copied to {} ({} already there): {} objects, {}; {} objects the target had",
                    r.snapshots_copied.len(),
                    dst.backend().describe(),
                    r.snapshots_present,
                    r.objects_copied,
                    bytes(r.bytes_copied),
                    r.objects_present
                );
            }
            Ok(0)
        }
        Command::Prune { dry_run } => {
            let vault = open(&cli)?;
            let r = cairn_vault::prune::prune(&vault, *dry_run)?;
            if cli.json {
                print_json(&r);
            } else {
                print_prune(&r, *dry_run);
            }
            Ok(0)
        }
        Command::Pin { snapshot } | Command::Unpin { snapshot } => {
            let vault = open(&cli)?;
            let s = vault.resolve(snapshot)?;
            let pin = matches!(cli.command, Command::Pin { .. });
            if pin {
                if vault.pins()?.contains(&s.id) {
                    eprintln!("note: {}@{} was pinned already", s.name, s.id.short());
                }
                vault.pin(&s.id)?;
            } else {
                if !vault.pins()?.contains(&s.id) {
                    eprintln!("note: {}@{} was not pinned", s.name, s.id.short());
                }
                vault.unpin(&s.id)?;
                // Pinned by insight for a reason: said, so an operator
                // thinning the history does not lose the way back by mistake.
                if let Ok(t) = cairn_scan::verified_timeline(&vault, &s.name)
                    && let Some(c) = &t.clean_point
                    && c.index + 1 < t.entries.len()
                    && t.entries[c.index].snapshot.id == s.id
                {
                    eprintln!(
                        "warning: {}@{} is the clean point of {} (the newest clean snapshot before the ones found suspicious or compromised): `forget` can now remove it, and with it the way back",
                        s.name,
                        s.id.short(),
                        s.name
                    );
                }
            }
            if cli.json {
                print_json(&json!({"id": s.id, "name": s.name, "pinned": pin}));
            } else {
                println!(
                    "{} {}@{}",
                    if pin { "pinned" } else { "unpinned" },
                    s.name,
                    s.id.short()
                );
            }
            Ok(0)
        }
    }
}

fn print_prune(r: &cairn_vault::prune::PruneReport, dry_run: bool) {
    let verb = if dry_run { "would delete" } else { "deleted" };
    println!(
        "{verb} {} unused pack(s) ({}; of forgotten snapshots or of backups that did not finish), {} map(s) and {} record(s); {} unused pack(s) ({}) kept until their retention ends; {} pack(s) in use",
        r.packs_deleted,
        bytes(r.bytes_deleted),
        r.maps_deleted,
        r.records_deleted,
        r.packs_retained,
        bytes(r.bytes_retained),
        r.packs_in_use
    );
    if r.uploads_aborted > 0 {
        println!(
            "aborted {} upload(s) that killed backups left unfinished",
            r.uploads_aborted
        );
    }
    if r.chunks_missing > 0 {
        eprintln!(
            "warning: snapshots refer to {} chunk(s) that no index lists (an index object lost or damaged?): the {} pack(s) without an index, which may hold them, were kept; `cairn verify` names the snapshots that miss them",
            r.chunks_missing, r.unindexed_kept
        );
    }
}

fn snapshot_json(
    s: &Snapshot,
    parent_time: Option<chrono::DateTime<chrono::Utc>>,
) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("json");
    let m = &s.metrics;
    let obj = v.as_object_mut().expect("object");
    obj.insert("short_id".into(), json!(s.id.short()));
    obj.insert("size".into(), json!(m.logical_size));
    obj.insert("changed_bytes".into(), json!(m.changed_bytes));
    obj.insert("new_bytes_stored".into(), json!(m.new_bytes_stored));
    obj.insert(
        "change_rate_bytes_per_hour".into(),
        json!(s.change_rate(parent_time)),
    );
    v
}

fn backup(
    cli: &Cli,
    source: &Path,
    name: &str,
    time: Option<chrono::DateTime<chrono::Utc>>,
    tags: &[String],
) -> Result<u8> {
    let vault = open(cli)?;
    let out = run_backup(cli, &vault, source, name, time, tags)?;
    // Score the new snapshot; a failure here must not hide that the
    // backup itself succeeded.
    let insight = cairn_insight::assess_latest(&vault, name, Some(source), |t| {
        cairn_scan::verification_of(&vault, t)
    });
    match &insight {
        Ok(o) => print_backup(cli, &out, Some(insight_cmd::outcome_json(o))),
        Err(_) => print_backup(cli, &out, None),
    }
    let code = match insight {
        Ok(o) => insight_cmd::report(&o, cli.json),
        Err(e) => {
            eprintln!("warning: the snapshot was saved, but insight could not score it: {e}");
            0
        }
    };
    Ok(code.max(incomplete(&out.snapshot)))
}

/// 3 when entries of the source could not be read (the snapshot was saved
/// without them, or with their earlier content), after saying so: a
/// script must not take such a snapshot for the whole source.
fn incomplete(s: &Snapshot) -> u8 {
    let n = s.metrics.unreadable_count;
    if n == 0 {
        return 0;
    }
    eprintln!(
        "warning: {}@{} is incomplete: {n} entr{} of the source could not be read (listed above and in `cairn snapshots {} --json` as \"unreadable\")",
        s.name,
        s.id.short(),
        if n == 1 { "y" } else { "ies" },
        s.name
    );
    3
}

/// A backup through `cairn serve`: the vault's key is unwrapped here
/// (the password never leaves this machine), chunk ids are offered to the
/// server and only the missing chunks go up. The server scores the new
/// snapshot itself.
fn remote_backup(
    cli: &Cli,
    source: &Path,
    name: &str,
    time: Option<chrono::DateTime<chrono::Utc>>,
    tags: &[String],
    url: &str,
    token: Option<&str>,
) -> Result<u8> {
    let token = token.context("--server needs --token (or CAIRN_TOKEN)")?;
    let loc = Location::Server(cairn_vault::remote::ServerLocation {
        url: url.to_string(),
        token: token.to_string(),
    });
    if let Location::Server(l) = &loc
        && cairn_vault::remote::RemoteBackend::new(l.clone())?.may_back_up(name)? == Some(false)
    {
        // Said before anything is uploaded, not when the manifest is.
        bail!(
            "this token may not back up {name:?} on {url}: back up with an agent token made with --source {name}"
        );
    }
    let vault = Vault::open_at(&loc, &password(false)?)?;
    let out = run_backup(cli, &vault, source, name, time, tags)?;
    let record = server_verdict(&vault, &out.snapshot.id);
    let insight = record.as_ref().map(|r| {
        json!({
            "score": r.assessment.score,
            "verdict": r.assessment.verdict,
            "reasons": r.assessment.reasons,
            "scored_by": "server",
        })
    });
    print_backup(cli, &out, insight);
    let s = &out.snapshot;
    let code = match record {
        Some(r) if r.assessment.verdict != cairn_insight::Verdict::Clean => {
            eprintln!(
                "warning: {}@{} looks {} (score {:.2}, scored by the server):",
                s.name,
                s.id.short(),
                r.assessment.verdict.as_str().to_uppercase(),
                r.assessment.score
            );
            for why in &r.assessment.reasons {
                eprintln!("  - {why}");
            }
            eprintln!(
                "  the server pins the last clean point; see `cairn timeline {}` there",
                s.name
            );
            3
        }
        Some(r) => {
            if !cli.json {
                println!(
                    "  insight (on the server): clean (score {:.2})",
                    r.assessment.score
                );
            }
            0
        }
        None => {
            eprintln!(
                "note: the server has not scored {}@{} yet; its verdict will be in its timeline",
                s.name,
                s.id.short()
            );
            0
        }
    };
    Ok(code.max(incomplete(s)))
}

/// How a restore names a committed snapshot's base (empty for others).
fn made_from(snap: &Snapshot) -> String {
    snap.derived_from
        .as_ref()
        .map(|b| format!(" (made by cairn commit from {})", b.short()))
        .unwrap_or_default()
}

/// The server scores an agent's snapshot in the background: its record,
/// waited for up to `CAIRN_VERDICT_WAIT_SECS` (30 s by default).
fn server_verdict(vault: &Vault, id: &cairn_vault::SnapshotId) -> Option<cairn_insight::Record> {
    let wait = std::env::var("CAIRN_VERDICT_WAIT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30u64);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    loop {
        if let Some(r) = cairn_insight::load(vault, id) {
            return Some(r);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// One backup into `vault` with a progress bar on a terminal.
fn run_backup(
    cli: &Cli,
    vault: &Vault,
    source: &Path,
    name: &str,
    time: Option<chrono::DateTime<chrono::Utc>>,
    tags: &[String],
) -> Result<cairn_ingest::BackupOutcome> {
    let progress = Arc::new(Progress::default());
    let bar = Bar::start(progress.clone(), "backup", cli.quiet || cli.json);
    let out = cairn_ingest::backup(
        vault,
        source,
        &BackupOptions {
            name: name.to_string(),
            time,
            tags: tags.to_vec(),
        },
        &progress,
    );
    drop(bar);
    Ok(out?)
}

fn server_state_dir(cli: &Cli) -> Result<PathBuf> {
    cairn_server::state_dir(&location(cli)?)
}

fn serve(cli: &Cli, listen: Option<&str>, config: Option<&Path>) -> Result<u8> {
    let config = match config {
        Some(p) => cairn_server::config::ServerConfig::load(p)?,
        None => Default::default(),
    };
    let vault = open(cli)?;
    let addr = listen
        .map(str::to_string)
        .or_else(|| config.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let st = cairn_server::AppState::new(vault, server_state_dir(cli)?, config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let bound = listener.local_addr()?;
        if st.tokens.list()?.iter().all(|t| t.revoked) {
            eprintln!(
                "no tokens yet: create one with `cairn token create --role admin` (agents: --role agent --source NAME)"
            );
        }
        println!("{scheme}://{bound}");
        use std::io::Write;
        std::io::stdout().flush()?;
        cairn_server::serve(st, listener).await
    })?;
    Ok(0)
}

fn token(cli: &Cli, action: &TokenAction) -> Result<u8> {
    let loc = location(cli)?;
    if !Vault::exists_at(&loc)? {
        bail!(
            "{}: not a Cairn vault (no config found); tokens belong to a vault's server",
            loc.local_dir().display()
        );
    }
    let dir = server_state_dir(cli)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tokens = cairn_server::tokens::Tokens::new(&dir);
    let audit = cairn_server::audit::AuditLog::new(&dir);
    match action {
        TokenAction::Create {
            role,
            sources,
            label,
        } => {
            let Ok(role) = cairn_server::tokens::Role::parse(role) else {
                usage!("unknown role {role:?}: use agent, operator or admin");
            };
            if role == cairn_server::tokens::Role::Agent && sources.is_empty() {
                usage!(
                    "an agent token needs the sources it may back up (--source NAME, or '*' for any)"
                );
            }
            if let Some(Err(e)) = sources
                .iter()
                .filter(|s| *s != "*")
                .map(|s| cairn_vault::snapshot::check_name(s))
                .find(Result::is_err)
            {
                usage!("--source: {e}");
            }
            if role != cairn_server::tokens::Role::Agent && !sources.is_empty() {
                // Operators and admins see every source; a limit that is
                // not enforced must not look like one.
                usage!(
                    "--source limits agent tokens only; {} tokens reach every source",
                    role.as_str()
                );
            }
            let (rec, secret) = tokens.create(role, sources.clone(), label)?;
            audit.append(
                "local",
                "admin",
                "token create",
                &format!("{} {}", rec.id, role.as_str()),
                "ok",
            )?;
            if cli.json {
                print_json(
                    &json!({"id": rec.id, "role": rec.role, "sources": rec.sources, "token": secret}),
                );
            } else {
                println!(
                    "token {} ({}{})",
                    rec.id,
                    role.as_str(),
                    if rec.sources.is_empty() {
                        String::new()
                    } else {
                        format!(" for {}", rec.sources.join(", "))
                    }
                );
                println!("{secret}");
            }
        }
        TokenAction::List => {
            let list = tokens.list()?;
            if cli.json {
                print_json(&list.iter().map(|t| json!({"id": t.id, "role": t.role, "sources": t.sources, "label": t.label, "created": t.created, "revoked": t.revoked})).collect::<Vec<_>>());
            } else {
                if list.is_empty() {
                    eprintln!("no tokens (create one with `cairn token create --role admin`)");
                }
                for t in list {
                    println!(
                        "{} {:8} {:20} {} {}{}",
                        t.id,
                        t.role.as_str(),
                        t.sources.join(","),
                        t.created.format("%Y-%m-%d %H:%M"),
                        t.label,
                        if t.revoked { " (revoked)" } else { "" }
                    );
                }
            }
        }
        TokenAction::Revoke { id } => {
            if !tokens.revoke(id)? {
                bail!("no active token {id} (see `cairn token list`)");
            }
            audit.append("local", "admin", "token revoke", id, "ok")?;
            if cli.json {
                print_json(&json!({ "revoked": id }));
            } else {
                println!("revoked {id}");
            }
        }
    }
    Ok(0)
}

fn audit(cli: &Cli, action: Option<&AuditAction>) -> Result<u8> {
    let dir = server_state_dir(cli)?;
    let log = cairn_server::audit::AuditLog::new(&dir);
    match action {
        Some(AuditAction::Verify) => {
            // Against the vault's checkpoints too, when it opens.
            let log = match open(cli) {
                Ok(vault) => log.anchored_in(vault),
                Err(e) => {
                    eprintln!(
                        "warning: the vault could not be opened ({e}): the log is checked on its own, not against the checkpoints the vault holds"
                    );
                    log
                }
            };
            audit_verify(cli, &log)
        }
        None => {
            let entries = log.entries()?;
            if cli.json {
                print_json(&entries);
            } else {
                if entries.is_empty() {
                    eprintln!("the audit log is empty");
                }
                for e in entries {
                    println!(
                        "{:>5} {} {} {:8} {} {} {}",
                        e.seq,
                        e.time.format("%Y-%m-%d %H:%M:%S"),
                        e.actor,
                        e.role,
                        e.action,
                        e.target,
                        e.outcome
                    );
                }
            }
            Ok(0)
        }
    }
}

fn audit_verify(cli: &Cli, log: &cairn_server::audit::AuditLog) -> Result<u8> {
    match log.verify()? {
        Ok(n) => {
            if cli.json {
                print_json(&json!({"ok": true, "entries": n}));
            } else {
                println!("audit log intact: {n} entries, hash chain verified");
            }
            Ok(0)
        }
        Err(b) => {
            if cli.json {
                print_json(&json!({"ok": false, "line": b.line, "reason": b.reason}));
            } else {
                println!("audit log BROKEN at line {}: {}", b.line, b.reason);
            }
            Ok(FOUND)
        }
    }
}

fn commit(cli: &Cli, spec: &str, overlay: &Path, name: Option<&str>) -> Result<u8> {
    let vault = open(cli)?;
    let base = vault.resolve(spec)?;
    if !overlay.is_file() {
        bail!(
            "{}: no such overlay (it is made by `cairn export --writable --overlay`)",
            overlay.display()
        );
    }
    let disk: Arc<dyn cairn_vault::BlockSource> =
        Arc::new(SnapshotDisk::open(vault.clone(), &base, 64)?);
    let ovl = cairn_expose::Overlay::open(overlay, disk.size(), &base.id.0)
        .with_context(|| format!("opening the overlay {}", overlay.display()))?;
    let view = Arc::new(cairn_expose::OverlayDisk {
        base: disk,
        overlay: Some(Arc::new(ovl)),
    });
    let progress = Arc::new(Progress::default());
    let bar = Bar::start(progress.clone(), "commit", cli.quiet || cli.json);
    let opts = BackupOptions {
        name: name.unwrap_or(&base.name).to_string(),
        time: None,
        tags: vec![],
    };
    let out = cairn_ingest::commit(&vault, view, &base, &opts, &progress);
    drop(bar);
    print_backup(cli, &out?, None);
    Ok(0)
}

/// Warnings printed one by one; past these, a count (a share of thousands
/// of unreadable entries would bury the summary). `--json` has them all.
const WARNINGS_SHOWN: usize = 20;

fn print_backup(cli: &Cli, out: &cairn_ingest::BackupOutcome, insight: Option<serde_json::Value>) {
    for w in out.warnings.iter().take(WARNINGS_SHOWN) {
        eprintln!("warning: {w}");
    }
    if out.warnings.len() > WARNINGS_SHOWN {
        eprintln!(
            "warning: … and {} more (every one in `cairn backup --json`; unreadable entries are listed in the snapshot too)",
            out.warnings.len() - WARNINGS_SHOWN
        );
    }
    let s = &out.snapshot;
    let m = &s.metrics;
    if cli.json {
        let mut v = snapshot_json(s, out.parent.as_ref().map(|p| p.time));
        v.as_object_mut()
            .expect("object")
            .insert("warnings".into(), json!(out.warnings));
        if let Some(i) = insight {
            v.as_object_mut()
                .expect("object")
                .insert("insight".into(), i);
        }
        print_json(&v);
    } else {
        println!(
            "snapshot {}@{} saved{}",
            s.name,
            s.id.short(),
            out.parent
                .as_ref()
                .map(|p| format!(" (parent {})", p.id.short()))
                .unwrap_or_default()
        );
        println!(
            "  {} {} {}: {} read, {} changed, {} new stored (compression {:.2}x), {} zero, {:.2}s",
            bytes(m.logical_size),
            s.source.format,
            s.source.path,
            bytes(m.bytes_read),
            bytes(m.changed_bytes),
            bytes(m.new_bytes_stored),
            m.compression_ratio,
            bytes(m.zero_bytes),
            m.duration_secs
        );
    }
}

fn snapshots(cli: &Cli, name: Option<&str>) -> Result<u8> {
    let vault = open(cli)?;
    let (all, bad) = vault.snapshots()?;
    for (n, why) in &bad {
        eprintln!("warning: {n} unreadable: {why}");
    }
    // A manifest that cannot be read is damage found: the list is not all
    // there is (a script must not take it for the whole vault).
    let found = if bad.is_empty() { 0 } else { FOUND };
    let times: std::collections::HashMap<_, _> =
        all.iter().map(|s| (s.id.clone(), s.time)).collect();
    let pins = vault.pins()?;
    let shown: Vec<&Snapshot> = all
        .iter()
        .filter(|s| name.is_none_or(|n| s.name == n))
        .collect();
    // A mistyped name is an error, as in every other command: an empty
    // list would read as "nothing backed up yet" to a monitoring script.
    if let Some(n) = name
        && shown.is_empty()
    {
        bail!("{n:?}: no snapshots of that name (`cairn snapshots` lists every name)");
    }
    // Insight's verdict when each was backed up (`timeline` replays the
    // whole history); none for a snapshot not assessed yet. A scan that
    // found a snapshot compromised says so over it: the list must not
    // call a point with a planted web shell clean.
    let scans = cairn_scan::latest_reports_for(&vault, shown.iter().map(|s| &s.id));
    let scanned = |s: &Snapshot| scans.get(&s.id).map(|r| r.verdict);
    let verdict = |s: &Snapshot| -> Option<String> {
        if scanned(s) == Some(cairn_scan::ScanVerdict::Compromised) {
            return Some("compromised (scan)".into());
        }
        cairn_insight::load(&vault, &s.id).map(|r| r.assessment.verdict.as_str().to_string())
    };
    if cli.json {
        let v: Vec<_> = shown
            .iter()
            .map(|s| {
                let mut v = snapshot_json(s, s.parent.as_ref().and_then(|p| times.get(p).copied()));
                let o = v.as_object_mut().expect("object");
                o.insert("pinned".into(), json!(pins.contains(&s.id)));
                o.insert(
                    "verdict".into(),
                    json!(
                        cairn_insight::load(&vault, &s.id).map(|r| r.assessment.verdict.as_str())
                    ),
                );
                o.insert("scan_verdict".into(), json!(scanned(s).map(|v| v.as_str())));
                v
            })
            .collect();
        print_json(&v);
        return Ok(found);
    }
    println!(
        "{:<8}  {:<16} {:<20} {:<9} {:>10} {:>10} {:>12} {:>10}  {:<18}  tags",
        "id", "name", "time (UTC)", "kind", "size", "changed", "rate/h", "new stored", "verdict"
    );
    for s in shown {
        let rate = s
            .change_rate(s.parent.as_ref().and_then(|p| times.get(p).copied()))
            .map(|r| bytes(r as u64))
            .unwrap_or_else(|| "-".into());
        let mut tags = s.tags.clone();
        if pins.contains(&s.id) {
            tags.insert(0, "pinned".into());
        }
        if let Some(base) = &s.derived_from {
            tags.push(format!("from:{}", base.short()));
        }
        // Entries a directory backup could not read (`--json` names them).
        if s.metrics.unreadable_count > 0 {
            tags.insert(
                0,
                format!("incomplete:{}-unread", s.metrics.unreadable_count),
            );
        }
        println!(
            "{:<8}  {:<16} {:<20} {:<9} {:>10} {:>10} {:>12} {:>10}  {:<18}  {}",
            s.id.short(),
            // (Names written before they were checked may hold anything.)
            cairn_vault::text::escape(s.name.as_bytes()),
            s.time.format("%Y-%m-%d %H:%M:%S"),
            match s.source.kind {
                SourceKind::Disk => s.source.format.as_str(),
                SourceKind::Directory => "dir",
            },
            bytes(s.metrics.logical_size),
            bytes(s.metrics.changed_bytes),
            rate,
            bytes(s.metrics.new_bytes_stored),
            verdict(s).as_deref().unwrap_or("-"),
            tags.join(",")
        );
    }
    Ok(found)
}

/// When the target file was last changed, if it is a regular file.
/// When the file's inode last changed (its content, its metadata, or its
/// name: a rename sets it too), and its length. Unlike mtime, no program
/// can set ctime back, so a file moved into place or written and then
/// dated back is not taken for the one that was backed up.
fn file_changed(path: &Path) -> Option<(chrono::DateTime<chrono::Utc>, u64)> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).ok()?;
    if !md.is_file() {
        return None;
    }
    let t = chrono::DateTime::from_timestamp(md.ctime(), md.ctime_nsec() as u32)?;
    Some((t, md.len()))
}

/// A snapshot the delta target is known to equal: `--since`, or the
/// latest snapshot of `name` read from this very file on this host when
/// the file has not changed in any way since that backup began.
fn known_state(
    vault: &Vault,
    name: &str,
    to: &Path,
    since: Option<&str>,
) -> Result<Option<Snapshot>> {
    // When the backup began reading (its duration counts from before the
    // first read): a change before that is in the snapshot.
    let began = |s: &Snapshot| {
        s.written - chrono::Duration::milliseconds((s.metrics.duration_secs * 1000.0).ceil() as i64)
    };
    if let Some(spec) = since {
        let s = vault.resolve(spec)?;
        if s.source.kind != SourceKind::Disk {
            bail!("--since {spec}: not a disk snapshot");
        }
        if let Some((changed, _)) = file_changed(to)
            && changed >= began(&s)
        {
            bail!(
                "--since {spec}: {} changed after that snapshot was taken; leave out --since to compare by reading it",
                to.display()
            );
        }
        return Ok(Some(s));
    }
    let Some((changed, len)) = file_changed(to) else {
        return Ok(None);
    };
    let real = std::fs::canonicalize(to)?;
    // As recorded now, or as snapshots made before paths were escaped.
    let names = [
        cairn_vault::text::path_text(&real),
        real.display().to_string(),
    ];
    let host = cairn_ingest::hostname();
    let (all, _) = vault.snapshots()?;
    let latest = all.into_iter().rev().find(|s| {
        s.name == name
            && s.source.kind == SourceKind::Disk
            && names.contains(&s.source.path)
            && s.source.host == host
    });
    Ok(latest.filter(|s| s.metrics.logical_size == len && changed < began(s)))
}

/// The switches of `restore --delta`.
struct DeltaFlags {
    verify: bool,
    dry_run: bool,
    resize: bool,
}

/// Nothing is restored into the vault: a vault holds only what Cairn
/// wrote there (prune would take a restored file under `packs/` for the
/// leftover of an interrupted backup and delete it).
fn outside_vault(vault: &Vault, to: &Path) -> Result<()> {
    if vault.holds(to) {
        bail!(
            "{} is inside the vault {}: restore somewhere else",
            to.display(),
            vault.root().display()
        );
    }
    Ok(())
}

/// Says so when insight or a scan found `snap` compromised: restoring or
/// serving it is allowed (to look at the damage, to take files from it),
/// but should not be done by mistake for the way back.
pub(crate) fn warn_if_flagged(vault: &Arc<Vault>, snap: &Snapshot) {
    // (The scans are listed only when insight did not say so already.)
    let by = cairn_insight::load(vault, &snap.id)
        .filter(|r| r.assessment.verdict == cairn_insight::Verdict::Compromised)
        .map(|_| "insight")
        .or_else(|| {
            cairn_scan::latest_reports_for(vault, [&snap.id])
                .get(&snap.id)
                .filter(|r| r.verdict == cairn_scan::ScanVerdict::Compromised)
                .map(|_| "a scan")
        });
    if let Some(by) = by {
        eprintln!(
            "warning: {by} found {}@{} COMPROMISED; `cairn recover {} --find-clean` names the point to return to",
            snap.name,
            snap.id.short(),
            snap.name
        );
    }
}

fn restore_delta(
    cli: &Cli,
    spec: &str,
    to: &Path,
    flags: DeltaFlags,
    since: Option<&str>,
) -> Result<u8> {
    let DeltaFlags {
        verify,
        dry_run,
        resize,
    } = flags;
    let vault = open(cli)?;
    outside_vault(&vault, to)?;
    let snap = vault.resolve(spec)?;
    warn_if_flagged(&vault, &snap);
    if snap.source.kind != SourceKind::Disk {
        usage!(
            "{spec} is a directory snapshot; --delta restores disks (for directories see `cairn rollback --in-place`)"
        );
    }
    let known = known_state(&vault, &snap.name, to, since)?;
    let known_map = match &known {
        Some(k) => Some(Arc::new(vault.read_disk_map(k)?)),
        None => None,
    };
    let progress = Arc::new(Progress::default());
    progress.set_total(snap.metrics.logical_size);
    let bar = Bar::start(progress.clone(), "compare", cli.quiet || cli.json);
    let tick = |compared: u64, written: u64| {
        progress.add(compared);
        progress
            .written
            .fetch_add(written, std::sync::atomic::Ordering::Relaxed);
    };
    let disk = SnapshotDisk::open(vault.clone(), &snap, 4)?;
    let r = cairn_recover::restore_delta(
        &disk,
        to,
        &cairn_recover::DeltaOptions {
            dry_run,
            verify,
            resize,
            known: known_map,
        },
        &tick,
    );
    drop(bar);
    let mut r = r?;
    r.compared_with = known
        .filter(|_| r.known_used)
        .map(|k| format!("{}@{}", k.name, k.id.0));
    r.derived_from = snap.derived_from.as_ref().map(|b| b.0.clone());
    if cli.json {
        print_json(&r);
    } else {
        if let Some(old) = r.resized_from {
            println!(
                "{} {} from {} to {} (the snapshot's disk size)",
                to.display(),
                if dry_run {
                    "would be resized"
                } else {
                    "resized"
                },
                bytes(old),
                bytes(r.size)
            );
        }
        println!(
            "{} {}@{}{} onto {}: compared {}{}, {} {} block(s) ({}, {} zeroed){}, {:.2}s",
            if dry_run { "would restore" } else { "restored" },
            snap.name,
            snap.id.short(),
            made_from(&snap),
            to.display(),
            bytes(r.bytes_compared),
            match &r.compared_with {
                Some(k) => format!(
                    " (by the digests of {}, taken after the target's last change)",
                    &k[..k.find('@').map(|i| i + 9).unwrap_or(k.len()).min(k.len())]
                ),
                None => String::new(),
            },
            if dry_run { "would write" } else { "wrote" },
            r.blocks_written,
            // Inside a block that differs only its differing pages are
            // written, which a dry run does not read to find out.
            if dry_run {
                format!("at most {}", bytes(r.bytes_written))
            } else {
                bytes(r.bytes_written)
            },
            r.blocks_zeroed,
            if r.verified { ", verified" } else { "" },
            r.duration_secs
        );
    }
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
fn restore(
    cli: &Cli,
    spec: &str,
    to: &Path,
    overwrite: bool,
    verify: bool,
    dry_run: bool,
    keep_setid: bool,
) -> Result<u8> {
    let vault = open(cli)?;
    outside_vault(&vault, to)?;
    let snap = vault.resolve(spec)?;
    warn_if_flagged(&vault, &snap);
    let progress = Arc::new(Progress::default());
    progress.set_total(snap.metrics.logical_size);
    let bar = Bar::start(
        progress.clone(),
        "restore",
        cli.quiet || cli.json || dry_run,
    );
    let tick = |n: u64| progress.add(n);
    match snap.source.kind {
        SourceKind::Disk => {
            let disk = SnapshotDisk::open(vault.clone(), &snap, 4)?;
            let opts = DiskRestoreOptions { overwrite, verify };
            let r = if dry_run {
                cairn_recover::disk::plan_disk_restore(&disk, to, &opts)
            } else {
                cairn_recover::restore_disk(&disk, to, &opts, &tick)
            };
            drop(bar);
            let mut r = r?;
            r.derived_from = snap.derived_from.as_ref().map(|b| b.0.clone());
            if cli.json {
                print_json(&r);
            } else {
                println!(
                    "{} {}@{}{} to {}: {} {}, {} {}{}{}",
                    if dry_run { "would restore" } else { "restored" },
                    snap.name,
                    snap.id.short(),
                    made_from(&snap),
                    to.display(),
                    bytes(r.bytes_written),
                    if dry_run { "to write" } else { "written" },
                    bytes(r.zero_bytes),
                    match (r.device, dry_run) {
                        (true, true) => "to zero",
                        (true, false) => "zeroed",
                        _ => "left as holes",
                    },
                    if r.verified { ", verified" } else { "" },
                    if dry_run {
                        String::new()
                    } else {
                        format!(", {:.2}s", r.duration_secs)
                    }
                );
            }
            // A snapshot holds what the guest saw, not its image file: a
            // qcow2 source comes back as a raw disk, which a VM defined with
            // a qcow2 driver would not boot.
            if snap.source.format == "qcow2" && !r.device && !cli.json {
                eprintln!(
                    "note: {} is a raw disk image (the snapshot holds the guest's disk, not its qcow2 file); for qcow2: qemu-img convert -f raw -O qcow2 {} disk.qcow2",
                    to.display(),
                    to.display()
                );
            }
            if let Some(tail) = r.device_tail_bytes {
                eprintln!(
                    "warning: {} is {} larger than the snapshot; those last bytes {} as they were (an old partition table's backup header may remain there)",
                    to.display(),
                    bytes(tail),
                    if dry_run {
                        "would be left"
                    } else {
                        "were left"
                    }
                );
            }
        }
        SourceKind::Directory => {
            if verify {
                usage!("--verify applies to disk restores");
            }
            let tree = vault.read_tree(&snap)?;
            let r = cairn_recover::restore_tree(
                &vault,
                &tree,
                to,
                &TreeRestoreOptions {
                    overwrite,
                    dry_run,
                    keep_setid,
                    root: snap.source.root.clone(),
                },
                &tick,
            );
            drop(bar);
            let r = r?;
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            for m in &r.missing {
                eprintln!("error: {m}");
            }
            util::setid_warning(r.setid_dropped, &r.setid_dropped_paths);
            if cli.json {
                print_json(&r);
            } else {
                println!(
                    "{} {}@{} to {}: {} files, {} dirs, {} symlinks, {} hard links, {}",
                    if dry_run { "would restore" } else { "restored" },
                    snap.name,
                    snap.id.short(),
                    to.display(),
                    r.files,
                    r.dirs,
                    r.symlinks,
                    r.hardlinks,
                    bytes(r.bytes_written)
                );
            }
            if !r.missing.is_empty() {
                // Restored, but not whole: a script has to branch.
                eprintln!(
                    "{} file(s) could not be read from the vault (named above) and are not restored in {}{}; the rest is. `cairn verify --read-data` names the damage; an earlier snapshot may hold them",
                    r.missing.len(),
                    to.display(),
                    if overwrite {
                        " (what it held under those names is left as it was)"
                    } else {
                        ""
                    }
                );
                return Ok(3);
            }
        }
    }
    Ok(0)
}

fn verify(cli: &Cli, read_data: bool) -> Result<u8> {
    let vault = open(cli)?;
    let progress = Arc::new(Progress::default());
    let bar = Bar::start(
        progress.clone(),
        "verify",
        cli.quiet || cli.json || !read_data,
    );
    let p = progress.clone();
    let r = cairn_vault::verify::verify(&vault, read_data, &move |done, total| {
        p.set_total(total);
        p.done.store(done, std::sync::atomic::Ordering::Relaxed);
    });
    drop(bar);
    let r = r?;
    if cli.json {
        print_json(&r);
    } else {
        for d in &r.damaged_snapshots {
            println!(
                "DAMAGED snapshot {}@{} ({}): {}",
                d.name,
                &d.id[..8.min(d.id.len())],
                d.time,
                d.reasons.join("; ")
            );
        }
        for (o, why) in &r.damaged_objects {
            println!("damaged object {o}: {why}");
        }
        println!(
            "{} snapshots, {} packs{}: {}",
            r.snapshots,
            r.packs,
            if read_data {
                format!(
                    ", {} chunks ({}) decrypted and checked",
                    r.chunks_checked,
                    bytes(r.bytes_checked)
                )
            } else {
                String::new()
            },
            match (r.ok(), read_data) {
                (true, true) => "no damage found",
                (true, false) => {
                    "no damage found in the structure (the data was not read: --read-data decrypts and checks every chunk)"
                }
                (false, _) => "DAMAGE FOUND",
            }
        );
        if r.unindexed_packs > 0 && r.damaged_snapshots.is_empty() {
            println!(
                "{} unindexed pack(s) from interrupted backups (unused; prune removes them)",
                r.unindexed_packs
            );
        } else if r.unindexed_packs > 0 {
            println!(
                "{} unindexed pack(s): they may hold what the damaged snapshots miss (an index object lost?); prune keeps them while any snapshot misses chunks",
                r.unindexed_packs
            );
        }
    }
    Ok(if r.ok() { 0 } else { FOUND })
}
