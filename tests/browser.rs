//! The web app in a real browser: headless Chromium with fake camera and
//! microphone, driven over WebDriver (chromedriver, with the `fantoccini`
//! client). Bob's page (`/`) creates a link, Alice's page (`/c/{token}`)
//! calls through it, Bob's page rings, and the two browsers talk peer to peer
//! through the real server's progress socket and signaling relay.
//!
//! Each page says what it is doing in `data-` attributes of `#call-view`
//! (see `host/src/api/pages/call.js`); the tests read those, the page's
//! RTCPeerConnection stats and its words. Screenshots of each page at its
//! key moments go to `target/screenshots/`.
//!
//! Browser tests run one at a time ([`BROWSERS`]): each runs two or three
//! Chromium sessions with video, and two cores are shared with the rest of
//! the suite.

use crate::common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{ServerOptions, TestServer, fresh_postgres_database};
use fantoccini::{Client, ClientBuilder, Locator};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const TURNSERVER: &str = "/usr/bin/turnserver";

/// How long a page may take to reach a state (media set-up included).
const PATIENCE: Duration = Duration::from_secs(40);

/// One browser test at a time.
static BROWSERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn screenshots_dir() -> PathBuf {
    let dir = common::workspace_root().join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver and every browser it starts, killed together on drop.
struct ChromeDriver {
    child: Child,
    url: String,
    /// Browser profiles; removed after the browsers are gone (see Drop).
    profiles: Vec<tempfile::TempDir>,
}

impl ChromeDriver {
    async fn start() -> ChromeDriver {
        for program in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(program).exists(),
                "{program} is required (Debian chromium and chromium-driver)"
            );
        }
        let port = free_port();
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
            profiles: Vec::new(),
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

    /// A headless Chromium of its own (own profile, so own storage: another
    /// person), with a fake camera and microphone that need no permission.
    async fn browser(&mut self, name: &'static str) -> Page {
        let profile = tempfile::tempdir().unwrap();
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
            // A test pattern for the camera, a beep for the microphone, and
            // no permission prompt.
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            // Several browsers side by side: none is throttled for being in
            // the background.
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--window-size=1024,800",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        self.profiles.push(profile);
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            // The console, for errors and Content-Security-Policy violations.
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("start a Chromium session");
        Page {
            name,
            client,
            driver: self.url.clone(),
        }
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

/// What `#call-view` says about the call.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallInfo {
    state: String,
    /// The progress states received, in order.
    progress: String,
    end_reason: Option<String>,
    peer_state: Option<String>,
    status: String,
    code: String,
}

const CALL_INFO: &str = r#"
const view = document.getElementById("call-view");
if (!view) { return null; }
return {
  state: view.dataset.state || "",
  progress: view.dataset.progress || "",
  endReason: view.dataset.endReason || null,
  peerState: view.dataset.peerState || null,
  status: document.getElementById("status").textContent,
  code: document.getElementById("code").textContent,
};
"#;

/// The current RTCPeerConnection's stats: video frames decoded, and the
/// candidate types of the selected pair.
const PEER_STATS: &str = r#"
const done = arguments[arguments.length - 1];
const pc = window.loopPeerConnection;
if (!pc) { done(null); return; }
pc.getStats().then((stats) => {
  const byId = new Map();
  stats.forEach((s) => byId.set(s.id, s));
  let framesDecoded = 0, local = null, remote = null;
  stats.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") { framesDecoded += s.framesDecoded || 0; }
    if (s.type === "transport" && s.selectedCandidatePairId) {
      const pair = byId.get(s.selectedCandidatePairId);
      if (pair) {
        local = (byId.get(pair.localCandidateId) || {}).candidateType || null;
        remote = (byId.get(pair.remoteCandidateId) || {}).candidateType || null;
      }
    }
  });
  done({framesDecoded, local, remote, state: pc.connectionState});
}, (err) => done({error: String(err)}));
"#;

/// One browser (or one window of it) showing one of our pages.
struct Page {
    name: &'static str,
    client: Client,
    /// chromedriver's URL, for what WebDriver has no command for.
    driver: String,
}

impl Page {
    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|err| panic!("{}: script failed: {err}", self.name))
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("{}: element {css}: {err}", self.name))
            .text()
            .await
            .unwrap()
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("{}: element {css}: {err}", self.name))
            .click()
            .await
            .unwrap_or_else(|err| panic!("{}: click {css}: {err}", self.name));
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.client.find(Locator::Css(css)).await.unwrap();
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
    }

    async fn call(&self) -> CallInfo {
        serde_json::from_value(self.js(CALL_INFO).await).expect("the page has a call view")
    }

    async fn stats(&self) -> Value {
        self.client
            .execute_async(PEER_STATS, Vec::new())
            .await
            .unwrap_or_else(|err| panic!("{}: getStats failed: {err}", self.name))
    }

    /// Polls `probe` until it returns `Some`; panics after [`PATIENCE`]
    /// with what the page last said, and a screenshot.
    async fn wait<T>(&self, what: &str, mut probe: impl AsyncFnMut(&Page) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(value) = probe(self).await {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = self
                    .screenshot(&format!("failed-{}-{}", self.name, what.replace(' ', "-")))
                    .await;
                let info = self.js(CALL_INFO).await;
                panic!(
                    "{}: still not {what} after {PATIENCE:?}; the page: {info}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the call view is in `state`.
    async fn wait_state(&self, state: &str) -> CallInfo {
        self.wait(state, async |page| {
            let info = page.call().await;
            (info.state == state).then_some(info)
        })
        .await
    }

    /// Waits until the element `css` is displayed.
    async fn wait_shown(&self, css: &str) {
        self.wait(&format!("showing {css}"), async |page| {
            let element = page.client.find(Locator::Css(css)).await.ok()?;
            element.is_displayed().await.ok()?.then_some(())
        })
        .await
    }

    /// Frames of video decoded so far, once the peer connection has some.
    async fn frames_decoded(&self) -> u64 {
        self.wait("decoding video", async |page| {
            let stats = page.stats().await;
            stats["framesDecoded"].as_u64().filter(|frames| *frames > 0)
        })
        .await
    }

    /// Checks that the page receives video: frames decoded keep growing.
    async fn assert_receives_video(&self) {
        let before = self.frames_decoded().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = self.frames_decoded().await;
        assert!(
            after > before + 5,
            "{}: framesDecoded went from {before} to {after}",
            self.name
        );
    }

    /// The fingerprints (`a=fingerprint:`) of the local and remote SDP.
    async fn fingerprints(&self) -> (String, String) {
        let sdp = self
            .js("const pc = window.loopPeerConnection; \
                 return [pc.localDescription.sdp, pc.remoteDescription.sdp];")
            .await;
        let first = |sdp: &Value| {
            sdp.as_str()
                .unwrap()
                .lines()
                .find_map(|line| line.strip_prefix("a=fingerprint:"))
                .expect("a fingerprint in the SDP")
                .trim()
                .to_string()
        };
        (first(&sdp[0]), first(&sdp[1]))
    }

    /// Waits until the `#home-view` of Bob's page is up (session registered,
    /// links loaded).
    async fn wait_home(&self) {
        self.wait_shown("#home-view").await;
    }

    /// Bob's page: creates a link for `caller_id`, returns its URL.
    async fn create_link(&self, caller_id: &str, issuer: &str) -> String {
        self.wait_home().await;
        let before = self
            .js("return document.querySelectorAll('#links li').length;")
            .await;
        self.type_into("#caller-id", caller_id).await;
        // Enter in the form submits it, as with the keyboard alone.
        self.type_into("#issuer", &format!("{issuer}\u{E007}"))
            .await;
        self.wait("listing the new link", async |page| {
            let count = page
                .js("return document.querySelectorAll('#links li').length;")
                .await;
            (count.as_u64()? > before.as_u64()?).then_some(())
        })
        .await;
        let url = self
            .js("return document.querySelector('#links li.new .link-url').value;")
            .await;
        url.as_str().unwrap().to_string()
    }

    /// Asks the page's scripts to use TURN relays only (the test hook of
    /// call.js), on the page's origin.
    async fn force_relay(&self, origin: &str) {
        self.goto(&format!("{origin}/__heartbeat__")).await;
        self.js("localStorage.setItem('loop.test.iceTransportPolicy', 'relay'); return true;")
            .await;
    }

    /// Script errors and Content-Security-Policy violations the browser
    /// logged since the last call (chromedriver's log endpoint).
    async fn console_errors(&self) -> Vec<String> {
        let session = self.client.session_id().await.unwrap().unwrap();
        let log: Value = common::client()
            .post(format!("{}/session/{session}/se/log", self.driver))
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        log["value"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no browser log: {log}", self.name))
            .iter()
            .filter_map(|entry| entry["message"].as_str())
            .filter(|message| {
                message.contains("Content Security Policy")
                    || message.contains("Uncaught")
                    || message.contains("TypeError")
            })
            .map(str::to_string)
            .collect()
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// No script error or Content-Security-Policy violation in the pages' consoles.
async fn assert_clean_console(pages: &[&Page]) {
    for page in pages {
        let errors = page.console_errors().await;
        assert!(errors.is_empty(), "{}: {errors:#?}", page.name);
    }
}

/// The states in `progress` (space-separated), checked to contain `expected`
/// in that order (other states may come between).
fn assert_progress_in_order(page: &str, progress: &str, expected: &[&str]) {
    let seen: Vec<&str> = progress.split_whitespace().collect();
    let mut rest = seen.iter();
    for state in expected {
        assert!(
            rest.any(|s| s == state),
            "{page}: progress {seen:?} lacks {expected:?} in order"
        );
    }
}

/// What both pages show: six digits, from SHA-256 over both fingerprints.
fn expected_code(a: &str, b: &str) -> String {
    let mut pair = [a, b];
    pair.sort();
    let digest = Sha256::digest(pair.join("\n").as_bytes());
    let number = u32::from_be_bytes(digest[..4].try_into().unwrap()) % 1_000_000;
    let digits = format!("{number:06}");
    format!("{} {}", &digits[..3], &digits[3..])
}

/// Bob's page makes a link; Alice opens it and calls with video; Bob's page
/// rings and he accepts. Returns once both are connected.
async fn ring_and_answer(bob: &Page, alice: &Page, bob_url: &str, alice_origin: &str) {
    bob.goto(&format!("{bob_url}/")).await;
    let link = bob.create_link("Alice", "Bob").await;
    let token = link.rsplit('/').next().unwrap();
    alice.goto(&format!("{alice_origin}/c/{token}")).await;
    alice.click("#call-video").await;
    bob.wait_state("ringing").await;
    bob.click("#accept").await;
    alice.wait_state("connected").await;
    bob.wait_state("connected").await;
}

/// Both pages connected: both receive video and show the same code, made
/// from both fingerprints.
async fn assert_talking(alice: &Page, bob: &Page) -> String {
    alice.assert_receives_video().await;
    bob.assert_receives_video().await;
    let (alice_local, alice_remote) = alice.fingerprints().await;
    let (bob_local, bob_remote) = bob.fingerprints().await;
    assert_eq!(alice_local, bob_remote, "what Alice sent is what Bob got");
    assert_eq!(bob_local, alice_remote, "what Bob sent is what Alice got");
    let code = expected_code(&alice_local, &bob_local);
    for page in [alice, bob] {
        let info = page
            .wait("showing the code", async |page| {
                let info = page.call().await;
                (!info.code.is_empty()).then_some(info)
            })
            .await;
        assert_eq!(info.code, code, "{}: the verification code", page.name);
    }
    code
}

#[tokio::test]
async fn alice_and_bob_talk_with_video() {
    let _one_at_a_time = BROWSERS.lock().await;
    let server = TestServer::start().await;
    let mut driver = ChromeDriver::start().await;
    let bob = driver.browser("bob").await;
    let alice = driver.browser("alice").await;

    // Bob's page sets up its device session and makes a link for Alice.
    bob.goto(&format!("{}/", server.url)).await;
    let link = bob.create_link("Alice", "Bob").await;
    assert!(
        link.starts_with(&format!("{}/c/", server.url)),
        "the link: {link}"
    );

    // Alice opens it.
    alice.goto(&link).await;
    assert_eq!(alice.text("h1").await, "Do you want to call Bob?");
    alice.screenshot("alice-question").await;
    alice.click("#call-video").await;

    // Bob's page rings, with the focus on Accept: he answers with Enter.
    let ringing = bob.wait_state("ringing").await;
    assert_eq!(ringing.status, "Incoming video call from Alice.");
    assert_eq!(alice.wait_state("ringing").await.status, "Ringing Bob…");
    bob.screenshot("bob-ringing").await;
    alice.screenshot("alice-ringing").await;
    let focused = bob.client.active_element().await.unwrap();
    assert_eq!(focused.attr("id").await.unwrap().as_deref(), Some("accept"));
    focused.send_keys("\u{E007}").await.unwrap();

    // Both connect, receive video, and show the same code.
    let alice_info = alice.wait_state("connected").await;
    let bob_info = bob.wait_state("connected").await;
    assert_eq!(alice_info.peer_state.as_deref(), Some("connected"));
    assert_eq!(bob_info.peer_state.as_deref(), Some("connected"));
    assert_eq!(alice_info.status, "Connected with Bob.");
    assert_eq!(bob_info.status, "Connected with Alice.");
    let code = assert_talking(&alice, &bob).await;
    assert!(
        code.len() == 7 && code.chars().filter(char::is_ascii_digit).count() == 6,
        "{code}"
    );
    alice.screenshot("alice-connected").await;
    bob.screenshot("bob-connected").await;
    alice.client.set_window_size(390, 844).await.unwrap();
    alice.screenshot("alice-connected-phone").await;
    alice.client.set_window_size(1024, 800).await.unwrap();

    // Both saw the call go through each state, in order.
    let expected = ["init", "alerting", "connecting", "connected"];
    for page in [&alice, &bob] {
        let info = page.call().await;
        assert_progress_in_order(page.name, &info.progress, &expected);
    }

    // The controls: mute and camera off say so.
    alice.click("#mute").await;
    assert_eq!(alice.text("#status").await, "Microphone muted.");
    assert_eq!(
        alice.js("return window.loopPeerConnection.getSenders().find((s) => s.track && s.track.kind === 'audio').track.enabled;").await,
        json!(false)
    );
    alice.click("#mute").await;
    alice.click("#camera").await;
    assert_eq!(alice.text("#status").await, "Camera off.");
    alice.click("#camera").await;

    // Nothing the pages did broke their Content-Security-Policy or threw.
    assert_clean_console(&[&alice, &bob]).await;

    // Alice hangs up: the call ends on both sides.
    alice.click("#hangup").await;
    let alice_end = alice.wait_state("ended").await;
    assert_eq!(alice_end.end_reason.as_deref(), Some("closed"));
    assert_eq!(alice_end.status, "You hung up.");
    let bob_end = bob.wait_state("ended").await;
    assert_eq!(bob_end.end_reason.as_deref(), Some("closed"));
    assert_eq!(
        bob_end.status,
        "The call has ended: the connection was closed."
    );
    bob.screenshot("bob-ended").await;

    // Back to his links.
    bob.click("#done").await;
    bob.wait_home().await;
    assert_clean_console(&[&alice, &bob]).await;
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn calls_that_nobody_takes_end_with_their_reason() {
    let _one_at_a_time = BROWSERS.lock().await;
    let server = TestServer::start_with(ServerOptions {
        extra_toml: "[progress]\nringing_seconds = 4\n".into(),
        ..Default::default()
    })
    .await;
    let mut driver = ChromeDriver::start().await;
    let bob = driver.browser("bob").await;
    let alice = driver.browser("alice").await;
    bob.goto(&format!("{}/", server.url)).await;
    let link = bob.create_link("Alice", "Bob").await;

    // Alice cancels while it rings.
    alice.goto(&link).await;
    alice.click("#call-audio").await;
    assert_eq!(
        bob.wait_state("ringing").await.status,
        "Incoming audio call from Alice."
    );
    alice.wait_state("ringing").await;
    assert_eq!(alice.text("#hangup").await, "Cancel");
    alice.click("#hangup").await;
    let ended = alice.wait_state("ended").await;
    assert_eq!(ended.end_reason.as_deref(), Some("cancel"));
    assert_eq!(ended.status, "You cancelled the call.");
    let ended = bob.wait_state("ended").await;
    assert_eq!(ended.end_reason.as_deref(), Some("cancel"));
    assert_eq!(ended.status, "Alice cancelled the call.");
    bob.click("#done").await;

    // Bob declines.
    alice.goto(&link).await;
    alice.click("#call-video").await;
    bob.wait_state("ringing").await;
    bob.click("#reject").await;
    let ended = bob.wait_state("ended").await;
    assert_eq!(ended.end_reason.as_deref(), Some("reject"));
    assert_eq!(ended.status, "You declined the call.");
    let ended = alice.wait_state("ended").await;
    assert_eq!(ended.end_reason.as_deref(), Some("reject"));
    assert_eq!(ended.status, "Bob declined the call.");
    alice.screenshot("alice-declined").await;
    bob.click("#done").await;

    // Nobody answers.
    alice.goto(&link).await;
    alice.click("#call-video").await;
    bob.wait_state("ringing").await;
    let ended = alice.wait_state("ended").await;
    assert_eq!(ended.end_reason.as_deref(), Some("timeout"));
    assert_eq!(ended.status, "No answer: Bob did not pick up.");
    assert_progress_in_order(
        "alice",
        &ended.progress,
        &["init", "alerting", "terminated:timeout"],
    );
    let ended = bob.wait_state("ended").await;
    assert_eq!(ended.end_reason.as_deref(), Some("timeout"));
    assert_eq!(ended.status, "Missed call from Alice.");
    bob.screenshot("bob-missed").await;
    assert_clean_console(&[&alice, &bob]).await;
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn links_that_do_not_work_show_a_page() {
    let _one_at_a_time = BROWSERS.lock().await;
    let server = TestServer::start_with(ServerOptions {
        // Expired rows stay (and answer 410) until the test is over.
        env: vec![(
            "LOOP_DATABASE__PURGE_INTERVAL_SECONDS".into(),
            "86400".into(),
        )],
        ..Default::default()
    })
    .await;
    let mut driver = ChromeDriver::start().await;
    let bob = driver.browser("bob").await;
    let alice = driver.browser("alice").await;

    // Bob's clock is an hour off: his first request is refused as stale, and
    // the page corrects its clock from the server's and goes on.
    bob.goto(&format!("{}/__heartbeat__", server.url)).await;
    bob.js("localStorage.setItem('loop.clockOffset', '-3600'); return true;")
        .await;
    bob.goto(&format!("{}/", server.url)).await;
    let expiring = bob.create_link("Carol", "Bob").await;
    let offset = bob
        .js("return Number(localStorage.getItem('loop.clockOffset'));")
        .await;
    assert!(offset.as_i64().unwrap().abs() < 120, "corrected: {offset}");
    let revoked = bob.create_link("Dave", "Bob").await;
    bob.click("#links li.new .copy").await;
    bob.wait("copying", async |page| {
        let status = page.text("#status").await;
        (status == "Link for Dave copied."
            || status == "The link for Dave is selected: copy it with your keyboard.")
            .then_some(())
    })
    .await;
    // Both listed (made in the same second: in either order); the session
    // survives a reload.
    bob.goto(&format!("{}/", server.url)).await;
    bob.wait("listing both links", async |page| {
        let listed = page
            .js("return [...document.querySelectorAll('#links .link-url')].map((i) => i.value).sort();")
            .await;
        let mut expected = [revoked.clone(), expiring.clone()];
        expected.sort();
        (listed == json!(expected)).then_some(())
    })
    .await;
    bob.screenshot("bob-links").await;
    bob.client.set_window_size(390, 844).await.unwrap();
    bob.screenshot("bob-links-phone").await;
    bob.client.set_window_size(1024, 800).await.unwrap();

    // An expired link.
    let token = expiring.rsplit('/').next().unwrap();
    crate::errors::expire_call_url(&server.database_url, token).await;
    alice.goto(&expiring).await;
    assert_eq!(alice.client.title().await.unwrap(), "This link has expired");
    assert_eq!(alice.text("h1").await, "This link has expired");
    alice.screenshot("alice-expired-link").await;

    // A revoked link: Bob revokes it on his page.
    let token = revoked.rsplit('/').next().unwrap();
    bob.click(&format!("#links li[data-token='{token}'] .revoke"))
        .await;
    bob.wait("revoking", async |page| {
        let status = page.text("#status").await;
        (status == "Link for Dave revoked: it no longer works.").then_some(())
    })
    .await;
    alice.goto(&revoked).await;
    assert_eq!(alice.text("h1").await, "This link does not work");

    // An unknown one.
    alice.goto(&format!("{}/c/nosuchtoken", server.url)).await;
    assert_eq!(alice.text("h1").await, "This link does not work");
    assert_clean_console(&[&alice, &bob]).await;
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn a_second_tab_of_bob_loses_and_a_reload_rejoins() {
    let _one_at_a_time = BROWSERS.lock().await;
    let server = TestServer::start().await;
    let mut driver = ChromeDriver::start().await;
    let bob = driver.browser("bob").await;
    let alice = driver.browser("alice").await;
    bob.goto(&format!("{}/", server.url)).await;
    let link = bob.create_link("Alice", "Bob").await;

    // A second window of Bob's browser: the same device session.
    let first = bob.client.window().await.unwrap();
    let second = bob.client.new_window(false).await.unwrap().handle;
    bob.client.switch_to_window(second.clone()).await.unwrap();
    bob.goto(&format!("{}/", server.url)).await;
    bob.wait_home().await;

    alice.goto(&link).await;
    alice.click("#call-video").await;
    // Both windows ring; the first accepts; the second loses.
    bob.wait_state("ringing").await;
    bob.client.switch_to_window(first.clone()).await.unwrap();
    bob.wait_state("ringing").await;
    bob.click("#accept").await;
    bob.client.switch_to_window(second.clone()).await.unwrap();
    let lost = bob.wait_state("ended").await;
    assert_eq!(lost.end_reason.as_deref(), Some("answered-elsewhere"));
    assert_eq!(lost.status, "The call was answered on another device.");
    bob.screenshot("bob-answered-elsewhere").await;
    bob.client.close_window().await.unwrap();
    bob.client.switch_to_window(first).await.unwrap();
    alice.wait_state("connected").await;
    bob.wait_state("connected").await;
    let before = assert_talking(&alice, &bob).await;

    // Bob reloads: his page rejoins the call, and Alice's offers again.
    bob.client.refresh().await.unwrap();
    let rejoined = bob.wait_state("connected").await;
    assert_eq!(rejoined.end_reason, None);
    alice.wait_state("connected").await;
    let after = assert_talking(&alice, &bob).await;
    assert_ne!(before, after, "new DTLS certificates, new code");

    // Alice reloads too.
    alice.client.refresh().await.unwrap();
    alice.wait_state("connected").await;
    bob.wait_state("connected").await;
    assert_talking(&alice, &bob).await;
    alice.screenshot("alice-rejoined").await;

    // Bob hangs up.
    bob.click("#hangup").await;
    assert_eq!(
        bob.wait_state("ended").await.end_reason.as_deref(),
        Some("closed")
    );
    assert_eq!(
        alice.wait_state("ended").await.end_reason.as_deref(),
        Some("closed")
    );
    // A reload after the call does not rejoin it.
    alice.client.refresh().await.unwrap();
    alice.wait_shown("#call-video").await;
    assert_clean_console(&[&alice, &bob]).await;
    alice.close().await;
    bob.close().await;
}

/// Each side reloads twice during the call and the call goes on: a
/// connected call does not end when a rejoined page's socket closes.
#[tokio::test]
async fn a_call_survives_repeated_reloads() {
    let _one_at_a_time = BROWSERS.lock().await;
    let server = TestServer::start().await;
    let mut driver = ChromeDriver::start().await;
    let bob = driver.browser("bob").await;
    let alice = driver.browser("alice").await;
    ring_and_answer(&bob, &alice, &server.url, &server.url).await;
    for page in [&bob, &bob, &alice, &alice] {
        page.client.refresh().await.unwrap();
        page.wait_state("connected").await;
        let other = if std::ptr::eq(page, &bob) {
            &alice
        } else {
            &bob
        };
        other.wait_state("connected").await;
    }
    assert_talking(&alice, &bob).await;
    alice.click("#hangup").await;
    assert_eq!(
        bob.wait_state("ended").await.end_reason.as_deref(),
        Some("closed")
    );
    assert_clean_console(&[&alice, &bob]).await;
    alice.close().await;
    bob.close().await;
}

/// Debian's coturn on 127.0.0.1, taking `use-auth-secret` credentials.
struct Turn {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Turn {
    async fn start(secret: &str) -> Turn {
        assert!(
            Path::new(TURNSERVER).exists(),
            "{TURNSERVER} is required (Debian coturn; scripts/test installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap().port()
        };
        let log = dir.path().join("turn.log");
        let child = Command::new(TURNSERVER)
            .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .args([
                "--use-auth-secret",
                "--realm=loop.test",
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                "--no-cli",
                "--fingerprint",
                // Both relays are on 127.0.0.1: each is the other's peer.
                "--allow-loopback-peers",
                "--simple-log",
                "--verbose",
            ])
            .arg(format!("--static-auth-secret={secret}"))
            .arg(format!("--log-file={}", log.display()))
            .arg(format!(
                "--pidfile={}",
                dir.path().join("turn.pid").display()
            ))
            .arg(format!("--userdb={}", dir.path().join("turndb").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnserver");
        let turn = Turn {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !turn.logs().contains("listener opened on") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "turnserver did not start: {}",
                turn.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        turn
    }

    /// coturn names its log file after the one given, with a date.
    fn logs(&self) -> String {
        let dir = self.log.parent().unwrap();
        let mut text = String::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            if entry.file_name().to_string_lossy().starts_with("turn") {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        text
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_call_through_turn_only() {
    let _one_at_a_time = BROWSERS.lock().await;
    let secret = hex::encode(rand::random::<[u8; 16]>());
    let turn = Turn::start(&secret).await;
    let server = TestServer::start_with(ServerOptions {
        extra_toml: format!(
            "[ice]\nturn_urls = [\"turn:127.0.0.1:{}?transport=udp\"]\n\n[secrets]\nturn_secret = \"{secret}\"\n",
            turn.port
        ),
        ..Default::default()
    })
    .await;
    let mut driver = ChromeDriver::start().await;
    let bob = driver.browser("bob").await;
    let alice = driver.browser("alice").await;
    bob.force_relay(&server.url).await;
    alice.force_relay(&server.url).await;

    ring_and_answer(&bob, &alice, &server.url, &server.url).await;
    assert_talking(&alice, &bob).await;
    for page in [&alice, &bob] {
        let stats = page.stats().await;
        assert_eq!(
            (stats["local"].as_str(), stats["remote"].as_str()),
            (Some("relay"), Some("relay")),
            "{}: the selected pair goes through TURN: {stats}",
            page.name
        );
    }
    assert!(
        turn.logs().contains("ALLOCATE processed, success"),
        "coturn allocated relays: {}",
        turn.logs()
    );
    alice.click("#hangup").await;
    bob.wait_state("ended").await;
    assert_clean_console(&[&alice, &bob]).await;
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn alice_on_one_instance_and_bob_on_another() {
    let _one_at_a_time = BROWSERS.lock().await;
    // PostgreSQL whatever LOOP_TEST_DATABASE says: sharing is the point.
    let database = fresh_postgres_database().await;
    let servers = TestServer::start_all(ServerOptions {
        database_url: Some(database.url.clone()),
        processes: 2,
        ..Default::default()
    })
    .await;
    let (a, b) = (&servers[0], &servers[1]);
    assert_ne!(a.url, b.url);
    let mut driver = ChromeDriver::start().await;
    let bob = driver.browser("bob").await;
    let alice = driver.browser("alice").await;

    // Bob's page is on B, Alice's on A.
    ring_and_answer(&bob, &alice, &b.url, &a.url).await;
    assert_talking(&alice, &bob).await;
    let expected = ["init", "alerting", "connecting", "connected"];
    for page in [&alice, &bob] {
        let info = page.call().await;
        assert_progress_in_order(page.name, &info.progress, &expected);
    }
    bob.click("#hangup").await;
    assert_eq!(
        alice.wait_state("ended").await.end_reason.as_deref(),
        Some("closed")
    );
    assert_clean_console(&[&alice, &bob]).await;
    alice.close().await;
    bob.close().await;
    drop(servers);
}
