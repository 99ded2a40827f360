//! End to end through the real binary, real sockets and the storage files.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn microsoft_files() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fixtures().join("microsoft"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    v
}

fn send_json(g: &Gateway, files: &[String]) -> Vec<Value> {
    let to = g.mllp.to_string();
    let mut args = vec!["send", "--json", "--to", to.as_str()];
    args.extend(files.iter().map(|s| s.as_str()));
    let (_, out, err) = run(&args);
    assert!(err.is_empty() || !err.contains("error:"), "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn corpus_is_accepted_bad_batches_rejected_duplicates_deduplicated_and_all_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let g = Gateway::start(&data, &[]);

    // All 139 Microsoft samples: accepted (AA, or CA where MSH-16 asks for no application ACK).
    let files = microsoft_files();
    assert_eq!(files.len(), 139);
    let acks = send_json(&g, &files);
    assert_eq!(acks.len(), 139);
    for a in &acks {
        let code = a["code"].as_str().unwrap();
        assert!(code == "AA" || code == "CA", "{a}");
        assert_eq!(a["record_id"].as_str().unwrap().len(), 32, "{a}");
        assert_eq!(a["commitment"].as_str().unwrap().len(), 64, "{a}");
    }
    let aa = acks.iter().filter(|a| a["code"] == "AA").count();
    assert!(aa >= 128, "original-mode samples get AA: {aa}");

    // python-hl7's malformed batches: AR with the reason in MSA-3 and ERR.
    for bad in [
        "sample_bad_batch",
        "sample_bad_batch1",
        "sample_bad_file",
        "sample_bad_file1",
        "sample_bad_file2",
        "sample_bad_file3",
    ] {
        let raw = std::fs::read(fixtures().join(format!("python-hl7/{bad}.hl7"))).unwrap();
        let ack = mllp_exchange(g.mllp, &raw);
        let (code, _, text) = msa(&ack);
        assert_eq!(code, "AR", "{bad}");
        assert!(
            text.contains("batch rejected") && text.contains("quarantine id"),
            "{bad}: {text}"
        );
        assert!(String::from_utf8_lossy(&ack).contains("\rERR|"), "{bad}");
    }
    // A good batch over MLLP: a batch ACK with one MSA per message.
    let raw = std::fs::read(fixtures().join("python-hl7/sample_batch1.hl7")).unwrap();
    let ack = String::from_utf8(mllp_exchange(g.mllp, &raw)).unwrap();
    assert!(ack.starts_with("BHS|") && ack.contains("BTS|2"), "{ack}");
    assert_eq!(ack.matches("\rMSA|").count(), 2);

    // Not HL7 at all, and a message missing MSH-10: AR and AE.
    let (code, _, text) = msa(&mllp_exchange(g.mllp, b"hello there"));
    assert_eq!(code, "AR");
    assert!(text.contains("MSH"), "{text}");
    let (code, _, text) = msa(&mllp_exchange(
        g.mllp,
        b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01||P|2.5\rPID|1||42^^^H^MR\r",
    ));
    assert_eq!(code, "AE");
    assert!(text.contains("MSH-10"), "{text}");

    // Re-sent bytes: same receipt. Same control id, other bytes: a new record and a conflict.
    let again = send_json(&g, &files[..1]);
    assert_eq!(again[0]["record_id"], acks[0]["record_id"]);
    assert_eq!(again[0]["commitment"], acks[0]["commitment"]);
    let mut changed = std::fs::read(&files[0]).unwrap();
    changed.extend_from_slice(b"\rNTE|1||changed\r");
    let changed_path = dir.path().join("changed.hl7");
    std::fs::write(&changed_path, &changed).unwrap();
    // Many corpus samples share a sender and MSH-10 with other samples: count from here.
    let conflicts_before = g.metric("medanchor_vault_control_id_conflicts_total");
    assert!(conflicts_before > 0.0);
    let other = send_json(&g, &[changed_path.display().to_string()]);
    assert_ne!(other[0]["record_id"], acks[0]["record_id"]);
    assert_eq!(g.metric("medanchor_vault_duplicates_total"), 1.0);
    assert_eq!(
        g.metric("medanchor_vault_control_id_conflicts_total"),
        conflicts_before + 1.0
    );
    assert_eq!(
        g.metric("medanchor_messages_rejected_total{reason=\"bad_batch\",source=\"mllp\"}"),
        6.0
    );
    assert!(g.metric("medanchor_messages_acked_total{code=\"AA\",source=\"mllp\"}") >= 128.0);

    // The proof endpoint and readiness. A proof needs its record anchored: wait until the log
    // holds all 142 records (139 + changed + 2 batch messages; batches close every 50 ms).
    assert_eq!(g.http_get("/readyz").0, 200);
    g.wait_metric("medanchor_ledger_tree_size", 142.0, Duration::from_secs(30));
    let id = acks[5]["record_id"].as_str().unwrap();
    let (status, body) = g.http_get(&format!("/v1/records/{id}/proof"));
    assert_eq!(status, 200, "{body}");
    let (status, body) = g.http_get("/v1/records/zz/proof");
    assert_eq!(status, 400);
    assert!(body.contains("\"status\":400"));

    assert!(g.stop().success());

    // Offline: the whole directory verifies; 139 + changed + 2 batch messages stored.
    let d = data.display().to_string();
    let report = verify_all(&data);
    assert_eq!(report["records"], 142);
    // Every HL7v2 message mapped has a derived record, anchored as its own leaf.
    let derived = report["derived"].as_u64().unwrap();
    assert!(derived > 0, "{report}");
    // The admin's proof request above is in the patient's access log: one event, with its leaf.
    assert_eq!(report["events"], 1, "{report}");
    assert_eq!(report["leaves"], 142 + derived + 1);
    assert_eq!(report["ok"], true);

    // A proof bundle verifies offline, pinned or not, and a doctored one does not.
    let proof = dir.path().join("proof.json");
    let (ok, _, err) = run(&[
        "proof",
        "--data-dir",
        &d,
        id,
        "--out",
        proof.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (ok, out, _) = run(&["verify", proof.to_str().unwrap()]);
    assert!(ok && out.starts_with("ok: record"), "{out}");
    let bundle: Value = serde_json::from_str(&std::fs::read_to_string(&proof).unwrap()).unwrap();
    let (ok, _, _) = run(&[
        "verify",
        proof.to_str().unwrap(),
        "--key",
        bundle["public_key"].as_str().unwrap(),
    ]);
    assert!(ok);
    let mut bad = bundle.clone();
    bad["leaf_index"] = (bundle["leaf_index"].as_u64().unwrap() + 1).into();
    std::fs::write(&proof, bad.to_string()).unwrap();
    let (ok, _, err) = run(&["verify", proof.to_str().unwrap()]);
    assert!(!ok && err.contains("FAILED"), "{err}");

    // Quarantine lists the refusals with reasons and no content.
    let (ok, out, _) = run(&["quarantine", "list", "--json", "--data-dir", &d]);
    assert!(ok);
    assert_eq!(out.lines().count(), 8, "{out}");
    assert!(out.contains("batch rejected"));
}

#[test]
fn patient_data_never_reaches_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(&dir.path().join("data"), &[]);
    let marker = format!("ZQX{}MARKER", std::process::id());
    let msg = format!("MSH|^~\\&|LAB|H|GW|H|20240101||ORU^R01|C{marker}|P|2.5\rPID|1||{marker}^^^H^MR||{marker}^Jane\rOBX|1|ST|X||{marker}\r");
    assert_eq!(msa(&mllp_exchange(g.mllp, msg.as_bytes())).0, "AA");
    // And in a rejected one (bad PID line) and a non-HL7 frame: both refused, so the
    // refusal's path (log lines, quarantine) is the one exercised.
    for refused in [
        format!("MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\r{marker}|x\r"),
        marker.clone(),
    ] {
        let ack = mllp_exchange(g.mllp, refused.as_bytes());
        assert_eq!(msa(&ack).0, "AR", "{}", String::from_utf8_lossy(&ack));
    }
    // An unsupported MSH-18 value was echoed in the AR, in `quarantine list` and in plaintext in
    // vault.redb's quarantine metadata.
    let ar = mllp_exchange(
        g.mllp,
        format!("MSH|^~\\&|A|B|C|D|1||ADT^A01|2|P|2.5||||||{marker}\rPID|1||7^^^H^MR\r").as_bytes(),
    );
    assert_eq!(msa(&ar).0, "AR");
    assert!(String::from_utf8_lossy(&ar).contains("MSH-18"));
    assert!(
        !String::from_utf8_lossy(&ar).contains(&marker),
        "echoed in the AR"
    );
    let (_, metrics) = g.http_get("/metrics");
    let log = g.log.clone();
    assert!(g.stop().success());
    let data = dir.path().join("data");
    let (ok, listed, _) = run(&[
        "quarantine",
        "list",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(ok);
    assert!(listed.contains("unsupported_charset"), "{listed}");
    assert!(!listed.contains(&marker), "echoed in quarantine list");
    for file in ["vault.redb", "ledger.redb", "segments/00000000.seg"] {
        let bytes = std::fs::read(data.join(file)).unwrap();
        assert!(
            memchr::memmem::find(&bytes, marker.as_bytes()).is_none(),
            "plaintext patient data in {file}"
        );
    }
    let logs = std::fs::read_to_string(log).unwrap();
    assert!(
        logs.contains("medanchor started"),
        "logging works at debug level"
    );
    assert!(!logs.contains(&marker), "patient data leaked into the logs");
    assert!(
        !metrics.contains(&marker),
        "patient data leaked into metrics"
    );
}

#[test]
fn a_crash_leaves_stored_records_that_the_next_start_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let slow = [
        ("MEDANCHOR__LEDGER__BATCH_MS", "600000"),
        ("MEDANCHOR__LEDGER__BATCH_LEAVES", "100000"),
    ];
    let g = Gateway::start(&data, &slow);
    let files: Vec<String> = microsoft_files().into_iter().take(5).collect();
    let acks = send_json(&g, &files);
    assert!(acks.iter().all(|a| a["code"] == "AA" || a["code"] == "CA"));
    g.kill();
    let d = data.display().to_string();
    let verify = std::process::Command::new(BIN)
        .args(["verify", "--all", "--json", "--data-dir", &d])
        .env("MEDANCHOR_LOG", "info")
        .output()
        .unwrap();
    let (ok, out) = (
        verify.status.success(),
        String::from_utf8_lossy(&verify.stdout),
    );
    assert!(
        out.contains("past the index's durable tail"),
        "the index rows the crash took are read from the segments (and left for the next start to index): {out}"
    );
    assert!(
        !ok,
        "acknowledged but unanchored records must be reported: {out}"
    );
    assert!(out.contains("not in the log"));
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    // The index was not synced since start (it is every few seconds): the five records were
    // found again in the segments, where they were durable before they were acknowledged.
    assert_eq!(report["records"], 5, "{report}");
    let g = Gateway::start(&data, &[]);
    assert!(g.stop().success());
    assert_everything_verifies(&data, 5);
}

/// The anchored watermark was made durable only by the 5-s index sync, so a crash after a short
/// run made the next start offer every record to the log again. It is durable with the
/// anchoring now: after the log holds the records, a crash leaves nothing to re-offer.
#[test]
fn the_anchored_watermark_is_durable_with_the_anchoring() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let g = Gateway::start(&data, &[("MEDANCHOR__LEDGER__BATCH_MS", "20")]);
    let files: Vec<String> = microsoft_files().into_iter().take(5).collect();
    let acks = send_json(&g, &files);
    assert!(acks.iter().all(|a| a["code"] == "AA" || a["code"] == "CA"));
    // The log size is published after the watermark moved (same anchoring step). Each message
    // mapped (counted before its ACK) has a derived record with a leaf of its own.
    let derived = g.metric("medanchor_normalize_messages_total{result=\"mapped\"}");
    g.wait_metric(
        "medanchor_ledger_tree_size",
        5.0 + derived,
        Duration::from_secs(30),
    );
    g.kill();
    let g = Gateway::start(&data, &[]);
    let log = g.log.clone();
    assert!(g.stop().success());
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        !text.contains("left unanchored by the last run"),
        "records were offered to the log again:\n{text}"
    );
    assert_everything_verifies(&data, 5);
}

#[test]
fn oversize_frames_and_noise_do_not_affect_other_connections() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(
        &dir.path().join("data"),
        &[("MEDANCHOR__MLLP__MAX_FRAME_BYTES", "4096")],
    );
    let mut big = TcpStream::connect(g.mllp).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A well-behaved connection opened alongside.
    let good = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|OK1|P|2.5\rPID|1||7^^^H^MR\r";
    big.write_all(b"junk before the frame\x0b").unwrap();
    big.write_all(&vec![b'x'; 10_000]).unwrap();
    let (code, _, text) = msa(&read_frame(&mut big));
    assert_eq!(code, "AR");
    assert!(text.contains("exceeds the limit of 4096"), "{text}");
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut big, &mut rest);
    let (code, _, _) = msa(&mllp_exchange(g.mllp, good));
    assert_eq!(code, "AA");
    assert_eq!(g.metric("medanchor_mllp_oversize_frames_total"), 1.0);
    assert_eq!(g.metric("medanchor_mllp_skipped_bytes_total"), 21.0);
}

#[test]
fn configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .arg("serve")
        .env("MEDANCHOR__MLLP__LISTNE", "127.0.0.1:0")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listne"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(BIN)
        .arg("serve")
        .env("MEDANCHOR__MLLP__LISTEN", "not-an-address")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, out, _) = run(&["--help"]);
    assert!(ok && out.contains("serve") && out.contains("verify"));
}

#[test]
fn python_mllp_send_is_a_real_peer() {
    let tool = std::env::var("MLLP_SEND").unwrap_or_else(|_| {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/mllp_send");
        assert!(
            p.exists(),
            "mllp_send not found: run the README's test command (scripts/test), which installs it"
        );
        p.display().to_string()
    });
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(&dir.path().join("data"), &[]);
    // Files without a BOM (mllp_send --loose splits on `MSH|^~\&|` and would send a BOM alone).
    let files: Vec<String> = microsoft_files()
        .into_iter()
        .filter(|f| !std::fs::read(f).unwrap().starts_with(b"\xEF\xBB\xBF"))
        .take(20)
        .collect();
    let mut n = 0;
    for f in &files {
        let out = std::process::Command::new(&tool)
            .args([
                "--loose",
                "--file",
                f,
                "-p",
                &g.mllp.port().to_string(),
                "127.0.0.1",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (code, _, _) = msa(&out.stdout);
        assert!(
            code == "AA" || code == "CA",
            "{f}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        n += 1;
    }
    assert_eq!(n, 20);
}

#[test]
fn graceful_stop_closes_the_open_batch_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Batches would not close on their own for ten minutes.
    let g = Gateway::start(
        &data,
        &[
            ("MEDANCHOR__LEDGER__BATCH_MS", "600000"),
            ("MEDANCHOR__LEDGER__BATCH_LEAVES", "100000"),
        ],
    );
    let files: Vec<String> = microsoft_files().into_iter().skip(10).take(7).collect();
    let acks = send_json(&g, &files);
    assert_eq!(acks.len(), 7);
    assert_eq!(
        g.http_get("/v1/checkpoint").0,
        404,
        "nothing anchored before the stop"
    );
    assert!(g.stop().success());
    let report = verify_all(&data);
    let derived = report["derived"].as_u64().unwrap();
    assert_eq!(
        (
            report["records"].as_u64(),
            report["leaves"].as_u64(),
            report["checkpoints"].as_u64()
        ),
        (Some(7), Some(7 + derived), Some(1))
    );
}

#[test]
fn idle_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(
        &dir.path().join("data"),
        &[("MEDANCHOR__MLLP__IDLE_TIMEOUT_SECS", "1")],
    );
    let mut s = TcpStream::connect(g.mllp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut s, &mut buf).unwrap();
    assert_eq!(n, 0, "the gateway closed the idle connection");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        g.metric("medanchor_mllp_connection_errors_total{kind=\"idle_timeout\"}"),
        1.0
    );
}

#[test]
fn a_torn_segment_tail_is_cut_off_and_lost_acknowledged_bytes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let files: Vec<String> = microsoft_files().into_iter().take(5).collect();
    let g = Gateway::start(&data, &[]);
    let acks = send_json(&g, &files[..3]);
    assert!(acks.iter().all(|a| a["code"] == "AA" || a["code"] == "CA"));
    assert!(g.stop().success());

    // What a crash between the segment write and the index commit leaves: bytes past the
    // committed end that no sender was acknowledged for.
    let segment = data.join("segments/00000000.seg");
    let committed = std::fs::metadata(&segment).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    f.write_all(&[0xA5; 3000]).unwrap();
    drop(f);
    let g = Gateway::start(&data, &[]);
    let acks = send_json(&g, &files[3..]);
    assert!(acks.iter().all(|a| a["code"] == "AA" || a["code"] == "CA"));
    assert!(g.stop().success());
    assert_everything_verifies(&data, 5);
    assert!(std::fs::read(&segment).unwrap()[committed as usize..]
        .windows(16)
        .all(|w| w != [0xA5; 16]));

    // Acknowledged bytes missing from the file: the gateway must refuse to start, saying so.
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let err = refused_start(None, &data);
    assert!(err.contains("acknowledged records are missing"), "{err}");
}

#[test]
fn pipelined_messages_are_answered_in_order_one_ack_each() {
    // The listener writes every ACK that is already due in one write: many ACKs then arrive in
    // one read, and they must still be one per message, in the order sent.
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start(&dir.path().join("data"), &[]);
    let messages = hl7_messages(300, "PIPE");
    let mut s = TcpStream::connect(g.mllp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut expected = Vec::new();
    let mut all = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        all.push(0x0b);
        if i % 50 == 49 {
            all.extend_from_slice(b"not an HL7 message");
            expected.push(("AR", String::new()));
        } else {
            all.extend_from_slice(m);
            expected.push(("AA", format!("PIPE-{i}")));
        }
        all.extend_from_slice(&[0x1c, 0x0d]);
    }
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&all).unwrap());
    for (i, (code, control_id)) in expected.iter().enumerate() {
        let (got_code, got_id, text) = msa(&read_frame(&mut s));
        // Messages asking for enhanced acknowledgement get CA (commit accept) instead of AA.
        let got_code = if got_code == "CA" { "AA" } else { &got_code };
        assert_eq!(
            (got_code, got_id.as_str()),
            (*code, control_id.as_str()),
            "ACK {i}: {text}"
        );
    }
    sender.join().unwrap();
    drop(s);
    assert!(g.stop().success());
    assert_eq!(control_ids(&dir.path().join("data")).len(), 294);
}
