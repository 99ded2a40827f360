//! The tree code run with SHA-256 against the RFC 6962/9162 reference vectors (published by
//! certificate-transparency and transparency-dev/merkle, used here as data), and against a direct
//! transcription of the RFC's recursive definitions for every shape up to 48 leaves.

use medanchor_merkle::{
    verify_consistency, verify_inclusion, Hash, MemoryTree, ProofError, Sha256Hasher, Sha3Hasher,
    TreeHasher,
};

const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];
const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn h(s: &str) -> Hash {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn reference_tree() -> MemoryTree<Sha256Hasher> {
    let hasher = Sha256Hasher::default();
    let mut tree = MemoryTree::new(hasher);
    for l in LEAVES {
        tree.push(hasher.leaf(&hex::decode(l).unwrap()));
    }
    tree
}

#[test]
fn roots_match_rfc6962_for_every_size() {
    let tree = reference_tree();
    for (size, want) in ROOTS.iter().enumerate() {
        assert_eq!(
            hex::encode(tree.root(size as u64).unwrap()),
            *want,
            "size {size}"
        );
    }
}

#[test]
fn inclusion_proofs_match_reference_vectors() {
    let tree = reference_tree();
    let cases: [(u64, u64, &[&str]); 2] = [
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    for (index, size, want) in cases {
        let path = tree.inclusion_proof(index, size).unwrap();
        let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
        assert_eq!(path, want, "index {index} size {size}");
        let hasher = Sha256Hasher::default();
        verify_inclusion(
            &hasher,
            index,
            size,
            tree.leaf(index).unwrap(),
            &path,
            &h(ROOTS[size as usize]),
        )
        .unwrap();
    }
}

#[test]
fn consistency_proof_matches_reference_vector() {
    let tree = reference_tree();
    let path = tree.consistency_proof(2, 8).unwrap();
    assert_eq!(
        path,
        vec![
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ]
    );
    verify_consistency(
        &Sha256Hasher::default(),
        2,
        8,
        &h(ROOTS[2]),
        &h(ROOTS[8]),
        &path,
    )
    .unwrap();
}

// Direct transcription of RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1 over leaf hashes.
fn k_of(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}
fn mth<H: TreeHasher>(hr: &H, d: &[Hash]) -> Hash {
    match d.len() {
        0 => hr.empty(),
        1 => d[0],
        n => {
            let k = k_of(n);
            hr.node(&mth(hr, &d[..k]), &mth(hr, &d[k..]))
        }
    }
}
fn path_ref<H: TreeHasher>(hr: &H, m: usize, d: &[Hash]) -> Vec<Hash> {
    if d.len() <= 1 {
        return vec![];
    }
    let k = k_of(d.len());
    if m < k {
        let mut p = path_ref(hr, m, &d[..k]);
        p.push(mth(hr, &d[k..]));
        p
    } else {
        let mut p = path_ref(hr, m - k, &d[k..]);
        p.push(mth(hr, &d[..k]));
        p
    }
}
fn subproof_ref<H: TreeHasher>(hr: &H, m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    let n = d.len();
    if m == n {
        return if b { vec![] } else { vec![mth(hr, d)] };
    }
    let k = k_of(n);
    if m <= k {
        let mut p = subproof_ref(hr, m, &d[..k], b);
        p.push(mth(hr, &d[k..]));
        p
    } else {
        let mut p = subproof_ref(hr, m - k, &d[k..], false);
        p.push(mth(hr, &d[..k]));
        p
    }
}

#[test]
fn every_shape_up_to_48_agrees_with_the_rfc_definition_and_verifies() {
    let hr = Sha3Hasher;
    let leaves: Vec<Hash> = (0..48u32).map(|i| hr.leaf(&i.to_be_bytes())).collect();
    let mut tree = MemoryTree::new(hr);
    for l in &leaves {
        tree.push(*l);
    }
    for n in 1..=leaves.len() {
        let d = &leaves[..n];
        let root = mth(&hr, d);
        assert_eq!(tree.root(n as u64).unwrap(), root, "root {n}");
        for m in 0..n {
            let p = tree.inclusion_proof(m as u64, n as u64).unwrap();
            assert_eq!(p, path_ref(&hr, m, d), "path {m}/{n}");
            verify_inclusion(&hr, m as u64, n as u64, &d[m], &p, &root).unwrap();
            // The leaf at another index must not verify with this path.
            let other = (m + 1) % n;
            if other != m {
                assert!(verify_inclusion(&hr, m as u64, n as u64, &d[other], &p, &root).is_err());
            }
        }
        for m in 1..=n {
            let p = tree.consistency_proof(m as u64, n as u64).unwrap();
            if m < n {
                assert_eq!(p, subproof_ref(&hr, m, d, true), "consistency {m}->{n}");
            }
            verify_consistency(&hr, m as u64, n as u64, &mth(&hr, &d[..m]), &root, &p).unwrap();
            if m < n && !p.is_empty() {
                let mut bad = p.clone();
                bad.pop();
                assert!(
                    verify_consistency(&hr, m as u64, n as u64, &mth(&hr, &d[..m]), &root, &bad)
                        .is_err(),
                    "truncated consistency {m}->{n} must fail"
                );
            }
        }
    }
}

#[test]
fn a_right_edge_keeps_answering_for_its_size_while_the_tree_grows() {
    // The ledger computes the edge when it signs a checkpoint and serves proofs from it while
    // later leaves arrive.
    let hr = Sha3Hasher;
    let leaves: Vec<Hash> = (0..300u32).map(|i| hr.leaf(&i.to_be_bytes())).collect();
    let mut tree = MemoryTree::new(hr);
    let mut edges = Vec::new();
    for (i, l) in leaves.iter().enumerate() {
        tree.push(*l);
        let size = i as u64 + 1;
        if size.count_ones() >= 2 || size.is_multiple_of(37) {
            edges.push(tree.right_edge(size).unwrap());
        }
    }
    assert!(edges.len() > 200);
    for edge in &edges {
        let n = edge.size() as usize;
        let root = mth(&hr, &leaves[..n]);
        assert_eq!(tree.edge_root(edge).unwrap(), root, "root {n}");
        for m in [0, n / 3, n / 2, n - 1] {
            let p = tree.inclusion_proof_at(edge, m as u64).unwrap();
            assert_eq!(p, path_ref(&hr, m, &leaves[..n]), "path {m}/{n}");
        }
        assert!(tree.inclusion_proof_at(edge, n as u64).is_err());
    }
    // An edge for a size the tree no longer holds is refused rather than answered from stale data.
    let last = edges.last().unwrap().clone();
    tree.truncate(last.size() - 1);
    assert!(tree.inclusion_proof_at(&last, 0).is_err());
}

#[test]
fn out_of_range_requests_are_errors_not_panics() {
    let tree = reference_tree();
    assert!(tree.root(9).is_err());
    assert!(tree.inclusion_proof(8, 8).is_err());
    assert!(tree.consistency_proof(5, 4).is_err());
    let hr = Sha256Hasher::default();
    assert_eq!(
        verify_inclusion(&hr, 3, 3, &[0; 32], &[], &[0; 32]),
        Err(ProofError::IndexOutOfRange { index: 3, size: 3 })
    );
    assert!(verify_consistency(&hr, 4, 3, &[0; 32], &[0; 32], &[]).is_err());
}
