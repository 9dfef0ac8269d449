//! FUSE mounts of snapshots: the guest's files, and the raw disk.

mod common;
use common::*;
use std::process::{Child, Stdio};
use std::time::Duration;

struct Mounted {
    child: Child,
    at: std::path::PathBuf,
    /// Where the mount's stderr goes.
    log: std::path::PathBuf,
}

impl Mounted {
    /// What the mount said on stderr so far.
    fn said(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::process::Command::new("fusermount3")
            .args(["-u", "-q"])
            .arg(&self.at)
            .status();
    }
}

fn mount(env: &Env, args: &[&str], at: &std::path::Path) -> Mounted {
    std::fs::create_dir_all(at).unwrap();
    let log = at.with_extension("stderr");
    let (child, line) = spawn_ready(
        env.cmd()
            .arg("mount")
            .args(args)
            .arg(at)
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap())),
    );
    assert_eq!(
        line,
        at.to_str().unwrap(),
        "mount prints the mount point once mounted"
    );
    Mounted {
        child,
        at: at.to_path_buf(),
        log,
    }
}

#[test]
fn the_guest_files_and_the_raw_disk_mount_read_only() {
    let env = Env::new("30d", &[]);
    let content = env.path("content");
    populate(&content);
    std::os::unix::fs::symlink("etc/hostname", content.join("link")).unwrap();
    let img = env.path("vm.img");
    gpt_ext4_image(&img, &content, 48);
    env.backup(&img, "vm", "2026-03-01T00:00:00Z");

    {
        let m = mount(&env, &["vm@latest"], &env.path("files"));
        for rel in [
            "home/alice/docs/report-7.txt",
            "home/alice/media/video.mp4",
            "etc/hostname",
        ] {
            assert!(same_bytes(&content.join(rel), &m.at.join(rel)), "{rel}");
        }
        // Closing files is quiet (each close sends a flush).
        assert!(!m.said().contains("Not Implemented"), "{}", m.said());
        assert_eq!(
            std::fs::read_link(m.at.join("link"))
                .unwrap()
                .to_str()
                .unwrap(),
            "etc/hostname"
        );
        let names: Vec<String> = std::fs::read_dir(m.at.join("srv/app/src"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 10);
        assert!(
            std::fs::write(m.at.join("etc/new"), "x").is_err(),
            "read-only"
        );
        // A guest's setuid programs and device nodes grant nothing here.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(4) == m.at.to_str())
            .unwrap_or_else(|| panic!("{} not in mountinfo", m.at.display()));
        let opts: Vec<&str> = line.split(' ').nth(5).unwrap().split(',').collect();
        for want in ["ro", "nosuid", "nodev"] {
            assert!(opts.contains(&want), "{want} missing: {line}");
        }
        // Not over a live mount, nor over a folder with files in it.
        let again = env.run(&["mount", "vm@latest", m.at.to_str().unwrap()]);
        assert_eq!(again.status.code(), Some(1));
        let err = String::from_utf8_lossy(&again.stderr);
        assert!(err.contains("is not empty"), "{err}");
    }
    {
        let m = mount(&env, &["vm@latest", "--disk"], &env.path("disk"));
        assert!(same_bytes(&img, &m.at.join("disk.img")));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        std::fs::read_dir(env.path("files"))
            .unwrap()
            .next()
            .is_none(),
        "unmounted when stopped"
    );
}

/// Stopped while a program still reads from it, a mount says it is in
/// use and goes on serving; stopped again, it detaches and ends when that
/// program is done. No dead mount is left for readers to fail on.
#[test]
fn a_mount_in_use_is_not_left_dead_when_stopped() {
    use std::io::Read;
    let env = Env::new("30d", &[]);
    let content = env.path("content");
    populate(&content);
    let img = env.path("vm.img");
    gpt_ext4_image(&img, &content, 48);
    env.backup(&img, "vm", "2026-03-01T00:00:00Z");
    let mut m = mount(&env, &["vm@latest"], &env.path("files"));
    let rel = "home/alice/docs/report-7.txt";
    let mut open = std::fs::File::open(m.at.join(rel)).unwrap();
    let pid = m.child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGINT) };
    let mut said = String::new();
    for _ in 0..100 {
        said = m.said();
        if said.contains("is in use") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(said.contains("is in use"), "{said}");
    assert!(m.child.try_wait().unwrap().is_none(), "still serving");
    let mut got = Vec::new();
    open.read_to_end(&mut got).unwrap();
    assert_eq!(got, std::fs::read(content.join(rel)).unwrap());
    // Again: detached, gone from view, the open file still served.
    unsafe { libc::kill(pid, libc::SIGINT) };
    for _ in 0..100 {
        if m.said().contains("detached") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(m.said().contains("detached"), "{}", m.said());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.lines().any(|l| l.split(' ').nth(4) == m.at.to_str()),
        "no longer mounted"
    );
    drop(open);
    let mut status = None;
    for _ in 0..100 {
        status = m.child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", m.said());
}
