//! What the file-store benches share: the raw floor of the contract, and the statistics.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The number in environment variable `name` (a bench's knob), else `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

/// The raw floor of the contract: per-id lock file, unique staging file, rename.
pub fn raw_put(dir: &Path, id: &str, bytes: &[u8], fsync: bool) {
    let lock_path = dir.join(".locks").join(format!("{id}.lock"));
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .unwrap();
    lock.lock().unwrap();
    let staged = dir.join(".tmp").join(format!(
        "{id}.{}.{}.tmp",
        std::process::id(),
        STAGING_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&staged)
        .unwrap();
    file.write_all(bytes).unwrap();
    if fsync {
        file.sync_all().unwrap();
    }
    drop(file);
    fs::rename(&staged, dir.join(format!("{id}.json"))).unwrap();
    if fsync {
        File::open(dir).unwrap().sync_all().unwrap();
    }
    lock.unlock().unwrap();
}

pub fn fresh_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join(".tmp")).unwrap();
    fs::create_dir_all(dir.join(".locks")).unwrap();
    dir
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

pub fn min_max(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    (min, max)
}

pub fn peak_rss_kib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs each variant once per round, starting each round one variant later than the last,
/// so that no variant always runs first (on a warm or a cold page cache, after the same
/// neighbour). Returns the per-round values of each variant, in the variants' order.
pub fn rotated_rounds(rounds: usize, variants: &mut [&mut dyn FnMut() -> f64]) -> Vec<Vec<f64>> {
    let n = variants.len();
    let mut values = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            values[i].push(variants[i]());
        }
    }
    values
}

/// `ours[i] / base[i]` per round: median and min–max, as text.
pub fn ratio_text(ours: &[f64], base: &[f64]) -> (f64, String) {
    let ratios: Vec<f64> = ours.iter().zip(base).map(|(o, b)| o / b).collect();
    let (min, max) = min_max(&ratios);
    let m = median(&ratios);
    (m, format!("{m:.2}x ({min:.2}–{max:.2})"))
}
