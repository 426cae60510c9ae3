//! The `portcullis` command: run, check, demo, version.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "OpenID Connect edge proxy for web-messaging servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a configuration file.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file and print every problem with its path.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the proxy in front of a built-in echo chat backend, on localhost
    /// (builds with the `demo` feature only).
    Demo {
        /// A demo configuration other than the built-in conf/demo.yaml.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the JSON Schema of the configuration file, for editors
    /// (yaml-language-server) and CI linters.
    Schema,
    /// Print the version.
    Version,
    /// Print a shell completion script (e.g. `portcullis completions bash >
    /// /etc/bash_completion.d/portcullis`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    portcullis::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "portcullis",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Schema => {
            let schema = portcullis::config::schema::json_schema();
            match serde_json::to_string_pretty(&schema) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot render the schema: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Version => {
            println!("portcullis {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check { config } => match portcullis::config::load(&config) {
            // Building the runtime also resolves upstream server names, as
            // `run` will, and sizes the connection ceiling under the
            // descriptor limit `run` raises itself to.
            Ok(valid) => match portcullis::capacity::raise_descriptor_limit()
                .map_err(|e| format!("cannot read the descriptor limit: {e}"))
                .and_then(|_| {
                    portcullis::runtime::Runtime::build(
                        valid,
                        None,
                        &std::sync::Arc::new(portcullis::metrics::Metrics::new()),
                    )
                    .map_err(|e| e.to_string())
                }) {
                Ok(runtime) => {
                    if let Some(warning) = runtime.connection_ceiling.warning() {
                        eprintln!("{}: warning: {warning}", config.display());
                    }
                    for warning in portcullis::config::warnings(&runtime.config) {
                        eprintln!("{}: warning: {warning}", config.display());
                    }
                    println!("{}: configuration is valid", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: configuration is invalid:\n  {e}", config.display());
                    ExitCode::from(1)
                }
            },
            Err(errors) => {
                eprintln!("{}: configuration is invalid:", config.display());
                for e in &errors.0 {
                    eprintln!("  {e}");
                }
                ExitCode::from(1)
            }
        },
        Command::Run { config: path } => {
            let config = match portcullis::config::load(&path) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!(
                        "{}: configuration is invalid; not starting:",
                        path.display()
                    );
                    for e in &errors.0 {
                        eprintln!("  {e}");
                    }
                    return ExitCode::from(1);
                }
            };
            portcullis::logging::init(&config.logging);
            for warning in portcullis::config::warnings(&config) {
                tracing::warn!(path = %warning.path, "configuration setting has no effect: {}", warning.message);
            }
            let started = portcullis::server::build_state(config, Some(path))
                .and_then(portcullis::server::run);
            report(started)
        }
        #[cfg(feature = "demo")]
        Command::Demo { config } => report(portcullis::demo::run(config.as_deref())),
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => {
            eprintln!(
                "portcullis: this build has no demo (a production build): build with `--features demo` (scripts/demo.sh does)"
            );
            ExitCode::from(2)
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::from(1)
        }
    }
}
