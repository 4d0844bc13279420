//! A real OpenADR 3.1 VTN (the `openleadr-vtn` 0.2.8 server, built by scripts/setup.sh) with its
//! internal OAuth provider, backed by a real PostgreSQL 15 (Debian's), both on fresh loopback ports with
//! their data and logs in the test's directory; a test acts as the utility's business logic (BL) and
//! the operator as its VEN. Process, file and network IO; both servers are stopped when dropped.
//!
//! What [`Vtn::start`] leaves on the VTN, so that the VEN can read a program's events and report:
//! - a BL user (`"user"` row inserted by SQL, the VTN hashes nothing for it: the argon2id hash is
//!   made here) with the scopes `read_all write_programs write_events write_reports_bl
//!   write_subscriptions_bl write_vens_bl write_users`, and its credentials [`Vtn::bl`];
//! - a VEN user made through the VTN's own user API (`POST /users`, `POST /users/{id}`) with the
//!   scopes `read_targets read_ven_objects write_reports_ven write_subscriptions_ven write_vens_ven`,
//!   and its credentials [`Vtn::ven`];
//! - a `ven` object (`POST /vens`, a `BL_VEN_REQUEST`) named [`Vtn::ven_name`] whose `clientID` is the
//!   VEN's client id (what links a token's subject to its VEN) and whose one target is its own name.
//!
//! A VEN token (scope `read_targets`) lists the events, and programs, whose targets meet its VEN's
//! (the events [`Vtn::create_event`] makes when `targets` holds [`Vtn::ven_name`]) or that have no
//! targets at all; one whose VEN has other targets sees neither. A report's `eventID` must name an
//! event; the VTN stores the token's client id with it, and a VEN reads back only its own reports.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, SaltString};
use base64::Engine;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::processes::{free_port, log_tail_of};

/// PostgreSQL 15's server binaries (Debian's `postgresql-15`).
const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The database role the VTN connects as (trusted on loopback, no password) and its database.
const DB_USER: &str = "kilowatt";
const DB_NAME: &str = "openadr";
/// The scopes of the BL user (the names of the VTN's `scope` enum).
const BL_SCOPES: [&str; 7] = [
    "read_all",
    "write_programs",
    "write_events",
    "write_reports_bl",
    "write_subscriptions_bl",
    "write_vens_bl",
    "write_users",
];
/// The scopes of the VEN user.
const VEN_SCOPES: [&str; 5] = [
    "read_targets",
    "read_ven_objects",
    "write_reports_ven",
    "write_subscriptions_ven",
    "write_vens_ven",
];
/// How long PostgreSQL and then the VTN (its migrations included) may take to serve.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// OAuth 2.0 client credentials of a VTN user, for the client-credentials grant at
/// [`Vtn::token_url`] (HTTP Basic auth or `client_id`/`client_secret` form fields).
#[derive(Clone, Debug)]
pub struct OauthClient {
    pub client_id: String,
    pub client_secret: String,
}

/// A running VTN and its PostgreSQL; both stopped on drop.
pub struct Vtn {
    /// `http://127.0.0.1:<port>/`: the base URL of the OpenADR API (`programs`, `events`, `reports`,
    /// `vens`, …, at its root), with the trailing slash that relative joins (openleadr-client's
    /// `Client::with_url`) need.
    pub url: String,
    /// `http://127.0.0.1:<port>/auth/token`, the internal OAuth provider's token endpoint (the
    /// client-credentials grant, form-encoded; what `Client::with_url` derives from [`Vtn::url`]).
    pub token_url: String,
    /// The business logic's credentials (the utility; see the module doc for its scopes).
    pub bl: OauthClient,
    /// The VEN's credentials.
    pub ven: OauthClient,
    /// The VEN object's `venName`, also its only target.
    pub ven_name: String,
    /// The VEN object's `id`.
    pub ven_id: String,
    /// The VTN's log (its tracing output at `info`), for a failing test's message.
    pub log: PathBuf,
    /// PostgreSQL's log.
    pub postgres_log: PathBuf,
    bl_token: String,
    http: reqwest::Client,
    // Held to be dropped: the VTN (declared first) stops before its database.
    _server: KillOnDrop,
    _postgres: Postgres,
}

impl Vtn {
    /// Starts PostgreSQL and the VTN in `dir` and sets up the BL, the VEN's user and its `ven` object
    /// (see the module doc). Panics, with the logs' tails, when either fails to start, and naming
    /// scripts/setup.sh when the VTN binary is missing.
    pub async fn start(dir: &Path) -> Vtn {
        let binary = vtn_binary();
        let pg_dir = dir.join("postgres");
        let postgres = tokio::task::spawn_blocking(move || Postgres::start(&pg_dir))
            .await
            .expect("postgres start task");

        apply_migrations(&postgres, &binary);

        let port = free_port();
        let url = format!("http://127.0.0.1:{port}/");
        let token_url = format!("{url}auth/token");
        let log = dir.join("openleadr-vtn.log");
        let secret = base64::engine::general_purpose::STANDARD.encode(random_bytes(32));
        let log_file = std::fs::File::create(&log).expect("vtn log");
        let child = Command::new(&binary)
            // NB: it reads a `.env` from its working directory; the test's directory has none.
            .current_dir(dir)
            .env("PORT", port.to_string())
            .env(
                "DATABASE_URL",
                format!("postgres://{DB_USER}@127.0.0.1:{}/{DB_NAME}", postgres.port),
            )
            .env("OAUTH_TYPE", "INTERNAL")
            .env("OAUTH_BASE64_SECRET", secret)
            .env("OAUTH_TOKEN_URL", &token_url)
            .env("RUST_LOG", "info,sqlx=warn")
            .env_remove("MQTT_URL")
            .stdout(log_file.try_clone().expect("vtn log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", binary.display()));
        let mut server = KillOnDrop(child);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config())
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");

        // `/health` answers once the migrations ran (the VTN migrates before it serves).
        let started = Instant::now();
        loop {
            let health = http.get(format!("{url}health")).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if let Ok(Some(status)) = server.0.try_wait() {
                panic!(
                    "openleadr-vtn exited ({status}):\n{}",
                    log_tail_of(dir, "openleadr-vtn.log")
                );
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "openleadr-vtn not healthy within {START_TIMEOUT:?}:\n{}",
                log_tail_of(dir, "openleadr-vtn.log")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The first user, by SQL: the VTN's user API needs a `write_users` token already.
        let bl = OauthClient {
            client_id: "kilowatt-bl".to_owned(),
            client_secret: hex(&random_bytes(24)),
        };
        let scopes = BL_SCOPES.join(",");
        let bl_hash = argon2_hash(&bl.client_secret);
        postgres.sql(&format!(
            "INSERT INTO \"user\" (id, reference, description, scopes, created, modified) \
             VALUES ('kilowatt-bl', 'kilowatt-tests', 'the tests'' business logic', '{{{scopes}}}', now(), now()); \
             INSERT INTO user_credentials (user_id, client_id, client_secret) \
             VALUES ('kilowatt-bl', '{}', '{bl_hash}');",
            bl.client_id
        ));

        let mut vtn = Vtn {
            url,
            token_url,
            bl,
            ven: OauthClient {
                client_id: "kilowatt-ven".to_owned(),
                client_secret: hex(&random_bytes(24)),
            },
            ven_name: "kilowatt".to_owned(),
            ven_id: String::new(),
            log,
            postgres_log: postgres.log.clone(),
            bl_token: String::new(),
            http,
            _server: server,
            _postgres: postgres,
        };
        vtn.bl_token = vtn.token(&vtn.bl).await;

        // The VEN's user and credentials through the VTN's user API, then its VEN object.
        let user = vtn
            .bl_call(
                Method::POST,
                "users",
                &json!({"reference": "kilowatt-operator", "description": "the operator as VEN",
                        "scope": VEN_SCOPES}),
            )
            .await;
        let user_id = user["id"].as_str().expect("user id").to_owned();
        vtn.bl_call(
            Method::POST,
            &format!("users/{user_id}"),
            &json!({"client_id": vtn.ven.client_id, "client_secret": vtn.ven.client_secret}),
        )
        .await;
        let ven = vtn
            .bl_call(
                Method::POST,
                "vens",
                &json!({"objectType": "BL_VEN_REQUEST", "clientID": vtn.ven.client_id,
                        "venName": vtn.ven_name, "targets": [vtn.ven_name]}),
            )
            .await;
        vtn.ven_id = ven["id"].as_str().expect("ven id").to_owned();
        vtn
    }

    /// An access token for `client` from [`Vtn::token_url`] (client-credentials grant, HTTP Basic
    /// auth); panics when the VTN refuses.
    pub async fn token(&self, client: &OauthClient) -> String {
        let response = self
            .http
            .post(&self.token_url)
            .basic_auth(&client.client_id, Some(&client.client_secret))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap_or_else(|e| panic!("token request: {e}\n{}", self.log_tail()));
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "token for {}: {status} {body}\n{}",
            client.client_id,
            self.log_tail()
        );
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// The HTTP client the harness uses (no proxies, 10 s timeout), for requests of a test's own.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The BL's access token (fetched once at start; valid for 30 days).
    pub fn bl_token(&self) -> &str {
        &self.bl_token
    }

    /// One API request: `path` relative to [`Vtn::url`] (e.g. `events?programID=…`), `token` as a
    /// Bearer token, `body` as JSON; the status and the JSON answer (`Null` when not JSON).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(token)
            .header("Accept", "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log_tail()));
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Creates a program named `name` (unique on the VTN), targeted at the VEN; its `id`.
    pub async fn create_program(&self, name: &str) -> String {
        let program = self
            .bl_call(
                Method::POST,
                "programs",
                &json!({"objectType": "PROGRAM", "programName": name, "targets": [self.ven_name]}),
            )
            .await;
        program["id"].as_str().expect("program id").to_owned()
    }

    /// Creates `event` (OpenADR 3.1 event JSON: `intervalPeriod`, `intervals` with `payloads`,
    /// `payloadDescriptors`, `targets`, …) in `program_id`'s program, setting its `objectType` and
    /// `programID`; its `id`. The VEN sees it when `targets` is absent or holds [`Vtn::ven_name`].
    pub async fn create_event(&self, program_id: &str, mut event: Value) -> String {
        event["objectType"] = json!("EVENT");
        event["programID"] = json!(program_id);
        let event = self.bl_call(Method::POST, "events", &event).await;
        event["id"].as_str().expect("event id").to_owned()
    }

    /// Event JSON for [`Vtn::create_event`]: one interval, from `start` (RFC 3339) for `duration`
    /// (ISO 8601), of an import capacity limit of `kw` kilowatts, targeted at the VEN.
    pub fn capacity_limit_event(&self, name: &str, start: &str, duration: &str, kw: f64) -> Value {
        json!({
            "eventName": name,
            "targets": [self.ven_name],
            "payloadDescriptors": [{"objectType": "EVENT_PAYLOAD_DESCRIPTOR",
                                    "payloadType": "IMPORT_CAPACITY_LIMIT", "units": "KW"}],
            "intervalPeriod": {"start": start, "duration": duration},
            "intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [kw]}]}],
        })
    }

    /// Deletes an event. NB: the VTN refuses (a foreign key) to delete one that has reports.
    pub async fn delete_event(&self, id: &str) {
        self.bl_call_without_body(Method::DELETE, &format!("events/{id}"))
            .await;
    }

    /// Every report VENs posted (the newest first, at most 50), as the BL reads them.
    pub async fn reports(&self) -> Vec<Value> {
        match self
            .bl_call_without_body(Method::GET, "reports?limit=50")
            .await
        {
            Value::Array(reports) => reports,
            other => panic!("reports: not a list: {other}"),
        }
    }

    async fn bl_call(&self, method: Method, path: &str, body: &Value) -> Value {
        let (status, answer) = self
            .request(method.clone(), path, &self.bl_token, Some(body))
            .await;
        assert!(
            status.is_success(),
            "BL {method} {path} {body}: {status} {answer}\n{}",
            self.log_tail()
        );
        answer
    }

    async fn bl_call_without_body(&self, method: Method, path: &str) -> Value {
        let (status, answer) = self
            .request(method.clone(), path, &self.bl_token, None)
            .await;
        assert!(
            status.is_success(),
            "BL {method} {path}: {status} {answer}\n{}",
            self.log_tail()
        );
        answer
    }

    /// The last lines of the VTN's log.
    pub fn log_tail(&self) -> String {
        let dir = self.log.parent().unwrap_or(Path::new("."));
        let file = self.log.file_name().and_then(|f| f.to_str()).unwrap_or("");
        log_tail_of(dir, file)
    }
}

/// The VTN binary: `$KILOWATT_OPENLEADR_VTN`, else where scripts/setup.sh installs it.
fn vtn_binary() -> PathBuf {
    let binary = std::env::var_os("KILOWATT_OPENLEADR_VTN").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/kilowatt/openleadr-vtn-0.2.8/bin/openleadr-vtn")
        },
        PathBuf::from,
    );
    assert!(
        binary.exists(),
        "{} is missing: run scripts/setup.sh (it builds openleadr-vtn 0.2.8 once), or set \
         KILOWATT_OPENLEADR_VTN to an openleadr-vtn built with --features internal-oauth",
        binary.display()
    );
    binary
}

/// The one statement of the VTN's migrations that PostgreSQL 15 refuses (a subquery in FROM
/// without an alias, which only PostgreSQL 16 accepts), and what it becomes.
const ALIAS_LESS_SUBQUERY: &str = "FROM (SELECT unnest(_scopes) AS scope)";
const ALIASED_SUBQUERY: &str = "FROM (SELECT unnest(_scopes) AS scope) AS scopes";

/// Applies the VTN's own migrations (copied next to its binary by scripts/setup.sh), in order, with
/// [`ALIAS_LESS_SUBQUERY`] aliased: Debian 12 has PostgreSQL 15, where the VTN's migrating at start
/// stops at that statement. The VTN then finds its schema made; its own migration run fails at the
/// first file (its tables exist) and it logs that and serves.
fn apply_migrations(postgres: &Postgres, binary: &Path) {
    let dir = binary
        .parent()
        .and_then(Path::parent)
        .map(|root| root.join("migrations"))
        .expect("the VTN's install root");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; scripts/setup.sh copies openleadr-vtn's migrations there",
                dir.display()
            )
        })
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no migrations in {}", dir.display());
    for file in files {
        let sql = std::fs::read_to_string(&file).expect("migration");
        postgres.sql(&sql.replace(ALIAS_LESS_SUBQUERY, ALIASED_SUBQUERY));
    }
}

/// A TLS configuration for the HTTP client, with ring as its explicit provider (reqwest is built
/// without one here, and the VTN speaks plain HTTP on loopback anyway).
fn tls_config() -> tokio_rustls::rustls::ClientConfig {
    use tokio_rustls::rustls;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// A child process killed (SIGKILL) and reaped on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A PostgreSQL server on 127.0.0.1 with a fresh cluster (`trust` authentication, superuser
/// [`DB_USER`], database [`DB_NAME`]); shut down (fast) on drop. As root it runs as Debian's `postgres`
/// user, since initdb and postgres refuse to run as root.
struct Postgres {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Postgres {
    fn start(dir: &Path) -> Postgres {
        let data = dir.join("data");
        let sockets = dir.join("run");
        std::fs::create_dir_all(&sockets).expect("postgres directories");
        let as_postgres = effective_uid() == 0;
        if as_postgres {
            let (uid, gid) = postgres_ids();
            for path in [dir, &sockets] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
        let command = |program: &str| {
            let binary = Path::new(POSTGRES_BIN).join(program);
            let mut command = if as_postgres {
                let mut command = Command::new("setpriv");
                command
                    .args([
                        "--reuid=postgres",
                        "--regid=postgres",
                        "--init-groups",
                        "--",
                    ])
                    .arg(binary);
                command
            } else {
                Command::new(binary)
            };
            // NB: a directory the `postgres` user may enter (not the caller's, which may be root's).
            command.current_dir(dir);
            command
        };

        let initdb_log = dir.join("initdb.log");
        let status = command("initdb")
            .arg("--pgdata")
            .arg(&data)
            .args([
                "--username",
                DB_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .stdout(std::fs::File::create(&initdb_log).expect("initdb log"))
            .stderr(Stdio::piped())
            .output()
            .expect("initdb runs (Debian package postgresql-15; scripts/setup.sh installs it)");
        assert!(
            status.status.success(),
            "initdb failed: {}\n{}",
            String::from_utf8_lossy(&status.stderr),
            log_tail_of(dir, "initdb.log")
        );

        let port = free_port();
        let log = dir.join("postgres.log");
        let child = command("postgres")
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&sockets)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            // A throwaway cluster: no durability, no waiting for the disk.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=50"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("postgres log"))
            .spawn()
            .expect("postgres starts");
        let mut postgres = Postgres { child, port, log };

        let started = Instant::now();
        loop {
            let created = postgres
                .psql("postgres", &format!("CREATE DATABASE {DB_NAME}"))
                .status
                .success();
            if created {
                return postgres;
            }
            if let Ok(Some(status)) = postgres.child.try_wait() {
                panic!(
                    "postgres exited ({status}):\n{}",
                    log_tail_of(dir, "postgres.log")
                );
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "postgres not ready within {START_TIMEOUT:?}:\n{}",
                log_tail_of(dir, "postgres.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `sql` in `database` with psql over TCP.
    fn psql(&self, database: &str, sql: &str) -> std::process::Output {
        Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", DB_USER, "-d", database])
            .args(["-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .expect("psql runs (Debian package postgresql-client)")
    }

    /// Runs `sql` in the VTN's database; panics with psql's error when it fails.
    fn sql(&self, sql: &str) {
        let output = self.psql(DB_NAME, sql);
        assert!(
            output.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: a fast shutdown, which also ends its backends; SIGKILL if it takes too long.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An argon2id PHC string of `secret` with a random salt (the VTN verifies with argon2's defaults).
fn argon2_hash(secret: &str) -> String {
    let salt = SaltString::encode_b64(&random_bytes(16)).expect("salt");
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .expect("argon2 hash")
        .to_string()
}

/// `n` bytes from the operating system's random source.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom");
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// This process's effective user id (the second `Uid:` field of /proc/self/status).
fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok())
        })
        .expect("effective uid from /proc/self/status")
}

/// The `postgres` user's uid and gid from /etc/passwd (the Debian package creates it).
fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .expect("a `postgres` user (Debian package postgresql; scripts/setup.sh installs it)")
}
