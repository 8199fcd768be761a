//! The text files of operator mode: creds files, nats-server configurations and the service's
//! environment file.

/// A user's creds file: its JWT and seed between the delimiters NATS clients look for.
pub fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         The seed below proves this user's identity: keep this file secret.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// One account JWT handed to the server at start.
#[derive(Debug, Clone)]
pub struct Preload {
    /// The account's name (a comment in the config).
    pub name: String,
    /// Its public key.
    pub public_key: String,
    /// Its JWT.
    pub jwt: String,
}

/// How the server finds account JWTs.
#[derive(Debug, Clone, Copy)]
pub enum Resolver<'a> {
    /// Only the preloaded JWTs, fixed until restart; optionally a default sentinel for clients
    /// that present no JWT.
    Memory {
        /// The bearer sentinel JWT.
        default_sentinel: Option<&'a str>,
    },
    /// JWTs kept in `dir`, updated by the system account (`$SYS.REQ.CLAIMS.UPDATE`).
    Full {
        /// The directory.
        dir: &'a str,
    },
}

/// What every operator-mode configuration holds.
#[derive(Debug, Clone)]
pub struct ServerConfig<'a> {
    /// The operator JWT.
    pub operator_jwt: &'a str,
    /// The system account's public key.
    pub system_account: &'a str,
    /// The JetStream `store_dir` (nats-server keeps its data in `<store_dir>/jetstream`).
    pub jetstream_store_dir: &'a str,
    /// The account JWTs.
    pub preload: &'a [Preload],
}

/// A complete nats-server configuration (listen address, TLS and clustering left to the reader).
pub fn server_config(c: &ServerConfig<'_>, resolver: Resolver<'_>) -> String {
    let mut out = String::from(
        "# nats-server in operator mode, written by `nats-k8s-oidc-callout keys operator`.\n\
         # Add listen, TLS and cluster settings as the deployment needs.\n",
    );
    out.push_str(&format!(
        "operator: \"{}\"\nsystem_account: \"{}\"\njetstream {{\n  store_dir: \"{}\"\n}}\n",
        c.operator_jwt, c.system_account, c.jetstream_store_dir
    ));
    match resolver {
        Resolver::Memory { default_sentinel } => {
            out.push_str("resolver: MEMORY\n");
            if let Some(jwt) = default_sentinel {
                out.push_str(
                    "# Clients that present no JWT connect as this bearer user of the callout \
                     account, which sends them to the callout.\n",
                );
                out.push_str(&format!("default_sentinel: \"{jwt}\"\n"));
            }
        }
        Resolver::Full { dir } => {
            out.push_str(&format!(
                "resolver {{\n  type: full\n  dir: \"{dir}\"\n  # Deleting an account takes an \
                 operator-signed request and this set to true.\n  allow_delete: false\n  \
                 interval: \"2m\"\n}}\n"
            ));
        }
    }
    out.push_str("resolver_preload: {\n");
    for p in c.preload {
        out.push_str(&format!(
            "  # {}\n  {}: \"{}\"\n",
            p.name, p.public_key, p.jwt
        ));
    }
    out.push_str("}\n");
    out
}

/// The service's settings in operator mode; paths are absolute.
#[derive(Debug, Clone)]
pub struct ServiceEnv<'a> {
    /// Public key of the default client account.
    pub account: &'a str,
    /// Seed of its plain signing key.
    pub signing_key_file: &'a str,
    /// Seed of its scoped signing key (offered as a commented alternative).
    pub scoped_signing_key_file: &'a str,
    /// Public key of the callout account.
    pub callout_account: &'a str,
    /// Seed of the callout account's signing key.
    pub callout_signing_key_file: &'a str,
    /// Seed of the callout xkey, if any.
    pub xkey_seed_file: Option<&'a str>,
    /// The service's own creds.
    pub user_creds_file: &'a str,
    /// One signing-key seed per client account, named `<ACCOUNT_PUBLIC_KEY>.nk`.
    pub account_signing_keys_dir: &'a str,
}

/// The environment file, one `NAME=value` a line (usable by `docker --env-file` and `set -a; .`).
pub fn service_env(e: &ServiceEnv<'_>) -> String {
    let mut out = format!(
        "# nats-k8s-oidc-callout in operator mode, written by `keys operator`. Set NATS_URL too.\n\
         NATS_OPERATOR_MODE=true\n\
         # Clients are placed in this account unless a rule names another one that has a key in\n\
         # NATS_ACCOUNT_SIGNING_KEYS_DIR.\n\
         NATS_ACCOUNT={account}\n\
         # The account's plain signing key, not its seed: the operator can drop a signing key from\n\
         # the account JWT and issue a new one without changing the account.\n\
         NATS_SIGNING_KEY_FILE={signing}\n\
         # To sign with the scoped key instead (permissions then come from its template only):\n\
         # NATS_SIGNING_KEY_FILE={scoped}\n\
         # NATS_SIGNING_KEY_SCOPED=true\n\
         # The callout account, and one of its signing keys: it signs the authorization responses.\n\
         # To replace it without a restart: list the new key in the account JWT too, swap this\n\
         # file, then drop the old key from the JWT.\n\
         NATS_CALLOUT_ACCOUNT={callout_account}\n\
         NATS_CALLOUT_SIGNING_KEY_FILE={callout}\n",
        account = e.account,
        signing = e.signing_key_file,
        scoped = e.scoped_signing_key_file,
        callout_account = e.callout_account,
        callout = e.callout_signing_key_file,
    );
    if let Some(x) = e.xkey_seed_file {
        out.push_str(&format!("NATS_XKEY_SEED_FILE={x}\n"));
    }
    out.push_str(&format!(
        "NATS_USER_CREDS_FILE={}\nNATS_ACCOUNT_SIGNING_KEYS_DIR={}\n",
        e.user_creds_file, e.account_signing_keys_dir
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(resolver: Resolver<'_>) -> String {
        let preload = [Preload {
            name: "SYS".into(),
            public_key: "ASYS".into(),
            jwt: "e.s.j".into(),
        }];
        let config = ServerConfig {
            operator_jwt: "e.o.j",
            system_account: "ASYS",
            jetstream_store_dir: "/d",
            preload: &preload,
        };
        server_config(&config, resolver)
    }

    #[test]
    fn creds_put_the_jwt_first_and_the_seed_second_between_the_client_delimiters() {
        let text = creds("aaa.bbb.ccc", "SUSEED");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN NATS USER JWT-----");
        assert_eq!(lines[1], "aaa.bbb.ccc");
        assert_eq!(lines[2], "------END NATS USER JWT------");
        let seed_at = lines
            .iter()
            .position(|l| *l == "-----BEGIN USER NKEY SEED-----")
            .unwrap();
        assert_eq!(lines[seed_at + 1], "SUSEED");
        assert_eq!(lines[seed_at + 2], "------END USER NKEY SEED------");
    }

    #[test]
    fn a_memory_config_preloads_every_account_and_names_the_sentinel_only_when_asked() {
        let plain = render(Resolver::Memory {
            default_sentinel: None,
        });
        for needle in [
            "operator: \"e.o.j\"\n",
            "system_account: \"ASYS\"\n",
            "store_dir: \"/d\"\n",
            "resolver: MEMORY\n",
            "  ASYS: \"e.s.j\"\n",
        ] {
            assert!(plain.contains(needle), "{needle} missing from {plain}");
        }
        assert!(!plain.contains("default_sentinel"));
        let with = render(Resolver::Memory {
            default_sentinel: Some("e.u.j"),
        });
        assert!(with.contains("default_sentinel: \"e.u.j\"\n"), "{with}");
    }

    #[test]
    fn a_full_config_names_its_directory_and_keeps_deletes_off() {
        let full = render(Resolver::Full { dir: "/d/jwt" });
        for needle in [
            "type: full\n",
            "dir: \"/d/jwt\"\n",
            "allow_delete: false\n",
            "interval: \"2m\"\n",
            "resolver_preload: {\n",
        ] {
            assert!(full.contains(needle), "{needle} missing from {full}");
        }
        assert!(!full.contains("MEMORY"));
    }

    #[test]
    fn the_environment_names_every_setting_once_and_the_xkey_only_when_there_is_one() {
        let mut e = ServiceEnv {
            account: "AAPP",
            signing_key_file: "/d/signing-keys/AAPP.nk",
            scoped_signing_key_file: "/d/accounts/APP.scoped.nk",
            callout_account: "AAUTH",
            callout_signing_key_file: "/d/accounts/AUTH.signing.nk",
            xkey_seed_file: Some("/d/xkey.nk"),
            user_creds_file: "/d/creds/callout.creds",
            account_signing_keys_dir: "/d/signing-keys",
        };
        let text = service_env(&e);
        let settings: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            settings,
            [
                "NATS_OPERATOR_MODE=true",
                "NATS_ACCOUNT=AAPP",
                "NATS_SIGNING_KEY_FILE=/d/signing-keys/AAPP.nk",
                "NATS_CALLOUT_ACCOUNT=AAUTH",
                "NATS_CALLOUT_SIGNING_KEY_FILE=/d/accounts/AUTH.signing.nk",
                "NATS_XKEY_SEED_FILE=/d/xkey.nk",
                "NATS_USER_CREDS_FILE=/d/creds/callout.creds",
                "NATS_ACCOUNT_SIGNING_KEYS_DIR=/d/signing-keys",
            ]
        );
        e.xkey_seed_file = None;
        assert!(!service_env(&e).contains("NATS_XKEY_SEED_FILE"));
    }
}
