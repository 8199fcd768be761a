//! A directory laid out as the kubelet lays out a Secret volume, updated the way it updates one.
//!
//! The files live in a timestamped directory, `..data` points at it and each file is a symlink
//! through `..data`; an update writes a new timestamped directory, swaps `..data` in one rename
//! and removes the old directory, so a reader sees the old files or the new ones, never a mix.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// A kubelet-style Secret volume.
pub struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    /// Creates the volume at `dir` with `files` (name, content).
    pub fn create(dir: &Path, files: &[(&str, &str)]) -> SecretVolume {
        fs::create_dir_all(dir).expect("mkdir volume");
        let mut v = SecretVolume {
            dir: dir.to_path_buf(),
            generation: 0,
        };
        v.update(files);
        for (name, _) in files {
            symlink(format!("..data/{name}"), dir.join(name)).expect("symlink a volume file");
        }
        v
    }

    /// The path a pod reads `name` at.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a new generation with `files` and swaps `..data` to it.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let name = format!("..2026_01_01_00_00_00.{:09}", self.generation);
        let data = self.dir.join(&name);
        fs::create_dir(&data).expect("mkdir generation");
        for (file, text) in files {
            fs::write(data.join(file), text).expect("write a volume file");
        }
        let tmp = self.dir.join("..data_tmp");
        symlink(&name, &tmp).expect("symlink ..data_tmp");
        fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        if self.generation > 1 {
            let old = format!("..2026_01_01_00_00_00.{:09}", self.generation - 1);
            fs::remove_dir_all(self.dir.join(old)).expect("remove the old generation");
        }
    }
}
