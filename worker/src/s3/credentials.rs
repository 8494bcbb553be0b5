//! Where the S3 store's credentials come from: the configured keys, or the standard AWS chain when the
//! environment gives it a source. Never a built-in default.

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_credential_types::provider::{self, ProvideCredentials};
use aws_sdk_s3::config::Region;

use crate::config::StoreConfig;

/// Where the S3 client's credentials come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// `store.access_key_id` and `store.secret_access_key`.
    Config,
    /// The standard AWS chain, which the environment names a source for.
    AwsChain,
}

/// Variables that give the standard AWS credential chain something to use.
const AWS_CHAIN_VARS: [&str; 6] = [
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
];

/// Decides where credentials come from, without I/O: `env` looks up environment variables and
/// `shared_files` says whether `~/.aws/credentials` or `~/.aws/config` exists. Refuses to guess: with no
/// keys configured and no source for the AWS chain, the error names the keys to set.
pub fn credential_source(
    cfg: &StoreConfig,
    env: impl Fn(&str) -> Option<String>,
    shared_files: bool,
) -> Result<CredentialSource, String> {
    match (cfg.access_key_id.is_empty(), cfg.secret_access_key.is_empty()) {
        (false, false) => return Ok(CredentialSource::Config),
        (false, true) => {
            return Err("store.secret_access_key is empty while store.access_key_id is set: set both".into());
        }
        (true, false) => {
            return Err("store.access_key_id is empty while store.secret_access_key is set: set both".into());
        }
        (true, true) => {}
    }
    let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
    let env_keys = set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY");
    if env_keys || AWS_CHAIN_VARS.iter().any(|k| set(k)) || shared_files {
        return Ok(CredentialSource::AwsChain);
    }
    Err("no S3 credentials: set store.access_key_id and store.secret_access_key \
         (AINERN2D_WORKER_STORE__ACCESS_KEY_ID / AINERN2D_WORKER_STORE__SECRET_ACCESS_KEY), or give the standard \
         AWS chain a source (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_WEB_IDENTITY_TOKEN_FILE, \
         a container credentials URI, or ~/.aws/credentials)"
        .into())
}

/// The standard AWS credential chain, built on first use (building it is async; the store is not).
#[derive(Debug)]
pub(super) struct AwsChain {
    region: String,
    chain: tokio::sync::OnceCell<DefaultCredentialsChain>,
}

impl AwsChain {
    pub(super) fn new(region: &str) -> Self {
        AwsChain { region: region.into(), chain: tokio::sync::OnceCell::new() }
    }
}

impl ProvideCredentials for AwsChain {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            let chain = self
                .chain
                .get_or_init(|| async {
                    DefaultCredentialsChain::builder().region(Region::new(self.region.clone())).build().await
                })
                .await;
            chain.provide_credentials().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(id: &str, secret: &str) -> StoreConfig {
        StoreConfig { access_key_id: id.into(), secret_access_key: secret.into(), ..StoreConfig::default() }
    }

    #[test]
    fn credentials_are_configured_or_come_from_the_aws_chain_never_from_a_default() {
        let none = |_: &str| None;
        assert_eq!(credential_source(&keys("AKIA", "s3cr3t"), none, false), Ok(CredentialSource::Config));
        let err = credential_source(&StoreConfig::default(), none, false).unwrap_err();
        assert!(err.contains("store.access_key_id") && err.contains("store.secret_access_key"), "{err}");
        assert!(credential_source(&keys("AKIA", ""), none, true).unwrap_err().contains("store.secret_access_key"));
        assert!(credential_source(&keys("", "s3cr3t"), none, true).unwrap_err().contains("store.access_key_id"));
        // The standard chain, when the environment gives it a source.
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let chain = Ok(CredentialSource::AwsChain);
        let both = env(&[("AWS_ACCESS_KEY_ID", "AKIA"), ("AWS_SECRET_ACCESS_KEY", "x")]);
        assert_eq!(credential_source(&StoreConfig::default(), both, false), chain);
        assert_eq!(credential_source(&StoreConfig::default(), env(&[("AWS_PROFILE", "prod")]), false), chain);
        let role = env(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token")]);
        assert_eq!(credential_source(&StoreConfig::default(), role, false), chain);
        assert_eq!(credential_source(&StoreConfig::default(), none, true), chain);
        // Half a pair or an empty value is no source.
        assert!(credential_source(&StoreConfig::default(), env(&[("AWS_ACCESS_KEY_ID", "AKIA")]), false).is_err());
        assert!(credential_source(&StoreConfig::default(), env(&[("AWS_PROFILE", "")]), false).is_err());
    }
}
