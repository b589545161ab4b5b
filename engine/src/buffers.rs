//! Heap buffers for the splice path's copies (small messages, splice-auto; and when the pipe pool is
//! empty): bounded, reused.

/// Heap buffers for the splice path's copy fallback (when the pipe pool is empty). Bounded.
pub struct BufferPool {
    free: Vec<Box<[u8]>>,
    allocated: u32,
    max: u32,
    size_bytes: usize,
}

impl BufferPool {
    /// At most `max` buffers of `size_bytes`, allocated on first lease.
    pub fn new(max: u32, size_bytes: u32) -> Self {
        Self {
            free: Vec::new(),
            allocated: 0,
            max,
            size_bytes: size_bytes as usize,
        }
    }

    /// A buffer, or `None` when `max` are out.
    pub fn lease(&mut self) -> Option<Box<[u8]>> {
        if let Some(buf) = self.free.pop() {
            return Some(buf);
        }
        if self.allocated >= self.max {
            return None;
        }
        self.allocated += 1;
        Some(vec![0; self.size_bytes].into_boxed_slice())
    }

    /// The size of each buffer.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// A leased buffer comes back.
    pub fn give_back(&mut self, buf: Box<[u8]>) {
        assert_eq!(buf.len(), self.size_bytes);
        assert!(
            self.free.len() < self.allocated as usize,
            "more buffers returned than leased"
        );
        self.free.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_buffers_and_returned_ones_are_reused() {
        let mut pool = BufferPool::new(2, 4096);
        let a = pool.lease().unwrap();
        let _b = pool.lease().unwrap();
        assert!(pool.lease().is_none());
        let address = a.as_ptr();
        pool.give_back(a);
        let again = pool.lease().unwrap();
        assert_eq!(again.as_ptr(), address);
    }

    #[test]
    #[should_panic(expected = "more buffers returned than leased")]
    fn a_buffer_returned_twice_is_a_bug() {
        let mut pool = BufferPool::new(2, 4096);
        let a = pool.lease().unwrap();
        pool.give_back(a.clone());
        pool.give_back(a);
    }
}
