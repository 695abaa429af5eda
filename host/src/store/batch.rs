//! Group commit for the writes every request makes: Hawk nonces, new
//! sessions (with their push URLs), call URLs and calls.
//!
//! Why: with sqlx, every statement is a hand-off to the connection's own
//! thread and back, and SQLite takes one writer at a time. Measured on two
//! cores, that round trip, not the SQL, bounded the write routes: the writer
//! connection sat idle most of the time while requests queued for it. So the
//! writes that requests queue up while a round runs are sent together next
//! round, as one multi-row statement per kind of write: one round trip and one
//! commit for up to `MAX_ROWS` requests.
//!
//! Every write is acknowledged only after the statement holding it committed,
//! so what the API acknowledged survives a crash as before. A statement that
//! fails (a duplicate key, say) is retried row by row, so only the request
//! whose row is at fault gets the error. The statements are plain SQL that
//! SQLite and PostgreSQL both run (`INSERT … VALUES (…), (…)`, `RETURNING`,
//! a `VALUES` list in `FROM` whose columns both name `column1`, …), but
//! for SQLite's nonces, which are appended and checked against the writing
//! process's memory instead of a unique index (`nonce_ledger.rs`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::Row;
use sqlx::any::AnyRow;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::connection::{Conn, WriterHandle};
use super::nonce_ledger::{NonceLedger, NonceRow};
use super::queries::{CALL_COLUMNS, CALL_URL_COLUMNS};
use crate::store::{Backend, Call, CallUrl, PushTopic, PushUrl, Session, StoreError, Timestamp};
use crate::telemetry::statement;

/// Most rows in one statement. Bounded so statements stay short (SQLite
/// holds its write lock for the whole statement) and the distinct statement
/// texts, one per row count and kind of write, all fit in sqlx's cache of
/// 100 prepared statements per connection beside the other queries. A round
/// writes each kind in as few statements as this allows, since each is a
/// commit: rounds averaged about eight requests under load, and splitting
/// them into power-of-two chunks cost nearly two commits per round.
const MAX_ROWS: usize = 16;

/// Most requests' writes taken into one round.
const MAX_JOBS_PER_ROUND: usize = 256;

/// Requests waiting for a round before new ones wait to be queued.
const QUEUE_CAPACITY: usize = 4096;

/// One row to write.
pub(super) enum Write {
    Session {
        session: Session,
        calls_push_url: Option<String>,
        rooms_push_url: Option<String>,
    },
    /// Recorded only if the session exists and is live at `now`; a replayed
    /// nonce or a dead session makes the job's answer `false`.
    Nonce {
        id_hmac: String,
        nonce: String,
        expires_at: Timestamp,
        now: Timestamp,
    },
    CallUrl(CallUrl),
    Call(Box<Call>),
}

impl Write {
    /// A new session with its device's push URLs (the last one per topic).
    pub fn session(session: Session, push_urls: &[PushUrl]) -> Self {
        let url_for = |topic| {
            push_urls
                .iter()
                .rev()
                .find(|p| p.topic == topic)
                .map(|p| p.url.clone())
        };
        Write::Session {
            calls_push_url: url_for(PushTopic::Calls),
            rooms_push_url: url_for(PushTopic::Rooms),
            session,
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Write::Session { .. } => Kind::Session,
            Write::Nonce { .. } => Kind::Nonce,
            Write::CallUrl(_) => Kind::CallUrl,
            Write::Call(_) => Kind::Call,
        }
    }
}

/// The kinds of write, in the order a round writes them: sessions created in
/// a round before the nonces that need them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Session,
    Nonce,
    CallUrl,
    Call,
}

impl Kind {
    /// The statement's name in `loop_db_statement_duration_seconds`.
    fn statement(self) -> &'static str {
        match self {
            Kind::Session => "batch_insert_sessions",
            Kind::Nonce => "batch_insert_nonces",
            Kind::CallUrl => "batch_insert_call_urls",
            Kind::Call => "batch_insert_calls",
        }
    }
}

const KINDS: [Kind; 4] = [Kind::Session, Kind::Nonce, Kind::CallUrl, Kind::Call];

/// One request's writes, applied in order, and where to answer: `Ok(true)`
/// when every conditional write (a nonce) took effect.
struct Job {
    writes: Vec<Write>,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

/// What the writer has done since the store opened: whether writes really
/// share statements is otherwise invisible from outside (tests, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Requests answered.
    pub jobs: u64,
    /// Rounds run, each one checkout of the writer.
    pub rounds: u64,
    /// Statements run for chunks of rows, the retries below not included.
    pub statements: u64,
    /// Statements run for one row each, after the chunk holding it failed.
    pub row_retries: u64,
}

#[derive(Default)]
struct Counters {
    jobs: AtomicU64,
    rounds: AtomicU64,
    statements: AtomicU64,
    row_retries: AtomicU64,
}

fn bump(counter: &AtomicU64, by: usize) {
    counter.fetch_add(by as u64, Ordering::Relaxed);
}

/// The queue in front of the writer. Cheap to share; the round loop ends when
/// the last handle is dropped.
pub(super) struct WriteBatcher {
    jobs: mpsc::Sender<Job>,
    counters: Arc<Counters>,
}

impl WriteBatcher {
    /// Starts the round loop. `concurrency` rounds may run at once: 1 for
    /// SQLite's single writer, more on PostgreSQL, where writers of
    /// different rows do not wait for each other.
    pub fn start(writer: WriterHandle, backend: Backend, concurrency: usize) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        // SQLite's nonces are appended and checked in memory (see
        // `nonce_ledger.rs`), which takes one round at a time: SQLite's one.
        let ledger = (backend == Backend::Sqlite).then(|| {
            assert_eq!(concurrency, 1, "SQLite writes in one round at a time");
            Arc::new(Mutex::new(NonceLedger::new()))
        });
        tokio::spawn(run_rounds(
            Round {
                writer,
                backend,
                ledger,
                counters: counters.clone(),
            },
            queue,
            concurrency.max(1),
        ));
        WriteBatcher { jobs, counters }
    }

    /// Writes `writes` in order, in the next round; see [`Job`] for the answer.
    pub async fn write(&self, writes: Vec<Write>) -> Result<bool, StoreError> {
        // The round loop only ends with the store; a request that outlives
        // it finds storage gone.
        let gone = || StoreError::from(sqlx::Error::WorkerCrashed);
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { writes, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Requests waiting for a round.
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    pub fn stats(&self) -> BatchStats {
        let c = &self.counters;
        BatchStats {
            jobs: c.jobs.load(Ordering::Relaxed),
            rounds: c.rounds.load(Ordering::Relaxed),
            statements: c.statements.load(Ordering::Relaxed),
            row_retries: c.row_retries.load(Ordering::Relaxed),
        }
    }
}

/// What every round works with.
#[derive(Clone)]
struct Round {
    writer: WriterHandle,
    backend: Backend,
    /// SQLite only.
    ledger: Option<Arc<Mutex<NonceLedger>>>,
    counters: Arc<Counters>,
}

async fn run_rounds(round: Round, mut queue: mpsc::Receiver<Job>, concurrency: usize) {
    let rounds = Arc::new(Semaphore::new(concurrency));
    loop {
        // Waiting for a free round first lets the queue fill meanwhile: the
        // busier the writer, the bigger the next round.
        let Ok(permit) = rounds.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = Vec::new();
        if queue.recv_many(&mut jobs, MAX_JOBS_PER_ROUND).await == 0 {
            return;
        }
        let round = round.clone();
        tokio::spawn(async move {
            run_round(&round, jobs).await;
            drop(permit);
        });
    }
}

/// Where one row of a round stands.
#[derive(Clone, Copy)]
struct Pending<'a> {
    job: usize,
    write: &'a Write,
}

async fn run_round(round: &Round, jobs: Vec<Job>) {
    let counters = &*round.counters;
    bump(&counters.rounds, 1);
    bump(&counters.jobs, jobs.len());
    metrics::histogram!("loop_db_group_commit_batch_size").record(jobs.len() as f64);
    let mut conn = match round.writer.acquire().await {
        Ok(conn) => conn,
        Err(err) => {
            for job in jobs {
                let _ = job.reply.send(Err(err.clone()));
            }
            return;
        }
    };
    let mut errors: Vec<Option<StoreError>> = jobs.iter().map(|_| None).collect();
    let mut took_effect = vec![true; jobs.len()];
    for kind in KINDS {
        let rows: Vec<Pending> = jobs
            .iter()
            .enumerate()
            .filter(|(job, _)| errors[*job].is_none())
            .flat_map(|(job, j)| {
                j.writes
                    .iter()
                    .filter(move |w| w.kind() == kind)
                    .map(move |write| Pending { job, write })
            })
            .collect();
        let rows = match &round.ledger {
            Some(ledger) if kind == Kind::Nonce => {
                match screen_nonces(&mut conn, ledger, &rows, counters).await {
                    Ok((fresh, replays)) => {
                        for row in replays {
                            took_effect[row.job] = false;
                        }
                        fresh
                    }
                    Err(err) => {
                        for row in &rows {
                            errors[row.job] = Some(err.clone());
                        }
                        continue;
                    }
                }
            }
            _ => rows,
        };
        let mut rest = rows.as_slice();
        while !rest.is_empty() {
            let size = chunk_size(rest.len());
            let (chunk, tail) = rest.split_at(size);
            rest = tail;
            bump(&counters.statements, 1);
            match write_rows(&mut conn, round, kind, chunk).await {
                Ok(effective) => {
                    for (row, ok) in chunk.iter().zip(effective) {
                        took_effect[row.job] &= ok;
                    }
                }
                Err(err) if chunk.len() == 1 => errors[chunk[0].job] = Some(err.into()),
                Err(_) => {
                    // Find the row at fault: one statement per row.
                    for row in chunk {
                        if errors[row.job].is_some() {
                            continue;
                        }
                        bump(&counters.row_retries, 1);
                        match write_rows(&mut conn, round, kind, std::slice::from_ref(row)).await {
                            Ok(effective) => took_effect[row.job] &= effective[0],
                            Err(err) => errors[row.job] = Some(err.into()),
                        }
                    }
                }
            }
        }
    }
    drop(conn);
    for ((job, error), effective) in jobs.into_iter().zip(errors).zip(took_effect) {
        let _ = job.reply.send(match error {
            Some(err) => Err(err),
            None => Ok(effective),
        });
    }
}

fn lock(ledger: &Mutex<NonceLedger>) -> std::sync::MutexGuard<'_, NonceLedger> {
    // The ledger is consistent between statements; a panic cannot leave it
    // half-updated in a way that accepts a nonce twice.
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A nonce write's session, nonce and the `now` it is checked at.
fn nonce_of(write: &Write) -> Option<(&str, &str, Timestamp)> {
    match write {
        Write::Nonce {
            id_hmac,
            nonce,
            now,
            ..
        } => Some((id_hmac, nonce, *now)),
        _ => None,
    }
}

/// SQLite: splits a round's nonces (`rows`) into those to insert and the
/// replays the ledger answers itself, once it has read any rows it has not
/// seen. Of a nonce sent twice in the round, the first asker gets it.
async fn screen_nonces<'a>(
    conn: &mut Conn,
    ledger: &Mutex<NonceLedger>,
    rows: &[Pending<'a>],
    counters: &Counters,
) -> Result<(Vec<Pending<'a>>, Vec<Pending<'a>>), StoreError> {
    let Some(earliest) = rows
        .iter()
        .filter_map(|row| nonce_of(row.write))
        .map(|(_, _, now)| now)
        .min()
    else {
        return Ok((rows.to_vec(), Vec::new()));
    };
    let to_read_after = lock(ledger).to_read_after();
    if let Some(after) = to_read_after {
        bump(&counters.statements, 1);
        let (known, through) = read_nonces(conn, after, earliest).await?;
        lock(ledger).learn(&known, through);
    }
    let mut ledger = lock(ledger);
    ledger.forget_expired(earliest);
    let mut this_round = HashSet::with_capacity(rows.len());
    Ok(rows.iter().copied().partition(|row| {
        nonce_of(row.write).is_some_and(|(id_hmac, nonce, now)| {
            let key = ledger.key(id_hmac, nonce);
            !ledger.holds(key, now) && this_round.insert(key)
        })
    }))
}

/// The rows above id `after` still live at `now`, and the highest id the
/// table has given (every row up to it is among those or has expired), read
/// in one statement so both describe the same moment.
async fn read_nonces(
    conn: &mut Conn,
    after: i64,
    now: Timestamp,
) -> Result<(Vec<NonceRow>, i64), sqlx::Error> {
    // `+expires_at`: walk the ids above `after`, never the expiry index.
    let rows = statement(
        "read_nonces",
        sqlx::query(
            "SELECT id_hmac, nonce, expires_at FROM hawk_nonces WHERE id > $1 AND +expires_at > $2 \
             UNION ALL SELECT NULL, NULL, seq FROM sqlite_sequence WHERE name = 'hawk_nonces'",
        )
        .bind(after)
        .bind(now)
        .fetch_all(&mut **conn),
    )
    .await?;
    let mut known = Vec::with_capacity(rows.len());
    let mut through = after;
    for row in &rows {
        let number: i64 = row.try_get(2)?;
        match (row.try_get(0)?, row.try_get(1)?) {
            (Some(id_hmac), Some(nonce)) => known.push(NonceRow {
                id_hmac,
                nonce,
                expires_at: number,
            }),
            _ => through = through.max(number),
        }
    }
    Ok((known, through))
}

/// SQLite: records the nonces just appended (`id_hmac, nonce, id,
/// expires_at`) in the ledger, which moves past their ids if nothing lies
/// between.
fn record_appended(ledger: &Mutex<NonceLedger>, appended: &[AnyRow]) -> Result<(), sqlx::Error> {
    let mut ledger = lock(ledger);
    let mut ids = Vec::with_capacity(appended.len());
    for row in appended {
        let (id_hmac, nonce): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        ids.push(row.try_get(2)?);
        let key = ledger.key(&id_hmac, &nonce);
        ledger.record(key, row.try_get(3)?);
    }
    ledger.appended(&mut ids);
    Ok(())
}

/// Rows in the next statement: all that remain, up to `MAX_ROWS`.
fn chunk_size(remaining: usize) -> usize {
    remaining.min(MAX_ROWS)
}

/// `(…), (…)`: `rows` groups of `columns` numbered placeholders.
fn values(rows: usize, columns: usize) -> String {
    let mut sql = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(row * columns + column + 1).to_string());
        }
        sql.push(')');
    }
    sql
}

/// Writes one chunk of rows of one kind in one statement; whether each row
/// took effect, in order.
async fn write_rows(
    conn: &mut Conn,
    round: &Round,
    kind: Kind,
    rows: &[Pending<'_>],
) -> Result<Vec<bool>, sqlx::Error> {
    let n = rows.len();
    // SQLite's nonces, already screened by the ledger (`screen_nonces`).
    let ledger = round.ledger.as_deref().filter(|_| kind == Kind::Nonce);
    let sql = match kind {
        Kind::Session => format!(
            "INSERT INTO sessions (id_hmac, key, user_id, expires_at, calls_push_url, rooms_push_url) \
             VALUES {}",
            values(n, 6)
        ),
        // Appended, unless a row the ledger has not read yet (another
        // process's; none otherwise, so `n.id > …` walks none) holds it.
        Kind::Nonce if ledger.is_some() => format!(
            "INSERT INTO hawk_nonces (id_hmac, nonce, expires_at) \
             SELECT v.column1, v.column2, v.column3 FROM (VALUES {}) AS v \
             WHERE EXISTS (SELECT 1 FROM sessions s WHERE s.id_hmac = v.column1 AND s.expires_at > v.column4) \
             AND NOT EXISTS (SELECT 1 FROM hawk_nonces n WHERE n.id > ${} \
                 AND n.id_hmac = v.column1 AND n.nonce = v.column2) \
             RETURNING id_hmac, nonce, id, expires_at",
            values(n, 4),
            n * 4 + 1
        ),
        // SQLite's parser needs the `WHERE` before `ON CONFLICT` in an
        // INSERT … SELECT; the EXISTS provides it.
        Kind::Nonce => format!(
            "INSERT INTO hawk_nonces (id_hmac, nonce, expires_at) \
             SELECT v.column1, v.column2, v.column3 FROM (VALUES {}) AS v \
             WHERE EXISTS (SELECT 1 FROM sessions s WHERE s.id_hmac = v.column1 AND s.expires_at > v.column4) \
             ON CONFLICT (id_hmac, nonce) DO NOTHING RETURNING id_hmac, nonce",
            values(n, 4)
        ),
        Kind::CallUrl => format!(
            "INSERT INTO call_urls ({CALL_URL_COLUMNS}) VALUES {}",
            values(n, 7)
        ),
        Kind::Call => format!(
            "INSERT INTO calls ({CALL_COLUMNS}) VALUES {}",
            values(n, 18)
        ),
    };
    // PostgreSQL plans the nonce insert's join with `sessions` afresh on
    // every round. Kept prepared, it would be planned for good once the
    // statement had run a few times, with the table sizes of that moment: a
    // hash join over a sequential scan, picked while `sessions` was small,
    // costs 50 ms per round once registrations have made it 250,000 rows,
    // and only an ANALYZE (autovacuum, if it is on) would replace it.
    // Planning once per round of requests costs little.
    let replan = kind == Kind::Nonce && round.backend == Backend::Postgres;
    let mut query = sqlx::query(&sql).persistent(!replan);
    for row in rows {
        query = match row.write {
            Write::Session {
                session: s,
                calls_push_url,
                rooms_push_url,
            } => query
                .bind(&s.id_hmac)
                .bind(&s.key)
                .bind(&s.user_id)
                .bind(s.expires_at)
                .bind(calls_push_url)
                .bind(rooms_push_url),
            Write::Nonce {
                id_hmac,
                nonce,
                expires_at,
                now,
            } => query.bind(id_hmac).bind(nonce).bind(*expires_at).bind(*now),
            Write::CallUrl(u) => query
                .bind(&u.token)
                .bind(&u.user_id)
                .bind(&u.caller_id)
                .bind(&u.issuer)
                .bind(&u.subject)
                .bind(u.created_at)
                .bind(u.expires_at),
            Write::Call(c) => query
                .bind(&c.call_id)
                .bind(&c.user_id)
                .bind(&c.call_token)
                .bind(&c.call_url)
                .bind(c.url_creation_date)
                .bind(&c.caller_id)
                .bind(&c.call_type)
                .bind(&c.subject)
                .bind(&c.provider)
                .bind(&c.session_id)
                .bind(&c.callee_token)
                .bind(&c.api_key)
                .bind(&c.callee_websocket_token)
                .bind(&c.progress_url)
                .bind(c.created_at)
                .bind(c.expires_at)
                .bind(&c.caller_websocket_token)
                .bind(&c.channel),
        };
    }
    if kind != Kind::Nonce {
        statement(kind.statement(), query.execute(&mut **conn)).await?;
        return Ok(vec![true; n]);
    }
    if let Some(ledger) = ledger {
        query = query.bind(lock(ledger).known_through());
    }
    let returned = statement(kind.statement(), query.fetch_all(&mut **conn)).await?;
    if let Some(ledger) = ledger {
        record_appended(ledger, &returned)?;
    }
    // A nonce sent twice in one chunk is inserted once: the first asker gets
    // it, the other is a replay.
    let mut inserted: HashSet<(String, String)> = returned
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(rows
        .iter()
        .map(|row| match row.write {
            Write::Nonce { id_hmac, nonce, .. } => {
                inserted.remove(&(id_hmac.clone(), nonce.clone()))
            }
            _ => false,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{chunk_size, values};

    #[test]
    fn a_statement_takes_every_row_up_to_the_cap() {
        assert_eq!(chunk_size(1), 1);
        assert_eq!(chunk_size(3), 3);
        assert_eq!(chunk_size(16), 16);
        assert_eq!(chunk_size(17), 16);
        assert_eq!(chunk_size(1000), 16);
    }

    #[test]
    fn values_number_placeholders_row_by_row() {
        assert_eq!(values(1, 2), "($1, $2)");
        assert_eq!(values(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }
}
