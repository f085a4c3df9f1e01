//! Secrets: age-encrypted at rest, names only in lists; a create turns the
//! ones it names into environment variables.

use bhatti_store::{SecretMeta, User};

use crate::service::error::{ServiceError, ServiceResult};
use crate::state::Shared;
use crate::validate;

/// The caller's secrets, by name (never their values).
pub async fn list(st: &Shared, user: &User) -> ServiceResult<Vec<SecretMeta>> {
    let uid = user.id.clone();
    st.db(move |s| s.list_secrets(&uid)).await
}

/// Sets secret `name` to `value` (encrypted before it is stored).
pub async fn set(st: &Shared, user: &User, name: &str, value: &str) -> ServiceResult<SecretMeta> {
    if name.is_empty() || value.is_empty() {
        return Err(ServiceError::bad_request("name and value are required"));
    }
    validate::secret_name(name)?;
    // An input rule like any other field's (the document says maxLength):
    // invalid input; too-large is for a body over the cap.
    if value.len() > validate::MAX_SECRET {
        return Err(ServiceError::bad_request(format!(
            "secret value of {} bytes is over the {}-byte limit",
            value.len(),
            validate::MAX_SECRET
        )));
    }
    // It becomes an environment value.
    validate::no_nul("secret value", value)?;
    let ct = st
        .secrets
        .encrypt(value.as_bytes())
        .map_err(ServiceError::internal)?;
    let (uid, n) = (user.id.clone(), name.to_string());
    st.db(move |s| s.set_secret(&uid, &n, &ct)).await
}

pub async fn delete(st: &Shared, user: &User, name: &str) -> ServiceResult<()> {
    let (uid, n) = (user.id.clone(), name.to_string());
    st.db(move |s| s.delete_secret(&uid, &n)).await?;
    Ok(())
}
