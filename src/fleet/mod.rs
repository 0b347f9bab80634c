//! `mcp-fleet`: the operator's tool for a fleet of Pis, run on a workstation.
//!
//! It reads `fleet-config.yml` ([`file`]) and speaks MCP over HTTP(S) to each device, with the
//! device's own credential ([`device`]), many devices at once but never more than the fleet's
//! `connection.concurrency`, each within its own deadline ([`fanout`]). It never opens a
//! shell on a device: `exec` maps the runbook's command strings to tool calls, which the
//! device checks against the caller's role and audits like any other.
//!
//! Exit status: 0 when every device did what was asked (and, for `health`, is healthy), 1 when
//! any device failed, 2 when the command could not run at all (a bad fleet file or argument).

mod deploy;
pub mod device;
mod drift;
pub mod fanout;
pub mod file;
mod inventory;
pub mod render;
mod rollout;
mod run;
mod table;
mod targets;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args as ClapArgs, Parser, Subcommand};

pub use file::{Fleet, FleetError, Selection};

/// Exit status when a device failed or is not healthy.
pub const EXIT_DEVICES: u8 = 1;
/// Exit status when the command could not run (fleet file, arguments, output).
pub const EXIT_USAGE: u8 = 2;

/// Manage a fleet of Raspberry Pis running mcp-raspi, over MCP.
#[derive(Debug, Parser)]
#[command(name = "mcp-fleet", version = crate::base::VERSION)]
pub struct Args {
    /// The fleet file.
    #[arg(
        long,
        short = 'f',
        global = true,
        value_name = "FILE",
        env = "MCP_FLEET_FILE",
        default_value = "fleet-config.yml"
    )]
    pub file: PathBuf,
    /// Print JSON instead of tables and text (no progress bars).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The devices of the fleet file: id, host, model, role, tags, endpoint (no network).
    List(SelectArgs),
    /// One device in detail: version, previous good version, last update, health, config hash.
    Status {
        /// The device's id.
        #[arg(value_name = "ID")]
        id: String,
    },
    /// A table of the devices: reachable, version, previous good, last update, health,
    /// temperature, config hash. Exit status 1 when any is unreachable or not ok.
    Health(SelectArgs),
    /// Run a runbook command ("mcp-raspi-cli system get-health") or a tool on devices: a tool
    /// call on each, never a shell. Exit status 1 when any device failed.
    Exec(ExecArgs),
    /// The devices' configuration files, as the fleet file renders them.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Compare each device's configuration file and version with what the fleet file
    /// renders and names (fleet.version). Exit status 1 when any device drifted or did not answer.
    Drift(SelectArgs),
    /// Roll a release out through each device's signed self-update, batch after batch; the
    /// first batch that does not prove healthy halts it, and its updated devices are put back.
    /// Exit status 1 when the rollout halted.
    Update(UpdateArgs),
    /// Write Prometheus file-based service discovery for the devices' /metrics.
    PrometheusTargets(TargetsArgs),
    /// Write the man pages into DIR (for packaging).
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Write bash, zsh and fish completions under DIR (for packaging).
    #[command(hide = true)]
    Completions {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration file the fleet file renders for a device (checked with the
    /// server's own validation), and its SHA-256 with --json.
    Render {
        /// The device's id.
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Give each device the configuration file the fleet file renders for it: checked and
    /// diffed by the device, signed with the fleet's key, installed by the device's root unit,
    /// kept only if the restarted server answers. Exit status 1 when any device did not take it.
    Deploy(DeployArgs),
    /// Create the fleet's configuration key: DIR/ID.secret (for fleet.config_key_file) and
    /// DIR/ID.pub (for each device's updates.config.keys_dir). No fleet file is needed.
    Keygen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, ClapArgs)]
pub struct DeployArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Show each device's diff and its own check of the file; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long one device may take, from the check to the restarted server on the new file.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub device_timeout: u64,
}

/// Which devices: all (the default), those with a tag, or some by id.
#[derive(Debug, Clone, ClapArgs)]
pub struct SelectArgs {
    /// Every device of the fleet.
    #[arg(long, conflicts_with_all = ["tag", "device"])]
    pub all: bool,
    /// The devices with this tag.
    #[arg(long, value_name = "TAG", conflicts_with = "device")]
    pub tag: Option<String>,
    /// These devices, by id (repeat the option for more).
    #[arg(long, value_name = "ID")]
    pub device: Vec<String>,
}

impl SelectArgs {
    pub fn selection(&self) -> Selection {
        match (&self.tag, self.device.is_empty()) {
            (Some(tag), _) => Selection::Tag(tag.clone()),
            (None, false) => Selection::Ids(self.device.clone()),
            (None, true) => Selection::All,
        }
    }
}

#[derive(Debug, ClapArgs)]
pub struct ExecArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// A runbook command, e.g. "mcp-raspi-cli system get-health" or "metrics get-snapshot".
    #[arg(value_name = "COMMAND", conflicts_with = "tool", required_unless_present = "tool")]
    pub command: Option<String>,
    /// A tool to call instead, e.g. gpio.read_pin.
    #[arg(long, value_name = "NAME")]
    pub tool: Option<String>,
    /// The tool's arguments as a JSON object, e.g. '{"pin": 17}'.
    #[arg(long, value_name = "JSON", requires = "tool")]
    pub args: Option<String>,
}

/// How a release reaches the devices.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Strategy {
    /// Batch after batch, each proven healthy before the next.
    Rolling,
}

#[derive(Debug, ClapArgs)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// The release to roll out (default: the fleet file's fleet.version).
    #[arg(long = "version", value_name = "VERSION")]
    pub target: Option<String>,
    #[arg(long, value_enum, default_value = "rolling")]
    pub strategy: Strategy,
    /// Devices per batch [default: 10].
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Devices of a batch updating, and so restarting, at one time [default: the batch size].
    #[arg(long, value_name = "K")]
    pub max_unavailable: Option<usize>,
    /// Update this many devices first, in a batch of their own [default: 0].
    #[arg(long, value_name = "N")]
    pub canary: Option<usize>,
    /// Continue the halted or interrupted rollout the record holds.
    #[arg(long)]
    pub resume: bool,
    /// The rollout's record [default: FILE.rollout.json beside the fleet file].
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// How long one device may take, from the request to its committed release and health verdict.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub device_timeout: u64,
}

#[derive(Debug, ClapArgs)]
pub struct TargetsArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Where to write the targets (written atomically); standard output without it.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// An error that stops a command, with its exit status.
#[derive(Debug)]
pub struct FleetFailure {
    pub code: u8,
    pub message: String,
}

impl From<FleetError> for FleetFailure {
    fn from(e: FleetError) -> FleetFailure {
        FleetFailure { code: EXIT_USAGE, message: e.0 }
    }
}

impl From<String> for FleetFailure {
    fn from(message: String) -> FleetFailure {
        FleetFailure { code: EXIT_USAGE, message }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let mut stdout = std::io::stdout().lock();
    match run_args(args, &mut stdout) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let _ = stdout.flush();
            let _ = writeln!(std::io::stderr(), "mcp-fleet: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// Runs one command, writing its answer to `out`; returns the exit status.
pub fn run_args(args: Args, out: &mut dyn Write) -> Result<u8, FleetFailure> {
    use clap::CommandFactory;
    match &args.command {
        Command::Man { out: dir } => {
            return crate::cli::write_man_pages_of([Args::command()], dir).map(|()| 0).map_err(Into::into)
        }
        Command::Completions { out: dir } => {
            return crate::cli::write_completions_of([Args::command()], dir).map(|()| 0).map_err(Into::into)
        }
        Command::Config(ConfigCommand::Keygen { out: dir }) => return deploy::keygen(dir, args.json, out),
        _ => {}
    }
    let fleet = Fleet::load(&args.file)?;
    let env = |name: &str| std::env::var(name).ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let cx = run::Context::new(&fleet, &env, args.json)?;
    match args.command {
        Command::List(select) => inventory::list(&cx, &select.selection(), out),
        Command::Status { id } => runtime.block_on(inventory::status(&cx, &id, out)),
        Command::Health(select) => runtime.block_on(inventory::health(&cx, &select.selection(), out)),
        Command::Exec(exec) => runtime.block_on(run::exec(&cx, &exec, out)),
        Command::Config(ConfigCommand::Render { id }) => {
            let rendered = render::render(&fleet, fleet.device(&id)?)?;
            if args.json {
                let report = serde_json::json!({"device": id, "sha256": rendered.sha256, "text": rendered.text});
                print(out, &format!("{}\n", serde_json::to_string_pretty(&report).unwrap_or_default()))?;
            } else {
                print(out, &rendered.text)?;
            }
            Ok(0)
        }
        Command::Config(ConfigCommand::Deploy(deploy)) => runtime.block_on(deploy::run(&cx, &deploy, &args.file, out)),
        Command::Config(ConfigCommand::Keygen { .. }) => Ok(0),
        Command::Drift(select) => runtime.block_on(drift::run(&cx, &select.selection(), out)),
        Command::Update(update) => runtime.block_on(rollout::run(&cx, &update, &args.file, out)),
        Command::PrometheusTargets(targets) => targets::write(&cx, &targets, out),
        Command::Man { .. } | Command::Completions { .. } => Ok(0),
    }
}

/// Writes `text` to `out`, as a command's answer.
fn print(out: &mut dyn Write, text: &str) -> Result<(), FleetFailure> {
    out.write_all(text.as_bytes()).map_err(|e| FleetFailure::from(format!("cannot write the answer: {e}")))
}
