//! SHA-256 of checkpoint files, streamed so a large checkpoint never sits in memory.

use std::{
    fs::File,
    io::{self, Read, Write},
    path::Path,
};

use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The lowercase hex SHA-256 and size of the file at `path`.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let file = File::open(path)?;
    hash_reader(file, io::sink())
}

/// Hashes `reader` while copying it to `out`; returns the hex digest and the byte count.
pub fn hash_reader(mut reader: impl Read, mut out: impl Write) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // SHA-256("abc") from FIPS 180-2.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let (d, n) = hash_reader(&b"abc"[..], io::sink()).expect("hash");
        assert_eq!((d.as_str(), n), (sha256_hex(b"abc").as_str(), 3));
    }
}
