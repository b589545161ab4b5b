//! Config files for a test: the embedded default with edits, deleted when the test ends.

use std::path::PathBuf;

/// A config file on disk; removed on drop.
pub struct ConfigFile(PathBuf);

impl ConfigFile {
    /// The embedded default with each `(from, to)` replaced once; panics if `from` is absent, so a
    /// renamed default cannot silently turn an edit into a no-op.
    pub fn default_with(tag: &str, edits: &[(&str, &str)]) -> Self {
        let mut yaml = origdst_core::config::DEFAULT_YAML.to_string();
        for (from, to) in edits {
            assert!(yaml.contains(from), "the default config has no {from:?}");
            yaml = yaml.replacen(from, to, 1);
        }
        Self::new(tag, &yaml)
    }

    /// A config file holding exactly `yaml`.
    pub fn new(tag: &str, yaml: &str) -> Self {
        let path = std::env::temp_dir().join(format!("origdst-{tag}-{}.yaml", std::process::id()));
        std::fs::write(&path, yaml).expect("write config");
        Self(path)
    }

    /// Replaces the file's contents (what an operator does before SIGHUP).
    pub fn rewrite(&self, yaml: &str) {
        std::fs::write(&self.0, yaml).expect("rewrite config");
    }

    /// Its path, as a string for the command line.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
