//! `medanchor send`: an MLLP client, so a newcomer can try the gateway without other tools.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::hl7::mllp::MllpCodec;
use crate::hl7::{split_batch, Message};

pub struct MllpClient {
    framed: Framed<TcpStream, MllpCodec>,
    timeout: Duration,
}

impl MllpClient {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<MllpClient> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr}: timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(MllpClient {
            framed: Framed::new(stream, MllpCodec::new(16 << 20)),
            timeout,
        })
    }

    pub async fn write(&mut self, payload: &[u8]) -> Result<()> {
        self.framed.send(payload).await.context("sending frame")
    }

    pub async fn read(&mut self) -> Result<Bytes> {
        match tokio::time::timeout(self.timeout, self.framed.next()).await {
            Err(_) => anyhow::bail!("no ACK within {:?}", self.timeout),
            Ok(None) => anyhow::bail!("connection closed before the ACK"),
            Ok(Some(r)) => r.context("reading ACK"),
        }
    }

    pub async fn send(&mut self, payload: &[u8]) -> Result<Bytes> {
        self.write(payload).await?;
        self.read().await
    }
}

/// What an ACK said.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct AckSummary {
    /// MSA-1 (AA, AE, AR, CA, CE, CR); of a batch acknowledgement, its first ACK's;
    /// `unreadable` when no ACK could be read.
    pub code: String,
    /// MSA-2: the control id acknowledged.
    pub control_id: String,
    /// MSA-3: the reason, on errors.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub text: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub record_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub commitment: String,
}

pub fn parse_ack(ack: &[u8]) -> AckSummary {
    let mut s = AckSummary::default();
    let start = memchr::memmem::find(ack, b"MSH").unwrap_or(0);
    let ack = &ack[start..];
    // A batch ACK (one ACK per message, as a server that splits a batch answers) is read by
    // its first message: one message is all the tokenizer reads.
    let first = split_batch(ack)
        .ok()
        .and_then(|m| m.first().copied())
        .unwrap_or(ack);
    let Ok(msg) = Message::parse(first) else {
        s.code = "unreadable".into();
        return s;
    };
    let text = |f: crate::hl7::Field<'_>| {
        msg.text(f.raw())
            .map(|c| c.into_owned())
            .unwrap_or_default()
    };
    if let Some(msa) = msg.segment(b"MSA") {
        s.code = text(msa.field(1));
        s.control_id = text(msa.field(2));
        s.text = text(msa.field(3));
    }
    if let Some(zrc) = msg.segment(b"ZRC") {
        s.record_id = text(zrc.field(1));
        s.commitment = text(zrc.field(2));
    }
    s
}

/// The messages of a file: batches split, segment terminators normalized to CR (as MLLP senders
/// do) unless `raw`.
pub fn messages_of(bytes: &[u8], raw: bool) -> Vec<Vec<u8>> {
    split_messages(bytes, raw).unwrap_or_else(|_| split_messages_of(vec![bytes], raw))
}

/// [`messages_of`] for input that must split: the batch's own error when it does not.
pub fn split_messages(
    bytes: &[u8],
    raw: bool,
) -> Result<Vec<Vec<u8>>, crate::hl7::batch::BatchError> {
    Ok(split_messages_of(split_batch(bytes)?, raw))
}

fn split_messages_of(parts: Vec<&[u8]>, raw: bool) -> Vec<Vec<u8>> {
    parts
        .into_iter()
        .map(|p| {
            if raw {
                return p.to_vec();
            }
            let mut out = Vec::with_capacity(p.len());
            let mut i = 0;
            while i < p.len() {
                match p[i] {
                    b'\r' if p.get(i + 1) == Some(&b'\n') => {
                        out.push(b'\r');
                        i += 1;
                    }
                    b'\n' => out.push(b'\r'),
                    b => out.push(b),
                }
                i += 1;
            }
            while out.last() == Some(&b'\r') && out.len() > 1 && out[out.len() - 2] == b'\r' {
                out.pop();
            }
            if out.last() != Some(&b'\r') {
                out.push(b'\r');
            }
            out
        })
        .collect()
}

#[derive(Serialize)]
struct SendLine<'a> {
    file: String,
    #[serde(flatten)]
    ack: &'a AckSummary,
}

/// Sends every message of every file; prints each ACK. Returns whether all were accepted.
pub async fn send_files(
    to: SocketAddr,
    files: &[PathBuf],
    json: bool,
    raw: bool,
    timeout: Duration,
) -> Result<bool> {
    let mut work = Vec::new();
    for f in files {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        for m in messages_of(&bytes, raw) {
            work.push((f.display().to_string(), m));
        }
    }
    let pb = super::progress(work.len() as u64, "sending");
    let mut client = MllpClient::connect(to, timeout).await?;
    let mut all_ok = true;
    for (file, msg) in work {
        let ack = client.send(&msg).await.with_context(|| file.clone())?;
        let s = parse_ack(&ack);
        all_ok &= s.code == "AA" || s.code == "CA";
        pb.inc(1);
        if json {
            crate::outln!("{}", serde_json::to_string(&SendLine { file, ack: &s })?)?;
        } else {
            pb.suspend(|| {
                let detail = if s.record_id.is_empty() {
                    s.text.clone()
                } else {
                    format!("record {} commitment {}", s.record_id, s.commitment)
                };
                crate::outln!("{file}  {}  {}  {detail}", s.control_id, s.code)
            })?;
        }
    }
    pb.finish_and_clear();
    Ok(all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_acknowledgement_is_read_by_its_first_ack() {
        let ack = b"BHS|^~\\&|R|H\rMSH|^~\\&|R|H|S|H|20240101||ACK|A1|P|2.5\rMSA|AA|M1\r\
MSH|^~\\&|R|H|S|H|20240101||ACK|A2|P|2.5\rMSA|AE|M2|bad\rBTS|2\r";
        let s = parse_ack(ack);
        assert_eq!((s.code.as_str(), s.control_id.as_str()), ("AA", "M1"));
        assert_eq!(parse_ack(b"garbage").code, "unreadable");
    }
}
