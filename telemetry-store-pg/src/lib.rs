//! # telemetry-store-pg
//!
//! The store traits of `telemetry-store` ([`Backend`], [`BackendWriter`], [`BackendReader`]) on
//! PostgreSQL, so that several daemons can share one database. It passes the same conformance
//! suite as the embedded SQLite backend (`telemetry_store::conformance`).
//!
//! ## Guarantees
//!
//! - **Atomic appends.** One [`BackendWriter::append`] is one transaction: its rows, the seqs
//!   they get, every producer watermark it moves and the per-run and per-series summaries
//!   commit together or not at all. On error nothing is visible and the records are unchanged.
//! - **Exactly once across daemons.** Producer watermarks live in the database and are read
//!   and moved under a row lock (`SELECT … FOR UPDATE` on the producer's row, created first if
//!   missing), so two daemons receiving the same resend store it once.
//! - **No reader ever misses a row.** Each stream's seq is taken from a counter row locked
//!   `FOR UPDATE` until commit, so seqs of a stream are assigned in commit order: when a
//!   reader's snapshot shows seq `n`, every smaller seq of that stream was committed before `n`
//!   was even assigned, and `seq > since` pages are complete (the argument is in
//!   docs/ARCHITECTURE.md, "Seq order on PostgreSQL").
//! - **Lossless.** `u64` fields are `bigint` with the same bits, floats are `double precision`
//!   (NaN and infinities stored as such), timestamps are Unix nanoseconds as `bigint`.
//! - **Versioned schema.** Migrations are numbered and recorded in `schema_version`; they run
//!   under an advisory lock (two daemons starting at once migrate once) and a schema written by
//!   a newer build is refused untouched.
//! - **No secret in logs.** [`Backend::describe`] and every error leave the password out.
//! - **Single attempt.** A call makes one attempt; lost connections, serialization failures,
//!   deadlocks and a server starting or stopping are [`StoreError::is_retryable`], data errors
//!   are not. The server's retry policy does the rest.
//!
//! ## Data layout
//!
//! Everything lives in one schema (default `gym_telemetry`, or `?schema=NAME` in the URL), set
//! as the `search_path` of every connection: the same tables as the SQLite store plus
//! `stream_seqs` (one counter row per stream), `daemon_leases`, `run_beats` and
//! `schema_version`. A batch's step rows are written by one binary `COPY`, the other streams'
//! by one multi-row `INSERT … SELECT FROM unnest(…)` each (arrays as parameters): one round
//! trip per stream and batch, whatever its size.
//!
//! ## Why tokio-postgres and deadpool behind a synchronous facade
//!
//! The traits are synchronous and called from the server's writer thread and from tokio's
//! blocking pool. The backend owns a small tokio runtime (one worker thread, which drives every
//! connection's socket) and blocks the calling thread on each call's future: directly when the
//! caller is outside any runtime, on a scoped helper thread when it is inside one (a runtime
//! cannot be blocked on from within another). The sync `postgres` crate would not help: it
//! wraps the same client in a runtime per connection and panics when called from async code.
//! tokio-postgres gives us pipelining, array parameters and, next, `LISTEN/NOTIFY` for
//! multi-daemon live streams (asynchronous notifications are only reachable on its connection
//! object); deadpool-postgres pools the readers' connections, recycles broken ones and keeps
//! prepared statements per connection.
//!
//! - **Change feed.** Each append that stores rows sends one `pg_notify` hint (seqs only) in its
//!   transaction; [`Backend::change_feed`] `LISTEN`s for them (`feed.rs`), so the server's
//!   follower can publish other daemons' records live.
//!
//! - **TLS.** `sslmode=verify-full&sslrootcert=FILE` in the URL: rustls (ring) through
//!   tokio-postgres-rustls, the certificate checked against FILE and the host name; no silent
//!   fall back to plaintext (see the `tls` module).
//!
//! - **Owner leases.** [`Backend::leases`]: each daemon renews a lease row on the database's
//!   clock; the pending and running runs of a daemon whose lease lapsed are taken over in one
//!   transaction that locks the lapsed leases first, and a run row is replaced only by its
//!   owner (see the `leases` module).

mod error;
mod feed;
mod leases;
mod reader;
mod schema;
pub mod testing;
mod tls;
mod writer;

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use telemetry_store::{Backend, BackendReader, BackendWriter, StoreError};
use tokio_postgres::NoTls;

pub use error::classify;

/// The schema used when the URL names none.
pub const DEFAULT_SCHEMA: &str = "gym_telemetry";

/// Where the PostgreSQL store lives and how the backend connects.
#[derive(Clone)]
pub struct PgConfig {
    pg: tokio_postgres::Config,
    schema: String,
    /// Connections the readers may hold at once.
    pub read_pool_size: usize,
    /// How long a call waits for a connection (from the pool, or a new one) before it fails
    /// (retryable).
    pub connect_timeout: Duration,
    tls: tls::Connector,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio_postgres::Config's Debug redacts the password; ours prints only describe().
        f.debug_struct("PgConfig")
            .field("store", &self.describe())
            .field("tls", &self.uses_tls())
            .field("read_pool_size", &self.read_pool_size)
            .finish()
    }
}

fn bad_url(detail: impl Into<String>) -> StoreError {
    StoreError::Server {
        engine: "postgres",
        code: None,
        retryable: false,
        detail: detail.into(),
    }
}

impl PgConfig {
    /// Parses a `postgres://user[:password]@host[:port]/dbname[?schema=NAME&…]` URL (or a
    /// `key=value` connection string). `schema` is ours (a lower-case SQL identifier); every
    /// other parameter is libpq's, as tokio-postgres understands them. The error never repeats
    /// the URL (it may hold a password).
    pub fn from_url(url: &str) -> Result<PgConfig, StoreError> {
        let url = url.trim();
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let mut schema = DEFAULT_SCHEMA.to_owned();
        let mut rest = Vec::new();
        let mut tls = tls::TlsParams::default();
        for param in query.into_iter().flat_map(|q| q.split('&')) {
            match param.split_once('=') {
                Some(("schema", v)) => schema = v.to_owned(),
                _ if param.is_empty() => {}
                _ if tls.take(param) => {}
                _ => rest.push(param),
            }
        }
        let url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut pg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            bad_url(format!("the store URL does not parse: {e}"))
        })?;
        let connector = tls.connector()?;
        if matches!(connector, tls::Connector::Tls(_)) {
            // The client then refuses a server that does not speak TLS.
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let mut cfg = PgConfig::new(pg, &schema)?;
        cfg.tls = connector;
        Ok(cfg)
    }

    /// Whether connections use TLS (`sslmode`/`sslrootcert` in the URL; see the `tls` module).
    pub fn uses_tls(&self) -> bool {
        matches!(self.tls, tls::Connector::Tls(_))
    }

    /// A configuration from a parsed tokio-postgres config and a schema name.
    pub fn new(mut pg: tokio_postgres::Config, schema: &str) -> Result<PgConfig, StoreError> {
        let valid = !schema.is_empty()
            && schema.len() <= 63
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !schema.as_bytes()[0].is_ascii_digit();
        if !valid {
            return Err(bad_url(format!(
                "schema {schema:?} is not a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most \
                 63 bytes)"
            )));
        }
        if pg.get_hosts().is_empty() {
            return Err(bad_url("the store URL names no host"));
        }
        let options = match pg.get_options() {
            Some(o) if !o.is_empty() => format!("{o} -c search_path={schema}"),
            _ => format!("-c search_path={schema}"),
        };
        pg.options(&options);
        if pg.get_application_name().is_none() {
            pg.application_name("gym-telemetry");
        }
        let connect_timeout = Duration::from_secs(10);
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(connect_timeout);
        }
        Ok(PgConfig {
            pg,
            schema: schema.to_owned(),
            read_pool_size: 8,
            connect_timeout,
            tls: tls::Connector::Plain,
        })
    }

    /// Whether the URL carried a password (which must then stay off argv and out of logs).
    pub fn has_password(&self) -> bool {
        self.pg.get_password().is_some()
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// `postgres://user@host:port/dbname?schema=NAME`: the store, without the password.
    pub fn describe(&self) -> String {
        use tokio_postgres::config::Host;
        let hosts: Vec<String> = self
            .pg
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let host = match h {
                    Host::Tcp(name) => name.clone(),
                    Host::Unix(path) => path.display().to_string(),
                };
                match self.pg.get_ports().get(i).or(self.pg.get_ports().first()) {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                }
            })
            .collect();
        let user = self
            .pg
            .get_user()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        format!(
            "postgres://{user}{}/{}?schema={}",
            hosts.join(","),
            self.pg.get_dbname().unwrap_or(""),
            self.schema
        )
    }
}

/// The backend's own runtime, shut down without blocking when the last handle goes (which may
/// happen inside a server's async task, where a blocking shutdown panics).
struct Rt(Option<tokio::runtime::Runtime>);

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Rt {
    fn runtime(&self) -> &tokio::runtime::Runtime {
        // Only `drop` takes it out.
        self.0.as_ref().unwrap_or_else(|| unreachable!())
    }
}

/// A connection of our own (not pooled), its socket driven by the returned connection object.
pub(crate) async fn connect<T>(
    pg: &tokio_postgres::Config,
    tls: T,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, T::Stream>,
    ),
    StoreError,
>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
{
    pg.connect(tls).await.map_err(error::classify)
}

/// What the writer and the reader of one backend share.
pub(crate) struct Shared {
    // Field order is drop order: the pools (whose connections' tasks run on `rt`) go first.
    pub(crate) write_pool: Pool,
    pub(crate) read_pool: Pool,
    pub(crate) cfg: PgConfig,
    migrated: AtomicBool,
    rt: Rt,
}

impl Shared {
    /// Runs `fut` to completion on the backend's runtime, blocking the calling thread.
    pub(crate) fn block_on<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send,
        T: Send,
    {
        let rt = self.rt.runtime();
        if tokio::runtime::Handle::try_current().is_err() {
            return rt.block_on(fut);
        }
        // Inside another runtime (a server's task or its blocking pool) `block_on` would
        // panic: block a short-lived helper thread instead, which borrows what `fut` borrows.
        std::thread::scope(|s| {
            let helper = std::thread::Builder::new()
                .name("pg-store-call".into())
                .spawn_scoped(s, || rt.block_on(fut))
                .map_err(|e| StoreError::Server {
                    engine: "postgres",
                    code: None,
                    retryable: true,
                    detail: format!("no thread for the store call: {e}"),
                })?;
            match helper.join() {
                Ok(out) => out,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    pub(crate) async fn write_client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.write_pool.get().await.map_err(error::pool)
    }

    pub(crate) async fn read_client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.read_pool.get().await.map_err(error::pool)
    }
}

/// The PostgreSQL backend: one schema of one database, shared by any number of daemons.
#[derive(Clone)]
pub struct PgBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PgBackend")
            .field(&self.shared.cfg.describe())
            .finish()
    }
}

fn pool(cfg: &PgConfig, size: usize) -> Result<Pool, StoreError> {
    let mc = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let mgr = match &cfg.tls {
        tls::Connector::Plain => Manager::from_config(cfg.pg.clone(), NoTls, mc),
        tls::Connector::Tls(t) => Manager::from_config(cfg.pg.clone(), t.clone(), mc),
    };
    Pool::builder(mgr)
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(cfg.connect_timeout))
        .create_timeout(Some(cfg.connect_timeout))
        .build()
        .map_err(|e| bad_url(format!("building the connection pool: {e}")))
}

impl PgBackend {
    /// A backend on `cfg`. Connects lazily: [`Backend::open_writer`] makes the first
    /// connection (and creates or migrates the schema).
    pub fn new(cfg: PgConfig) -> Result<PgBackend, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pg-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Server {
                engine: "postgres",
                code: None,
                retryable: false,
                detail: format!("starting the store's runtime: {e}"),
            })?;
        let write_pool = pool(&cfg, 1)?;
        let read_pool = pool(&cfg, cfg.read_pool_size)?;
        Ok(PgBackend {
            shared: Arc::new(Shared {
                write_pool,
                read_pool,
                cfg,
                migrated: AtomicBool::new(false),
                rt: Rt(Some(rt)),
            }),
        })
    }

    /// A backend on the store at `url` (see [`PgConfig::from_url`]).
    pub fn from_url(url: &str) -> Result<PgBackend, StoreError> {
        PgBackend::new(PgConfig::from_url(url)?)
    }

    /// Its configuration.
    pub fn config(&self) -> &PgConfig {
        &self.shared.cfg
    }

    /// Creates the schema if needed and brings it to [`schema::SCHEMA_VERSION`].
    pub fn migrate(&self) -> Result<i32, StoreError> {
        let s = &self.shared;
        let version = s.block_on(async {
            let mut client = s.write_client().await?;
            schema::migrate(&mut client, &s.cfg).await
        })?;
        s.migrated.store(true, Ordering::Release);
        Ok(version)
    }
}

impl Backend for PgBackend {
    fn open_writer(&self) -> Result<Box<dyn BackendWriter>, StoreError> {
        self.migrate()?;
        tracing::debug!(store = %self.describe(), "postgres writer open");
        Ok(Box::new(writer::PgWriter::new(self.shared.clone())))
    }

    fn reader(&self) -> Result<Arc<dyn BackendReader>, StoreError> {
        let s = &self.shared;
        if !s.migrated.load(Ordering::Acquire) {
            // Report a missing, old or newer schema at start-up, not on the first read.
            s.block_on(async {
                let client = s.read_client().await?;
                schema::check(&client, &s.cfg).await
            })?;
        }
        Ok(Arc::new(reader::PgReader::new(self.shared.clone())))
    }

    fn describe(&self) -> String {
        self.shared.cfg.describe()
    }

    fn change_feed(
        &self,
        wake: telemetry_store::ChangeWake,
    ) -> Result<Option<Box<dyn telemetry_store::ChangeFeed>>, StoreError> {
        Ok(Some(Box::new(feed::PgChangeFeed::start(
            self.shared.clone(),
            wake,
        )?)))
    }

    fn leases(&self) -> Result<Option<Arc<dyn telemetry_store::Leases>>, StoreError> {
        Ok(Some(Arc::new(leases::PgLeases::new(self.shared.clone()))))
    }
}
