//! Fills a Loop database with many sessions and call URLs, directly with bulk
//! INSERTs (through the API it would take longer than the benchmark itself).
//! The rows have the shapes the server writes (see host/migrations/): 64-hex
//! HMACs for session ids and anonymous user ids, 22-character URL-safe tokens.

use std::time::Instant;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sqlx::Arguments;
use sqlx::any::{AnyArguments, AnyPoolOptions};

#[derive(Debug, Clone, Copy)]
pub struct SeedCounts {
    pub sessions: u64,
    pub call_urls: u64,
}

#[derive(Debug, Clone)]
pub struct SeedReport {
    pub counts: SeedCounts,
    pub seconds: f64,
}

/// Rows per INSERT: 1,000 call URLs bind 7,000 values, well under SQLite's
/// 32,766 and PostgreSQL's 65,535 limits.
const BATCH: u64 = 1000;
/// INSERTs per transaction.
const BATCHES_PER_TRANSACTION: u64 = 20;

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

fn random_token() -> String {
    let mut buf = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `INSERT INTO table (columns) VALUES ($1, …), …` for `rows` rows, or with
/// `?` placeholders for SQLite, which looks each `$N` name up in a list
/// (quadratic in a 7,000-value statement).
fn insert_sql(table: &str, columns: &[&str], rows: u64, numbered: bool) -> String {
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
    let mut n = 0;
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns.len() {
            if column > 0 {
                sql.push_str(", ");
            }
            n += 1;
            if numbered {
                sql.push_str(&format!("${n}"));
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}

/// Seeds `counts` into the database at `url`, whose schema the server has
/// already migrated. Every session gets a `calls` push URL, and the call URLs
/// are spread evenly over the sessions' users.
pub async fn seed(url: &str, counts: SeedCounts) -> anyhow::Result<SeedReport> {
    anyhow::ensure!(
        counts.sessions > 0 || counts.call_urls == 0,
        "call URLs need at least one session to own them"
    );
    sqlx::any::install_default_drivers();
    let started = Instant::now();
    let sqlite = url.starts_with("sqlite:");
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    // Random keys touch pages all over three B-trees: keep them
                    // in memory (256 MiB) instead of SQLite's 2 MiB default.
                    sqlx::query("PRAGMA cache_size = -262144")
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let numbered = !sqlite;
    let now = now();
    let session_expiry = now + 30 * 24 * 3600;

    let mut users = Vec::with_capacity(counts.sessions as usize);
    let mut done = 0;
    while done < counts.sessions {
        let mut tx = pool.begin().await?;
        for _ in 0..BATCHES_PER_TRANSACTION {
            let rows = BATCH.min(counts.sessions - done);
            if rows == 0 {
                break;
            }
            let mut sessions = AnyArguments::default();
            for _ in 0..rows {
                let id_hmac = random_hex(32);
                sessions.add(id_hmac.clone()).map_err(anyhow::Error::msg)?;
                sessions.add(random_hex(32)).map_err(anyhow::Error::msg)?;
                sessions.add(id_hmac.clone()).map_err(anyhow::Error::msg)?;
                sessions.add(session_expiry).map_err(anyhow::Error::msg)?;
                sessions
                    .add(format!(
                        "https://push.example.com/update/{}",
                        random_hex(16)
                    ))
                    .map_err(anyhow::Error::msg)?;
                users.push(id_hmac);
            }
            sqlx::query_with(
                &insert_sql(
                    "sessions",
                    &["id_hmac", "key", "user_id", "expires_at", "calls_push_url"],
                    rows,
                    numbered,
                ),
                sessions,
            )
            .execute(&mut *tx)
            .await
            .context("inserting sessions")?;
            done += rows;
        }
        tx.commit().await?;
    }

    let url_expiry = now + 720 * 3600;
    let columns = [
        "token",
        "user_id",
        "caller_id",
        "issuer",
        "subject",
        "created_at",
        "expires_at",
    ];
    let mut done = 0;
    while done < counts.call_urls {
        let mut tx = pool.begin().await?;
        for _ in 0..BATCHES_PER_TRANSACTION {
            let rows = BATCH.min(counts.call_urls - done);
            if rows == 0 {
                break;
            }
            let mut args = AnyArguments::default();
            for i in 0..rows {
                let n = done + i;
                args.add(random_token()).map_err(anyhow::Error::msg)?;
                args.add(users[(n % counts.sessions) as usize].clone())
                    .map_err(anyhow::Error::msg)?;
                args.add(format!("caller{n}@example.com"))
                    .map_err(anyhow::Error::msg)?;
                args.add(Some("Bob".to_string()))
                    .map_err(anyhow::Error::msg)?;
                args.add(None::<String>).map_err(anyhow::Error::msg)?;
                args.add(now).map_err(anyhow::Error::msg)?;
                args.add(url_expiry).map_err(anyhow::Error::msg)?;
            }
            sqlx::query_with(&insert_sql("call_urls", &columns, rows, numbered), args)
                .execute(&mut *tx)
                .await
                .context("inserting call URLs")?;
            done += rows;
        }
        tx.commit().await?;
    }

    if url.starts_with("postgres") {
        // What autovacuum would do shortly after such a bulk load anyway; the
        // benchmark should not measure the minute before it does.
        sqlx::query("ANALYZE")
            .execute(&pool)
            .await
            .context("ANALYZE")?;
    }
    pool.close().await;
    Ok(SeedReport {
        counts,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_per_backend() {
        assert_eq!(
            insert_sql("t", &["a", "b"], 2, true),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(
            insert_sql("t", &["a"], 2, false),
            "INSERT INTO t (a) VALUES (?), (?)"
        );
    }

    #[tokio::test]
    async fn seeds_a_sqlite_database_with_the_server_schema() {
        let dir = std::env::temp_dir().join(format!(
            "loop-bench-seed-{}",
            crate::hawk_sign::random_nonce_prefix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.join("loop.db").display());
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        // The server's own migrations, so the seeded rows must fit its schema.
        let migrations =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/migrations/sqlite");
        let mut files: Vec<_> = std::fs::read_dir(&migrations)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            sqlx::raw_sql(&std::fs::read_to_string(file).unwrap())
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;

        let report = seed(
            &url,
            SeedCounts {
                sessions: 1500,
                call_urls: 4200,
            },
        )
        .await
        .unwrap();
        assert_eq!(report.counts.call_urls, 4200);

        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        let count = |table: &'static str| {
            let pool = pool.clone();
            async move {
                let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                n
            }
        };
        assert_eq!(count("sessions").await, 1500);
        assert_eq!(count("call_urls").await, 4200);
        let (with_push_url,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM sessions WHERE calls_push_url LIKE 'https://%'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(with_push_url, 1500);
        let (owners,): (i64,) =
            sqlx::query_as("SELECT COUNT(DISTINCT user_id) FROM call_urls WHERE user_id IN (SELECT user_id FROM sessions)")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(owners, 1500);
        pool.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
