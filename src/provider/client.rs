//! The provider's token endpoint, as a confidential client: code
//! redemption (browser login, the token API) and refresh-token grants
//! (re-checks), authenticated with `client_secret_basic` unless the
//! provider supports only `client_secret_post`.

use serde::Deserialize;

use super::{read_capped, BodyError, Metadata, ProviderService, MAX_TOKEN_RESPONSE_BYTES};

/// The token endpoint's answer (code redemption or refresh).
#[derive(Deserialize)]
pub struct TokenResponse {
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
    /// Seconds the access token lives: portcullis's own tokens never outlive it.
    pub expires_in: Option<u64>,
}

/// Why a token request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRequestError {
    /// The provider said the grant (code or refresh token) is no longer good.
    #[error("the provider refused the grant")]
    InvalidGrant,
    /// The provider refused the request for another reason (`invalid_client`, ...).
    #[error("{0}")]
    Refused(String),
    /// The provider could not be reached, timed out, or failed (5xx).
    #[error("{0}")]
    Unreachable(String),
    /// The provider answered, but not with a token response.
    #[error("{0}")]
    Failed(String),
}

/// A request to the provider's token endpoint with the client's
/// credentials: `client_secret_basic` unless the provider supports only
/// `client_secret_post`.
pub async fn token_request(
    provider: &ProviderService,
    metadata: &Metadata,
    grant: &[(&str, &str)],
) -> Result<TokenResponse, TokenRequestError> {
    let fail = TokenRequestError::Failed;
    let endpoint = metadata
        .token_endpoint
        .as_deref()
        .ok_or_else(|| fail("no token endpoint".into()))?;
    let config = &provider.config;
    let mut form: Vec<(&str, &str)> = grant.to_vec();
    let methods = &metadata.token_endpoint_auth_methods_supported;
    let post_only = !methods.is_empty()
        && methods.iter().any(|m| m == "client_secret_post")
        && !methods.iter().any(|m| m == "client_secret_basic");
    let secret = config
        .client_secret
        .as_ref()
        .map(|s| s.expose().to_string());
    let mut request = provider.http().post(endpoint);
    match (&secret, post_only) {
        (Some(secret), true) => {
            form.push(("client_id", &config.client_id));
            form.push(("client_secret", secret));
        }
        (Some(secret), false) => {
            // RFC 6749 §2.3.1: both parts form-urlencoded before Basic.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            request = request.basic_auth(enc(&config.client_id), Some(enc(secret)));
        }
        (None, _) => form.push(("client_id", &config.client_id)),
    }
    let response = request.form(&form).send().await.map_err(|e| {
        TokenRequestError::Unreachable(format!("request failed: {}", e.without_url()))
    })?;
    let status = response.status();
    if status.as_u16() == 400 || status.as_u16() == 401 {
        #[derive(Deserialize)]
        struct OAuthError {
            error: String,
        }
        let error = read_capped(response, MAX_TOKEN_RESPONSE_BYTES)
            .await
            .ok()
            .and_then(|body| serde_json::from_slice::<OAuthError>(&body).ok())
            .map(|e| e.error)
            .unwrap_or_default();
        return Err(if error == "invalid_grant" {
            TokenRequestError::InvalidGrant
        } else {
            TokenRequestError::Refused(format!("token endpoint answered {status} {error}"))
        });
    }
    if status.is_server_error() {
        return Err(TokenRequestError::Unreachable(format!(
            "token endpoint answered {status}"
        )));
    }
    if !status.is_success() {
        return Err(fail(format!("token endpoint answered {status}")));
    }
    let body = read_capped(response, MAX_TOKEN_RESPONSE_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { .. } => fail(format!("token endpoint: {e}")),
            BodyError::Read(_) => TokenRequestError::Unreachable(format!("token endpoint: {e}")),
        })?;
    serde_json::from_slice::<TokenResponse>(&body)
        .map_err(|e| fail(format!("not a token response: {e}")))
}

/// Redeems an authorization code (with its PKCE verifier, when the
/// authorization request had a challenge).
pub async fn redeem_code(
    provider: &ProviderService,
    metadata: &Metadata,
    code: &str,
    redirect_uri: &str,
    verifier: Option<&str>,
) -> Result<TokenResponse, TokenRequestError> {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
    ];
    if let Some(verifier) = verifier {
        form.push(("code_verifier", verifier));
    }
    token_request(provider, metadata, &form).await
}
