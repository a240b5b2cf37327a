//! Tokens. A token is 32 random bytes in hex behind a `ds_` prefix; the hub
//! stores only its BLAKE3 hash, under `tokens/<hash>` in the bucket, so every
//! hub on a bucket accepts every token and a leaked bucket listing leaks no
//! secret. A grant is either admin (everything, including creating tokens)
//! or limited to named workspaces.
//!
//! Objects are content-addressed and shared between workspaces, so any valid
//! token may ask whether the hub has an object or download it by id: knowing
//! an id is the capability. Refs are what grants protect.

// token checks answer with the tonic::Status the handler returns.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tonic::Status;

use crate::error::{HubError, Result};
use crate::storage::Storage;

/// How long a looked-up grant is trusted before the bucket is read again.
const GRANT_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grant {
    pub admin: bool,
    /// Workspaces this token may read and write; `*` means all.
    pub workspaces: Vec<String>,
    #[serde(default)]
    pub comment: String,
    /// A runner token: it may connect as this runner and nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
}

impl Grant {
    pub fn may_use(&self, workspace: &str) -> bool {
        self.runner.is_none()
            && (self.admin || self.workspaces.iter().any(|w| w == "*" || w == workspace))
    }

    /// Refuses with a message that says what the token is limited to.
    pub fn require(&self, workspace: &str) -> Result<(), Status> {
        if self.may_use(workspace) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "this token may not use workspace {workspace:?}; it is limited to: {}",
            self.workspaces.join(", ")
        )))
    }

    pub fn require_admin(&self) -> Result<(), Status> {
        if self.admin {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "only an admin token may do this (see admin.token in the hub's data directory)",
            ))
        }
    }
}

/// A fresh random token.
pub fn new_token() -> Result<String> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|source| HubError::Io {
            path: "/dev/urandom".into(),
            source,
        })?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!("ds_{hex}"))
}

/// The name a token's grant is stored under.
pub fn token_hash(token: &str) -> String {
    blake3::derive_key("ds 2026-11 hub token", token.as_bytes())
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The hash of a request's bearer token (what limits are kept per), if it
/// carries one.
pub fn bearer_hash<T>(req: &tonic::Request<T>) -> Option<String> {
    let v = req.metadata().get("authorization")?.to_str().ok()?;
    Some(token_hash(v.strip_prefix("Bearer ")?.trim()))
}

/// Checks tokens against the grants in the bucket.
#[derive(Debug)]
pub struct Auth {
    storage: Storage,
    seen: Mutex<HashMap<String, (Grant, Instant)>>,
}

impl Auth {
    pub fn new(storage: Storage) -> Auth {
        Auth {
            storage,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Stores a grant for `token`.
    pub async fn register(&self, token: &str, grant: &Grant) -> Result<()> {
        let json = serde_json::to_vec(grant)
            .map_err(|e| HubError::Internal(format!("encoding a grant: {e}")))?;
        self.storage.put_token(&token_hash(token), &json).await
    }

    /// Deletes a token's grant (a task's workspace token, when the task
    /// ends). Hubs that cached the grant keep it for up to 30 s.
    pub async fn revoke(&self, hash: &str) -> Result<()> {
        self.seen.lock().await.remove(hash);
        self.storage.delete_token(hash).await
    }

    /// The grant of the request's bearer token, or why there is none.
    pub async fn check<T>(&self, req: &tonic::Request<T>) -> Result<Grant, Status> {
        let Some(v) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "no token: pass --token or set DS_TOKEN (the hub's admin token is in admin.token \
                 in its data directory)",
            ));
        };
        let token = v
            .to_str()
            .ok()
            .and_then(|s| s.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("malformed authorization header (expected `Bearer TOKEN`)")
            })?
            .trim();
        let hash = token_hash(token);
        if let Some((g, at)) = self.seen.lock().await.get(&hash)
            && at.elapsed() < GRANT_TTL
        {
            return Ok(g.clone());
        }
        let stored = self
            .storage
            .get_token(&hash)
            .await
            .map_err(|e| Status::unavailable(format!("reading tokens: {e}")))?;
        let Some(bytes) = stored else {
            return Err(Status::unauthenticated(
                "this token is not known to the hub (wrong token, or one made for another hub's \
                 bucket)",
            ));
        };
        let grant: Grant = serde_json::from_slice(&bytes)
            .map_err(|e| Status::internal(format!("stored grant is corrupt: {e}")))?;
        self.seen
            .lock()
            .await
            .insert(hash, (grant.clone(), Instant::now()));
        Ok(grant)
    }
}
