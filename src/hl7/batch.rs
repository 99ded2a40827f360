//! HL7v2 batch files: `[FHS] { [BHS] { MSH … } [BTS] } [FTS]`.
//!
//! Header and trailer segments may be missing (senders differ), but structure that cannot be read
//! one way only is an error: a header nested in an open batch, a batch without messages, segments
//! outside any message, or a BTS/FTS count that disagrees with what the batch holds.

/// Why a batch was rejected. Reasons name segment positions, never content.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("input holds no MSH segment")]
    NoMessages,
    #[error("segment {0}: {1} segment appears inside an open batch")]
    Nested(usize, &'static str),
    #[error("segment {0}: a batch holds no message")]
    EmptyBatch(usize),
    #[error("segment {0}: segment outside any message")]
    Stray(usize),
    #[error("segment {0}: {1} count {2} does not match the {3} found")]
    CountMismatch(usize, &'static str, u64, u64),
    #[error("segment {0}: segment after the file trailer")]
    AfterTrailer(usize),
}

/// True when the input starts like a batch or file rather than a single message.
pub fn is_batch(bytes: &[u8]) -> bool {
    let b = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    b.starts_with(b"FHS") || b.starts_with(b"BHS")
}

fn count_field(line: &[u8]) -> Option<u64> {
    // BTS-1 / FTS-1: the first field after the segment id.
    let sep = *line.get(3)?;
    let f = line[4..].split(|&b| b == sep).next()?;
    std::str::from_utf8(f).ok()?.trim().parse().ok()
}

/// Splits a batch (or a single message, or messages back to back) into message slices, each from
/// its MSH to the end of its last segment's terminator.
pub fn split_batch<'a>(bytes: &'a [u8]) -> Result<Vec<&'a [u8]>, BatchError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut messages: Vec<&'a [u8]> = Vec::new();
    let mut current: Option<usize> = None; // start offset of the open message
    let mut in_file = false;
    let mut in_batch = false;
    let mut file_done = false;
    let mut batch_msgs = 0u64;
    let mut batches = 0u64;
    let mut index = 0usize;
    let mut start = 0usize;
    let close = |current: &mut Option<usize>, end: usize, messages: &mut Vec<&'a [u8]>| {
        if let Some(s) = current.take() {
            messages.push(&bytes[s..end]);
        }
    };
    let bounds = memchr::memchr2_iter(b'\r', b'\n', bytes).chain(std::iter::once(bytes.len()));
    for end in bounds {
        if end <= start || super::tokenizer::is_blank_line(&bytes[start..end]) {
            start = end + 1;
            continue;
        }
        index += 1;
        let line = &bytes[start..end];
        let id = &line[..line.len().min(3)];
        if file_done {
            return Err(BatchError::AfterTrailer(index));
        }
        match id {
            b"FHS" => {
                if in_file || in_batch || !messages.is_empty() || current.is_some() {
                    return Err(BatchError::Nested(index, "FHS"));
                }
                in_file = true;
            }
            b"BHS" => {
                close(&mut current, start, &mut messages);
                if in_batch {
                    return Err(BatchError::Nested(index, "BHS"));
                }
                in_batch = true;
                batch_msgs = 0;
            }
            b"BTS" => {
                close(&mut current, start, &mut messages);
                if batch_msgs == 0 {
                    return Err(BatchError::EmptyBatch(index));
                }
                if let Some(n) = count_field(line) {
                    if n != batch_msgs {
                        return Err(BatchError::CountMismatch(index, "BTS", n, batch_msgs));
                    }
                }
                in_batch = false;
                batches += 1;
                batch_msgs = 0;
            }
            b"FTS" => {
                close(&mut current, start, &mut messages);
                if in_batch {
                    if batch_msgs == 0 {
                        return Err(BatchError::EmptyBatch(index));
                    }
                    in_batch = false;
                    batches += 1;
                }
                if messages.is_empty() {
                    return Err(BatchError::NoMessages);
                }
                if let Some(n) = count_field(line) {
                    if n != batches.max(1) {
                        return Err(BatchError::CountMismatch(index, "FTS", n, batches.max(1)));
                    }
                }
                file_done = true;
            }
            b"MSH" => {
                close(&mut current, start, &mut messages);
                current = Some(start);
                batch_msgs += 1;
            }
            _ => {
                if current.is_none() {
                    return Err(BatchError::Stray(index));
                }
            }
        }
        start = end + 1;
    }
    close(&mut current, bytes.len(), &mut messages);
    if in_batch && batch_msgs == 0 {
        return Err(BatchError::EmptyBatch(index));
    }
    if messages.is_empty() {
        return Err(BatchError::NoMessages);
    }
    Ok(messages)
}
