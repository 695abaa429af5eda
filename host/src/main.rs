//! The `loop-server` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use loop_server::app::Server;
use loop_server::config::{Config, LogFormat};
use loop_server::telemetry;

// jemalloc instead of glibc's malloc: sqlx allocates each row on a SQLite
// thread and frees it on a tokio thread, and glibc serialises such
// cross-thread frees on its arena locks (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "loop-server", version, about = "Loop: one-click WebRTC calls")]
struct Cli {
    /// Configuration file; `LOOP_*` environment variables override it.
    #[arg(
        long,
        short,
        global = true,
        default_value = "config.toml",
        env = "LOOP_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Work with provider plugins.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Validate a component against the provider world and list its imports and exports.
    Check { component: PathBuf },
}

/// What this invocation does, once its arguments and configuration are read.
enum Job {
    Serve(Box<Config>),
    CheckPlugin(PathBuf),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The configuration is read first: it chooses the log format and sizes
    // the runtime. Until it is read, errors go to stderr as plain text.
    let job = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => match Config::load(&cli.config) {
            Ok(config) => Job::Serve(Box::new(config)),
            Err(err) => {
                eprintln!("loop-server: {err:#}");
                return ExitCode::FAILURE;
            }
        },
        Command::Plugins {
            command: PluginsCommand::Check { component },
        } => Job::CheckPlugin(component),
    };
    match &job {
        Job::Serve(config) => {
            telemetry::init_logs(config.log.format);
            Config::warn_of_unknown_variables();
        }
        Job::CheckPlugin(_) => telemetry::init_logs(LogFormat::Text),
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Job::Serve(config) = &job {
        runtime.worker_threads(config.worker_threads());
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("loop-server: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match job {
            Job::Serve(config) => {
                Server::build(*config)
                    .await?
                    .reload_on_sighup(cli.config)
                    .run()
                    .await
            }
            Job::CheckPlugin(component) => loop_server::providers::check_component(&component),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loop-server: {err:#}");
            ExitCode::FAILURE
        }
    }
}
