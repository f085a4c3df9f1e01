//! Certificates from an ACME CA (Let's Encrypt, or any RFC 8555 server)
//! for the public listener in domain mode: one per host name, obtained
//! when a TLS client first asks for it (by SNI) and kept under
//! `<data_dir>/certs`, renewed when a handshake finds it within 30 days of
//! its end.
//!
//! Only names this daemon serves get one: the API host, and aliases that
//! are published (so a scan of random names cannot spend the CA's rate
//! limit), and at most [`MAX_NEW_PER_WEEK`] new names a week. Challenges
//! are HTTP-01, answered by the plain-HTTP listener (`domain.http_listen`),
//! which redirects everything else to HTTPS.
//!
//! Concurrent handshakes for one name wait for the one issuance in flight.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use crate::state::{lock, Shared};

/// New names certified per rolling week (Let's Encrypt allows 50
/// certificates per registered domain a week).
pub const MAX_NEW_PER_WEEK: usize = 50;
/// A certificate this close to its end is replaced at the next handshake.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long one issuance may take, challenges included.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(90);
/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Why no certificate could be had for a name.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The name is neither the API host nor a published alias.
    #[error("{0:?} is not served here")]
    NotServed(String),
    /// The weekly budget of new names is spent.
    #[error("{MAX_NEW_PER_WEEK} new certificates this week already; {0:?} must wait")]
    RateLimited(String),
    /// The CA refused or failed (the account, the order, a challenge).
    #[error("acme: {0}")]
    Ca(#[from] instant_acme::Error),
    /// The CA's answer was not usable (an order that went invalid, a
    /// certificate rustls refuses).
    #[error("acme: {0}")]
    Invalid(String),
    /// The certificate cache could not be read or written.
    #[error("certificate cache {path}: {source}")]
    Cache {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The ACME client, its pending challenges and its certificates.
pub struct Acme {
    email: String,
    directory: String,
    ca_file: Option<PathBuf>,
    dir: PathBuf,
    account: tokio::sync::OnceCell<Account>,
    /// HTTP-01 token → key authorization, while a challenge is pending.
    challenges: Mutex<HashMap<String, String>>,
    /// Host → its server config, once loaded or issued.
    configs: Mutex<HashMap<String, (Arc<rustls::ServerConfig>, SystemTime)>>,
    /// One issuance per host at a time.
    issuing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When new names were certified, oldest first (within the week).
    issued: Mutex<VecDeque<SystemTime>>,
}

impl Acme {
    /// The client for `email` at `directory` (trusting `ca_file` for the
    /// directory's own TLS, when given), caching under `dir`.
    pub fn new(email: &str, directory: &str, ca_file: Option<PathBuf>, dir: PathBuf) -> Acme {
        Acme {
            email: email.to_string(),
            directory: directory.to_string(),
            ca_file,
            dir,
            account: tokio::sync::OnceCell::new(),
            challenges: Mutex::default(),
            configs: Mutex::default(),
            issuing: Mutex::default(),
            issued: Mutex::default(),
        }
    }

    /// The key authorization for an HTTP-01 `token` being validated.
    pub fn challenge(&self, token: &str) -> Option<String> {
        lock(&self.challenges).get(token).cloned()
    }

    /// The server config for `host`: cached, on disk, or issued now.
    pub async fn config_for(
        &self,
        st: &Shared,
        host: &str,
    ) -> Result<Arc<rustls::ServerConfig>, AcmeError> {
        if let Some(c) = self.fresh(host) {
            return Ok(c);
        }
        allowed(st, host).await?;
        let gate = lock(&self.issuing)
            .entry(host.to_string())
            .or_default()
            .clone();
        let _one = gate.lock().await;
        if let Some(c) = self.fresh(host) {
            return Ok(c);
        }
        if let Some(c) = self.load(host)? {
            return Ok(c);
        }
        self.take_budget(host)?;
        let (chain, key) = tokio::time::timeout(ISSUE_TIMEOUT, self.issue(host))
            .await
            .map_err(|_| AcmeError::Invalid(format!("issuing for {host:?} timed out")))??;
        self.save(host, &chain, &key)?;
        tracing::info!(host, "ACME certificate issued");
        st.events.emit(
            "",
            "",
            "tls.certificate_issued",
            serde_json::json!({"host": host}),
        );
        self.load(host)?.ok_or_else(|| {
            AcmeError::Invalid(format!("the certificate for {host:?} is already due"))
        })
    }

    fn fresh(&self, host: &str) -> Option<Arc<rustls::ServerConfig>> {
        let m = lock(&self.configs);
        let (c, until) = m.get(host)?;
        due_after(*until).then(|| c.clone())
    }

    fn take_budget(&self, host: &str) -> Result<(), AcmeError> {
        let now = SystemTime::now();
        let mut q = lock(&self.issued);
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t).unwrap_or_default() > WEEK)
        {
            q.pop_front();
        }
        if q.len() >= MAX_NEW_PER_WEEK {
            return Err(AcmeError::RateLimited(host.to_string()));
        }
        q.push_back(now);
        Ok(())
    }

    fn paths(&self, host: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{host}.crt.pem")),
            self.dir.join(format!("{host}.key.pem")),
        )
    }

    /// The cached certificate for `host` when it is not due for renewal.
    fn load(&self, host: &str) -> Result<Option<Arc<rustls::ServerConfig>>, AcmeError> {
        let (crt, key) = self.paths(host);
        if !crt.is_file() || !key.is_file() {
            return Ok(None);
        }
        let cfg =
            super::tls::server_config(&crt, &key).map_err(|e| AcmeError::Invalid(e.to_string()))?;
        let until = not_after(&crt)?;
        if !due_after(until) {
            return Ok(None);
        }
        lock(&self.configs).insert(host.to_string(), (cfg.clone(), until));
        Ok(Some(cfg))
    }

    fn save(&self, host: &str, chain: &str, key: &str) -> Result<(), AcmeError> {
        let cache = |path: &Path, source| AcmeError::Cache {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| cache(&self.dir, e))?;
        let (crt, k) = self.paths(host);
        // The key first: a certificate on disk always has its key.
        bhatti_durable::write(&k, key.as_bytes(), 0o600).map_err(|e| cache(&k, e))?;
        bhatti_durable::write(&crt, chain.as_bytes(), 0o644).map_err(|e| cache(&crt, e))
    }

    async fn account(&self) -> Result<&Account, AcmeError> {
        self.account
            .get_or_try_init(|| async {
                let builder = || match &self.ca_file {
                    Some(ca) => Account::builder_with_root(ca),
                    None => Account::builder(),
                };
                let creds_path = self.dir.join("account.json");
                if let Ok(text) = std::fs::read(&creds_path) {
                    if let Ok(creds) = serde_json::from_slice::<AccountCredentials>(&text) {
                        return Ok(builder()?.from_credentials(creds).await?);
                    }
                }
                let contact = format!("mailto:{}", self.email);
                let (account, creds) = builder()?
                    .create(
                        &NewAccount {
                            contact: &[&contact],
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.directory.clone(),
                        None,
                    )
                    .await?;
                let text = serde_json::to_vec(&creds)
                    .map_err(|e| AcmeError::Invalid(format!("account credentials: {e}")))?;
                std::fs::create_dir_all(&self.dir).map_err(|source| AcmeError::Cache {
                    path: self.dir.clone(),
                    source,
                })?;
                bhatti_durable::write(&creds_path, &text, 0o600).map_err(|source| {
                    AcmeError::Cache {
                        path: creds_path.clone(),
                        source,
                    }
                })?;
                Ok(account)
            })
            .await
    }

    /// One order for `host`, its HTTP-01 challenge answered by
    /// [`Acme::challenge`]; the chain and the key, PEM.
    async fn issue(&self, host: &str) -> Result<(String, String), AcmeError> {
        let account = self.account().await?;
        let ids = [Identifier::Dns(host.to_string())];
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let mut tokens = Vec::new();
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a?;
            if a.status == AuthorizationStatus::Valid {
                continue;
            }
            let mut ch = a.challenge(ChallengeType::Http01).ok_or_else(|| {
                AcmeError::Invalid(format!("the CA offers no http-01 challenge for {host:?}"))
            })?;
            let token = ch.token.clone();
            lock(&self.challenges).insert(token.clone(), ch.key_authorization().as_str().into());
            tokens.push(token);
            ch.set_ready().await?;
        }
        let result = async {
            let status = order.poll_ready(&RetryPolicy::default()).await?;
            if status != OrderStatus::Ready {
                return Err(AcmeError::Invalid(format!(
                    "the order for {host:?} is {status:?}"
                )));
            }
            let key = order.finalize().await?;
            let chain = order.poll_certificate(&RetryPolicy::default()).await?;
            Ok((chain, key))
        }
        .await;
        let mut c = lock(&self.challenges);
        for t in tokens {
            c.remove(&t);
        }
        result
    }
}

/// True while `until` is more than [`RENEW_BEFORE`] away.
fn due_after(until: SystemTime) -> bool {
    until
        .duration_since(SystemTime::now())
        .is_ok_and(|left| left > RENEW_BEFORE)
}

/// The end of the validity of the first certificate in a PEM file.
fn not_after(crt: &Path) -> Result<SystemTime, AcmeError> {
    use rustls::pki_types::pem::PemObject;
    let bad = |e: &dyn std::fmt::Display| AcmeError::Invalid(format!("{}: {e}", crt.display()));
    let der = rustls::pki_types::CertificateDer::from_pem_file(crt).map_err(|e| bad(&e))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(&e))?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok(SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(SystemTime::UNIX_EPOCH))
}

/// The API host, or a published alias of the zone.
async fn allowed(st: &Shared, host: &str) -> Result<(), AcmeError> {
    let Some(d) = &st.cfg.domain else {
        return Err(AcmeError::NotServed(host.to_string()));
    };
    if d.api_host.as_deref() == Some(host) {
        return Ok(());
    }
    let alias = d
        .zone_label(host)
        .filter(|l| crate::validate::alias(l).is_ok());
    match alias {
        Some(a) if crate::service::publish::route(st, a).await.is_ok() => Ok(()),
        _ => Err(AcmeError::NotServed(host.to_string())),
    }
}
