//! Command-line syntax (clap derive). Parsing only; behaviour lives in `cmd/`.

use burrow_api::{EngineKind, SandboxName};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bench::BenchArgs;

#[derive(Debug, Parser)]
#[command(
    name = "burrow",
    version,
    about = "Persistent, isolated sandboxes: the command-line client of burrowd",
    after_help = "burrow finds the daemon through BURROW_SOCKET (a unix socket path), or BURROW_URL and \
                  BURROW_TOKEN (TCP), else the socket /run/burrow/burrowd.sock."
)]
pub struct Cli {
    /// Print the server's JSON instead of human-readable output.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a sandbox.
    Create(CreateArgs),
    /// List sandboxes.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show one sandbox.
    Info(NameArg),
    /// Delete sandboxes (and their checkpoints).
    #[command(visible_alias = "delete")]
    Rm(RmArgs),
    /// Start a stopped sandbox.
    Start(NameArg),
    /// Stop a sandbox (processes end, disk is kept).
    Stop(NameArg),
    /// Restart a sandbox.
    Restart(NameArg),
    /// Put a sandbox to sleep (containers: frozen, memory kept; VMs: memory saved to disk).
    Sleep(SleepArgs),
    /// Wake a sleeping sandbox.
    Wake(NameArg),
    /// Run a command in a sandbox; exit status is the command's.
    Exec(ExecArgs),
    /// Open an interactive shell in a sandbox (bash, else sh).
    #[command(visible_alias = "shell")]
    Console(NameArg),
    /// List a sandbox's sessions (every exec is one), running and recently finished.
    Sessions(NameArg),
    /// Attach to a running session: its buffered output, then live (Ctrl-] detaches from a
    /// terminal session, Ctrl-C from another).
    Attach(SessionArgs),
    /// Send a signal (default KILL) to a session's processes.
    #[command(name = "kill-session")]
    KillSession(KillSessionArgs),
    /// Copy files or directories between this machine and a sandbox (NAME:/path on one side;
    /// `-` is stdin or stdout).
    Cp(CpArgs),
    /// Save a sandbox's whole disk as a checkpoint (live: processes keep running).
    Checkpoint(CheckpointArgs),
    /// List a sandbox's checkpoints.
    Checkpoints(NameArg),
    /// Roll a sandbox back to a checkpoint; the replaced state is saved as a new one first.
    Restore(RestoreArgs),
    /// Delete a checkpoint.
    #[command(name = "rm-checkpoint")]
    RmCheckpoint(RestoreArgs),
    /// A new sandbox from another's checkpoint (SRC:vN) or current state (SRC).
    Fork(ForkArgs),
    /// List images; `images create NAME --from SB[:vN]` makes a template.
    Images(ImagesArgs),
    /// Supervised services of a sandbox: defined once, started whenever it boots.
    #[command(visible_alias = "services")]
    Service(ServiceArgs),
    /// Show or set a sandbox's network policy (open, policy with domain rules, none).
    Policy(PolicyArgs),
    /// Secrets the credential proxy injects; sandboxes only ever see placeholders.
    Secret(SecretArgs),
    /// API tokens (macaroons): create one with caveats, or narrow one offline.
    Token(TokenArgs),
    /// Print a sandbox's URL (its web app, served through burrowd).
    Url(NameArg),
    /// Forward a local TCP port to a port inside a sandbox, until interrupted.
    Proxy(crate::cmd::ingress::ProxyArgs),
    /// Show client and server versions.
    Version,
    /// Measure the daemon's performance.
    Bench(BenchArgs),
    /// Serve MCP (Model Context Protocol) on stdin/stdout, for Claude Code, Cursor and other
    /// agents: `claude mcp add burrow -- burrow mcp`. Connects like every other command.
    Mcp,
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// Sandbox name.
    pub name: String,
    /// A comment to remember it by.
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
    /// Keep memory and devices too (vm engine): restoring or forking it resumes the
    /// processes as they were.
    #[arg(long)]
    pub memory: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Sandbox name.
    pub name: String,
    /// Checkpoint id (vN).
    pub checkpoint: String,
}

#[derive(Debug, Args)]
pub struct ForkArgs {
    /// Source: SANDBOX (its current state) or SANDBOX:vN (a checkpoint).
    pub source: String,
    /// Name of the new sandbox.
    pub name: SandboxName,
    /// A VM's memory too: the copy's processes go on where the source's were (from the live
    /// state, or a checkpoint taken with --memory). Without it a live copy boots afresh.
    #[arg(long)]
    pub memory: bool,
}

#[derive(Debug, Args)]
pub struct SleepArgs {
    /// Sandbox name.
    pub name: String,
    /// Cold sleep: stop every process (memory released, disk kept) instead of freezing.
    #[arg(long)]
    pub cold: bool,
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// Sandbox name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Sandbox name (a DNS label: lowercase letters, digits and '-').
    pub name: SandboxName,
    /// Image to create it from (default: the server's, "base").
    #[arg(long)]
    pub image: Option<String>,
    /// Fork from another sandbox's checkpoint (SB:vN) or its current state (SB).
    #[arg(long, value_name = "SB[:vN]")]
    pub from: Option<String>,
    /// Isolation engine (default: the server's).
    #[arg(long, value_enum)]
    pub engine: Option<EngineArg>,
    /// CPUs (may be fractional).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory limit in MiB.
    #[arg(long, value_name = "MB")]
    pub memory: Option<u64>,
    /// Disk size in GiB.
    #[arg(long, value_name = "GB")]
    pub disk: Option<u64>,
    /// Environment variable for every process in the sandbox (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// Label (repeatable).
    #[arg(long = "label", value_name = "K=V", value_parser = parse_kv)]
    pub labels: Vec<(String, String)>,
    /// Seconds without activity before the sandbox sleeps.
    #[arg(long, value_name = "S")]
    pub idle_timeout: Option<u64>,
    /// Seconds asleep before going cold (processes stopped, disk kept); 0 = never.
    #[arg(long = "cold-after")]
    pub cold_after: Option<u64>,
    /// Who may open the sandbox's URL: private (a token allowing `http`) or public.
    #[arg(long = "url-auth", value_enum)]
    pub url_auth: Option<UrlAuthArg>,
    /// When its agent (PID 1) dies on its own: boot it again after a backoff (on-failure,
    /// the default; gives up after 5 deaths in a row) or leave it failed (never).
    #[arg(long, value_enum)]
    pub restart: Option<SandboxRestartArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SandboxRestartArg {
    OnFailure,
    Never,
}

impl From<SandboxRestartArg> for burrow_api::SandboxRestart {
    fn from(a: SandboxRestartArg) -> Self {
        match a {
            SandboxRestartArg::OnFailure => burrow_api::SandboxRestart::OnFailure,
            SandboxRestartArg::Never => burrow_api::SandboxRestart::Never,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum UrlAuthArg {
    Private,
    Public,
}

impl From<UrlAuthArg> for burrow_api::UrlAuth {
    fn from(a: UrlAuthArg) -> Self {
        match a {
            UrlAuthArg::Private => burrow_api::UrlAuth::Private,
            UrlAuthArg::Public => burrow_api::UrlAuth::Public,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EngineArg {
    Container,
    Vm,
}

impl From<EngineArg> for EngineKind {
    fn from(e: EngineArg) -> Self {
        match e {
            EngineArg::Container => EngineKind::Container,
            EngineArg::Vm => EngineKind::Vm,
        }
    }
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only sandboxes whose name starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Only sandboxes with this label (repeatable; all must match).
    #[arg(long = "label", value_name = "K=V", value_parser = parse_kv)]
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Sandbox names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Do not fail for sandboxes that do not exist.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// A local path, `-` (stdin), or NAME:/path in a sandbox.
    pub src: String,
    /// A local path, `-` (stdout), or NAME:/path in a sandbox.
    pub dst: String,
    /// Create missing parent directories of a file copied into a sandbox.
    #[arg(short = 'p', long)]
    pub parents: bool,
    /// Downloads only: keep the archive's modes (setuid, setgid and sticky bits included) and
    /// its numeric owners (the sandbox's uids: 0 is root). Without it every file belongs to
    /// you and loses those bits. Dangerous as root: the sandbox decides what becomes setuid.
    #[arg(long)]
    pub preserve: bool,
}

#[derive(Debug, Args)]
pub struct SessionArgs {
    /// Sandbox name.
    pub name: String,
    /// Session id (see `burrow sessions NAME`).
    pub id: String,
}

#[derive(Debug, Args)]
pub struct KillSessionArgs {
    /// Sandbox name.
    pub name: String,
    /// Session id.
    pub id: String,
    /// Signal name or number.
    #[arg(short = 's', long, value_name = "S")]
    pub signal: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Sandbox name.
    pub name: String,
    /// Allocate a pseudo-terminal (the local terminal goes raw when -i is given too).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Forward stdin to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub cwd: Option<String>,
    /// User to run as.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Kill the command after this many seconds.
    #[arg(long, value_name = "S")]
    pub timeout: Option<f64>,
    /// Keep the command running this many seconds after the connection drops (default 300
    /// with -t, else 0); `burrow attach` gets back to it.
    #[arg(long, value_name = "S")]
    pub detach_timeout: Option<u64>,
    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub cmd: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    pub command: Option<ImagesCommand>,
    /// Wait until image NAME is ready (printing its progress), then list images. Fails if
    /// the image fails to build.
    #[arg(long, value_name = "NAME")]
    pub wait: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List images (the default).
    Ls,
    /// Make a template image from a sandbox's checkpoint or current state.
    Create {
        name: String,
        /// SANDBOX or SANDBOX:vN.
        #[arg(long)]
        from: String,
    },
    /// Delete an image (refused while a sandbox uses it).
    Rm { name: String },
    /// Delete cached build layers that no existing image was built from.
    Prune,
    /// Build an image from a Burrowfile (FROM, RUN, ENV, WORKDIR, COPY); steps are cached.
    Build {
        name: String,
        /// The Burrowfile (default: CONTEXT/Burrowfile).
        #[arg(short = 'f', long = "file")]
        file: Option<std::path::PathBuf>,
        /// Directory whose files COPY can use.
        #[arg(default_value = ".")]
        context: std::path::PathBuf,
    },
    /// Import an OCI image layout or `docker save` archive (tar, optionally compressed).
    Import {
        archive: std::path::PathBuf,
        /// Image name (default: the archive's file name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Pull an image from an OCI registry (plain HTTP for loopback registries only).
    Pull {
        reference: String,
        /// Image name (default: the repository's last component).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub command: ServiceCommand,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Define (or replace) a service and start it.
    Add(ServiceAddArgs),
    /// List a sandbox's services and their state.
    #[command(visible_alias = "list")]
    Ls { name: String },
    /// Print a service's output (the last 1 MiB the sandbox kept).
    Logs(ServiceLogsArgs),
    /// Start a service (also runs an exited one again).
    Start { name: String, svc: String },
    /// Stop a service; it stays stopped until started again.
    Stop { name: String, svc: String },
    /// Stop and remove a service.
    #[command(visible_alias = "delete")]
    Rm { name: String, svc: String },
}

#[derive(Debug, Args)]
pub struct ServiceAddArgs {
    /// Sandbox name.
    pub name: String,
    /// Service name (a DNS label).
    pub svc: String,
    /// Port it serves HTTP on (services that need it wait until the port accepts).
    #[arg(long, value_name = "P")]
    pub http_port: Option<u16>,
    /// When to restart it after it ends.
    #[arg(long, value_enum, default_value = "always")]
    pub restart: RestartArg,
    /// A service that must be running first (repeatable).
    #[arg(long = "needs", value_name = "SVC")]
    pub needs: Vec<String>,
    /// Environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub cwd: Option<String>,
    /// User to run as.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub cmd: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RestartArg {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Args)]
pub struct ServiceLogsArgs {
    /// Keep printing new output until interrupted.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<u32>,
    /// Sandbox name.
    pub name: String,
    /// Service name.
    pub svc: String,
}

/// `K=V` → `(K, V)`; the value may contain `=`.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("'{s}' is not of the form KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_argv_after_double_dash() {
        let cli =
            Cli::try_parse_from(["burrow", "exec", "dev", "-t", "-e", "A=1=2", "--", "ls", "-la"]).unwrap();
        let Command::Exec(a) = cli.command else { panic!() };
        assert!(a.tty && !a.interactive);
        assert_eq!(a.env, vec![("A".to_owned(), "1=2".to_owned())]);
        assert_eq!(a.cmd, ["ls", "-la"]);
        let cli = Cli::try_parse_from(["burrow", "--json", "exec", "dev", "echo", "-n", "hi"]).unwrap();
        assert!(cli.json);
        let Command::Exec(a) = cli.command else { panic!() };
        assert_eq!(a.cmd, ["echo", "-n", "hi"]);
    }

    #[test]
    fn kv_and_names() {
        assert!(parse_kv("=x").is_err());
        assert!(parse_kv("x").is_err());
        assert_eq!(parse_kv("a=").unwrap(), ("a".into(), "".into()));
        assert!(Cli::try_parse_from(["burrow", "create", "Bad_Name"]).is_err());
        assert!(Cli::try_parse_from(["burrow", "create", "ok", "--engine", "vm", "--json"]).is_ok());
    }
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print a sandbox's network policy.
    #[command(visible_alias = "get")]
    Show { name: String },
    /// Replace a sandbox's network policy; a running sandbox is under it at once.
    Set(PolicySetArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    None,
    Policy,
    Open,
}

impl From<ModeArg> for burrow_api::NetworkMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::None => burrow_api::NetworkMode::None,
            ModeArg::Policy => burrow_api::NetworkMode::Policy,
            ModeArg::Open => burrow_api::NetworkMode::Open,
        }
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Rules apply in the order given; the first that matches a name decides, and a \
                  name no rule matches is denied. Example: --allow '*.github.com' --allow pypi.org --deny '*'"
)]
pub struct PolicySetArgs {
    pub name: String,
    #[arg(long, value_enum)]
    pub mode: ModeArg,
    /// Allow a domain (`example.com`, `*.example.com` or `*`).
    #[arg(long)]
    pub allow: Vec<String>,
    /// Deny a domain.
    #[arg(long)]
    pub deny: Vec<String>,
}

impl PolicySetArgs {
    /// The rules in command-line order (clap keeps each list's order, not their interleaving,
    /// so it is read back from the arguments).
    pub fn rules_in_order(&self) -> Vec<(burrow_api::RuleAction, String)> {
        use burrow_api::RuleAction::{Allow, Deny};
        let args: Vec<String> = std::env::args().collect();
        let mut order = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            for (flag, action) in [("--allow", Allow), ("--deny", Deny)] {
                if a == flag || a.starts_with(&format!("{flag}=")) {
                    order.push(action);
                }
            }
            i += 1;
        }
        let (mut allow, mut deny) = (self.allow.iter(), self.deny.iter());
        let mut out: Vec<_> = order
            .into_iter()
            .filter_map(|action| match action {
                Allow => allow.next().map(|d| (Allow, d.clone())),
                Deny => deny.next().map(|d| (Deny, d.clone())),
            })
            .collect();
        out.extend(allow.map(|d| (Allow, d.clone())));
        out.extend(deny.map(|d| (Deny, d.clone())));
        out
    }
}

#[derive(Debug, Args)]
pub struct SecretArgs {
    #[command(subcommand)]
    pub command: SecretCommand,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Add a secret; its value is sealed at once and never shown again.
    Add(SecretAddArgs),
    /// List secrets (never their values).
    #[command(visible_alias = "list")]
    Ls,
    /// Delete a secret (and detach it everywhere).
    Rm { name: String },
    /// Give a sandbox a placeholder for a secret in an environment variable.
    Attach {
        sandbox: String,
        secret: String,
        #[arg(long)]
        env: String,
    },
    /// Take a secret's placeholder away from a sandbox.
    Detach { sandbox: String, secret: String },
}

#[derive(Debug, Args)]
pub struct SecretAddArgs {
    pub name: String,
    /// File holding the value (a trailing newline is dropped).
    #[arg(long)]
    pub value_file: Option<std::path::PathBuf>,
    /// Read the value from standard input.
    #[arg(long)]
    pub value_stdin: bool,
    /// Host it may be sent to (repeatable; `*.example.com` for names below it).
    #[arg(long = "host", required = true)]
    pub hosts: Vec<String>,
    /// Header that carries it (default Authorization).
    #[arg(long)]
    pub header: Option<String>,
    /// Header value with %s for the secret (default 'Bearer %s').
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Clone, Args)]
pub struct TokenScope {
    /// Only for this sandbox (repeatable).
    #[arg(long)]
    pub sandbox: Vec<String>,
    /// Only these actions, comma-separated: read, create, delete, config, lifecycle, exec,
    /// files, checkpoints, services, policy, secrets, images, http (the web URL only), tunnel
    /// (`burrow proxy`). Forking a sandbox needs read on it; exec and files imply read.
    #[arg(long)]
    pub actions: Option<String>,
    /// Valid for this long (90s, 10m, 1h, 7d).
    #[arg(long)]
    pub expires: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token from yours (or from the root on the unix socket) with more caveats.
    Create(TokenScope),
    /// Narrow a token offline: no server call, the result can do less.
    Attenuate {
        token: String,
        #[command(flatten)]
        scope: TokenScope,
    },
    /// Show a token's caveats (not verified: only the daemon can).
    Inspect { token: String },
}
