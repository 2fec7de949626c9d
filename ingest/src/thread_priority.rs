//! Background threads of `auditlake serve` (the archiver, the detectors) run at a lower CPU
//! priority than the request path.
//!
//! Why: an apiserver waits for our answer, and on a small node every core is shared. The
//! request path (TLS, the write-ahead log append and its fsync) must answer within a
//! deadline, while the archiver has the log's whole size as slack. When they compete, the
//! kernel now gives the request path the CPU first; the archiver catches up in the gaps and
//! backpressure (429) still bounds the log if it cannot.

/// How many nice steps background threads sit below the process: under contention they get
/// about a tenth of the CPU of a request-path thread; alone they run at full speed.
pub(crate) const BACKGROUND_NICE_STEPS: i32 = 10;

/// Lowers the calling thread's priority by [`BACKGROUND_NICE_STEPS`] (never past 19, the
/// lowest) on Linux; elsewhere does nothing. Failing to is logged and harmless.
pub(crate) fn lower_current_thread() {
    #[cfg(target_os = "linux")]
    {
        // On Linux the nice value belongs to the thread named by its id, not to the process.
        let tid = rustix::thread::gettid();
        let lowered = rustix::process::getpriority_process(Some(tid)).and_then(|now| {
            rustix::process::setpriority_process(Some(tid), (now + BACKGROUND_NICE_STEPS).min(19))
        });
        if let Err(e) = lowered {
            tracing::debug!(error = %e, "could not lower the thread's priority");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_the_calling_thread_is_lowered() {
        let before = rustix::process::getpriority_process(None).unwrap();
        let lowered = std::thread::spawn(|| {
            lower_current_thread();
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + BACKGROUND_NICE_STEPS).min(19));
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), before);
    }
}
