//! Proof verification as specified in RFC 9162 §2.1.3.2 and §2.1.4.2.

use crate::hasher::{Hash, TreeHasher};

/// Why a proof did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("proof path is longer than the tree is deep")]
    PathTooLong,
    #[error("proof path is too short for this tree")]
    PathTooShort,
    #[error("first tree size {first} is larger than second tree size {second}")]
    SizesOutOfOrder { first: u64, second: u64 },
    #[error("proof for equal tree sizes must be empty and the roots equal")]
    EqualSizes,
    #[error("recomputed root does not match the expected root")]
    RootMismatch,
}

/// Verifies that `leaf_hash` is the leaf at `index` in the tree of `size` leaves whose root is `root`.
pub fn verify_inclusion<H: TreeHasher>(
    hasher: &H,
    index: u64,
    size: u64,
    leaf_hash: &Hash,
    path: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut f_n = index;
    let mut s_n = size - 1;
    let mut r = *leaf_hash;
    for p in path {
        if s_n == 0 {
            return Err(ProofError::PathTooLong);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = hasher.node(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = hasher.node(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::PathTooShort);
    }
    if &r != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verifies that the tree of `second` leaves with root `second_root` extends the tree of `first`
/// leaves with root `first_root`.
pub fn verify_consistency<H: TreeHasher>(
    hasher: &H,
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    path: &[Hash],
) -> Result<(), ProofError> {
    if first > second {
        return Err(ProofError::SizesOutOfOrder { first, second });
    }
    if first == second {
        return if path.is_empty() && first_root == second_root {
            Ok(())
        } else {
            Err(ProofError::EqualSizes)
        };
    }
    if first == 0 {
        // Every tree extends the empty tree; a proof must not carry anything.
        return if path.is_empty() {
            Ok(())
        } else {
            Err(ProofError::PathTooLong)
        };
    }
    if path.is_empty() {
        return Err(ProofError::PathTooShort);
    }
    let (seed, rest) = if first.is_power_of_two() {
        (first_root, path)
    } else {
        (&path[0], &path[1..])
    };
    let mut f_n = first - 1;
    let mut s_n = second - 1;
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let mut fr = *seed;
    let mut sr = *seed;
    for c in rest {
        if s_n == 0 {
            return Err(ProofError::PathTooLong);
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = hasher.node(c, &fr);
            sr = hasher.node(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = hasher.node(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::PathTooShort);
    }
    if &fr != first_root || &sr != second_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}
