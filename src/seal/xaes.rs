//! XAES-256-GCM key derivation (C2SP XAES-256-GCM): from a 256-bit key and the first 12 bytes of a
//! 24-byte nonce, a fresh AES-256-GCM key, using only AES. Each record gets its own GCM key, so the
//! 96-bit-nonce limits of SP 800-38D apply per record, not per patient.

use aes_gcm::aes::cipher::{BlockCipherEncrypt, KeyInit};
use aes_gcm::aes::Aes256;
use zeroize::Zeroizing;

/// The AES key schedule and the CMAC subkey K1 of one data key, computed once.
pub struct XaesKey {
    aes: Aes256,
    k1: Zeroizing<[u8; 16]>,
}

impl XaesKey {
    pub fn new(key: &[u8; 32]) -> XaesKey {
        let aes = Aes256::new(key.into());
        let mut l = [0u8; 16];
        aes.encrypt_block((&mut l).into());
        // K1 = L << 1, with the GF(2^128) reduction when the top bit falls off.
        let msb = l[0] >> 7;
        let mut k1 = Zeroizing::new([0u8; 16]);
        for i in 0..16 {
            k1[i] = (l[i] << 1) | l.get(i + 1).map_or(0, |n| n >> 7);
        }
        k1[15] ^= 0x87 * msb;
        XaesKey { aes, k1 }
    }

    /// The derived AES-256 key for this nonce (GCM then uses `nonce[12..24]`).
    pub fn derive(&self, nonce: &[u8; 24]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        for (i, half) in out.chunks_exact_mut(16).enumerate() {
            let mut m = [0u8; 16];
            m[..4].copy_from_slice(&[0x00, i as u8 + 1, b'X', 0x00]);
            m[4..].copy_from_slice(&nonce[..12]);
            for (b, k) in m.iter_mut().zip(self.k1.iter()) {
                *b ^= k;
            }
            self.aes.encrypt_block((&mut m).into());
            half.copy_from_slice(&m);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::{aead::AeadInOut, Aes256Gcm};

    fn seal(key: [u8; 32], aad: &[u8]) -> String {
        let nonce: [u8; 24] = *b"ABCDEFGHIJKLMNOPQRSTUVWX";
        let kx = XaesKey::new(&key).derive(&nonce);
        let mut data = b"XAES-256-GCM".to_vec();
        let tag = Aes256Gcm::new((&*kx).into())
            .encrypt_inout_detached(
                (&nonce[12..]).try_into().unwrap(),
                aad,
                data.as_mut_slice().into(),
            )
            .unwrap();
        data.extend_from_slice(&tag);
        hex::encode(data)
    }

    #[test]
    fn c2sp_vectors() {
        // Both branches of the doubling: top bit of L clear (key 0x01…) and set (key 0x03…).
        assert_eq!(
            seal([1; 32], b""),
            "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271"
        );
        assert_eq!(
            seal([3; 32], b"c2sp.org/XAES-256-GCM"),
            "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d"
        );
    }
}
