//! The embedded default: a private PostgreSQL cluster in a data folder, run from the machine's
//! PostgreSQL binaries, for `serve` with no database configured.
//!
//! First start runs `initdb` (password authentication, a random superuser password kept in the
//! data folder, readable by its owner only); every start picks a free loopback port, or reuses
//! the server if one is already running on that folder; `stop` shuts it down cleanly, unless
//! another process of the service still uses it (a one-shot command beside `serve`, or `serve`
//! beside a long `replay`): the last user stops it, nobody stops it under another. Each
//! process names its connections `patient-service/<pid>` so the others can be told apart. Data is
//! kept between runs. PostgreSQL refuses to run as root, so as root the cluster runs as the
//! `postgres` system user, which must be able to reach the data folder.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

const SUPERUSER: &str = "patient_service";

/// What this service's connections are named before the process id.
const APPLICATION_NAME_PREFIX: &str = "patient-service/";
const DATABASE: &str = "patient_service";

pub struct EmbeddedPostgres {
    bindir: PathBuf,
    pgdata: PathBuf,
    port: u16,
    password: String,
    run_as: Option<(u32, u32)>,
    /// `patient-service/<pid>`: this process's connections, as `pg_stat_activity` shows them.
    application_name: String,
}

impl std::fmt::Debug for EmbeddedPostgres {
    // Never print the superuser password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedPostgres")
            .field("pgdata", &self.pgdata)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl EmbeddedPostgres {
    /// Starts (initialising on first use) the cluster kept in `data_dir`, and makes sure the
    /// service's database exists.
    ///
    /// # Errors
    ///
    /// When no PostgreSQL binaries are found, `initdb` or `pg_ctl` fail, or the server does not
    /// accept connections within a minute. `data_dir/pgdata/postgres.log` has the server's side.
    pub async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let bindir = find_bindir()?;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data folder {}", data_dir.display()))?;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o755))?;
        let data_dir = data_dir.canonicalize()?;
        let pgdata = data_dir.join("pgdata");
        let run_as = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")?
                .context("running as root needs a `postgres` system user to run PostgreSQL")?;
            Some((user.uid.as_raw(), user.gid.as_raw()))
        } else {
            None
        };
        let password = read_or_create_password(&data_dir.join("superuser-password"))?;
        let mut cluster = Self {
            bindir,
            pgdata,
            port: 0,
            password,
            run_as,
            application_name: format!("{APPLICATION_NAME_PREFIX}{}", std::process::id()),
        };
        if !cluster.pgdata.join("PG_VERSION").exists() {
            cluster.initdb(&data_dir)?;
        }
        cluster.port = match cluster.running_port() {
            Some(port) => {
                tracing::info!(port, "embedded PostgreSQL already running; reusing it");
                port
            }
            None => {
                let port = free_port()?;
                cluster.pg_ctl_start(port)?;
                port
            }
        };
        cluster.wait_until_ready().await?;
        cluster.ensure_database().await?;
        tracing::info!(port = cluster.port, data = %cluster.pgdata.display(), "embedded PostgreSQL ready");
        Ok(cluster)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `database` on this cluster, as its superuser (the password is hex).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// The URL of the service's database.
    pub fn database_url(&self) -> String {
        self.url(DATABASE)
    }

    /// Restarts the server on the same port (fast: open transactions roll back, connections
    /// are cut), as an operator's restart or a crash recovery would; for fault tests.
    ///
    /// # Errors
    ///
    /// When `pg_ctl restart` fails.
    pub fn restart(&self) -> anyhow::Result<()> {
        let status = self
            .command("pg_ctl")
            .arg("restart")
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(self.pgdata.join("postgres.log"))
            .args(["-m", "fast", "-w", "-t", "60"])
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("pg_ctl restart failed ({status})");
        }
        Ok(())
    }

    /// A client program of the cluster's PostgreSQL (`psql`, `pgbench`), run as this process's
    /// user and connecting to `database` of this cluster as its superuser.
    pub fn client(&self, program: &str, database: &str) -> std::process::Command {
        let mut command = std::process::Command::new(self.bindir.join(program));
        command
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", SUPERUSER)
            .env("PGPASSWORD", &self.password)
            .env("PGDATABASE", database);
        command
    }

    /// Options connecting to the service's database.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.server_options().database(DATABASE)
    }

    fn server_options(&self) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(SUPERUSER)
            .password(&self.password)
            .database("postgres")
            .application_name(&self.application_name)
    }

    /// How many connections other processes of the service hold to the server.
    fn connections_of_others(&self) -> anyhow::Result<u64> {
        let output = self
            .command("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, "-d", "postgres", "-X", "-A", "-t", "-c"])
            .arg(format!(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name LIKE '{APPLICATION_NAME_PREFIX}%'
                    AND application_name <> '{}'",
                self.application_name
            ))
            .env("PGPASSWORD", &self.password)
            .stderr(std::process::Stdio::null())
            .output()?;
        if !output.status.success() {
            bail!("psql failed ({})", output.status);
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
    }

    /// Stops the server (fast shutdown: open transactions roll back, data is kept), unless
    /// another process of the service is still connected: then it is left to that process.
    /// Close this process's pools first.
    ///
    /// # Errors
    ///
    /// When `pg_ctl stop` fails.
    pub fn stop(&self) -> anyhow::Result<()> {
        match self.connections_of_others() {
            Ok(0) => {}
            Ok(others) => {
                tracing::info!(
                    others,
                    "embedded PostgreSQL left running for the other processes using it"
                );
                return Ok(());
            }
            // Unknown: stopping could pull the database from under another process.
            Err(e) => {
                tracing::warn!(error.message = %e, "cannot tell who else uses the embedded PostgreSQL; leaving it running");
                return Ok(());
            }
        }
        self.stop_now()
    }

    /// Stops the server (fast shutdown) whoever is connected: for a test that owns the
    /// cluster and has stopped every process that used it.
    ///
    /// # Errors
    ///
    /// When `pg_ctl stop` fails.
    pub fn stop_now(&self) -> anyhow::Result<()> {
        let status = self
            .command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "-t", "60"])
            // Its progress lines must not reach stdout, which carries `replay`'s NDJSON.
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("pg_ctl stop failed ({status})");
        }
        tracing::info!("embedded PostgreSQL stopped");
        Ok(())
    }

    fn command(&self, tool: &str) -> Command {
        let mut command = Command::new(self.bindir.join(tool));
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        // The server inherits nothing of the service's environment (its secrets among it).
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LC_ALL", "C.UTF-8");
        command
    }

    fn initdb(&self, data_dir: &Path) -> anyhow::Result<()> {
        tracing::info!(data = %self.pgdata.display(), "initialising embedded PostgreSQL cluster");
        std::fs::create_dir_all(&self.pgdata)?;
        std::fs::set_permissions(&self.pgdata, std::fs::Permissions::from_mode(0o700))?;
        // initdb reads the password from a file; it must be readable by the user it runs as.
        let pwfile = data_dir.join(".initdb-password");
        let _stale = std::fs::remove_file(&pwfile);
        // Created new and private: never through a planted link, never readable by others.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pwfile)?
            .write_all(self.password.as_bytes())?;
        if let Some((uid, gid)) = self.run_as {
            check_reachable(&self.pgdata)?;
            nix::unistd::chown(&self.pgdata, Some(uid.into()), Some(gid.into()))?;
            nix::unistd::chown(&pwfile, Some(uid.into()), Some(gid.into()))?;
        }
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(&self.pgdata)
            .args([
                "-U",
                SUPERUSER,
                "-A",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output();
        let _removed = std::fs::remove_file(&pwfile);
        let output = output.context("running initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// The port of a server already running on this data folder, if any.
    fn running_port(&self) -> Option<u16> {
        let status = self
            .command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.pgdata)
            .output()
            .ok()?;
        if !status.status.success() {
            return None;
        }
        // postmaster.pid: pid, data directory, start time, port, ...
        let pid_file = std::fs::read_to_string(self.pgdata.join("postmaster.pid")).ok()?;
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    fn pg_ctl_start(&self, port: u16) -> anyhow::Result<()> {
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=200"
        );
        let output = self
            .command("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(self.pgdata.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options])
            .output()
            .context("running pg_ctl start")?;
        if !output.status.success() {
            bail!(
                "pg_ctl start failed ({}); see {}",
                output.status,
                self.pgdata.join("postgres.log").display()
            );
        }
        Ok(())
    }

    async fn wait_until_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.server_options().connect().await {
                Ok(conn) => {
                    conn.close().await?;
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(e).context("embedded PostgreSQL did not accept connections")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn ensure_database(&self) -> anyhow::Result<()> {
        let mut conn = self.server_options().connect().await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(DATABASE)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            sqlx::query(&format!("CREATE DATABASE {DATABASE}"))
                .execute(&mut conn)
                .await?;
        }
        conn.close().await?;
        Ok(())
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin`, or the folder of `initdb` on `PATH`, or
/// `PG_BINDIR`.
/// The folder of the PostgreSQL binaries: `PG_BINDIR`, else the newest under
/// `/usr/lib/postgresql`, else the one `initdb` is found in on the `PATH`.
///
/// # Errors
///
/// When none is found.
pub fn find_bindir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").exists())
        .context("no PostgreSQL server binaries found (install postgresql, or set PG_BINDIR)")
}

fn read_or_create_password(path: &Path) -> anyhow::Result<String> {
    if let Ok(password) = std::fs::read_to_string(path) {
        return Ok(password.trim().to_owned());
    }
    let password = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(password.as_bytes())?;
    Ok(password)
}

/// As root the server runs as `postgres`, which must be able to walk down to the data folder.
fn check_reachable(pgdata: &Path) -> anyhow::Result<()> {
    for dir in pgdata.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o001 == 0 {
            bail!(
                "the postgres user cannot reach {} ({} is mode {:o}); set APP_DATABASE__DATA_DIR to a folder it can reach",
                pgdata.display(),
                dir.display(),
                mode & 0o777
            );
        }
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
