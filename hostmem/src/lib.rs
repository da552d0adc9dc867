//! How the process's C allocator treats the memory libtorch frees.
//!
//! libtorch allocates CPU tensors with `malloc`. glibc serves blocks above a threshold (128 KiB,
//! raised as blocks are freed) with fresh `mmap`s and returns freed memory at the top of its heap
//! to the kernel, so every training step asks the kernel again for the activations it freed a
//! step before, and pays a page fault for each 4 KiB page it touches first, the kernel zeroing
//! it. A pretraining step of the default model took ~70k page faults this way on a 2-core CPU,
//! ~8% of the process's CPU time. [`keep_freed_memory`] makes glibc serve every block up to
//! 1 GiB from its heap and keep freed memory there: ten times fewer page faults, the process's
//! resident memory staying at its high-water mark (a training process reaches it every step
//! anyway; +15% for the default pretraining, 1.14 against 0.99 GB).
//!
//! This is the workspace's second and last `unsafe` code (beside `pyembed`): one C call.

/// The allocator settings of [`keep_freed_memory`], in `GLIBC_TUNABLES` syntax, for child
/// processes that should run under the same allocator policy (e.g. a PyTorch reference in a
/// benchmark).
pub const GLIBC_TUNABLES: &str = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483647";

/// What [`keep_freed_memory`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// glibc now keeps freed memory.
    Kept,
    /// The user chose the allocator's settings (`GLIBC_TUNABLES` or a `MALLOC_*` variable is
    /// set): left as they are.
    UserSettings,
    /// Not glibc (another C library or system), or glibc refused: its defaults stand.
    Unsupported,
}

/// Makes glibc's `malloc` serve blocks up to 1 GiB from its heap (`M_MMAP_THRESHOLD`) and never
/// hand freed memory back to the kernel (`M_TRIM_THRESHOLD`), unless the environment already
/// sets the allocator up (then the user's choice stands). Call it early, before large
/// allocations; it acts once per process, and later calls return the first call's outcome.
pub fn keep_freed_memory() -> Outcome {
    static DONE: std::sync::OnceLock<Outcome> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        let user = std::env::vars_os().any(|(k, v)| {
            let (k, v) = (k.to_string_lossy(), v.to_string_lossy());
            (k == "GLIBC_TUNABLES" && v.contains("malloc")) || k.starts_with("MALLOC_")
        });
        if user {
            Outcome::UserSettings
        } else {
            set()
        }
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set() -> Outcome {
    // SAFETY: mallopt only changes the allocator's parameters, takes no pointers, and is
    // thread-safe (it takes the arena locks); glibc 2.26+ accepts these values.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
    };
    if ok {
        Outcome::Kept
    } else {
        Outcome::Unsupported
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set() -> Outcome {
    Outcome::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After the call, freeing and reallocating a large block costs no new page faults: the
    /// memory stays with the process (with glibc's defaults each round trip maps fresh pages).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_blocks_are_reused_without_page_faults() {
        fn minor_faults() -> u64 {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
            // Field 10 (minflt), counted after the command name's closing parenthesis.
            let rest = &stat[stat.rfind(')').expect("stat has (comm)") + 2..];
            rest.split(' ').nth(7).expect("minflt").parse().expect("a number")
        }
        fn round_trips() -> u64 {
            let before = minor_faults();
            for _ in 0..10 {
                // 48 MiB (above the 32 MiB that glibc's own threshold can rise to), touched
                // page by page, then freed.
                let v = std::hint::black_box(vec![1u8; 48 << 20]);
                drop(v);
            }
            minor_faults() - before
        }
        if std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_") || k == "GLIBC_TUNABLES") {
            return; // the environment sets the allocator up; nothing to compare
        }
        let default = round_trips();
        assert_eq!(keep_freed_memory(), Outcome::Kept);
        let _warm = round_trips();
        let kept = round_trips();
        // 10 round trips of 12288 pages: with the defaults each maps and faults them again.
        assert!(default >= 10 * 12288, "glibc's defaults faulted only {default} pages");
        assert!(
            kept < 1024,
            "{kept} page faults after keep_freed_memory (default: {default})"
        );
    }
}
