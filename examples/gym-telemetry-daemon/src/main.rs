//! `gym-telemetry-daemon`: a command-line shell over the `telemetry-server` library (`serve`),
//! the store's offline tools (`dump`, JSONL or Parquet through `telemetry-export`, and
//! `import-legacy`) and the TensorBoard importer (`import-tensorboard`,
//! `telemetry-tensorboard`). The demo is its own binary,
//! `gym-telemetry-demo`; the JSONL proxy is `gym-telemetry-proxy`.

mod cli;
mod video;

use std::{io::Write, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{bail, Context};
use cli::{
    Cli, Command, DumpArgs, DumpFormat, DurabilityArg, ImportArgs, ImportTensorboardArgs,
    MigrateStoreArgs, ServeArgs, StoreArgs,
};
use telemetry_core::ControlMode;
use telemetry_server::{AuthConfig, ServerConfig, TlsFiles};
use telemetry_store::{
    dump, legacy_import, Backend, Durability, Filter, ModeFilter, Store, StoreConfig, StoreReader,
};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = match parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gym-telemetry-daemon: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gym-telemetry-daemon: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Parses the command line, refusing a token in argv (`--auth-token`), which every local account
/// can read in `ps`.
fn parse() -> anyhow::Result<Cli> {
    use clap::{parser::ValueSource, CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    // Only `serve` has the flag (asking another subcommand about it panics in clap).
    if let Some(("serve", sub)) = matches.subcommand() {
        if sub.value_source("auth_token") == Some(ValueSource::CommandLine) {
            bail!(
                "--auth-token on the command line is visible to every local account (ps); \
                 use --auth-token-file PATH or the GYM_TELEMETRY_AUTH_TOKEN variable"
            );
        }
    }
    if let Some(("migrate-store", sub)) = matches.subcommand() {
        for id in ["from", "to"] {
            if sub.value_source(id) == Some(ValueSource::CommandLine)
                && sub
                    .get_one::<String>(id)
                    .and_then(|u| telemetry_store_pg::PgConfig::from_url(u).ok())
                    .is_some_and(|c| c.has_password())
            {
                bail!(
                    "--{id} with a password on the command line is visible to every local \
                     account (ps); use the GYM_TELEMETRY_MIGRATE_{} variable",
                    id.to_uppercase()
                );
            }
        }
    }
    if let Some(("serve" | "dump", sub)) = matches.subcommand() {
        if sub.value_source("store") == Some(ValueSource::CommandLine) {
            let has_password = sub
                .get_one::<String>("store")
                .and_then(|u| telemetry_store_pg::PgConfig::from_url(u).ok())
                .is_some_and(|c| c.has_password());
            if has_password {
                bail!(
                    "--store with a password on the command line is visible to every local \
                     account (ps); use --store-url-file PATH or the GYM_TELEMETRY_STORE variable"
                );
            }
        }
    }
    Ok(Cli::from_arg_matches(&matches)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Serve(a) => runtime()?.block_on(serve(a)),
        Command::Dump(a) => dump_cmd(a),
        Command::ImportLegacy(a) => import(a),
        Command::ImportTensorboard(a) => runtime()?.block_on(import_tensorboard(a)),
        Command::MigrateStore(a) => migrate_store(a),
        Command::ExportVideo(a) => video::export_video(a),
        Command::Policies(c) => policies_cmd(c),
    }
}

/// `policies …`: the inventory in the var dir, through telemetry-policy.
fn policies_cmd(c: cli::PoliciesCommand) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    use telemetry_policy::{report, Inventory, Origin, Registration};
    match c {
        cli::PoliciesCommand::List(a) => {
            let mut listing = Inventory::in_var_dir(&a.var.var_dir)
                .scan()
                .context("scanning the policy inventory")?;
            report::filter(&mut listing, &a.env, &a.agent, &a.format);
            for line in report::listing_lines(&listing) {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        cli::PoliciesCommand::Show(a) => {
            let m = Inventory::in_var_dir(&a.var.var_dir)
                .get(&a.policy_id)
                .with_context(|| format!("policy {:?}", a.policy_id))?;
            println!("{}", report::manifest_json(&m));
            Ok(ExitCode::SUCCESS)
        }
        cli::PoliciesCommand::Import(a) => {
            let reg = Registration {
                env_id: a.env,
                agent_id: a.agent,
                observation_space: a.observation_space,
                action_space: a.action_space,
                control_mode: a.control_mode,
                format: a.format,
                payload_version: a.payload_version,
                source_run_id: a.source_run,
                expected_sha256: a.sha256.to_ascii_lowercase(),
                ..Default::default()
            };
            let m = Inventory::in_var_dir(&a.var.var_dir)
                .register(&a.path, reg, Origin::Registered)
                .with_context(|| format!("importing {}", a.path.display()))?;
            println!("{}", report::manifest_json(&m));
            Ok(ExitCode::SUCCESS)
        }
        cli::PoliciesCommand::Verify(a) => {
            let (lines, ok) = report::verify(&Inventory::in_var_dir(&a.var.var_dir), &a.policy_ids)
                .context("verifying policies")?;
            for line in lines {
                println!("{line}");
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// A backend named by a postgres:// URL or a SQLite file path (`must_exist`: a source).
fn backend_at(what: &str, spec: &str, must_exist: bool) -> anyhow::Result<Arc<dyn Backend>> {
    let spec = spec.trim();
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        // The error never repeats the URL (it may hold a password).
        let b = telemetry_store_pg::PgBackend::from_url(spec)
            .with_context(|| format!("the {what} store URL"))?;
        return Ok(Arc::new(b));
    }
    let path = Path::new(spec);
    if must_exist && !path.is_file() {
        bail!("the {what} store {} is not a file", path.display());
    }
    Ok(Arc::new(telemetry_store::SqliteBackend::new(
        StoreConfig::new(path),
    )))
}

/// `migrate-store`: a verified, resumable copy between two backends (telemetry_store::copy).
fn migrate_store(a: MigrateStoreArgs) -> anyhow::Result<std::process::ExitCode> {
    let source = backend_at("source", &a.from, true)?;
    let target = backend_at("target", &a.to, false)?;
    if source.describe() == target.describe() {
        bail!("--from and --to name the same store");
    }
    // The source must exist already: open its reader only (no writer, no migration of it).
    let source_reader = source
        .reader()
        .with_context(|| format!("opening the source {}", source.describe()))?;
    let mut writer = target
        .open_writer()
        .with_context(|| format!("opening the target {}", target.describe()))?;
    let target_reader = target.reader()?;
    let report = telemetry_store::copy::copy_store(
        source_reader.as_ref(),
        writer.as_mut(),
        target_reader.as_ref(),
    )
    .with_context(|| format!("copying {} to {}", source.describe(), target.describe()))?;
    writer.checkpoint()?;
    for (i, name) in telemetry_store::copy::STREAMS.iter().enumerate() {
        let d = &report.digest[i];
        println!(
            "{name}: copied={} total={} last_seq={} sha256={}",
            report.copied[i],
            d.count,
            d.last_seq,
            d.hex()
        );
    }
    println!(
        "migrate-store: verified {} -> {}",
        source.describe(),
        target.describe()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// The store named by `--store` / `--store-url-file`, or `None` for SQLite in the var dir.
fn store_backend(a: &StoreArgs) -> anyhow::Result<Option<Arc<dyn Backend>>> {
    let url = match (&a.store, &a.store_url_file) {
        (Some(url), _) if !url.trim().is_empty() => url.trim().to_owned(),
        (_, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the store URL from {}", file.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        _ => return Ok(None),
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // Never echo the value: it may be a URL with a password in it.
        bail!("--store takes a postgres:// or postgresql:// URL (SQLite is the default: omit it)");
    }
    let backend = telemetry_store_pg::PgBackend::from_url(&url)?;
    Ok(Some(Arc::new(backend)))
}

async fn serve(a: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut cfg = ServerConfig::new(&a.var.var_dir);
    if let Some(backend) = store_backend(&a.store)? {
        cfg = cfg.with_backend(backend);
    }
    cfg.listen = a.listen;
    cfg.metrics_listen = match a.metrics_listen.as_str() {
        "off" | "" => None,
        s => Some(
            s.parse::<SocketAddr>()
                .with_context(|| format!("--metrics-listen {s:?} is not an address or `off`"))?,
        ),
    };
    let token_file_default = matches!(
        (
            a.insecure_no_auth,
            &a.auth_token_file,
            a.auth_token.as_deref()
        ),
        (false, None, None | Some(""))
    );
    cfg.auth = match (a.insecure_no_auth, a.auth_token_file, a.auth_token) {
        (true, _, _) => AuthConfig::InsecureNoAuth,
        (false, Some(file), _) => AuthConfig::File(file),
        (false, None, Some(token)) if !token.is_empty() => AuthConfig::Token(token),
        _ => AuthConfig::VarDirFile,
    };
    if let (Some(cert), Some(key)) = (a.tls_cert, a.tls_key) {
        cfg.tls = Some(TlsFiles { cert, key });
    }
    cfg.tls_client_ca = a.tls_client_ca;
    cfg.tls_client_domain = a.tls_client_domain;
    cfg.durability = match a.durability {
        DurabilityArg::Normal => Durability::Normal,
        DurabilityArg::Full => Durability::Full,
    };
    cfg.heartbeat_timeout = Duration::from_secs(a.heartbeat_timeout.max(1));
    cfg.lease_ttl = Duration::from_secs(a.lease_ttl.max(1));
    cfg.cancel_grace = Duration::from_secs(a.cancel_grace);
    cfg.max_running_workers = a.max_running_workers.max(1);
    cfg.max_pending_runs = a.max_pending_runs;
    if let Some(proxy) = a.proxy_bin {
        cfg.proxy_exe = proxy;
    }
    if let Some(demo) = a.demo_bin {
        cfg.demo_exe = demo;
    }
    cfg.gpus = a.gpus;
    let web_listen = match a.web_listen.as_str() {
        "off" | "" => None,
        s => Some(
            s.parse::<SocketAddr>()
                .with_context(|| format!("--web-listen {s:?} is not an address or `off`"))?,
        ),
    };

    cfg.frames.max_run_bytes = a.frames_max_run_bytes;
    cfg.frames.max_total_bytes = a.frames_max_total_bytes;
    let daemon = telemetry_server::start(cfg).await?;
    println!("gym-telemetry-daemon listening on {}", daemon.endpoint());
    let web = match web_listen {
        Some(addr) => {
            match telemetry_web::start(telemetry_web::WebConfig::new(addr), daemon.local_access())
                .await
            {
                Ok(web) => {
                    // Like Jupyter: the login URL goes to the operator's terminal, never a log.
                    println!(
                        "web dashboard: {}",
                        telemetry_web::login_url(web.addr, daemon.operator_token())
                    );
                    Some(web)
                }
                // The default port taken (another daemon on this machine): serve without the
                // dashboard rather than refuse ingest; an address asked for must work.
                Err(e) if a.web_listen == telemetry_web::DEFAULT_WEB_LISTEN => {
                    tracing::warn!(error = %e, "web dashboard not started (--web-listen to choose another address)");
                    None
                }
                Err(e) => {
                    daemon.shutdown().await?;
                    return Err(e.into());
                }
            }
        }
        None => None,
    };
    if token_file_default {
        println!(
            "operator token in {} (clients of this user find it; workers get their own)",
            a.var
                .var_dir
                .join(telemetry_core::credentials::TOKEN_FILE_NAME)
                .display()
        );
    }
    if let Some(m) = daemon.metrics_addr {
        println!("metrics on http://{m}/metrics");
    }
    let stop = daemon.stop_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("signal received, shutting down");
        stop.cancel();
    });
    daemon.wait().await?;
    if let Some(web) = web {
        web.wait().await?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn dump_cmd(a: DumpArgs) -> anyhow::Result<std::process::ExitCode> {
    let backend = store_backend(&a.store)?;
    let control_mode = match a.control_mode.as_deref() {
        None => ModeFilter::Any,
        Some(m) => ModeFilter::Exact(m.parse::<ControlMode>()?),
    };
    let opts = dump::DumpOptions {
        since_seq: a.since,
        filter: Filter {
            run_id: a.run_id,
            agent_id: a.agent_id,
            control_mode,
        },
        episodes: a.episodes,
        scalars: a.scalars,
        events: a.events,
    };
    if let Some(backend) = backend {
        if a.format == DumpFormat::Parquet {
            bail!("--format parquet reads the embedded SQLite store; dump PostgreSQL as JSONL");
        }
        let reader = backend
            .reader()
            .with_context(|| format!("opening {}", backend.describe()))?;
        let dump = |out: &mut dyn Write| dump::dump_backend_jsonl(reader.as_ref(), &opts, out);
        let report = match &a.output {
            Some(file) => write_file(file, |out| Ok(dump(out)?))?,
            None => {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                let report = dump(&mut out).context("dumping")?;
                out.flush().context("writing stdout")?;
                report
            }
        };
        eprintln!(
            "dumped {} records ({} bytes), last seq {}",
            report.records, report.bytes, report.last_seq
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let path = StoreConfig::in_var_dir(&a.var.var_dir).path;
    if !path.exists() {
        bail!("no store at {}", path.display());
    }
    let reader = StoreReader::open(&path).with_context(|| format!("opening {}", path.display()))?;
    match a.format {
        DumpFormat::Jsonl => {
            let dump = |out: &mut dyn Write| dump::dump_jsonl(&reader, &opts, out);
            let report = match &a.output {
                Some(file) => write_file(file, |out| Ok(dump(out)?))?,
                None => {
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    let report = dump(&mut out).context("dumping")?;
                    out.flush().context("writing stdout")?;
                    report
                }
            };
            eprintln!(
                "dumped {} records ({} bytes), last seq {}",
                report.records, report.bytes, report.last_seq
            );
        }
        DumpFormat::Parquet => {
            let parquet = telemetry_export::ParquetOptions::default();
            let report = match &a.output {
                Some(file) => write_file(file, |out| {
                    Ok(telemetry_export::export_parquet(
                        &reader, &opts, &parquet, out,
                    )?)
                })?,
                None if std::io::IsTerminal::is_terminal(&std::io::stdout()) => {
                    bail!("Parquet is binary: give -o FILE or redirect stdout")
                }
                None => telemetry_export::export_parquet(
                    &reader,
                    &opts,
                    &parquet,
                    std::io::BufWriter::new(std::io::stdout()),
                )
                .context("exporting Parquet")?,
            };
            eprintln!(
                "exported {} {} rows in {} row groups ({} bytes), last seq {}",
                report.rows,
                telemetry_export::Stream::of(&opts).name(),
                report.row_groups,
                report.bytes,
                report.last_seq
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Writes `path` through `write`, complete or not at all: into `<path>.partial` (mode 0600:
/// telemetry is as private as the store), renamed over `path` once written and synced;
/// removed on failure.
fn write_file<T>(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let result = write(&mut out).and_then(|report| {
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&partial, path)?;
        Ok(report)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

fn import(a: ImportArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut store = Store::open(StoreConfig::in_var_dir(&a.var.var_dir))
        .with_context(|| format!("opening the store in {}", a.var.var_dir.display()))?;
    let report = legacy_import::import_legacy(&mut store, &a.path)
        .with_context(|| format!("importing {}", a.path.display()))?;
    println!("{report:?}");
    Ok(std::process::ExitCode::SUCCESS)
}

async fn import_tensorboard(a: ImportTensorboardArgs) -> anyhow::Result<std::process::ExitCode> {
    use telemetry_tensorboard::{ImportConfig, Importer};
    // The owner's token, found like every client finds it; --var-dir names the daemon's.
    let var_dir = a.var_dir.as_ref().map(|p| p.display().to_string());
    let found = telemetry_core::credentials::discover(|k| match (k, &var_dir) {
        ("GYM_TELEMETRY_VAR_DIR", Some(v)) => Some(v.clone()),
        _ => std::env::var(k).ok(),
    })?;
    match &found {
        Some(d) => tracing::debug!(source = %d.source, "using the token"),
        None => tracing::info!("no credential found; sending none"),
    }
    let mut cfg = ImportConfig::new(a.run_id, a.dir);
    cfg.endpoint = a.endpoint;
    cfg.agent_id = a.agent_id;
    cfg.auth_token = found.map(|d| d.token);
    cfg.tls_ca_file = a.tls_ca_file;
    cfg.tls_domain = a.tls_domain;
    cfg.batch_records = a.batch_records;
    cfg.poll_interval = Duration::from_millis(a.poll_interval_ms.max(10));
    cfg.idle_exit = a.idle_exit_secs.map(Duration::from_secs);
    let mut importer = Importer::new(cfg)?;
    let result = if a.follow {
        importer.follow(shutdown_signal()).await
    } else {
        importer.pass().await.map(|_| ())
    };
    // What was done is worth printing even when the import stopped on an error.
    println!("imported: {}", importer.report());
    result?;
    Ok(std::process::ExitCode::SUCCESS)
}
