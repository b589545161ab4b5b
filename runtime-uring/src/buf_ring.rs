//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`): the kernel picks a buffer from it when a
//! multishot recv has data, so memory is held only by bytes in flight, never per idle connection.

use std::alloc::{self, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

/// The ring of buffer descriptors plus the buffers themselves; both live until the ring is dropped
/// (after the io_uring, which the shard drops first).
pub(crate) struct BufRing {
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    memory: *mut u8,
    memory_layout: Layout,
    count: u16,
    buffer_bytes: u32,
    /// Our copy of the tail; published to the kernel with a release store.
    tail: u16,
    /// Buffers currently handed to the kernel (for the gauge and the invariant checks).
    in_ring: u32,
    group: u16,
}

impl BufRing {
    /// Allocates `count` buffers of `buffer_bytes` and registers them as group `group`.
    pub(crate) fn new(
        submitter: &Submitter<'_>,
        count: u32,
        buffer_bytes: u32,
        group: u16,
    ) -> io::Result<Self> {
        assert!(
            count.is_power_of_two() && count <= 32768,
            "buffer count must be a power of two ≤ 32768"
        );
        assert!(buffer_bytes > 0);
        let count16 =
            u16::try_from(count).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let entries_layout =
            Layout::from_size_align(count as usize * size_of::<BufRingEntry>(), PAGE_BYTES)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let memory_layout =
            Layout::from_size_align(count as usize * buffer_bytes as usize, PAGE_BYTES)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the entries layout has non-zero size (count ≥ 1).
        let entries = unsafe { alloc::alloc_zeroed(entries_layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let memory = map_anonymous(memory_layout.size())?;
        let mut ring = Self {
            entries,
            entries_layout,
            memory,
            memory_layout,
            count: count16,
            buffer_bytes,
            tail: 0,
            in_ring: 0,
            group,
        };
        // SAFETY: `entries` is page-aligned, sized for `count` entries, and lives until `Drop`, which
        // runs after the shard has dropped its ring (field order in `Shard`).
        unsafe { submitter.register_buf_ring_with_flags(entries as u64, count16, group, 0)? };
        for id in 0..count16 {
            ring.give_back(id);
        }
        Ok(ring)
    }

    /// The buffer group id for `RecvMulti`.
    pub(crate) fn group(&self) -> u16 {
        self.group
    }

    /// Pointer to `len` bytes at `offset` into buffer `id`, for a send SQE. Valid until the buffer is
    /// given back.
    pub(crate) fn ptr(&self, id: u16, offset: u32, len: u32) -> *const u8 {
        assert!(id < self.count, "buffer id {id} out of range");
        assert!(
            u64::from(offset) + u64::from(len) <= u64::from(self.buffer_bytes),
            "slice past buffer end"
        );
        // SAFETY: bounds checked above; `memory` spans count × buffer_bytes.
        unsafe {
            self.memory
                .add(id as usize * self.buffer_bytes as usize + offset as usize)
        }
    }

    /// Returns buffer `id` to the kernel.
    pub(crate) fn give_back(&mut self, id: u16) {
        assert!(id < self.count, "buffer id {id} out of range");
        assert!(
            self.in_ring < u32::from(self.count),
            "more buffers given back than exist"
        );
        let index = self.tail & (self.count - 1);
        // SAFETY: index < count; the kernel reads only entries between its head and our tail, and
        // this slot is past the tail until the release store below publishes it.
        unsafe {
            let entry = &mut *self.entries.add(index as usize);
            entry.set_addr(self.memory.add(id as usize * self.buffer_bytes as usize) as u64);
            entry.set_len(self.buffer_bytes);
            entry.set_bid(id);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail lives inside entry 0's reserved field, which the kernel reads atomically.
        let tail = unsafe { AtomicU16::from_ptr(BufRingEntry::tail(self.entries).cast_mut()) };
        tail.store(self.tail, Ordering::Release);
        self.in_ring += 1;
    }

    /// The kernel consumed one buffer (a recv completion carried it).
    pub(crate) fn taken(&mut self) {
        assert!(
            self.in_ring > 0,
            "the kernel used a buffer we never gave it"
        );
        self.in_ring -= 1;
    }

    /// Buffers currently out of the ring (holding bytes in flight).
    pub(crate) fn in_flight(&self) -> u32 {
        u32::from(self.count) - self.in_ring
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly these layouts; the ring that referenced them is gone.
        unsafe {
            alloc::dealloc(self.entries.cast(), self.entries_layout);
            libc::munmap(self.memory.cast(), self.memory_layout.size());
        }
    }
}

/// Buffer memory comes straight from anonymous pages: the allocator would zero (and so touch) every
/// page of a large aligned allocation, making the whole pool resident at start-up.
fn map_anonymous(len: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr.cast())
}

const PAGE_BYTES: usize = 4096;
