//! The web console in a real browser (headless Chromium driven over
//! WebDriver by chromedriver): an operator signs in with a token link,
//! sees a source whose latest snapshot is compromised, opens its
//! timeline and the snapshot, starts a scan, and watches the findings
//! arrive live. A screenshot is saved as a test artifact.

mod common;
use common::*;
use fantoccini::{ClientBuilder, Locator};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A helper process that is stopped when the test ends.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_the_attack_in_the_console_and_watches_a_scan_report_it() {
    // Four ordinary days, then an attack: reports encrypted in place and
    // a test "malware" file dropped in Downloads.
    let env = Env::new("0s", &[]);
    let root = env.path("root");
    populate(&root);
    std::fs::create_dir_all(root.join("home/alice/Downloads")).unwrap();
    let disk = env.path("vm.img");
    gpt_ext4_image(&disk, &root, 64);
    four_days_then_encryption(&env, &disk);
    replace_guest_file(&disk, "home/alice/Downloads/invoice.com", EICAR);
    let out = env.run(&[
        "backup",
        disk.to_str().unwrap(),
        "--name",
        "vm",
        "--time",
        "2026-04-05T02:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(3), "the attack day is flagged");

    let operator = env
        .ok(&["token", "create", "--role", "operator"])
        .lines()
        .last()
        .unwrap()
        .to_string();
    let mut serve = env.cmd();
    serve.args(["serve", "--listen", "127.0.0.1:0"]);
    let server = Running::start(&mut serve);
    let url = server.url.clone();

    let port = free_port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver, installed by .ci/run)");
    let _driver = Killed(driver);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400"]}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let mut client = None;
    for _ in 0..100 {
        match ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let c = client.expect("chromedriver did not start");

    // Signing in by link opens a session; the sources page shows the
    // compromised snapshot.
    c.goto(&format!("{url}/?token={operator}")).await.unwrap();
    // ...and takes the token out of the address at once (history, Referer).
    let now = c.current_url().await.unwrap();
    assert!(!now.as_str().contains("token"), "{now}");
    let row = c
        .find(Locator::XPath("//tr[td/a[text()='vm']]"))
        .await
        .unwrap();
    let text = row.text().await.unwrap();
    assert!(text.contains("compromised"), "sources row: {text}");
    c.find(Locator::LinkText("vm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The timeline: an SVG chart, and the compromised snapshot in the table.
    c.wait().for_element(Locator::Css("svg")).await.unwrap();
    let bad = c
        .find(Locator::XPath(
            "//tr[td/span[contains(@class,'compromised')]]/td/a",
        ))
        .await
        .unwrap();
    bad.click().await.unwrap();

    // The snapshot: what insight saw, then a scan started from the page.
    c.wait().for_element(Locator::Id("scan")).await.unwrap();
    let page = c.source().await.unwrap();
    assert!(
        page.contains("report-12.txt"),
        "the damaged files are listed"
    );
    c.find(Locator::Id("scan"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let hit = c
        .wait()
        .at_most(Duration::from_secs(120))
        .for_element(Locator::XPath(
            "//ul[@id='events']/li[@data-kind='finding' and contains(., 'EICAR')]",
        ))
        .await
        .unwrap();
    assert!(
        hit.text()
            .await
            .unwrap()
            .contains("/home/alice/Downloads/invoice.com")
    );
    c.wait()
        .at_most(Duration::from_secs(120))
        .for_element(Locator::XPath("//ul[@id='events']/li[@data-kind='done']"))
        .await
        .unwrap();
    let events = c
        .find(Locator::Id("events"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let malware = events.find("stage malware").expect("malware stage shown");
    let finding = events.find("EICAR").unwrap();
    assert!(
        malware < finding,
        "findings come after their stage:\n{events}"
    );

    let png = c.screenshot().await.unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let artifact = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-scan.png");
    std::fs::write(&artifact, &png).unwrap();
    eprintln!("screenshot: {}", artifact.display());

    // The audit page shows the operator's actions, chain intact.
    c.goto(&format!("{url}/audit")).await.unwrap();
    let audit = c
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(audit.contains("chain intact"), "{audit}");
    assert!(audit.contains("POST /api/v1/snapshots/"), "{audit}");
    c.close().await.unwrap();
}
