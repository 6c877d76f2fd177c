use std::io::Read;
use std::path::Path;

use cinder_tensor::{Error, Result};

/// The two bytes every gzip stream starts with (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Sniffing the content rather than trusting a `.gz` name also handles a
/// decompressed file that kept its `.gz` suffix, and the reverse.
pub(crate) fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

/// `path` only names the source in errors; the bytes are already in memory.
pub(crate) fn gunzip(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    // MultiGzDecoder, because `cat a.gz b.gz` is a valid gzip file too.
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| Error::bad_file(path, format!("not a valid gzip stream: {e}")))?;
    Ok(out)
}
