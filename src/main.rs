//! The `nats-k8s-oidc-callout` binary: the service, plus helpers to generate keys, to explain what
//! one ServiceAccount would be granted and, for local development without a cluster, to sign
//! service-account-shaped tokens.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use nats_k8s_oidc_callout::explain::{OutputFormat, Target};
use nats_k8s_oidc_callout::operator::keys::{self as operator_keys, OperatorKeysOptions};
use nats_k8s_oidc_callout::{app, devtools, explain};

/// NATS auth callout service for Kubernetes service-account tokens.
///
/// Without a subcommand it runs the service, configured from the environment (see README).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Generate the signing account key and the xkey, and print the nats-server auth_callout block.
    ///
    /// `keys operator` generates everything operator mode needs instead.
    #[command(args_conflicts_with_subcommands = true)]
    Keys {
        #[command(subcommand)]
        mode: Option<KeysMode>,
        /// Directory to write `signing.nk` and `xkey.nk` into (mode 0600).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Do not generate an xkey (requests and responses travel unencrypted inside NATS).
        #[arg(long)]
        no_xkey: bool,
        /// Name of the service's own NATS user in the auth_callout block.
        #[arg(long, default_value = "auth-callout")]
        auth_user: String,
        /// Account the service's user lives in.
        #[arg(long, default_value = "AUTH")]
        auth_account: String,
    },
    /// Show what the service would grant one ServiceAccount, and why.
    ///
    /// Reads the service's settings from the environment: K8S_IN_CLUSTER / KUBECONFIG or
    /// SERVICE_ACCOUNTS_PATH, NATS_ACCOUNT, INBOX_MODE, POLICY_FILE (nothing else is needed). Gets
    /// the ServiceAccount (one GET, or the file) and evaluates it with the service's own code.
    ///
    /// Exit codes: 0 granted; 3 its namespace is not served by the policy; 4 no such
    /// ServiceAccount; 5 a setting, the policy file, the kubeconfig or the ServiceAccount file
    /// is unusable; 6 the API server failed; 1 the report could not be written; 2 bad arguments.
    Explain {
        /// The ServiceAccount, as NAMESPACE/NAME.
        #[arg(value_name = "NAMESPACE/NAME")]
        target: Target,
        /// `text` for people, `json` for scripts (one object; its shape only ever gains keys).
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// A local token signer standing in for a cluster's, for development without Kubernetes.
    DevSigner {
        #[command(subcommand)]
        command: DevSignerCommand,
    },
}

#[derive(Subcommand)]
enum KeysMode {
    /// Operator mode: operator, accounts SYS, AUTH (the callout), APP (clients), NACK
    /// (JetStream), signing keys, creds, nats-server configurations and the service's
    /// environment, without nsc. Seeds are written mode 0600; nothing is overwritten.
    Operator {
        /// Directory to write into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Do not generate an xkey (requests and responses travel unencrypted inside NATS).
        #[arg(long)]
        no_xkey: bool,
        /// Directory of the full resolver's account JWTs [default: DIR/jwt].
        #[arg(long)]
        full_resolver_dir: Option<PathBuf>,
        /// A client account besides APP (repeatable): JetStream on, a plain signing key in the
        /// service's NATS_ACCOUNT_SIGNING_KEYS_DIR, listed in AUTH's allowed_accounts.
        #[arg(long = "client-account", value_name = "NAME")]
        client_accounts: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DevSignerCommand {
    /// Create an ES256 signing key (`signer.key`) and its public key set (`jwks.json`).
    Init {
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Print a service-account token signed with the local key.
    Mint {
        /// The signing key made by `init`.
        #[arg(long)]
        key: PathBuf,
        /// Namespace of the service account.
        #[arg(long)]
        namespace: String,
        /// Name of the service account.
        #[arg(long)]
        name: String,
        /// Uid of the service account (must match the account's uid).
        #[arg(long)]
        uid: String,
        /// Issuer (`iss`), as the service's JWT_ISSUER expects it.
        #[arg(long, default_value = devtools::DEV_ISSUER)]
        issuer: String,
        /// Audience (`aud`).
        #[arg(long, default_value = "nats")]
        audience: String,
        /// Lifetime in seconds; negative for an already expired token.
        #[arg(long, default_value_t = 600, allow_hyphen_values = true)]
        ttl: i64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None | Some(Command::Serve) => app::serve(),
        Some(Command::Explain { target, output }) => {
            return ExitCode::from(explain::run(&target, output))
        }
        Some(Command::Keys {
            mode: None,
            dir,
            no_xkey,
            auth_user,
            auth_account,
        }) => devtools::keys(&dir, !no_xkey, &auth_user, &auth_account),
        Some(Command::Keys {
            mode:
                Some(KeysMode::Operator {
                    dir,
                    no_xkey,
                    full_resolver_dir,
                    client_accounts,
                }),
            ..
        }) => operator_keys::run(&OperatorKeysOptions {
            dir,
            xkey: !no_xkey,
            full_resolver_dir,
            client_accounts,
        })
        .map_err(|e| e.to_string()),
        Some(Command::DevSigner { command }) => match command {
            DevSignerCommand::Init { dir } => devtools::dev_signer_init(&dir),
            DevSignerCommand::Mint {
                key,
                namespace,
                name,
                uid,
                issuer,
                audience,
                ttl,
            } => devtools::dev_signer_mint(&key, &namespace, &name, &uid, &issuer, &audience, ttl),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nats-k8s-oidc-callout: {e}");
            ExitCode::FAILURE
        }
    }
}
