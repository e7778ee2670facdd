//! The model's state file: loaded when the prefetcher is built, written periodically by the
//! worker (`save_interval`) and once more after the drain, so a crash loses at most one
//! interval of learning.
//!
//! Written privately and atomically: a temporary file with a random name, created exclusively
//! (never through a planted file or symlink) with mode 0600 in the same directory, synced, then
//! renamed over the state file, and the directory synced so the rename survives a power loss.
//!
//! Query strings are kept: the model predicts concrete URLs, and a prediction without its query
//! could not be fetched after a restart. The file is therefore as private as the access logs.

use std::io::Write;
use std::path::Path;

use super::markov::Markov;

/// Load `path` into `model`; a missing file is an empty model, an unreadable one is logged.
pub(super) fn load(path: &Path, model: &mut Markov) {
    match std::fs::read_to_string(path) {
        Ok(json) => match model.load_json(&json) {
            Ok(()) => {
                tracing::info!(path = %path.display(), states = model.stats().states, "prefetch model loaded")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "prefetch model not loaded; starting empty")
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "prefetch model not readable; starting empty")
        }
    }
}

/// Replace `path` with `bytes`: mode 0600, exclusive random temporary name, fsync, rename,
/// fsync of the directory.
pub(super) fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".augur-prefetch-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o600));
    }
    let mut tmp = builder.tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // The rename is durable only once the directory entry is (POSIX).
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
