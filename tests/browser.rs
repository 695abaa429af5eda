//! The call page in a real browser: headless Chromium, driven over WebDriver
//! (chromedriver, with the `fantoccini` client), opens the link Bob hands out,
//! reads the question, clicks Call, and the call reaches Bob.

use crate::common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::fake_push::FakePush;
use common::hawk::Device;
use common::{ServerOptions, TestServer};
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver and every browser it starts, killed together on drop.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    async fn start() -> ChromeDriver {
        for program in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                std::path::Path::new(program).exists(),
                "{program} is required (Debian chromium and chromium-driver)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A process group of its own, so that Chromium (chromedriver's
            // child) can be killed with it even if the session is never ended.
            .process_group(0)
            .spawn()
            .expect("spawn chromedriver");
        let driver = ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        // It is ready when it listens.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not start listening"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver
    }

    /// A headless Chromium session with a profile in `profile`.
    async fn new_session(&self, profile: &std::path::Path) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Containers often have a tiny /dev/shm.
            "--disable-dev-shm-usage",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("start a Chromium session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser processes it started.
        // Called directly: procps-ng 4.0's kill(1) misreads a negative pid.
        // Not yet reaped, chromedriver still holds its pid, so the group id
        // cannot have been reused.
        if let Ok(group) = libc::pid_t::try_from(self.child.id())
            && group > 1
        {
            // SAFETY: kill(2) touches no memory; the group is ours (see start).
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn text(browser: &Client, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("element {css}: {err}"))
        .text()
        .await
        .unwrap()
}

/// Polls the text of `css` until `done` accepts it; panics after 30 s.
async fn wait_for_text(browser: &Client, css: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = text(browser, css).await;
        if done(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css} still says {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn alice_calls_bob_from_the_link_in_chromium() {
    let push = FakePush::start().await;
    let server = TestServer::start_with(ServerOptions {
        extra_toml: push.config(2000),
        ..Default::default()
    })
    .await;
    let bob = Device::register(&server.url, &push.url("bob")).await;
    let created = bob
        .create_call_url(&json!({"callerId": "alice", "issuer": "Bob <Builder>"}))
        .await;
    let call_url = created["callUrl"].as_str().unwrap().to_string();

    // Declared before the driver: the profile is removed after the browser is gone.
    let profile = tempfile::tempdir().unwrap();
    let driver = ChromeDriver::start().await;
    let browser = driver.new_session(profile.path()).await;

    // End the session whatever happens; the driver's drop is the last resort.
    let outcome = std::panic::AssertUnwindSafe(async {
        browser.goto(&call_url).await.unwrap();
        assert_eq!(
            text(&browser, "h1").await,
            "Do you want to call Bob <Builder>?"
        );
        browser
            .find(Locator::Css("#call"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let status = wait_for_text(&browser, "#status", |text| {
            text.starts_with("Call placed") || text.contains("could not")
        })
        .await;
        assert_eq!(status, "Call placed. Waiting for Bob <Builder> to answer.");

        // The call reached Bob: his device was pinged and lists it.
        push.wait_for("bob", 1).await;
        let calls: Value = bob.get("/calls?version=0").await.json().await.unwrap();
        assert_eq!(calls["calls"].as_array().unwrap().len(), 1, "{calls}");
        assert_eq!(calls["calls"][0]["callType"], "audio-video");
        assert_eq!(calls["calls"][0]["callerId"], "alice");

        // A revoked link shows a readable page, not JSON.
        let token = created["callToken"].as_str().unwrap();
        assert_eq!(
            bob.delete(&format!("/call-url/{token}")).await.status(),
            204
        );
        browser.goto(&call_url).await.unwrap();
        assert_eq!(browser.title().await.unwrap(), "This link does not work");
        assert_eq!(text(&browser, "h1").await, "This link does not work");
    })
    .catch_unwind()
    .await;
    let closed = browser.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    closed.expect("end the WebDriver session");
}
