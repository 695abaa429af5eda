//! The storage layer against a real SQLite file and a real PostgreSQL
//! database, opened the way the server opens it: `store::connect(&config)`.
//!
//! Every behaviour test runs on both backends; the backend's name is in each
//! assertion message.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use loop_server::config::Config;
use loop_server::store::{
    self, Announcement, Call, CallState, CallUrl, CallUrlUpdate, PushTopic, PushUrl, Session,
    SqlStore, Store, StoreError,
};
use tempfile::TempDir;

/// A fixed "now" so expiry is decided by the data, not the wall clock.
const NOW: i64 = 1_700_000_000;

struct Db {
    name: &'static str,
    url: String,
    _dir: Option<TempDir>,
    _postgres: Option<common::PostgresDatabase>,
}

impl Db {
    fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("loop.db").display());
        Db {
            name: "sqlite",
            url,
            _dir: Some(dir),
            _postgres: None,
        }
    }

    async fn postgres() -> Db {
        let database = common::fresh_postgres_database().await;
        Db {
            name: "postgres",
            url: database.url.clone(),
            _dir: None,
            _postgres: Some(database),
        }
    }

    /// Rows in `hawk_nonces` for a session, read straight from the database:
    /// the trait only records nonces of live sessions, so it cannot tell.
    async fn nonce_count(&self, id_hmac: &str) -> i64 {
        let store = SqlStore::connect(&config(&self.url)).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM hawk_nonces WHERE id_hmac = $1")
            .bind(id_hmac)
            .fetch_one(store.pool())
            .await
            .unwrap()
    }

    /// The store as its concrete type, for what only it shows (batch stats).
    async fn open_sql(&self) -> Arc<SqlStore> {
        Arc::new(
            SqlStore::connect(&config(&self.url))
                .await
                .unwrap_or_else(|err| panic!("{}: connect: {err:#}", self.name)),
        )
    }

    async fn open(&self) -> Arc<dyn Store> {
        store::connect(&config(&self.url))
            .await
            .unwrap_or_else(|err| panic!("{}: connect: {err:#}", self.name))
    }
}

async fn backends() -> Vec<Db> {
    vec![Db::sqlite(), Db::postgres().await]
}

fn config(url: &str) -> Config {
    let mut config = Config::default();
    config.database.url = Some(url.to_string());
    config
}

fn id(prefix: &str) -> String {
    format!("{prefix}-{}", hex::encode(rand::random::<[u8; 8]>()))
}

fn session(user_id: &str, expires_at: i64) -> Session {
    Session {
        id_hmac: id("session"),
        key: hex::encode(rand::random::<[u8; 32]>()),
        user_id: user_id.into(),
        expires_at,
    }
}

fn push(topic: PushTopic, url: impl Into<String>) -> PushUrl {
    PushUrl {
        topic,
        url: url.into(),
    }
}

fn call_url(user_id: &str, created_at: i64, expires_at: i64) -> CallUrl {
    CallUrl {
        token: id("token"),
        user_id: user_id.into(),
        caller_id: "alice@example.com".into(),
        issuer: Some("Bob".into()),
        subject: None,
        created_at,
        expires_at,
    }
}

fn call(user_id: &str, created_at: i64, expires_at: i64) -> Call {
    Call {
        call_id: id("call"),
        user_id: user_id.into(),
        call_token: id("token"),
        call_url: "http://127.0.0.1/c/token".into(),
        url_creation_date: created_at - 100,
        caller_id: "alice@example.com".into(),
        call_type: "audio-video".into(),
        subject: Some("hello".into()),
        channel: None,
        provider: "loopback".into(),
        session_id: id("provider-session"),
        callee_token: id("callee-token"),
        api_key: "api-key".into(),
        caller_websocket_token: id("ws-caller"),
        callee_websocket_token: id("ws-callee"),
        progress_url: "wss://127.0.0.1/websocket".into(),
        created_at,
        expires_at,
    }
}

#[tokio::test]
async fn sessions_are_live_until_they_expire_and_touch_extends_them() {
    for db in backends().await {
        let store = db.open().await;
        let name = db.name;
        store.ping().await.unwrap();

        let live = session("user-1", NOW + 60);
        store.create_session(&live, &[]).await.unwrap();
        assert_eq!(
            store.session(&live.id_hmac, NOW).await.unwrap(),
            Some(live.clone()),
            "{name}"
        );
        assert_eq!(store.session("unknown", NOW).await.unwrap(), None, "{name}");
        // Expired at exactly its expiry time.
        assert_eq!(
            store.session(&live.id_hmac, NOW + 60).await.unwrap(),
            None,
            "{name}"
        );

        store
            .touch_session(&live.id_hmac, NOW + 3600)
            .await
            .unwrap();
        let touched = store
            .session(&live.id_hmac, NOW + 60)
            .await
            .unwrap()
            .expect("touched session is live");
        assert_eq!(touched.expires_at, NOW + 3600, "{name}");
        assert_eq!(touched.key, live.key, "{name}");

        // A second session with the same id must never replace the first one's key.
        let mut clash = session("intruder", NOW + 60);
        clash.id_hmac = live.id_hmac.clone();
        assert!(
            matches!(
                store.create_session(&clash, &[]).await,
                Err(StoreError::Conflict(_))
            ),
            "{name}: duplicate session id accepted, or not reported as a conflict"
        );
        assert_eq!(
            store
                .session(&live.id_hmac, NOW)
                .await
                .unwrap()
                .unwrap()
                .user_id,
            "user-1",
            "{name}"
        );

        // Touching an unknown session is harmless.
        store.touch_session("unknown", NOW).await.unwrap();
    }
}

#[tokio::test]
async fn a_nonce_is_accepted_once_per_session() {
    for db in backends().await {
        let store = db.open().await;
        let name = db.name;
        let a = session("user-1", NOW + 60);
        let b = session("user-1", NOW + 60);
        store.create_session(&a, &[]).await.unwrap();
        store.create_session(&b, &[]).await.unwrap();

        assert!(
            store
                .remember_nonce_of_live_session(&a.id_hmac, "n1", NOW + 120, NOW)
                .await
                .unwrap(),
            "{name}"
        );
        assert!(
            !store
                .remember_nonce_of_live_session(&a.id_hmac, "n1", NOW + 120, NOW)
                .await
                .unwrap(),
            "{name}: replay accepted"
        );
        assert!(
            !store
                .remember_nonce_of_live_session(&a.id_hmac, "n1", NOW + 999, NOW)
                .await
                .unwrap(),
            "{name}: replay accepted"
        );
        assert!(
            store
                .remember_nonce_of_live_session(&a.id_hmac, "n2", NOW + 120, NOW)
                .await
                .unwrap(),
            "{name}"
        );
        // Nonces are per session.
        assert!(
            store
                .remember_nonce_of_live_session(&b.id_hmac, "n1", NOW + 120, NOW)
                .await
                .unwrap(),
            "{name}"
        );

        // Concurrent replays: exactly one wins.
        let attempts = (0..20).map(|_| {
            let store = store.clone();
            let id = a.id_hmac.clone();
            tokio::spawn(async move {
                store
                    .remember_nonce_of_live_session(&id, "raced", NOW + 120, NOW)
                    .await
                    .unwrap()
            })
        });
        let wins = futures::future::join_all(attempts)
            .await
            .into_iter()
            .filter(|won| *won.as_ref().unwrap())
            .count();
        assert_eq!(wins, 1, "{name}: concurrent replays");

        // A nonce is refused for a session that is unknown or no longer live,
        // so a cached Hawk key cannot outlive its session.
        assert!(
            !store
                .remember_nonce_of_live_session("no-such-session", "n9", NOW + 120, NOW)
                .await
                .unwrap(),
            "{name}: unknown session"
        );
        assert!(
            !store
                .remember_nonce_of_live_session(&a.id_hmac, "n9", NOW + 120, NOW + 60)
                .await
                .unwrap(),
            "{name}: expired session"
        );
        store.delete_user("user-1").await.unwrap();
        assert!(
            !store
                .remember_nonce_of_live_session(&b.id_hmac, "n9", NOW + 120, NOW)
                .await
                .unwrap(),
            "{name}: deleted session"
        );
    }
}

/// SQLite appends nonces and checks them in the writing process's memory
/// (`nonce_ledger.rs`): a nonce is still accepted once when another store
/// (another process) writes to the same file, and after a restart.
#[tokio::test]
async fn sqlite_nonces_are_accepted_once_across_stores_on_one_file_and_restarts() {
    let db = Db::sqlite();
    let s = session("user-1", NOW + 600);
    let (a, b) = (db.open().await, db.open().await);
    a.create_session(&s, &[]).await.unwrap();
    let remember = |store: &Arc<dyn Store>, nonce: &'static str| {
        let (store, id_hmac) = (store.clone(), s.id_hmac.clone());
        async move {
            store
                .remember_nonce_of_live_session(&id_hmac, nonce, NOW + 120, NOW)
                .await
                .unwrap()
        }
    };
    assert!(remember(&a, "n1").await);
    // b reads the table in at its first nonce.
    assert!(!remember(&b, "n1").await, "b accepted a's nonce");
    assert!(remember(&b, "n2").await);
    // a has not read b's row: the insert itself finds it.
    assert!(!remember(&a, "n2").await, "a accepted b's nonce");
    assert!(remember(&a, "n3").await);
    assert!(remember(&a, "n4").await);
    assert!(!remember(&b, "n3").await, "b accepted a's nonce");
    // b's next row follows a's: b reads those in, and then holds them.
    assert!(remember(&b, "n5").await);
    assert!(remember(&b, "n6").await);
    assert!(!remember(&b, "n4").await, "b accepted a's nonce");
    assert!(!remember(&a, "n5").await, "a accepted b's nonce");
    assert!(!remember(&a, "n1").await, "a accepted its own nonce twice");
    drop((a, b));

    let restarted = db.open().await;
    for nonce in ["n1", "n2", "n3", "n4", "n5", "n6"] {
        assert!(
            !remember(&restarted, nonce).await,
            "{nonce} accepted again after a restart"
        );
    }
    assert!(remember(&restarted, "n7").await);
    // Expired nonces may come again: their timestamps no longer pass.
    assert!(
        restarted
            .remember_nonce_of_live_session(&s.id_hmac, "n1", NOW + 300, NOW + 121)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn push_urls_are_per_session_and_topic_and_listed_per_user() {
    for db in backends().await {
        let store = db.open().await;
        let name = db.name;
        let phone = session("user-1", NOW + 60);
        let laptop = session("user-1", NOW + 60);
        let other = session("user-2", NOW + 60);
        for s in [&phone, &laptop, &other] {
            store.create_session(s, &[]).await.unwrap();
        }

        store
            .set_push_urls(
                &phone,
                &[push(PushTopic::Calls, "https://push.test/phone-old")],
            )
            .await
            .unwrap();
        store
            .set_push_urls(&phone, &[push(PushTopic::Calls, "https://push.test/phone")])
            .await
            .unwrap();
        store
            .set_push_urls(
                &phone,
                &[push(PushTopic::Rooms, "https://push.test/phone-rooms")],
            )
            .await
            .unwrap();
        store
            .set_push_urls(
                &laptop,
                &[push(PushTopic::Calls, "https://push.test/laptop")],
            )
            .await
            .unwrap();
        store
            .set_push_urls(&other, &[push(PushTopic::Calls, "https://push.test/other")])
            .await
            .unwrap();

        let mut calls = store
            .push_urls("user-1", PushTopic::Calls, NOW)
            .await
            .unwrap();
        calls.sort();
        assert_eq!(
            calls,
            ["https://push.test/laptop", "https://push.test/phone"],
            "{name}"
        );
        assert_eq!(
            store
                .push_urls("user-1", PushTopic::Rooms, NOW)
                .await
                .unwrap(),
            ["https://push.test/phone-rooms"],
            "{name}"
        );
        assert_eq!(
            store
                .push_urls("user-2", PushTopic::Calls, NOW)
                .await
                .unwrap(),
            ["https://push.test/other"],
            "{name}"
        );
        assert!(
            store
                .push_urls("user-3", PushTopic::Calls, NOW)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );

        // The same device URL registered by two sessions is notified once.
        store
            .set_push_urls(
                &laptop,
                &[push(PushTopic::Rooms, "https://push.test/phone-rooms")],
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .push_urls("user-1", PushTopic::Rooms, NOW)
                .await
                .unwrap(),
            ["https://push.test/phone-rooms"],
            "{name}"
        );

        store.delete_push_urls(&phone).await.unwrap();
        assert_eq!(
            store
                .push_urls("user-1", PushTopic::Calls, NOW)
                .await
                .unwrap(),
            ["https://push.test/laptop"],
            "{name}"
        );
        assert_eq!(
            store
                .push_urls("user-1", PushTopic::Rooms, NOW)
                .await
                .unwrap(),
            ["https://push.test/phone-rooms"],
            "{name}"
        );
        assert_eq!(
            store
                .push_urls("user-2", PushTopic::Calls, NOW)
                .await
                .unwrap(),
            ["https://push.test/other"],
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_session_is_created_with_its_push_urls_which_end_with_it() {
    for db in backends().await {
        let store = db.open().await;
        let name = db.name;
        let phone = session("user-1", NOW + 60);
        let old_laptop = session("user-1", NOW - 1);
        store
            .create_session(
                &phone,
                &[
                    PushUrl {
                        topic: PushTopic::Calls,
                        url: "https://push.test/phone-calls".into(),
                    },
                    PushUrl {
                        topic: PushTopic::Rooms,
                        url: "https://push.test/phone-rooms".into(),
                    },
                ],
            )
            .await
            .unwrap();
        store
            .create_session(
                &old_laptop,
                &[PushUrl {
                    topic: PushTopic::Calls,
                    url: "https://push.test/laptop".into(),
                }],
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .push_urls("user-1", PushTopic::Calls, NOW)
                .await
                .unwrap(),
            ["https://push.test/phone-calls"],
            "{name}: an expired session's device is not woken"
        );
        assert_eq!(
            store
                .push_urls("user-1", PushTopic::Rooms, NOW)
                .await
                .unwrap(),
            ["https://push.test/phone-rooms"],
            "{name}"
        );
        assert_eq!(
            store
                .push_urls("user-1", PushTopic::Calls, NOW - 10)
                .await
                .unwrap(),
            ["https://push.test/laptop", "https://push.test/phone-calls"],
            "{name}"
        );
        // Placing a call reads the call URL and its owner's push URLs at once.
        let url = call_url("user-1", NOW, NOW + 60);
        let lonely = call_url("user-nobody", NOW, NOW + 60);
        store.create_call_url(&url).await.unwrap();
        store.create_call_url(&lonely).await.unwrap();
        assert_eq!(
            store
                .call_url_with_push_urls(&url.token, PushTopic::Calls, NOW)
                .await
                .unwrap(),
            Some((
                url.clone(),
                vec!["https://push.test/phone-calls".to_string()]
            )),
            "{name}"
        );
        assert_eq!(
            store
                .call_url_with_push_urls(&url.token, PushTopic::Calls, NOW - 10)
                .await
                .unwrap(),
            Some((
                url.clone(),
                vec![
                    "https://push.test/laptop".to_string(),
                    "https://push.test/phone-calls".to_string()
                ]
            )),
            "{name}"
        );
        assert_eq!(
            store
                .call_url_with_push_urls(&lonely.token, PushTopic::Calls, NOW)
                .await
                .unwrap(),
            Some((lonely.clone(), vec![])),
            "{name}"
        );
        assert_eq!(
            store
                .call_url_with_push_urls("no-such-token", PushTopic::Calls, NOW)
                .await
                .unwrap(),
            None,
            "{name}"
        );

        store.delete_user("user-1").await.unwrap();
        assert!(
            store
                .push_urls("user-1", PushTopic::Calls, NOW - 10)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
    }
}

/// Writes made at once are grouped into multi-row statements (see
/// store/batch.rs); a row that breaks a constraint must fail alone, and every
/// other write in its group must be stored and answered truthfully. On the
/// single-threaded test runtime every write below is queued before the first
/// group runs, so each clash shares a statement with good rows; the batch
/// stats show both that rows shared statements and that the failed ones were
/// retried row by row.
#[tokio::test]
async fn concurrent_writes_are_grouped_and_a_bad_row_fails_alone() {
    for db in backends().await {
        let sql = db.open_sql().await;
        let store: Arc<dyn Store> = sql.clone();
        let name = db.name;
        let existing_session = session("user-x", NOW + 60);
        let existing_url = call_url("user-x", NOW, NOW + 60);
        let existing_call = call("user-x", NOW, NOW + 60);
        store.create_session(&existing_session, &[]).await.unwrap();
        store.create_call_url(&existing_url).await.unwrap();
        store.create_call(&existing_call).await.unwrap();

        let sessions: Vec<Session> = (0..40).map(|_| session("user-g", NOW + 60)).collect();
        let urls: Vec<CallUrl> = (0..40).map(|_| call_url("user-g", NOW, NOW + 60)).collect();
        let calls: Vec<Call> = (0..40).map(|_| call("user-g", NOW, NOW + 60)).collect();
        let clash_session = Session {
            key: "other".into(),
            ..existing_session.clone()
        };
        let clash_url = CallUrl {
            caller_id: "mallory".into(),
            ..existing_url.clone()
        };
        let clash_call = Call {
            caller_id: "mallory".into(),
            ..existing_call.clone()
        };
        // (what, is it a clash, task)
        let mut tasks = Vec::new();
        for i in 0..40 {
            let st = store.clone();
            let (s, push) = (
                sessions[i].clone(),
                vec![PushUrl {
                    topic: PushTopic::Calls,
                    url: format!("https://push.test/g{i:02}"),
                }],
            );
            tasks.push((
                "session",
                tokio::spawn(async move { st.create_session(&s, &push).await.map(|()| true) }),
            ));
            let (st, u) = (store.clone(), urls[i].clone());
            tasks.push((
                "call url",
                tokio::spawn(async move { st.create_call_url(&u).await.map(|()| true) }),
            ));
            let (st, c) = (store.clone(), calls[i].clone());
            tasks.push((
                "call",
                tokio::spawn(async move { st.create_call(&c).await.map(|()| true) }),
            ));
            let (st, id) = (store.clone(), existing_session.id_hmac.clone());
            let nonce = format!("n{}", i % 20); // each nonce twice
            tasks.push((
                "nonce",
                tokio::spawn(async move {
                    st.remember_nonce_of_live_session(&id, &nonce, NOW + 60, NOW)
                        .await
                }),
            ));
            if i == 20 {
                // One clash of each kind, in among the rest.
                let (st, s) = (store.clone(), clash_session.clone());
                tasks.push((
                    "clash",
                    tokio::spawn(async move { st.create_session(&s, &[]).await.map(|()| true) }),
                ));
                let (st, u) = (store.clone(), clash_url.clone());
                tasks.push((
                    "clash",
                    tokio::spawn(async move { st.create_call_url(&u).await.map(|()| true) }),
                ));
                let (st, c) = (store.clone(), clash_call.clone());
                tasks.push((
                    "clash",
                    tokio::spawn(async move { st.create_call(&c).await.map(|()| true) }),
                ));
            }
        }
        let before = sql.batch_stats();
        let writes = tasks.len() as u64;
        let mut accepted_nonces = 0;
        let mut refused_clashes = 0;
        for (what, task) in tasks {
            match (what, task.await.unwrap()) {
                ("clash", result) => {
                    refused_clashes += usize::from(matches!(result, Err(StoreError::Conflict(_))))
                }
                ("nonce", Ok(accepted)) => accepted_nonces += usize::from(accepted),
                (_, Ok(stored)) => assert!(stored),
                (what, Err(err)) => panic!("{name}: {what} failed: {err}"),
            }
        }
        assert_eq!(accepted_nonces, 20, "{name}: each nonce accepted once");
        assert_eq!(
            refused_clashes, 3,
            "{name}: every clash refused as a conflict"
        );
        let after = sql.batch_stats();
        let (jobs, rounds, statements, retries) = (
            after.jobs - before.jobs,
            after.rounds - before.rounds,
            after.statements - before.statements,
            after.row_retries - before.row_retries,
        );
        assert_eq!(jobs, writes, "{name}: {after:?}");
        // 41 rows of each kind but nonces (40), in chunks of 16 + 16 + 9 (8):
        // 12 statements when all share one round, against 163 writes.
        assert!(
            rounds <= 3 && statements <= 3 * 12,
            "{name}: {writes} writes took {rounds} rounds and {statements} statements"
        );
        // Each clash sat in a chunk with good rows: its chunk failed and was
        // retried row by row, which a clash alone in a statement is not.
        assert!(
            retries >= 3 * 2,
            "{name}: {retries} row-by-row retries; the clashes did not share statements"
        );

        let pushed = store
            .push_urls("user-g", PushTopic::Calls, NOW)
            .await
            .unwrap();
        let expected: Vec<String> = (0..40)
            .map(|i| format!("https://push.test/g{i:02}"))
            .collect();
        assert_eq!(pushed, expected, "{name}");
        for u in &urls {
            assert_eq!(
                store.call_url(&u.token).await.unwrap().as_ref(),
                Some(u),
                "{name}"
            );
        }
        let mut listed = store.calls("user-g", 0, NOW).await.unwrap();
        let mut expected_calls = calls.clone();
        listed.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        expected_calls.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        assert_eq!(listed, expected_calls, "{name}");
        // The clashing writes changed nothing.
        assert_eq!(
            store.session(&existing_session.id_hmac, NOW).await.unwrap(),
            Some(existing_session.clone()),
            "{name}"
        );
        assert_eq!(
            store.call_url(&existing_url.token).await.unwrap(),
            Some(existing_url.clone()),
            "{name}"
        );
        assert_eq!(
            store.calls("user-x", 0, NOW).await.unwrap(),
            std::slice::from_ref(&existing_call),
            "{name}"
        );
    }
}

#[tokio::test]
async fn call_urls_expire_but_stay_readable_by_token() {
    for db in backends().await {
        let store = db.open().await;
        let name = db.name;
        let first = call_url("user-1", NOW - 10, NOW + 3600);
        let second = CallUrl {
            subject: Some("Dinner".into()),
            issuer: None,
            ..call_url("user-1", NOW - 5, NOW + 7200)
        };
        let expired = call_url("user-1", NOW - 7200, NOW);
        let others = call_url("user-2", NOW - 10, NOW + 3600);
        for url in [&first, &second, &expired, &others] {
            store.create_call_url(url).await.unwrap();
        }

        assert_eq!(
            store.call_url(&second.token).await.unwrap(),
            Some(second.clone()),
            "{name}"
        );
        // The API tells "expired" from "unknown", so expiry does not hide it here.
        assert_eq!(
            store.call_url(&expired.token).await.unwrap(),
            Some(expired.clone()),
            "{name}"
        );
        assert_eq!(store.call_url("unknown").await.unwrap(), None, "{name}");

        assert_eq!(
            store.call_urls("user-1", NOW).await.unwrap(),
            [first.clone(), second.clone()],
            "{name}"
        );
        assert_eq!(
            store.call_urls("user-2", NOW).await.unwrap(),
            vec![others.clone()],
            "{name}"
        );
        assert_eq!(
            store.call_urls("user-1", NOW + 3600).await.unwrap(),
            vec![second.clone()],
            "{name}"
        );
        assert!(
            store.call_urls("nobody", NOW).await.unwrap().is_empty(),
            "{name}"
        );

        // A duplicate token is refused, not overwritten.
        let clash = CallUrl {
            token: first.token.clone(),
            ..call_url("user-2", NOW, NOW + 60)
        };
        assert!(
            matches!(
                store.create_call_url(&clash).await,
                Err(StoreError::Conflict(_))
            ),
            "{name}: duplicate token accepted, or not reported as a conflict"
        );
        assert_eq!(
            store.call_url(&first.token).await.unwrap(),
            Some(first.clone()),
            "{name}"
        );
    }
}

#[tokio::test]
async fn call_urls_are_updated_and_revoked_only_by_their_owner() {
    for db in backends().await {
        let store = db.open().await;
        let name = db.name;
        let url = call_url("user-1", NOW, NOW + 3600);
        store.create_call_url(&url).await.unwrap();

        let update = CallUrlUpdate {
            subject: Some("Work".into()),
            expires_at: Some(NOW + 60),
            ..Default::default()
        };
        assert!(
            !store
                .update_call_url(&url.token, "user-2", &update)
                .await
                .unwrap(),
            "{name}: foreign update"
        );
        assert!(
            !store
                .update_call_url("unknown", "user-1", &update)
                .await
                .unwrap(),
            "{name}"
        );
        assert_eq!(
            store.call_url(&url.token).await.unwrap(),
            Some(url.clone()),
            "{name}"
        );

        assert!(
            store
                .update_call_url(&url.token, "user-1", &update)
                .await
                .unwrap(),
            "{name}"
        );
        let updated = CallUrl {
            subject: Some("Work".into()),
            expires_at: NOW + 60,
            ..url.clone()
        };
        assert_eq!(
            store.call_url(&url.token).await.unwrap(),
            Some(updated.clone()),
            "{name}"
        );

        // An empty update changes nothing but still finds the URL.
        assert!(
            store
                .update_call_url(&url.token, "user-1", &CallUrlUpdate::default())
                .await
                .unwrap(),
            "{name}"
        );
        assert_eq!(
            store.call_url(&url.token).await.unwrap(),
            Some(updated.clone()),
            "{name}"
        );

        let update = CallUrlUpdate {
            caller_id: Some("carol@example.com".into()),
            issuer: Some("Robert".into()),
            subject: None,
            expires_at: None,
        };
        assert!(
            store
                .update_call_url(&url.token, "user-1", &update)
                .await
                .unwrap(),
            "{name}"
        );
        let updated = CallUrl {
            caller_id: "carol@example.com".into(),
            issuer: Some("Robert".into()),
            ..updated
        };
        assert_eq!(
            store.call_url(&url.token).await.unwrap(),
            Some(updated.clone()),
            "{name}"
        );

        assert!(
            !store.delete_call_url(&url.token, "user-2").await.unwrap(),
            "{name}: foreign revoke"
        );
        assert_eq!(
            store.call_url(&url.token).await.unwrap(),
            Some(updated),
            "{name}"
        );
        assert!(
            store.delete_call_url(&url.token, "user-1").await.unwrap(),
            "{name}"
        );
        assert_eq!(store.call_url(&url.token).await.unwrap(), None, "{name}");
        assert!(
            !store.delete_call_url(&url.token, "user-1").await.unwrap(),
            "{name}: revoked twice"
        );
    }
}

#[tokio::test]
async fn calls_are_listed_by_version_until_they_expire() {
    for db in backends().await {
        let store = db.open().await;
        let name = db.name;
        let old = call("user-1", NOW - 100, NOW + 100);
        let recent = call("user-1", NOW - 10, NOW + 50);
        let newest = Call {
            subject: None,
            ..call("user-1", NOW, NOW + 60)
        };
        let expired = call("user-1", NOW - 5, NOW);
        let foreign = call("user-2", NOW, NOW + 60);
        for c in [&newest, &old, &expired, &recent, &foreign] {
            store.create_call(c).await.unwrap();
        }

        assert_eq!(
            store.calls("user-1", 0, NOW).await.unwrap(),
            [old.clone(), recent.clone(), newest.clone()],
            "{name}"
        );
        // `version` is inclusive.
        assert_eq!(
            store.calls("user-1", NOW - 10, NOW).await.unwrap(),
            [recent.clone(), newest.clone()],
            "{name}"
        );
        assert_eq!(
            store.calls("user-1", NOW + 1, NOW).await.unwrap(),
            [],
            "{name}"
        );
        assert_eq!(
            store.calls("user-1", 0, NOW + 55).await.unwrap(),
            [old.clone(), newest.clone()],
            "{name}"
        );
        assert_eq!(
            store.calls("user-2", 0, NOW).await.unwrap(),
            vec![foreign.clone()],
            "{name}"
        );

        let clash = Call {
            call_id: old.call_id.clone(),
            ..call("user-2", NOW, NOW + 60)
        };
        assert!(
            matches!(
                store.create_call(&clash).await,
                Err(StoreError::Conflict(_))
            ),
            "{name}: duplicate call id accepted, or not reported as a conflict"
        );
    }
}

/// Everything one user can own, on every table.
struct UserData {
    sessions: Vec<Session>,
    call_urls: Vec<CallUrl>,
    calls: Vec<Call>,
}

async fn populate(store: &Arc<dyn Store>, user_id: &str) -> UserData {
    let sessions = vec![session(user_id, NOW + 600), session(user_id, NOW + 600)];
    for s in &sessions {
        store.create_session(s, &[]).await.unwrap();
        assert!(
            store
                .remember_nonce_of_live_session(&s.id_hmac, "nonce", NOW + 60, NOW)
                .await
                .unwrap()
        );
        store
            .set_push_urls(
                s,
                &[push(
                    PushTopic::Calls,
                    format!("https://push.test/{}", s.id_hmac),
                )],
            )
            .await
            .unwrap();
    }
    let mut call_urls = vec![
        call_url(user_id, NOW, NOW + 600),
        call_url(user_id, NOW, NOW + 900),
    ];
    // Listed by creation time, ties by token.
    call_urls.sort_by(|a, b| a.token.cmp(&b.token));
    for url in &call_urls {
        store.create_call_url(url).await.unwrap();
    }
    let calls = vec![call(user_id, NOW, NOW + 60)];
    for c in &calls {
        store.create_call(c).await.unwrap();
    }
    UserData {
        sessions,
        call_urls,
        calls,
    }
}

/// Everything `populate` stored for `user_id` is still there, nonces included.
async fn assert_intact(store: &Arc<dyn Store>, user_id: &str, data: &UserData, name: &str) {
    for s in &data.sessions {
        assert_eq!(
            store.session(&s.id_hmac, NOW).await.unwrap().as_ref(),
            Some(s),
            "{name}"
        );
        assert!(
            !store
                .remember_nonce_of_live_session(&s.id_hmac, "nonce", NOW + 60, NOW)
                .await
                .unwrap(),
            "{name}: nonce of {user_id} lost"
        );
    }
    assert_eq!(
        store
            .push_urls(user_id, PushTopic::Calls, NOW)
            .await
            .unwrap()
            .len(),
        2,
        "{name}"
    );
    assert_eq!(
        store.call_urls(user_id, NOW).await.unwrap(),
        data.call_urls,
        "{name}"
    );
    assert_eq!(
        store.calls(user_id, 0, NOW).await.unwrap(),
        data.calls,
        "{name}"
    );
}

#[tokio::test]
async fn delete_user_removes_only_that_users_data() {
    for db in backends().await {
        let store = db.open().await;
        let name = db.name;
        let gone = populate(&store, "user-gone").await;
        let kept = populate(&store, "user-kept").await;

        store.delete_user("user-gone").await.unwrap();

        for s in &gone.sessions {
            assert_eq!(
                store.session(&s.id_hmac, NOW).await.unwrap(),
                None,
                "{name}"
            );
            // The nonce went with the session.
            assert_eq!(db.nonce_count(&s.id_hmac).await, 0, "{name}: nonce kept");
        }
        assert!(
            store
                .push_urls("user-gone", PushTopic::Calls, NOW)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
        for url in &gone.call_urls {
            assert_eq!(store.call_url(&url.token).await.unwrap(), None, "{name}");
        }
        assert!(
            store.calls("user-gone", 0, NOW).await.unwrap().is_empty(),
            "{name}"
        );

        assert_intact(&store, "user-kept", &kept, name).await;

        // Deleting a user with nothing stored is fine.
        store.delete_user("nobody").await.unwrap();
    }
}

#[tokio::test]
async fn purge_removes_expired_rows_from_every_table_and_keeps_live_ones() {
    for db in backends().await {
        let store = db.open().await;
        let name = db.name;
        let live = populate(&store, "user-live").await;

        // More expired sessions (each with a push URL) than one purge batch holds.
        let expired_sessions: Vec<Session> = (0..1200).map(|_| session("user-old", NOW)).collect();
        for chunk in expired_sessions.chunks(100) {
            let inserts = chunk.iter().map(|s| {
                let store = &store;
                async move {
                    let push = PushUrl {
                        topic: PushTopic::Calls,
                        url: format!("https://push.test/{}", s.id_hmac),
                    };
                    store.create_session(s, &[push]).await
                }
            });
            for inserted in futures::future::join_all(inserts).await {
                inserted.unwrap();
            }
        }
        let expired_session = &expired_sessions[0];
        // Long expired: purged. Recently expired: kept so its link still says "expired".
        let retention = loop_server::store::EXPIRED_CALL_URL_RETENTION_SECONDS;
        let expired_url = call_url("user-live", NOW - retention - 100, NOW - retention);
        store.create_call_url(&expired_url).await.unwrap();
        let recently_expired_url = call_url("user-live", NOW - 100, NOW - 1);
        store.create_call_url(&recently_expired_url).await.unwrap();
        // An ended call goes once it is no longer listed; one that never
        // ended may still be a conversation, and goes after a day.
        let ended_call = call("user-live", NOW - 100, NOW - 1);
        store.create_call(&ended_call).await.unwrap();
        let (_, mut progress) = store
            .call_progress(&ended_call.call_id)
            .await
            .unwrap()
            .unwrap();
        progress.state = CallState::Terminated;
        assert!(
            store
                .update_call_progress(&ended_call.call_id, 0, &progress, None)
                .await
                .unwrap()
        );
        let unfinished_call = call("user-live", NOW - 100, NOW - 1);
        store.create_call(&unfinished_call).await.unwrap();
        let abandoned_call = call("user-live", NOW - 2 * 86400, NOW - 2 * 86400 + 60);
        store.create_call(&abandoned_call).await.unwrap();
        // More expired nonces than one purge batch holds.
        let live_session = &live.sessions[0];
        let nonces = 2500;
        for chunk in (0..nonces).collect::<Vec<_>>().chunks(100) {
            let inserts = chunk.iter().map(|i| {
                let nonce = format!("old-{i}");
                let store = &store;
                async move {
                    store
                        .remember_nonce_of_live_session(&live_session.id_hmac, &nonce, NOW - 1, NOW)
                        .await
                }
            });
            for inserted in futures::future::join_all(inserts).await {
                assert!(inserted.unwrap());
            }
        }

        // Ended calls' provider sessions are claimed for end-session once:
        // the terminated call, the one that expired unanswered and the
        // abandoned one; a terminated call is purged only once claimed.
        let mut claimed: Vec<String> = store
            .claim_ended_sessions(NOW, None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|ended| ended.session_id)
            .collect();
        claimed.sort();
        let mut expected = vec![
            ended_call.session_id.clone(),
            unfinished_call.session_id.clone(),
            abandoned_call.session_id.clone(),
        ];
        expected.sort();
        assert_eq!(claimed, expected, "{name}");
        assert!(
            store
                .claim_ended_sessions(NOW, None, 100)
                .await
                .unwrap()
                .is_empty(),
            "{name}: each session is claimed once"
        );

        // sessions (with their push URLs) + call URL + 2 calls + nonces
        let purged = store.purge_expired(NOW).await.unwrap();
        assert_eq!(purged, 1200 + 1 + 2 + nonces, "{name}");
        assert!(
            store
                .call_progress(&unfinished_call.call_id)
                .await
                .unwrap()
                .is_some(),
            "{name}: a call that may still be in progress is kept"
        );
        for gone in [&ended_call, &abandoned_call] {
            assert!(
                store.call_progress(&gone.call_id).await.unwrap().is_none(),
                "{name}"
            );
        }
        assert_eq!(
            store.purge_expired(NOW).await.unwrap(),
            0,
            "{name}: second purge"
        );

        assert_eq!(
            store.call_url(&expired_url.token).await.unwrap(),
            None,
            "{name}"
        );
        assert_eq!(
            store.call_url(&recently_expired_url.token).await.unwrap(),
            Some(recently_expired_url.clone()),
            "{name}: a recently expired call URL is kept for its 410"
        );
        assert!(
            store
                .push_urls("user-old", PushTopic::Calls, NOW - 1000)
                .await
                .unwrap()
                .is_empty(),
            "{name}: purged with their sessions"
        );
        assert_eq!(
            store.calls("user-live", 0, NOW).await.unwrap(),
            live.calls,
            "{name}"
        );
        assert!(
            store
                .remember_nonce_of_live_session(&live_session.id_hmac, "old-7", NOW + 60, NOW)
                .await
                .unwrap(),
            "{name}"
        );
        // A purged session is gone even for a caller whose clock lags.
        assert_eq!(
            store
                .session(&expired_session.id_hmac, NOW - 1000)
                .await
                .unwrap(),
            None,
            "{name}"
        );

        assert_intact(&store, "user-live", &live, name).await;
    }
}

#[tokio::test]
async fn data_survives_reopening() {
    for db in backends().await {
        let name = db.name;
        let (s, url, c) = (
            session("user-1", NOW + 60),
            call_url("user-1", NOW, NOW + 60),
            call("user-1", NOW, NOW + 60),
        );
        {
            let store = db.open().await;
            store.create_session(&s, &[]).await.unwrap();
            store.create_call_url(&url).await.unwrap();
            store.create_call(&c).await.unwrap();
        }
        // Reopening also re-runs the (already applied) migrations.
        let store = db.open().await;
        assert_eq!(
            store.session(&s.id_hmac, NOW).await.unwrap(),
            Some(s),
            "{name}"
        );
        assert_eq!(
            store.call_url(&url.token).await.unwrap(),
            Some(url),
            "{name}"
        );
        assert_eq!(store.calls("user-1", 0, NOW).await.unwrap(), [c], "{name}");
    }
}

#[tokio::test]
async fn sqlite_uses_wal_and_creates_missing_folders() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/loop.db");
    // No `mode=rwc`: an operator's plain URL must still create the file.
    let store = SqlStore::connect(&config(&format!("sqlite://{}", path.display())))
        .await
        .unwrap();
    assert!(path.exists());
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    // 1 = NORMAL: durable across a process crash in WAL mode.
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(synchronous, 1);
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(foreign_keys, 1);
    // Writers queue for the lock rather than failing with SQLITE_BUSY.
    let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(busy_timeout >= 5000, "busy_timeout {busy_timeout}");
}

#[tokio::test]
async fn sqlite_in_memory_database_works() {
    let store = store::connect(&config("sqlite::memory:")).await.unwrap();
    let s = session("user-1", NOW + 60);
    store.create_session(&s, &[]).await.unwrap();
    assert_eq!(store.session(&s.id_hmac, NOW).await.unwrap(), Some(s));
}

#[tokio::test]
async fn connect_reports_a_bad_database_url() {
    let err = store::connect(&config("mysql://127.0.0.1/loop"))
        .await
        .err()
        .expect("mysql accepted");
    assert!(format!("{err:#}").contains("database.url"), "{err:#}");
    let err = store::connect(&config(
        "postgres://postgres@127.0.0.1:5432/no_such_database_here",
    ))
    .await
    .err();
    let err = err.expect("missing database accepted");
    assert!(format!("{err:#}").contains("database.url"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_writers_wait_for_each_other() {
    let db = Db::sqlite();
    // Two pools on one file: what two server processes sharing it do.
    let stores = [db.open().await, db.open().await];
    let writers = (0..200).map(|i| {
        let store = stores[i % 2].clone();
        tokio::spawn(async move {
            let s = session(&format!("user-{}", i % 7), NOW + 60);
            store.create_session(&s, &[]).await?;
            store
                .remember_nonce_of_live_session(&s.id_hmac, "nonce", NOW + 60, NOW)
                .await?;
            store
                .set_push_urls(
                    &s,
                    &[push(PushTopic::Calls, format!("https://push.test/{i}"))],
                )
                .await?;
            store.create_call(&call(&s.user_id, NOW, NOW + 60)).await?;
            store.touch_session(&s.id_hmac, NOW + 120).await?;
            if i % 10 == 0 {
                store.purge_expired(NOW).await?;
            }
            Ok::<_, StoreError>(s)
        })
    });
    let sessions: Vec<Session> = futures::future::join_all(writers)
        .await
        .into_iter()
        .map(|joined| {
            joined
                .unwrap()
                .unwrap_or_else(|err| panic!("concurrent write failed: {err}"))
        })
        .collect();
    for s in &sessions {
        let stored = stores[0]
            .session(&s.id_hmac, NOW)
            .await
            .unwrap()
            .expect("acknowledged session lost");
        assert_eq!(stored.expires_at, NOW + 120);
    }
    let mut calls = 0;
    let mut push_urls = 0;
    for user in 0..7 {
        calls += stores[1]
            .calls(&format!("user-{user}"), 0, NOW)
            .await
            .unwrap()
            .len();
        push_urls += stores[1]
            .push_urls(&format!("user-{user}"), PushTopic::Calls, NOW)
            .await
            .unwrap()
            .len();
    }
    assert_eq!((calls, push_urls), (200, 200));
}

#[tokio::test]
async fn migrations_run_concurrently_and_repeatedly() {
    // Several processes starting at once against one fresh database.
    let dbs = [Db::postgres().await, Db::sqlite()];
    for db in &dbs {
        let config = config(&db.url);
        let opens = (0..8).map(|_| store::connect(&config));
        for opened in futures::future::join_all(opens).await {
            opened.unwrap_or_else(|err| panic!("{}: concurrent migration: {err:#}", db.name));
        }
        let store = db.open().await;
        let s = session("user-1", NOW + 60);
        store.create_session(&s, &[]).await.unwrap();
        assert_eq!(
            store.session(&s.id_hmac, NOW).await.unwrap(),
            Some(s),
            "{}",
            db.name
        );
    }
}

/// Environment variable that turns `durability_child` into the writer process
/// of `acknowledged_writes_survive_kill_9`.
const CHILD_DATABASE_URL: &str = "LOOP_STORE_TEST_CHILD_DATABASE_URL";

/// Child half of `acknowledged_writes_survive_kill_9`: writes sessions forever,
/// printing each id once the store acknowledged it. Does nothing when run
/// without the variable.
#[tokio::test]
#[ignore = "run by acknowledged_writes_survive_kill_9 as a child process"]
async fn durability_child() {
    let Ok(url) = std::env::var(CHILD_DATABASE_URL) else {
        return;
    };
    let store = store::connect(&config(&url)).await.unwrap();
    let mut stdout = std::io::stdout();
    loop {
        let s = session("user-1", NOW + 60);
        store.create_session(&s, &[]).await.unwrap();
        writeln!(stdout, "ack {}", s.id_hmac).unwrap();
        stdout.flush().unwrap();
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let db = Db::sqlite();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::durability_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DATABASE_URL, &db.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acknowledged = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acknowledged.len() < 300 {
        let line = lines.next().expect("child exited early").unwrap();
        if let Some(id) = line.strip_prefix("ack ") {
            acknowledged.push(id.to_string());
        }
    }
    // SIGKILL while the child is still writing.
    child.kill().unwrap();
    child.wait().unwrap();
    for line in lines.map_while(Result::ok) {
        if let Some(id) = line.strip_prefix("ack ") {
            acknowledged.push(id.to_string());
        }
    }

    let store = db.open().await;
    for id in &acknowledged {
        assert!(
            store.session(id, NOW).await.unwrap().is_some(),
            "acknowledged session {id} lost after kill -9"
        );
    }
}

/// Creates a table and a trigger recording every UPDATE of a `sessions` row:
/// a row-level trigger fires once per statement that changes the row, so it
/// counts statements, which no query of ours can.
async fn count_session_updates(sql: &SqlStore, name: &str) {
    let ddl = if name == "sqlite" {
        "CREATE TABLE test_session_updates (id_hmac TEXT NOT NULL); \
         CREATE TRIGGER test_session_updates AFTER UPDATE ON sessions \
         BEGIN INSERT INTO test_session_updates VALUES (NEW.id_hmac); END;"
    } else {
        "CREATE TABLE test_session_updates (id_hmac TEXT NOT NULL); \
         CREATE FUNCTION test_session_update() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN INSERT INTO test_session_updates VALUES (NEW.id_hmac); RETURN NEW; END $$; \
         CREATE TRIGGER test_session_updates AFTER UPDATE ON sessions \
         FOR EACH ROW EXECUTE FUNCTION test_session_update();"
    };
    sqlx::raw_sql(ddl).execute(sql.pool()).await.unwrap();
}

async fn session_updates(sql: &SqlStore, id_hmac: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM test_session_updates WHERE id_hmac = $1")
        .bind(id_hmac)
        .fetch_one(sql.pool())
        .await
        .unwrap()
}

/// A re-registration (`POST /registration` with a session) writes every topic
/// it gives in one statement, and a topic it does not give keeps its URL, as
/// in Mozilla's server: a device re-registering `calls` is still woken for
/// `rooms`.
#[tokio::test]
async fn set_push_urls_writes_the_given_topics_in_one_statement_and_keeps_the_others() {
    use PushTopic::{Calls, Rooms};
    for db in backends().await {
        let sql = db.open_sql().await;
        let store: Arc<dyn Store> = sql.clone();
        let name = db.name;
        count_session_updates(&sql, name).await;
        let phone = session("user-1", NOW + 60);
        let laptop = session("user-1", NOW + 60);
        store
            .create_session(
                &phone,
                &[
                    push(Calls, "https://push.test/calls-1"),
                    push(Rooms, "https://push.test/rooms-1"),
                ],
            )
            .await
            .unwrap();
        store
            .create_session(&laptop, &[push(Calls, "https://push.test/laptop")])
            .await
            .unwrap();
        let urls = |topic| {
            let store = store.clone();
            async move { store.push_urls("user-1", topic, NOW).await.unwrap() }
        };

        // Both topics: one statement.
        store
            .set_push_urls(
                &phone,
                &[
                    push(Calls, "https://push.test/calls-2"),
                    push(Rooms, "https://push.test/rooms-2"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            session_updates(&sql, &phone.id_hmac).await,
            1,
            "{name}: statements"
        );
        assert_eq!(
            urls(Calls).await,
            ["https://push.test/calls-2", "https://push.test/laptop"],
            "{name}"
        );
        assert_eq!(urls(Rooms).await, ["https://push.test/rooms-2"], "{name}");

        // Only calls: rooms keeps its URL.
        store
            .set_push_urls(&phone, &[push(Calls, "https://push.test/calls-3")])
            .await
            .unwrap();
        assert_eq!(
            urls(Calls).await,
            ["https://push.test/calls-3", "https://push.test/laptop"],
            "{name}"
        );
        assert_eq!(
            urls(Rooms).await,
            ["https://push.test/rooms-2"],
            "{name}: rooms lost"
        );

        // Only rooms, twice: the last one wins, calls is kept.
        store
            .set_push_urls(
                &phone,
                &[
                    push(Rooms, "https://push.test/rooms-x"),
                    push(Rooms, "https://push.test/rooms-3"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            urls(Calls).await,
            ["https://push.test/calls-3", "https://push.test/laptop"],
            "{name}: calls lost"
        );
        assert_eq!(urls(Rooms).await, ["https://push.test/rooms-3"], "{name}");

        // Nothing given writes nothing; the other session was never touched.
        store.set_push_urls(&phone, &[]).await.unwrap();
        assert_eq!(session_updates(&sql, &phone.id_hmac).await, 3, "{name}");
        assert_eq!(session_updates(&sql, &laptop.id_hmac).await, 0, "{name}");
        // An unknown session is harmless.
        store
            .set_push_urls(
                &session("user-unknown", NOW + 60),
                &[push(Calls, "https://push.test/nobody")],
            )
            .await
            .unwrap();
    }
}

/// SQLite's write lock held (by another process) past the busy timeout: the
/// write fails as a timeout, which the API answers with 503 and Retry-After,
/// and writes resume once the lock is released.
#[tokio::test]
async fn sqlite_write_lock_held_too_long_is_a_timeout() {
    use sqlx::Connection;
    let db = Db::sqlite();
    let store = db.open().await;
    let mut other = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let result = store
        .create_session(&session("user-1", NOW + 60), &[])
        .await;
    assert!(matches!(result, Err(StoreError::Timeout(_))), "{result:?}");
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    store
        .create_session(&session("user-1", NOW + 60), &[])
        .await
        .unwrap();
}

/// PostgreSQL going away under a running server (connections cut, new ones
/// refused): requests get Mozilla's "backend unavailable" answer, 503 with
/// errno 201 and Retry-After, as before storage had an error type of its own.
#[tokio::test]
async fn a_database_gone_away_is_503_with_retry_after() {
    use sqlx::Connection;
    let database = common::fresh_postgres_database().await;
    let server = common::TestServer::start_with(common::ServerOptions {
        database_url: Some(database.url.clone()),
        extra_toml: "[push]\nallowed_origins = [\"http://127.0.0.1:9\"]\n".into(),
        ..Default::default()
    })
    .await;
    let register = || {
        common::client()
            .post(server.endpoint("/registration"))
            .json(&serde_json::json!({"simplePushURL": "http://127.0.0.1:9/push"}))
            .send()
    };
    assert_eq!(register().await.unwrap().status(), 200);

    // The test's admin database: PostgreSQL refuses to lock out connections
    // to the database one is connected to.
    let admin = std::env::var("LOOP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    let name = database.url.rsplit('/').next().unwrap().to_string();
    // Committed before the connections are cut, so none comes back.
    sqlx::raw_sql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(&mut conn)
        .await
        .unwrap();
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if left == 0 {
            break;
        }
    }

    // The first request may meet a cut connection, the next a refused one.
    for _ in 0..2 {
        let response = register().await.unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "30");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["errno"], 201, "{body}");
    }
    drop(server);
}

/// Runs `loop-server` on `database_url` and expects it to refuse to start;
/// returns its stderr. A server that starts anyway is killed, and fails the test.
fn refuse_to_start(database_url: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[database]\nurl = {database_url:?}\n\n\
             [plugins.loopback]\ncomponent = {:?}\ngenerated_secrets = [\"secret\"]\n",
            dir.path().join("data").display().to_string(),
            common::loopback_wasm().display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_loop-server"))
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loop-server started on {database_url}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    stderr
}

/// A database that a newer release has migrated is refused at start-up,
/// naming the migration this binary does not know, instead of running on a
/// schema it may not understand (see host/migrations/README.md).
#[tokio::test]
async fn a_database_migrated_by_a_newer_release_is_refused_at_start() {
    for db in backends().await {
        let name = db.name;
        let sql = db.open_sql().await;
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ($1, $2, TRUE, $3, 0)",
        )
        .bind(29_991_231_000_000_i64)
        .bind("drop the sessions table")
        .bind(vec![0u8; 48])
        .execute(sql.pool())
        .await
        .unwrap();
        drop(sql);
        let url = db.url.clone();
        let stderr = tokio::task::spawn_blocking(move || refuse_to_start(&url))
            .await
            .unwrap();
        assert!(
            stderr.contains("29991231000000") && stderr.contains("drop the sessions table"),
            "{name}: {stderr}"
        );
        // The check is the store's, not only the binary's.
        let error = store::connect(&config(&db.url)).await.err();
        assert!(error.is_some(), "{name}: the store opened it");
    }
}

/// `database.sqlite_synchronous` reaches the writer connection: the server
/// logs the value it reads back from the writer (`PRAGMA synchronous`).
#[tokio::test]
async fn sqlite_synchronous_is_applied_to_the_writer() {
    for (value, expected) in [(None, "normal"), (Some("full"), "full")] {
        let dir = tempfile::tempdir().unwrap();
        let server = common::TestServer::start_with(common::ServerOptions {
            dir: Some(dir.path().to_path_buf()),
            database_url: Some(format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("loop.db").display()
            )),
            env: value
                .map(|v| {
                    (
                        "LOOP_DATABASE__SQLITE_SYNCHRONOUS".to_string(),
                        v.to_string(),
                    )
                })
                .into_iter()
                .collect(),
            ..Default::default()
        })
        .await;
        server
            .wait_for_log(&format!("sqlite_synchronous={expected}"))
            .await;
    }
}

/// The SQLite database holds call URL tokens and callees' provider tokens:
/// it and its -wal and -shm files are the owner's only, whatever the umask.
#[cfg(unix)]
#[tokio::test]
async fn the_sqlite_database_and_its_wal_files_are_private() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db/loop.db");
    let server = common::TestServer::start_with(common::ServerOptions {
        dir: Some(dir.path().to_path_buf()),
        database_url: Some(format!("sqlite://{}?mode=rwc", path.display())),
        ..Default::default()
    })
    .await;
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        let mode = std::fs::metadata(&file)
            .unwrap_or_else(|err| panic!("{file}: {err}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file} is {:o}", mode & 0o777);
    }
    drop(server);
}

#[tokio::test]
async fn call_progress_is_a_compare_and_set_announced_in_commit_order() {
    for db in backends().await {
        let store = db.open().await;
        let name = db.name;
        let c = call("bob", NOW, NOW + 60);
        store.create_call(&c).await.unwrap();
        let (stored, progress) = store.call_progress(&c.call_id).await.unwrap().unwrap();
        assert_eq!(stored, c, "{name}");
        assert_eq!(progress.state, CallState::Init, "{name}");
        assert_eq!(progress.version, 0, "{name}");

        let topic = format!("progress:{}", c.call_id);
        let mut subscription = store.bus().subscribe(&topic);
        let mut next = progress.clone();
        next.state = CallState::Alerting;
        next.hellos = 3;
        next.timer_at = Some(NOW * 1000);
        let announce = Some(Announcement {
            topic: &topic,
            message: "alerting",
        });
        assert!(
            store
                .update_call_progress(&c.call_id, 0, &next, announce)
                .await
                .unwrap(),
            "{name}"
        );
        // The same expected version again loses: someone else got there first.
        let stale = Some(Announcement {
            topic: &topic,
            message: "stale",
        });
        assert!(
            !store
                .update_call_progress(&c.call_id, 0, &next, stale)
                .await
                .unwrap(),
            "{name}"
        );
        let (_, read) = store.call_progress(&c.call_id).await.unwrap().unwrap();
        assert_eq!(read.version, 1, "{name}");
        assert_eq!(read.state, CallState::Alerting, "{name}");
        assert_eq!(read.timer_at, Some(NOW * 1000), "{name}");
        assert_eq!(
            &*tokio::time::timeout(std::time::Duration::from_secs(5), subscription.recv())
                .await
                .unwrap()
                .unwrap(),
            "alerting",
            "{name}"
        );
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(200), subscription.recv())
                .await
                .is_err(),
            "{name}: a lost compare-and-set announces nothing"
        );

        // Terminated calls are no longer listed.
        assert_eq!(store.calls("bob", 0, NOW).await.unwrap().len(), 1, "{name}");
        next.state = CallState::Terminated;
        assert!(
            store
                .update_call_progress(&c.call_id, 1, &next, None)
                .await
                .unwrap()
        );
        assert!(
            store.calls("bob", 0, NOW).await.unwrap().is_empty(),
            "{name}"
        );
    }
}

/// Two stores on one PostgreSQL database are two instances: what one
/// publishes reaches the other's subscribers, large messages included.
#[tokio::test]
async fn the_bus_carries_messages_between_instances_on_postgres() {
    let db = Db::postgres().await;
    let a = db.open().await;
    let b = db.open().await;
    let mut on_b = b.bus().subscribe("signaling:s1");
    let mut on_a = a.bus().subscribe("signaling:s1");
    let big = "v=0 ".repeat(5000);
    for message in ["small", big.as_str()] {
        a.bus().publish("signaling:s1", message).await.unwrap();
        a.bus()
            .publish("signaling:other", "not for us")
            .await
            .unwrap();
        for subscription in [&mut on_b, &mut on_a] {
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), subscription.recv())
                .await
                .expect("delivered")
                .unwrap();
            assert_eq!(&*got, message);
        }
    }
}

/// A listener that loses its connection reconnects, and its subscribers are
/// told they may have missed messages (they re-read the database).
#[tokio::test]
async fn a_bus_listener_that_loses_its_connection_reconnects_and_says_so() {
    let db = Db::postgres().await;
    let a = db.open().await;
    let b = db.open_sql().await;
    let mut on_a = a.bus().subscribe("progress:x");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .fetch_all(b.pool())
    .await
    .unwrap();
    assert!(!killed.is_empty(), "a listening backend was found");
    let told = tokio::time::timeout(std::time::Duration::from_secs(10), on_a.recv())
        .await
        .expect("told in time");
    assert_eq!(told, Err(loop_server::bus::RecvError::Lagged));
    // And it listens again.
    let mut delivered = false;
    for _ in 0..50 {
        b.bus().publish("progress:x", "after").await.unwrap();
        match tokio::time::timeout(std::time::Duration::from_millis(200), on_a.recv()).await {
            Ok(Ok(message)) if &*message == "after" => {
                delivered = true;
                break;
            }
            _ => continue,
        }
    }
    assert!(delivered, "messages flow again after the reconnection");
}

/// Call URLs and push URLs are served from memory: a write made behind the
/// store's back (as another instance's would be, when its notification is
/// lost or on SQLite) is seen once the copy goes stale, within a second,
/// while the store's own writes are seen at once.
#[tokio::test]
async fn hot_reads_come_from_memory_and_the_stores_own_writes_show_at_once() {
    use PushTopic::Calls;
    for db in backends().await {
        let name = db.name;
        let store = db.open_sql().await;
        let now = loop_server::clock::now();
        let user = id("fxa:user");
        let phone = session(&user, now + 3600);
        store
            .create_session(&phone, &[push(Calls, "https://push.test/phone")])
            .await
            .unwrap();
        let url = call_url(&user, now, now + 3600);
        store.create_call_url(&url).await.unwrap();
        let read = async || {
            store
                .call_url_with_push_urls(&url.token, Calls, loop_server::clock::now())
                .await
                .unwrap()
                .unwrap()
        };
        assert_eq!(read().await.1, ["https://push.test/phone"], "{name}");

        // Behind the store's back: its copy is served until it goes stale.
        sqlx::query("UPDATE call_urls SET caller_id = 'mallory' WHERE token = $1")
            .bind(&url.token)
            .execute(store.pool())
            .await
            .unwrap();
        assert_eq!(
            read().await.0.caller_id,
            url.caller_id,
            "{name}: not cached"
        );
        assert_eq!(
            store.call_url(&url.token).await.unwrap().unwrap().caller_id,
            url.caller_id,
            "{name}: not cached"
        );
        // Seen within a second, as another instance's change must be.
        let start = std::time::Instant::now();
        while read().await.0.caller_id != "mallory" {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(1),
                "{name}: a stale copy served for a second"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }

        // Through the store: at once.
        let update = CallUrlUpdate {
            caller_id: Some("carol".into()),
            ..Default::default()
        };
        assert!(
            store
                .update_call_url(&url.token, &user, &update)
                .await
                .unwrap()
        );
        assert_eq!(read().await.0.caller_id, "carol", "{name}: update");
        let laptop = session(&user, now + 3600);
        store
            .create_session(&laptop, &[push(Calls, "https://push.test/laptop")])
            .await
            .unwrap();
        assert_eq!(
            read().await.1,
            ["https://push.test/laptop", "https://push.test/phone"],
            "{name}: new device"
        );
        store
            .set_push_urls(&phone, &[push(Calls, "https://push.test/phone-2")])
            .await
            .unwrap();
        assert_eq!(
            read().await.1,
            ["https://push.test/laptop", "https://push.test/phone-2"],
            "{name}: new push URL"
        );
        store.delete_push_urls(&laptop).await.unwrap();
        assert_eq!(read().await.1, ["https://push.test/phone-2"], "{name}");
        assert!(store.delete_call_url(&url.token, &user).await.unwrap());
        assert_eq!(store.call_url(&url.token).await.unwrap(), None, "{name}");

        // Push URLs stop at their session's expiry, not at the copy's age.
        let brief = call_url(&user, now, now + 3600);
        store.create_call_url(&brief).await.unwrap();
        store.delete_push_urls(&phone).await.unwrap();
        let mayfly = session(&user, now + 2);
        store
            .create_session(&mayfly, &[push(Calls, "https://push.test/mayfly")])
            .await
            .unwrap();
        let (_, urls) = store
            .call_url_with_push_urls(&brief.token, Calls, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(urls, ["https://push.test/mayfly"], "{name}");
        let (_, urls) = store
            .call_url_with_push_urls(&brief.token, Calls, now + 2)
            .await
            .unwrap()
            .unwrap();
        assert!(urls.is_empty(), "{name}: an expired session's push URL");
    }
}

/// On PostgreSQL, revoking, updating or deleting on one instance notifies
/// the others in the same transaction: they forget their copies well before
/// those would go stale.
#[tokio::test]
async fn other_instances_forget_a_revoked_call_url_when_notified() {
    let db = Db::postgres().await;
    let (a, b) = (db.open().await, db.open().await);
    let now = loop_server::clock::now();
    let mut urls = Vec::new();
    for _ in 0..3 {
        let url = call_url("user-n", now, now + 3600);
        a.create_call_url(&url).await.unwrap();
        urls.push(url);
    }
    let seen_by_b = async |token: &str| b.call_url(token).await.unwrap();
    let update = CallUrlUpdate {
        subject: Some("changed".into()),
        ..Default::default()
    };
    let changes: [(&str, &CallUrl); 3] = [
        ("revoke", &urls[0]),
        ("update", &urls[1]),
        ("delete user", &urls[2]),
    ];
    for (change, url) in changes {
        assert!(seen_by_b(&url.token).await.is_some());
        let start = std::time::Instant::now();
        match change {
            "revoke" => assert!(a.delete_call_url(&url.token, "user-n").await.unwrap()),
            "update" => assert!(
                a.update_call_url(&url.token, "user-n", &update)
                    .await
                    .unwrap()
            ),
            _ => a.delete_user("user-n").await.unwrap(),
        }
        let gone = |found: Option<CallUrl>| match change {
            "update" => found.is_some_and(|u| u.subject.as_deref() == Some("changed")),
            _ => found.is_none(),
        };
        while !gone(seen_by_b(&url.token).await) {
            assert!(
                start.elapsed() < store::CACHE_FRESH_FOR / 2,
                "{change}: B was not notified; it would only see it once its copy went stale"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Re-read the next one from B's storage, not from a copy of before.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
