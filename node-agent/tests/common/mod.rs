//! What the agent's kubelet-facing tests share: a directory of their own for the unix sockets of one
//! test, removed when dropped. File IO.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(test: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("kilowatt-{test}-{}", std::process::id()));
        // A leftover from an earlier run with the same pid would make bind fail.
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

/// The directory's path: `dir.join(name)` is a file in it.
impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in /tmp is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
