//! The `engine` binary: everything lives in the library; see `engine::cli`.

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    engine::cli::run()
}

/// glibc gives a thread that meets contention an allocator arena of its own
/// (up to eight per core) and keeps what is freed there for reuse. Export,
/// scan and ingest threads allocate and free buffers of megabytes all day,
/// so every arena grows to its own high-water mark: in the 30-minute soak
/// (`scripts/soak`) RSS went from 112 MiB in the first minute to 200-225 MiB.
/// With two arenas the same load grew from 90 to 117 MiB in 4 minutes (the
/// page cache of redb filling included) and exports were not slower. An
/// explicit `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes the allocator's tuning; called first
        // thing in main, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
