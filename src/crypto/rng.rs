//! The operating system's CSPRNG. Batch requests (one call per write request, not per block).

/// Fills `buf` with random bytes. Aborts the process if the OS RNG fails: continuing without
/// randomness would produce reused nonces and guessable keys.
pub fn random_bytes(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        eprintln!("kmsfs: the operating system's random number generator failed: {e}");
        std::process::abort();
    }
}

pub fn random_array<const N: usize>() -> [u8; N] {
    let mut a = [0u8; N];
    random_bytes(&mut a);
    a
}
