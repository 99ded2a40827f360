//! Any byte stream, cut into reads at any points, must frame without panicking, must never hold
//! more than the limit, and every frame must be a span of the input between 0x0B and 0x1C 0x0D.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use medanchor::hl7::mllp::MllpCodec;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let max = 64;
    let mut codec = MllpCodec::new(max);
    let mut buf = BytesMut::new();
    for chunk in input.chunks(usize::from(cut).max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= max + 1);
                    assert!(!frame.windows(2).any(|w| w == [0x1c, 0x0d]));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.len() <= max + 3, "decoder held {} bytes", buf.len());
    }
    let _ = codec.decode_eof(&mut buf);
});
