//! A watchdog over the shard's accepting: a client must not wait in a listener's backlog while
//! the shard has descriptors to spare and no accept armed there. Descriptor exhaustion pauses
//! accepting (the connections wait in the backlog, as they should); once descriptors come back,
//! the shard must resume at once, not at some later timer. The simulated kernel sees what the
//! shard cannot hide: the backlog, the free descriptors, the accepts in flight.

use super::net::{Net, Object};

/// Free descriptors (or idle pipes' ones) a resumed shard needs to accept one connection and
/// connect it: the spare it reserves again, the client's socket, the upstream's.
const FREE_FOR_ONE_CONNECTION: usize = 3;

/// How long a backlog may wait with descriptors to spare and no accept armed (virtual ns).
/// The shard resumes within a turn of the close that freed them; its accept-error backoff is
/// [`ERROR_GRACE_NS`] and excluded.
const STALL_LIMIT_NS: u64 = 20_000_000;

/// After an accept error the kernel injected, the shard may back off this long before it
/// accepts again (its backoff is 50 ms).
const ERROR_GRACE_NS: u64 = 60_000_000;

/// Per listener (by its index in [`Net::listeners`]): since when it has stalled, and until when
/// an accept error excuses it.
#[derive(Debug, Default)]
pub(super) struct AcceptWatch {
    stalled_since: Vec<Option<u64>>,
    excused_until: Vec<u64>,
}

impl AcceptWatch {
    /// An accept error was injected on listener `l` at `now`.
    pub(super) fn excuse(&mut self, l: usize, now: u64) {
        self.grow(l + 1);
        self.excused_until[l] = now + ERROR_GRACE_NS;
    }

    /// Looks at every listener at `now`: `armed(fd, l)` says whether an accept on listener `l`
    /// (descriptor `fd`) is in flight or its completion still on its way. An error names the
    /// listener that stalled.
    pub(super) fn check(
        &mut self,
        net: &Net,
        now: u64,
        armed: impl Fn(i32, usize) -> bool,
    ) -> Result<(), String> {
        self.grow(net.listeners.len());
        // Empty pipes are idle in the shard's pool (a direction gives its pipe back whenever it
        // has drained it): the shard closes them when it runs short, so they count as free.
        let empty_pipe_ends = net
            .fds
            .values()
            .filter(|o| matches!(o, Object::Pipe(id) if net.pipes[*id].data.is_empty()))
            .count();
        let free = net.fd_limit.saturating_sub(net.fds.len()) + empty_pipe_ends;
        for (&fd, object) in &net.fds {
            let Object::Listener(l) = *object else {
                continue;
            };
            let listener = &net.listeners[l];
            let stalled = !listener.stopped
                && !listener.backlog.is_empty()
                && free >= FREE_FOR_ONE_CONNECTION
                && now >= self.excused_until[l]
                && !armed(fd, l);
            if !stalled {
                self.stalled_since[l] = None;
                continue;
            }
            let since = *self.stalled_since[l].get_or_insert(now);
            if now - since > STALL_LIMIT_NS {
                return Err(format!(
                    "accepting stalled: listener {} had {} connections queued and {free} free \
                     descriptors ({empty_pipe_ends} of them empty pipes' ends) for {} ms with no \
                     accept armed (since {} ms)",
                    listener.addr,
                    listener.backlog.len(),
                    (now - since) / 1_000_000,
                    since / 1_000_000
                ));
            }
        }
        Ok(())
    }

    fn grow(&mut self, n: usize) {
        if self.stalled_since.len() < n {
            self.stalled_since.resize(n, None);
            self.excused_until.resize(n, 0);
        }
    }
}
