//! The `imgclass` binary: parse the command line, run the command, exit with its code.

use imgclass::cli::{self, Cli, Command, FetchArgs, ListArgs, WeightsCommand};
use imgclass::error::exit_code;
use imgclass::weights::dir;
use imgclass::weights::fetch::{self, FetchOptions, FetchOutcome, Status};
use imgclass::weights::manifest::Manifest;
use imgclass::{Error, Result};
use std::io::{IsTerminal, Write};

/// Logs: tracing to stderr, filter from `IMGCLASS_LOG` (default: imgclass at info, others at warn).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMGCLASS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,imgclass=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

fn weights_fetch(args: &FetchArgs, matches: &clap::ArgMatches) -> Result<i32> {
    let kinds = args.kinds(cli::fetch_matches(matches))?;
    let manifest = Manifest::load()?;
    let resolved = dir::resolve(args.weights_dir.as_deref(), &kinds);
    let opts = FetchOptions {
        force: args.force,
        progress: None,
    };
    let mut stdout = std::io::stdout().lock();
    for kind in kinds {
        let msg = match fetch::fetch(kind, &resolved.dir, &manifest, opts)? {
            FetchOutcome::Fetched { path, record } => format!(
                "{kind}: fetched {} ({} bytes, sha256 {}) from {}",
                path.display(),
                record.bytes,
                record.sha256,
                record.url
            ),
            FetchOutcome::AlreadyPresent(st) => {
                if st.status == Status::Present {
                    tracing::warn!(
                        model = kind.name(),
                        detail = %st.detail,
                        "weights present but not verified; kept (use --force to replace them)"
                    );
                }
                format!(
                    "{kind}: already {} at {} ({})",
                    st.status,
                    st.path.display(),
                    st.detail
                )
            }
        };
        writeln!(stdout, "{msg}").map_err(|e| Error::Internal(format!("stdout: {e}")))?;
    }
    Ok(exit_code::OK)
}

fn weights_list(args: &ListArgs) -> Result<i32> {
    let manifest = Manifest::load()?;
    let resolved = dir::resolve(args.weights_dir.as_deref(), &[]);
    let rows: Vec<_> = imgclass::models::ModelKind::ALL
        .into_iter()
        .map(|k| fetch::status(k, &resolved.dir, &manifest, args.check))
        .collect();
    let mut out = String::new();
    if args.json {
        for r in &rows {
            let line = serde_json::to_string(r).map_err(|e| Error::Internal(e.to_string()))?;
            out.push_str(&line);
            out.push('\n');
        }
    } else {
        out.push_str(&format!(
            "weights directory: {} (manifest: {})\n",
            resolved.dir.display(),
            manifest.source
        ));
        for r in &rows {
            let size = r
                .bytes
                .map(|b| format!("{:.1} MB", b as f64 / 1e6))
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{:<20} {:<9} {:>10}  {}\n    {}\n",
                r.model.name(),
                r.status,
                size,
                r.path.display(),
                r.detail
            ));
        }
    }
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .map_err(|e| Error::Internal(format!("stdout: {e}")))?;
    // Listing is informational: exit 0 unless something present is broken.
    if rows.iter().any(|r| r.status == Status::Invalid) {
        return Ok(exit_code::WEIGHTS);
    }
    Ok(exit_code::OK)
}

fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<i32> {
    match cli.command {
        Command::Classify(args) => {
            let mut stdin = std::io::stdin().lock();
            let mut stdout = std::io::stdout().lock();
            imgclass::classify::run(&args, &mut stdin, &mut stdout)
        }
        Command::Weights(WeightsCommand::Fetch(args)) => weights_fetch(&args, matches),
        Command::Weights(WeightsCommand::List(args)) => weights_list(&args),
        Command::Serve(args) => imgclass::server::run(args).map(|()| exit_code::OK),
        Command::Bench(args) => imgclass::bench::run(args).map(|()| exit_code::OK),
    }
}

fn main() {
    // Before any thread starts: keep candle's own spinning pool from competing with rayon's.
    imgclass::ops::configure_threads();
    let (cli, matches) = match cli::parse_from(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(e) => {
            // --help / --version print to stdout and exit 0; usage errors exit 2.
            let _ = e.print();
            std::process::exit(e.exit_code());
        }
    };
    // `serve` installs its own subscriber (human or JSON logs).
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging();
    }
    let code = match run(cli, &matches) {
        Ok(code) => code,
        Err(e) => {
            // Always shown, whatever IMGCLASS_LOG says.
            eprintln!("imgclass: error ({}): {e}", e.error_type());
            e.exit_code()
        }
    };
    std::process::exit(code);
}
