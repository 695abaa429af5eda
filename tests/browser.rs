//! The call page in a real browser: headless Chromium, driven over the W3C
//! WebDriver protocol by chromedriver, opens the link Bob hands out, reads the
//! question, clicks Call, and the call reaches Bob.
//!
//! The WebDriver client is the handful of JSON-over-HTTP commands below, sent
//! with the suite's reqwest client; a WebDriver crate would add a second HTTP
//! stack to the build for five requests.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::fake_push::FakePush;
use common::hawk::Device;
use common::{ServerOptions, TestServer};
use futures::FutureExt;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C key under which an element reference is returned.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

struct ChromeDriver {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl ChromeDriver {
    async fn start() -> ChromeDriver {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists(),
            "{CHROMEDRIVER} is required (Debian chromium-driver)"
        );
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
            .spawn()
            .expect("spawn chromedriver");
        let driver = ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: common::client(),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = driver
                .http
                .get(format!("{}/status", driver.url))
                .send()
                .await
            {
                let status: Value = response.json().await.unwrap_or_default();
                if status["value"]["ready"] == true {
                    return driver;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "WebDriver {path}: {status} {body}");
        body["value"].clone()
    }

    async fn new_session(&self, profile: &std::path::Path) -> Session<'_> {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            }}
        });
        let value = self
            .command(reqwest::Method::POST, "/session", Some(capabilities))
            .await;
        Session {
            driver: self,
            id: value["sessionId"].as_str().unwrap().to_string(),
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Session<'a> {
    driver: &'a ChromeDriver,
    id: String,
}

impl Session<'_> {
    async fn goto(&self, url: &str) {
        self.driver
            .command(
                reqwest::Method::POST,
                &format!("/session/{}/url", self.id),
                Some(json!({"url": url})),
            )
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let value = self
            .driver
            .command(
                reqwest::Method::POST,
                &format!("/session/{}/element", self.id),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        value[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("element {css}: {value}"))
            .to_string()
    }

    async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        let value = self
            .driver
            .command(
                reqwest::Method::GET,
                &format!("/session/{}/element/{element}/text", self.id),
                None,
            )
            .await;
        value.as_str().unwrap().to_string()
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.driver
            .command(
                reqwest::Method::POST,
                &format!("/session/{}/element/{element}/click", self.id),
                Some(json!({})),
            )
            .await;
    }

    async fn title(&self) -> String {
        self.driver
            .command(
                reqwest::Method::GET,
                &format!("/session/{}/title", self.id),
                None,
            )
            .await
            .as_str()
            .unwrap()
            .into()
    }

    /// Polls the text of `css` until `done` accepts it; panics after 30 s.
    async fn wait_for_text(&self, css: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.text(css).await;
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

    async fn quit(self) {
        self.driver
            .command(
                reqwest::Method::DELETE,
                &format!("/session/{}", self.id),
                None,
            )
            .await;
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

    let driver = ChromeDriver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.new_session(profile.path()).await;

    // Whatever happens, end the browser session: a panic would leave Chromium running.
    let outcome = std::panic::AssertUnwindSafe(async {
        browser.goto(&call_url).await;
        assert_eq!(
            browser.text("h1").await,
            "Do you want to call Bob <Builder>?"
        );
        browser.click("#call").await;
        let status = browser
            .wait_for_text("#status", |text| {
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
        browser.goto(&call_url).await;
        assert_eq!(browser.title().await, "This link does not work");
        assert_eq!(browser.text("h1").await, "This link does not work");
    })
    .catch_unwind()
    .await;
    browser.quit().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
