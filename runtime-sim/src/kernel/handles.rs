//! What the simulated kernel hands the shard: its control (drain, wake-ups), descriptors that
//! close themselves in the simulated table when dropped, and pipes.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use origdst_engine::kernel::PipeEnds;
use origdst_engine::listeners::ListenerChange;
use origdst_engine::report::Control;

use super::net::Net;

/// The shard's control, as the simulated supervisor drives it.
#[derive(Debug)]
pub struct SimControl {
    pub(super) wake_fd: i32,
    pub(super) pending: AtomicBool,
    pub(super) drain: AtomicBool,
    pub(super) abort: AtomicBool,
    /// Listener groups to add or remove (pods), for the shard's next wake.
    pub(super) changes: std::sync::Mutex<Vec<ListenerChange>>,
    /// Reloaded configs, for the shard's next wake.
    pub(super) reloads: std::sync::Mutex<Vec<origdst_engine::listeners::Reload>>,
}

impl SimControl {
    /// Asks the shard to drain.
    pub fn request_drain(&self) {
        self.drain.store(true, Ordering::Release);
        self.pending.store(true, Ordering::Release);
    }

    /// Adds or removes a listener group (a pod) at the shard's next wake.
    pub fn change_listeners(&self, change: ListenerChange) {
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(change);
        self.pending.store(true, Ordering::Release);
    }

    /// Hands the shard a reloaded config at its next wake.
    pub fn reload(&self, reload: origdst_engine::listeners::Reload) {
        self.reloads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(reload);
        self.pending.store(true, Ordering::Release);
    }

    /// Wakes the shard without asking anything (a reload that was coalesced away, say).
    pub fn poke(&self) {
        self.pending.store(true, Ordering::Release);
    }
}

impl Control for SimControl {
    fn wake_fd(&self) -> i32 {
        self.wake_fd
    }
    fn acknowledge(&self) {
        self.pending.store(false, Ordering::Release);
    }
    fn drain_requested(&self) -> bool {
        self.drain.load(Ordering::Acquire)
    }
    fn abort_requested(&self) -> bool {
        self.abort.load(Ordering::Acquire)
    }
    fn take_reloads(&self) -> Vec<origdst_engine::listeners::Reload> {
        std::mem::take(&mut *self.reloads.lock().unwrap_or_else(|p| p.into_inner()))
    }
    fn take_listener_changes(&self) -> Vec<ListenerChange> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A descriptor the shard owns; dropping it closes it in the simulated table.
#[derive(Debug)]
pub struct SimFd {
    pub(super) fd: i32,
    pub(super) net: Rc<RefCell<Net>>,
}

impl Drop for SimFd {
    fn drop(&mut self) {
        self.net.borrow_mut().close(self.fd);
    }
}

/// A pipe's two descriptors.
#[derive(Debug)]
pub struct SimPipe {
    pub(super) id: usize,
    pub(super) read: SimFd,
    /// Held so the write end stays open as long as the pipe; closed with it.
    pub(super) _write: SimFd,
}

impl PipeEnds for SimPipe {
    fn kernel_queued(&self) -> Option<u32> {
        Some(self.read.net.borrow().pipes[self.id].data.len() as u32)
    }
}
