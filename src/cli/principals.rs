//! `medanchor principals add|list|revoke`: on a stopped gateway's data directory directly, or
//! through a running gateway's admin API (`/v1/admin/principals`) with the admin token.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::api::admin::AddPrincipal;
use crate::config::Config;
use crate::consent::{PrincipalError, Principals, Role};
use crate::envelope::now_ms;

/// What to do.
pub enum Action {
    Add(AddPrincipal),
    List,
    Revoke(String),
}

/// Runs `action`: on the data directory when no gateway holds it, else through the API at
/// `cfg.http.listen` with `token` (default: the data directory's `admin.token`).
pub fn run(cfg: &Config, action: Action, token: Option<String>) -> Result<()> {
    match Principals::open(&cfg.data_dir) {
        Ok(principals) => offline(cfg, &principals, action),
        Err(PrincipalError::InUse(_)) => {
            let token = match token {
                Some(t) => t,
                None => std::fs::read_to_string(cfg.data_dir.join("admin.token"))
                    .context("the gateway is running: give an admin token (--token, MEDANCHOR_TOKEN) or run where its data directory's admin.token is readable")?
                    .trim()
                    .to_string(),
            };
            online(cfg.http.listen, &token, action)
        }
        Err(e) => Err(e.into()),
    }
}

fn offline(cfg: &Config, principals: &Principals, action: Action) -> Result<()> {
    match action {
        Action::Add(add) => {
            let keyring = crate::seal::Keyring::open(&cfg.data_dir.join("keys"), false)
                .context("opening the keyring (patients are named by its index key)")?;
            let new = add.resolve(&keyring)?;
            let (p, token) = principals.add(&new, now_ms())?;
            print_added(&json!({"principal": p, "token": token}))?;
        }
        Action::List => print_list(&serde_json::to_value(principals.list())?)?,
        Action::Revoke(id) => {
            principals.revoke(&id, now_ms())?;
            crate::outln!("principal {id} revoked")?;
        }
    }
    Ok(())
}

fn print_added(v: &Value) -> std::io::Result<()> {
    let p = &v["principal"];
    crate::outln!(
        "principal {} ({}) added",
        p["id"].as_str().unwrap_or(""),
        p["role"].as_str().unwrap_or("")
    )?;
    if let Some(patients) = p["patients"].as_array() {
        for pid in patients {
            crate::outln!("patient id: {}", pid.as_str().unwrap_or(""))?;
        }
    }
    crate::outln!("token (shown this once; only its hash is kept):")?;
    crate::outln!("{}", v["token"].as_str().unwrap_or(""))
}

fn print_list(list: &Value) -> std::io::Result<()> {
    for p in list.as_array().into_iter().flatten() {
        let revoked = if p["revoked_ms"].is_null() {
            ""
        } else {
            " (revoked)"
        };
        crate::outln!(
            "{}\t{}{}",
            p["id"].as_str().unwrap_or(""),
            p["role"].as_str().unwrap_or(""),
            revoked
        )?;
    }
    Ok(())
}

fn online(addr: SocketAddr, token: &str, action: Action) -> Result<()> {
    let (method, path, body) = match &action {
        Action::Add(a) => (
            "POST",
            "/v1/admin/principals".to_string(),
            Some(json!({
                "id": a.id, "role": a.role.map(Role::name), "patients": a.patients,
                "identifiers": a.identifiers, "organization": a.organization, "senders": a.senders,
                "certificates": a.certificates,
            })),
        ),
        Action::List => ("GET", "/v1/admin/principals".to_string(), None),
        Action::Revoke(id) => ("DELETE", format!("/v1/admin/principals/{id}"), None),
    };
    let (status, text) = request(addr, method, &path, token, body.as_ref())?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        bail!(
            "the gateway answered {status}: {}",
            v["detail"].as_str().unwrap_or(text.trim())
        );
    }
    match action {
        Action::Add(_) => print_added(&v)?,
        Action::List => print_list(&v["principals"])?,
        Action::Revoke(id) => crate::outln!("principal {id} revoked")?,
    }
    Ok(())
}

/// One request to the gateway's own API on this host.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Result<(u16, String)> {
    let connect = if addr.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), addr.port())
    } else {
        addr
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = format!("Bearer {token}");
    let host = connect.to_string();
    let call = crate::http1::Request {
        addr: connect,
        host: &host,
        method,
        path,
        headers: &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body: body.as_bytes(),
    };
    let answer = crate::http1::request(&call, None, Duration::from_secs(30), 64 << 20)
        .with_context(|| format!("calling the gateway's API at {connect}"))?;
    Ok((answer.status, answer.body))
}
