//! Settings of SPEC §7: one clap layer, each flag with its environment variable, validated at
//! start. Passed explicitly to whatever needs them.

pub mod database;

use std::time::Duration;

use clap::Args;

/// `STATE_CACHE_KEYS` unless set: about 0.7 GiB of peak RSS with a 10 M-event history (README).
pub const DEFAULT_STATE_CACHE_KEYS: u64 = 500_000;

/// Default `DATABASE_URL`: the local server with trust auth, database `redis_postgres_sync`
/// (created on first start if missing).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/redis_postgres_sync";
/// Defaults shared by every subcommand that names them, so `status`, `dlq` or `publish` look at
/// the streams and group that `sync` uses unless told otherwise.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_INPUT_STREAM: &str = "rindexer_producer";
pub const DEFAULT_CONSUMER_GROUP: &str = "postgres-sync";
pub const DEFAULT_TERM_UPDATES_STREAM: &str = "term_updates";

/// A setting the operator must fix, found while connecting (a certificate that does not verify, a
/// root certificate file that cannot be read): the process stops with exit status 2 and this
/// message, which names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingError(pub String);

impl SettingError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Connections and stream names shared by every subcommand that talks to Redis and Postgres.
#[derive(Debug, Clone, Args)]
pub struct Connections {
    /// Redis server URL.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = DEFAULT_REDIS_URL,
        hide_env_values = true
    )]
    pub redis_url: String,
    /// PostgreSQL URL. The database is created if it does not exist. TLS as in libpq:
    /// `?sslmode=disable|prefer|require|verify-ca|verify-full` (default prefer) and
    /// `&sslrootcert=<PEM file>` (else the system's roots).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true, hide_default_value = false)]
    pub database_url: String,
    /// PEM file of an extra root certificate trusted for a `rediss://` REDIS_URL (a private CA).
    #[arg(long, env = "REDIS_CA_CERT")]
    pub redis_ca_cert: Option<std::path::PathBuf>,
}

impl Connections {
    pub fn redis_ca_cert(&self) -> Option<&std::path::Path> {
        self.redis_ca_cert.as_deref()
    }
}

/// The database alone, for subcommands that only read or rebuild Postgres (`replay`, `verify`).
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true, hide_default_value = false)]
    pub database_url: String,
}

impl DatabaseArgs {
    pub fn validate(&self) -> Result<(), String> {
        validate_database_url(&self.database_url)
    }
}

/// What happens to input entries once every consumer group on the stream has acknowledged them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputRetention {
    /// Leave them (other readers may need them; trim the stream yourself).
    Keep,
    /// Trim them (`XTRIM … MINID`) shortly after they are acknowledged.
    Acked,
}

/// Settings of the `sync` service.
#[derive(Debug, Clone, Args)]
pub struct SyncSettings {
    #[command(flatten)]
    pub connections: Connections,
    /// Input streams, comma-separated.
    #[arg(
        long,
        env = "REDIS_STREAMS",
        default_value = DEFAULT_INPUT_STREAM,
        value_delimiter = ','
    )]
    pub redis_streams: Vec<String>,
    /// Consumer group on the input streams (created from id 0 if missing).
    #[arg(long, env = "CONSUMER_GROUP", default_value = DEFAULT_CONSUMER_GROUP)]
    pub consumer_group: String,
    /// Consumer name within the group [default: consumer-<random uuid>].
    #[arg(long, env = "CONSUMER_NAME")]
    pub consumer_name: Option<String>,
    /// Most stream entries per batch; a batch is one transaction. At the chain head batches are
    /// as small as what has arrived; when catching up, bigger batches coalesce more row updates.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// How long a read waits for the first entry of a batch, in milliseconds.
    #[arg(long, env = "BATCH_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub batch_timeout_ms: u64,
    /// Threads folding a batch, each owning a share of the terms (results do not depend on it).
    #[arg(long, env = "WORKERS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: u32,
    /// A batch not committed within this time is abandoned and retried; entries pending this
    /// long with another consumer are claimed. Milliseconds.
    #[arg(long, env = "PROCESSING_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub processing_timeout_ms: u64,
    /// Retries of a failed database or Redis operation before the pipeline restarts.
    #[arg(long, env = "MAX_RETRIES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub max_retries: u32,
    /// Largest entry accepted, in bytes; a larger one is dead-lettered unread (bounds the memory
    /// of a batch together with BATCH_SIZE).
    #[arg(long, env = "MAX_ENTRY_BYTES", default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(1024..=536_870_912))]
    pub max_entry_bytes: u64,
    /// The writer lease expires this long after the holder's last heartbeat; a standby then takes
    /// over. Milliseconds.
    #[arg(long, env = "LEASE_TTL_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(500..=600_000))]
    pub lease_ttl_ms: u64,
    /// Most entries (atoms, triples, terms with their vaults, positions) the in-memory state
    /// keeps between batches; the least recently used are evicted once their batch has committed
    /// and read again from PostgreSQL when a batch needs them. Bounds the service's memory
    /// whatever the size of the history; see `state_cache_keys` and
    /// `state_cache_evicted_keys_total` in /metrics.
    #[arg(long, env = "STATE_CACHE_KEYS", default_value_t = DEFAULT_STATE_CACHE_KEYS, value_parser = clap::value_parser!(u64).range(1000..=1_000_000_000))]
    pub state_cache_keys: u64,
    #[command(flatten)]
    pub analytics: AnalyticsSettings,
    /// Input entries every consumer group on the stream has acknowledged: `keep` them, or trim
    /// them (`acked`). TERM_UPDATES_STREAM is always trimmed that way: it is ours.
    #[arg(long, env = "INPUT_RETENTION", value_enum, default_value = "keep")]
    pub input_retention: InputRetention,
    /// Do not run the analytics consumer in this process (run `analytics` separately).
    #[arg(long, env = "NO_ANALYTICS")]
    pub no_analytics: bool,
    #[command(flatten)]
    pub ops: OpsSettings,
}

/// Health endpoints and the circuit breaker.
#[derive(Debug, Clone, Args)]
pub struct OpsSettings {
    /// Port of /health, /ready and /metrics; 0 turns the HTTP server off.
    #[arg(long, env = "HTTP_PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// Address the HTTP server binds to.
    #[arg(long, env = "HTTP_BIND", default_value = "0.0.0.0")]
    pub http_bind: std::net::IpAddr,
    /// Consecutive failures (of Postgres or Redis) before the circuit breaker opens.
    #[arg(long, env = "CIRCUIT_BREAKER_THRESHOLD", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub circuit_breaker_threshold: u32,
    /// How long the breaker stays open before one attempt is let through, in milliseconds.
    #[arg(long, env = "CIRCUIT_BREAKER_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub circuit_breaker_timeout_ms: u64,
}

impl Default for OpsSettings {
    fn default() -> Self {
        Self {
            http_port: 0,
            http_bind: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            circuit_breaker_threshold: 5,
            circuit_breaker_timeout_ms: 60_000,
        }
    }
}

impl SyncSettings {
    /// Checks what clap cannot: names the bad setting in the error.
    pub fn validate(&self) -> Result<(), String> {
        validate_connections(&self.connections)?;
        if self.redis_streams.is_empty() || self.redis_streams.iter().any(|s| s.trim().is_empty()) {
            return Err("REDIS_STREAMS: expected one or more comma-separated stream names, got an empty name".into());
        }
        if self.consumer_group.trim().is_empty() {
            return Err("CONSUMER_GROUP: must not be empty".into());
        }
        if self
            .consumer_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err("CONSUMER_NAME: must not be empty".into());
        }
        self.analytics.validate()?;
        if self
            .redis_streams
            .contains(&self.analytics.term_updates_stream)
        {
            return Err(format!(
                "TERM_UPDATES_STREAM: {:?} is also an input stream in REDIS_STREAMS",
                self.analytics.term_updates_stream
            ));
        }
        Ok(())
    }

    pub fn consumer(&self) -> String {
        self.consumer_name
            .clone()
            .unwrap_or_else(|| format!("consumer-{}", uuid::Uuid::new_v4()))
    }

    pub fn batch_timeout(&self) -> Duration {
        Duration::from_millis(self.batch_timeout_ms)
    }

    pub fn processing_timeout(&self) -> Duration {
        Duration::from_millis(self.processing_timeout_ms)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// The analytics consumer that runs beside this sync.
    pub fn analytics_run(&self, consumer: &str) -> AnalyticsRun {
        AnalyticsRun {
            connections: self.connections.clone(),
            settings: self.analytics.clone(),
            consumer: consumer.to_owned(),
            block: self.batch_timeout(),
            processing_timeout: self.processing_timeout(),
            max_retries: self.max_retries,
        }
    }
}

/// Settings of the standalone `analytics` subcommand.
#[derive(Debug, Clone, Args)]
pub struct AnalyticsArgs {
    #[command(flatten)]
    pub connections: Connections,
    #[command(flatten)]
    pub analytics: AnalyticsSettings,
    /// Consumer name within the analytics group [default: analytics-<random uuid>].
    #[arg(long, env = "CONSUMER_NAME")]
    pub consumer_name: Option<String>,
    /// How long a read waits for term updates, in milliseconds.
    #[arg(long, env = "BATCH_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub batch_timeout_ms: u64,
    /// A batch not committed within this time is abandoned and retried. Milliseconds.
    #[arg(long, env = "PROCESSING_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub processing_timeout_ms: u64,
    /// Retries of a failed database or Redis operation before the consumer restarts.
    #[arg(long, env = "MAX_RETRIES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub max_retries: u32,
    /// Consecutive failures (of Postgres or Redis) before the consumer's circuit breaker opens.
    #[arg(long, env = "CIRCUIT_BREAKER_THRESHOLD", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub circuit_breaker_threshold: u32,
    /// How long the breaker stays open before one attempt is let through, in milliseconds.
    #[arg(long, env = "CIRCUIT_BREAKER_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub circuit_breaker_timeout_ms: u64,
}

impl AnalyticsArgs {
    pub fn validate(&self) -> Result<(), String> {
        validate_connections(&self.connections)?;
        self.analytics.validate()
    }

    pub fn run(&self) -> AnalyticsRun {
        AnalyticsRun {
            connections: self.connections.clone(),
            settings: self.analytics.clone(),
            consumer: self
                .consumer_name
                .clone()
                .unwrap_or_else(|| format!("analytics-{}", uuid::Uuid::new_v4())),
            block: Duration::from_millis(self.batch_timeout_ms),
            processing_timeout: Duration::from_millis(self.processing_timeout_ms),
            max_retries: self.max_retries,
        }
    }
}

pub fn validate_connections(c: &Connections) -> Result<(), String> {
    validate_database_url(&c.database_url)?;
    validate_redis(&c.redis_url, c.redis_ca_cert())
}

/// `REDIS_URL` and `REDIS_CA_CERT`: a valid URL, and a readable PEM file only with `rediss://`.
pub fn validate_redis(url: &str, ca_cert: Option<&std::path::Path>) -> Result<(), String> {
    if redis::Client::open(url).is_err() {
        return Err(
            "REDIS_URL: not a valid Redis URL (redis://host:port, rediss://… or unix://…)".into(),
        );
    }
    if let Some(path) = ca_cert {
        if !url.starts_with("rediss://") {
            return Err("REDIS_CA_CERT is set, but REDIS_URL is not a rediss:// (TLS) URL".into());
        }
        crate::tls::read_pem(path).map_err(|e| format!("REDIS_CA_CERT: {e}"))?;
    }
    Ok(())
}

fn validate_database_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("DATABASE_URL: expected a postgres:// or postgresql:// URL".into());
    }
    database::validate(url)
}
/// Settings of the analytics consumer (SPEC §7).
#[derive(Debug, Clone, Args)]
pub struct AnalyticsSettings {
    /// Stream of changed term ids written by `sync`.
    #[arg(long, env = "TERM_UPDATES_STREAM", default_value = DEFAULT_TERM_UPDATES_STREAM)]
    pub term_updates_stream: String,
    /// Suffix of the analytics consumer group: the group is `analytics<suffix>`.
    #[arg(long, env = "CONSUMER_GROUP_SUFFIX", default_value = "")]
    pub consumer_group_suffix: String,
    /// Most term-update entries per analytics batch (one transaction).
    #[arg(long, env = "ANALYTICS_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub analytics_batch_size: u32,
}

impl AnalyticsSettings {
    pub fn group(&self) -> String {
        format!("analytics{}", self.consumer_group_suffix)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.term_updates_stream.trim().is_empty() {
            return Err("TERM_UPDATES_STREAM: must not be empty".into());
        }
        if self.consumer_group_suffix.chars().any(char::is_whitespace) {
            return Err("CONSUMER_GROUP_SUFFIX: must not contain white space".into());
        }
        Ok(())
    }
}

/// Everything the consumer needs to run.
#[derive(Debug, Clone)]
pub struct AnalyticsRun {
    pub connections: Connections,
    pub settings: AnalyticsSettings,
    pub consumer: String,
    pub block: Duration,
    pub processing_timeout: Duration,
    pub max_retries: u32,
}
