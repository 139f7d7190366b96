//! Measures the pool's hot operations on a real root tree (not a test: it prints numbers).
//!
//! `cargo run --release -p burrow-storage --example pool_bench -- /path/to/rootfs.tar [runs]`
//!
//! Extracts the tarball into an image volume of a fresh loop-backed pool under /var/tmp,
//! shifts its owners, marks it read-only, then times `snapshot` (image → sandbox, writable),
//! read-only `snapshot` (checkpoint), `delete_volume` and `create_volume`, and prints medians.
//! Needs root.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burrow_storage::rootfs::{extract_tar, shift_ownership};
use burrow_storage::{PoolKind, PoolOptions, open_pool, release_pool};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tar = PathBuf::from(args.next().ok_or("usage: pool_bench ROOTFS.tar [RUNS]")?);
    let runs: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(20);
    let data_dir = tempfile::Builder::new()
        .prefix("burrow-bench-")
        .tempdir_in("/var/tmp")?;
    let result = bench(&tar, runs, data_dir.path());
    release_pool(data_dir.path())?;
    result
}

fn bench(
    tar: &std::path::Path,
    runs: usize,
    data_dir: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let opts = PoolOptions {
        kind: PoolKind::Auto,
        loop_size_bytes: 8 << 30,
        sandbox_gid: None,
    };
    let t = Instant::now();
    let pool = open_pool(data_dir, &opts)?;
    println!(
        "open_pool (mkfs + losetup + mount): {} ({})",
        ms(t.elapsed()),
        pool.kind_name()
    );

    let image = pool.image_path("debian");
    pool.create_volume(&image)?;
    let t = Instant::now();
    extract_tar(tar, &image)?;
    println!("extract_tar: {}", ms(t.elapsed()));
    let entries = walk_count(&image);
    let t = Instant::now();
    shift_ownership(&image, 100_000, 65_536)?;
    println!("shift_ownership ({entries} entries): {}", ms(t.elapsed()));
    println!("apparent size: {} MB", pool.volume_size(&image)? / 1_000_000);
    let t = Instant::now();
    pool.set_readonly(&image, true)?;
    println!("set_readonly (commits a transaction): {}", ms(t.elapsed()));

    let (mut snap, mut ro, mut del, mut create) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        let sandbox = pool.sandbox_path(&format!("s{i}"));
        let t = Instant::now();
        pool.snapshot(&image, &sandbox, false)?;
        snap.push(t.elapsed());
        // A little dirty data, as a running sandbox would have before a checkpoint.
        std::fs::write(sandbox.join("root/.bench"), vec![7u8; 1 << 20])?;
        let cp = pool.root().join(format!("checkpoints/s{i}/v1"));
        let t = Instant::now();
        pool.snapshot(&sandbox, &cp, true)?;
        ro.push(t.elapsed());
        let empty = pool.root().join(format!("sandboxes/empty{i}"));
        let t = Instant::now();
        pool.create_volume(&empty)?;
        create.push(t.elapsed());
        for v in [&sandbox, &cp, &empty] {
            let t = Instant::now();
            pool.delete_volume(v)?;
            del.push(t.elapsed());
        }
    }
    println!(
        "snapshot image -> sandbox (writable), median of {runs}: {}",
        ms(median(snap))
    );
    println!(
        "snapshot sandbox -> checkpoint (read-only, 1 MiB dirty), median of {runs}: {}",
        ms(median(ro))
    );
    println!("create_volume, median of {runs}: {}", ms(median(create)));
    println!("delete_volume, median of {}: {}", del.len(), ms(median(del)));
    Ok(())
}

fn walk_count(p: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![p.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            n += 1;
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(e.path());
            }
        }
    }
    n
}
