//! The shard's connection table: a slab of slots, each with a generation that changes every time
//! the slot is given to a new connection. Every operation a connection starts carries its
//! (slot, generation) in its token; a completion whose generation is not the slot's current one
//! belongs to a connection that is gone and must never touch the slot's new tenant.

use slab::Slab;

/// A live connection's address in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotKey {
    /// Index in the table.
    pub slot: usize,
    /// Which tenant of that slot.
    pub generation: u16,
}

/// One direction of one live connection; stale keys are detected by generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirKey {
    /// The connection's slot.
    pub slot: usize,
    /// The connection's generation.
    pub generation: u16,
    /// The direction.
    pub dir: origdst_core::relay::Dir,
}

/// Connections by slot, with generations.
#[derive(Debug)]
pub struct Slots<T> {
    entries: Slab<T>,
    /// The generation of each slot's current (or last) tenant.
    generations: Vec<u16>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self {
            entries: Slab::new(),
            generations: Vec::new(),
        }
    }
}

impl<T> Slots<T> {
    /// The key the next `insert` will return (its generation already advanced).
    pub fn next_key(&self) -> SlotKey {
        let slot = self.entries.vacant_key();
        let generation = self
            .generations
            .get(slot)
            .copied()
            .unwrap_or(0)
            .wrapping_add(1);
        SlotKey { slot, generation }
    }

    /// Gives `value` a slot and a generation no completion in flight can carry: the slot's last
    /// tenant's plus one.
    pub fn insert_with(&mut self, make: impl FnOnce(SlotKey) -> T) -> SlotKey {
        let key = self.next_key();
        if self.generations.len() <= key.slot {
            self.generations.resize(key.slot + 1, 0);
        }
        self.generations[key.slot] = key.generation;
        let slot = self.entries.insert(make(key));
        debug_assert_eq!(slot, key.slot);
        key
    }

    /// The tenant of `key.slot` if it is still the one `key` names.
    pub fn get(&self, key: SlotKey) -> Option<&T> {
        self.entries
            .get(key.slot)
            .filter(|_| self.generations[key.slot] == key.generation)
    }

    /// Mutable [`Self::get`].
    pub fn get_mut(&mut self, key: SlotKey) -> Option<&mut T> {
        let current = self.generations.get(key.slot).copied();
        self.entries
            .get_mut(key.slot)
            .filter(|_| current == Some(key.generation))
    }

    /// Frees `slot`; its generation stays so the next tenant gets a new one.
    pub fn remove(&mut self, slot: usize) -> T {
        self.entries.remove(slot)
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No live connection.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every occupied slot.
    pub fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.entries.iter().map(|(slot, _)| slot)
    }
}

impl<T> std::ops::Index<usize> for Slots<T> {
    type Output = T;

    fn index(&self, slot: usize) -> &T {
        &self.entries[slot]
    }
}

impl<T> std::ops::IndexMut<usize> for Slots<T> {
    fn index_mut(&mut self, slot: usize) -> &mut T {
        &mut self.entries[slot]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_slot_gets_a_new_generation_and_stale_keys_miss() {
        let mut slots = Slots::default();
        let first = slots.insert_with(|_| "first");
        assert_eq!(slots.get(first), Some(&"first"));
        slots.remove(first.slot);
        let second = slots.insert_with(|_| "second");
        assert_eq!(second.slot, first.slot, "the slab reuses the freed slot");
        assert_ne!(second.generation, first.generation);
        // A completion of the first tenant must not reach the second.
        assert_eq!(slots.get(first), None);
        assert_eq!(slots.get_mut(first), None);
        assert_eq!(slots.get(second), Some(&"second"));
    }

    #[test]
    fn generations_wrap_without_repeating_the_last_one() {
        let mut slots = Slots::default();
        let mut last = slots.insert_with(|key| key);
        for _ in 0..70_000 {
            slots.remove(last.slot);
            let key = slots.insert_with(|key| key);
            assert_eq!(key.slot, last.slot);
            assert_ne!(key.generation, last.generation);
            assert_eq!(slots.get(key), Some(&key), "made with its own key");
            last = key;
        }
    }

    #[test]
    fn next_key_is_what_insert_returns() {
        let mut slots = Slots::default();
        let a = slots.insert_with(|_| 1);
        let _b = slots.insert_with(|_| 2);
        slots.remove(a.slot);
        let predicted = slots.next_key();
        assert_eq!(slots.insert_with(|_| 3), predicted);
        assert_eq!(slots.len(), 2);
        assert_eq!(slots.slots().count(), 2);
    }
}
