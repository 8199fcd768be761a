//! The helper subcommands: `keys` (signing account key and xkey for the nats-server config) and
//! `dev-signer` (a local stand-in for a cluster's token signer, for development without Kubernetes).

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nkeys::{KeyPair, XKey};

use crate::identity::dev::{generate_signer, DevSigner, MintRequest};

/// Issuer of tokens minted by the development signer.
pub const DEV_ISSUER: &str = "https://dev-signer.nats-k8s-oidc-callout.local";

/// Writes `contents` and a newline to a new file readable by its owner only; refuses to overwrite.
pub fn write_secret(path: &Path, contents: &str) -> Result<(), String> {
    let line = format!("{contents}\n");
    crate::files::write_new(path, line.as_bytes(), 0o600).map_err(|e| {
        format!(
            "cannot create {}: {e} (existing keys are never overwritten)",
            path.display()
        )
    })
}

/// The nats-server `authorization` block for config mode.
pub fn auth_callout_block(
    issuer: &str,
    xkey: Option<&str>,
    auth_user: &str,
    auth_account: &str,
) -> String {
    let xkey = xkey
        .map(|x| format!("    xkey: \"{x}\"\n"))
        .unwrap_or_default();
    format!(
        "authorization {{\n  timeout: 5\n  auth_callout {{\n    issuer: \"{issuer}\"\n    auth_users: [ \"{auth_user}\" ]\n    account: \"{auth_account}\"\n{xkey}  }}\n}}\n"
    )
}

/// `keys`: generates the signing account key and (optionally) the xkey and prints the config.
pub fn keys(
    dir: &Path,
    with_xkey: bool,
    auth_user: &str,
    auth_account: &str,
) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let account = KeyPair::new_account();
    let seed = account
        .seed()
        .map_err(|e| format!("cannot encode the seed: {e}"))?;
    let signing_path = dir.join("signing.nk");
    write_secret(&signing_path, &seed)?;
    let xkey = if with_xkey {
        let x = XKey::new();
        let xseed = x
            .seed()
            .map_err(|e| format!("cannot encode the xkey seed: {e}"))?;
        write_secret(&dir.join("xkey.nk"), &xseed)?;
        Some(x.public_key())
    } else {
        None
    };
    println!(
        "# signing account public key (auth_callout.issuer): {}",
        account.public_key()
    );
    println!(
        "# signing seed written to {} (NATS_SIGNING_KEY_FILE)",
        signing_path.display()
    );
    if let Some(x) = &xkey {
        println!("# xkey public key (auth_callout.xkey): {x}");
        println!(
            "# xkey seed written to {} (NATS_XKEY_SEED_FILE)",
            dir.join("xkey.nk").display()
        );
    }
    println!("# seed files are mode 0600: keep them secret");
    println!("# nats-server configuration (config mode); \"{auth_user}\" must be a user of account \"{auth_account}\":");
    print!(
        "{}",
        auth_callout_block(
            &account.public_key(),
            xkey.as_deref(),
            auth_user,
            auth_account
        )
    );
    Ok(())
}

/// `dev-signer init`: creates a local ES256 signing key and its JWKS.
pub fn dev_signer_init(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let signer = generate_signer(dir)?;
    println!(
        "# signing key: {} (keep it secret)",
        dir.join("signer.key").display()
    );
    println!(
        "# public key set for JWKS_PATH: {}",
        dir.join("jwks.json").display()
    );
    println!("# key id: {}", signer.kid());
    Ok(())
}

/// `dev-signer mint`: prints a token for one service account.
pub fn dev_signer_mint(
    key: &Path,
    namespace: &str,
    name: &str,
    uid: &str,
    issuer: &str,
    audience: &str,
    ttl: i64,
) -> Result<(), String> {
    let signer = DevSigner::load(key)?;
    // A negative lifetime gives a token that expired |ttl| seconds ago: minted in the past with
    // a one-minute life.
    let (ttl, back) = if ttl > 0 {
        (ttl.unsigned_abs(), 0)
    } else {
        (60, 60 + ttl.unsigned_abs())
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| format!("clock before 1970: {e}"))?
        .as_secs();
    let request = MintRequest {
        issuer: issuer.to_string(),
        audience: audience.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
        ttl: Duration::from_secs(ttl),
    };
    let token = signer.mint_at(&request, now.saturating_sub(back))?;
    println!("{token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_writes_owner_only_seeds_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        keys(dir.path(), true, "auth", "AUTH").unwrap();
        let seed = fs::read_to_string(dir.path().join("signing.nk")).unwrap();
        assert!(KeyPair::from_seed(seed.trim())
            .unwrap()
            .public_key()
            .starts_with('A'));
        let xseed = fs::read_to_string(dir.path().join("xkey.nk")).unwrap();
        assert!(XKey::from_seed(xseed.trim()).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("signing.nk"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(keys(dir.path(), true, "auth", "AUTH")
            .unwrap_err()
            .contains("never overwritten"));
    }
}
