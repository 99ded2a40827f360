//! Proof bundles as an auditor receives them: `serde_json::from_slice::<ProofBundle>` on
//! arbitrary bytes, then `verify(None)` (the bundle's own key) and `verify(Some(key))` (a pinned
//! key: this target's seed key, see fuzz/examples/make_seeds.rs); and `NoteVerifier::parse` on
//! the input as text.
//!
//! Checks: no panics; a bundle that verifies under a pinned key verifies unpinned too, and one
//! that verifies unpinned verifies pinned to its own key; what verifies is a checkpoint of the
//! bundle's tree size whose text is the bundle's.
#![no_main]

use std::sync::OnceLock;

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use medanchor_merkle::{NoteSigner, NoteVerifier, ProofBundle};

/// The key the seed bundles are signed with (fuzz/examples/make_seeds.rs).
fn pinned() -> &'static NoteVerifier {
    static KEY: OnceLock<NoteVerifier> = OnceLock::new();
    KEY.get_or_init(|| {
        NoteSigner::new(
            "fuzz.medanchor.test/log",
            SigningKey::from_bytes(&[0x42; 32]),
        )
        .unwrap()
        .verifier()
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = NoteVerifier::parse(&String::from_utf8_lossy(data));
    let Ok(bundle) = serde_json::from_slice::<ProofBundle>(data) else {
        return;
    };
    let unpinned = bundle.verify(None);
    let pinned_result = bundle.verify(Some(pinned()));
    if let Ok(cp) = &pinned_result {
        assert_eq!(
            unpinned.as_ref(),
            Ok(cp),
            "verifies pinned but not unpinned"
        );
    }
    if let Ok(cp) = &unpinned {
        assert_eq!(cp.checkpoint.size, bundle.tree_size);
        assert_eq!(cp.text, bundle.checkpoint);
        assert!(bundle.leaf_index < bundle.tree_size);
        let own = NoteVerifier::parse(&bundle.public_key).expect("its key parsed in verify");
        assert_eq!(bundle.verify(Some(&own)).as_ref(), Ok(cp));
        if &own == pinned() {
            assert!(pinned_result.is_ok());
        }
    }
});
