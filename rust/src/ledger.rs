//! What a worker holds from its broker: deliveries fetched and not yet settled, each reserved (waiting)
//! or active (running), in the order they arrived, against a prefetch window.
//!
//! All operations are O(1) (amortised): a hash map holds the live entries and a queue keeps arrival
//! order, with settled entries left in the queue as tombstones until they outnumber the live ones.

use std::collections::{HashMap, VecDeque};

/// A delivery tag as the broker issued it: AMQP uses integers, kombu's virtual transports UUID strings.
/// An int and a str with the same digits are different tags.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tag {
    Int(i128),
    Str(String),
}

/// `free()` when the window is unlimited: larger than any prefetch count, small enough for any int type.
pub const UNLIMITED: usize = i32::MAX as usize;

#[derive(Debug, PartialEq, Eq)]
pub enum LedgerError {
    AlreadyHeld,
    NotHeld,
}

#[derive(Clone, Copy)]
struct Entry {
    /// Arrival number; a queue element is live only while its number matches its tag's entry.
    seq: u64,
    active: bool,
}

#[derive(Default)]
pub struct Ledger {
    window: usize,
    entries: HashMap<Tag, Entry>,
    order: VecDeque<(u64, Tag)>,
    next_seq: u64,
}

impl Ledger {
    pub fn new(window: usize) -> Self {
        Self {
            window,
            ..Self::default()
        }
    }

    pub fn window(&self) -> usize {
        self.window
    }

    pub fn set_window(&mut self, window: usize) {
        self.window = window;
    }

    /// How many more deliveries may be fetched now; `UNLIMITED` for a window of 0.
    pub fn free(&self) -> usize {
        if self.window == 0 {
            UNLIMITED
        } else {
            self.window.saturating_sub(self.entries.len())
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn contains(&self, tag: &Tag) -> bool {
        self.entries.contains_key(tag)
    }

    pub fn is_active(&self, tag: &Tag) -> bool {
        self.entries.get(tag).is_some_and(|e| e.active)
    }

    /// Records a fetched delivery as reserved.
    pub fn add(&mut self, tag: Tag) -> Result<(), LedgerError> {
        if self.entries.contains_key(&tag) {
            return Err(LedgerError::AlreadyHeld);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(tag.clone(), Entry { seq, active: false });
        self.order.push_back((seq, tag));
        #[cfg(feature = "debug-checks")]
        self.check();
        Ok(())
    }

    /// Marks a held delivery as active (starting an active one again changes nothing).
    pub fn start(&mut self, tag: &Tag) -> Result<(), LedgerError> {
        let entry = self.entries.get_mut(tag).ok_or(LedgerError::NotHeld)?;
        entry.active = true;
        Ok(())
    }

    /// Forgets a delivery; returns whether it was held.
    pub fn settle(&mut self, tag: &Tag) -> bool {
        if self.entries.remove(tag).is_none() {
            return false;
        }
        while self.order.front().is_some_and(|(seq, tag)| !self.is_live(*seq, tag)) {
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.entries.len() + 32 {
            let entries = &self.entries;
            self.order
                .retain(|(seq, tag)| entries.get(tag).is_some_and(|e| e.seq == *seq));
        }
        #[cfg(feature = "debug-checks")]
        self.check();
        true
    }

    fn is_live(&self, seq: u64, tag: &Tag) -> bool {
        self.entries.get(tag).is_some_and(|e| e.seq == seq)
    }

    fn live(&self) -> impl Iterator<Item = (&Tag, Entry)> + '_ {
        self.order
            .iter()
            .filter_map(|(seq, tag)| self.entries.get(tag).filter(|e| e.seq == *seq).map(|e| (tag, *e)))
    }

    /// Every held tag, oldest first.
    pub fn held(&self) -> impl Iterator<Item = &Tag> + '_ {
        self.live().map(|(tag, _)| tag)
    }

    /// Held and not started, oldest first.
    pub fn reserved(&self) -> impl Iterator<Item = &Tag> + '_ {
        self.live().filter(|(_, e)| !e.active).map(|(tag, _)| tag)
    }

    /// Held and started, oldest first.
    pub fn active(&self) -> impl Iterator<Item = &Tag> + '_ {
        self.live().filter(|(_, e)| e.active).map(|(tag, _)| tag)
    }

    /// Every entry appears live exactly once in arrival order (`debug-checks` builds only).
    #[cfg(feature = "debug-checks")]
    fn check(&self) {
        assert_eq!(self.live().count(), self.entries.len(), "ledger order lost an entry");
        assert!(
            self.order.len() <= 2 * self.entries.len() + 33,
            "ledger tombstones not compacted"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Tag {
        Tag::Str(v.to_owned())
    }

    fn tags<'a>(it: impl Iterator<Item = &'a Tag>) -> Vec<Tag> {
        it.cloned().collect()
    }

    #[test]
    fn lifecycle() {
        let mut l = Ledger::new(3);
        assert_eq!(l.free(), 3);
        l.add(s("a")).unwrap();
        l.add(Tag::Int(1)).unwrap();
        l.add(s("1")).unwrap();
        assert_eq!(l.free(), 0);
        assert_eq!(l.add(s("a")), Err(LedgerError::AlreadyHeld));
        l.start(&Tag::Int(1)).unwrap();
        assert_eq!(l.start(&s("zz")), Err(LedgerError::NotHeld));
        assert!(l.is_active(&Tag::Int(1)) && !l.is_active(&s("1")));
        assert_eq!(tags(l.held()), [s("a"), Tag::Int(1), s("1")]);
        assert_eq!(tags(l.reserved()), [s("a"), s("1")]);
        assert_eq!(tags(l.active()), [Tag::Int(1)]);
        assert!(l.settle(&s("a")));
        assert!(!l.settle(&s("a")));
        assert_eq!(l.free(), 1);
        assert_eq!(tags(l.held()), [Tag::Int(1), s("1")]);
    }

    #[test]
    fn window_changes_and_unlimited() {
        let mut l = Ledger::new(0);
        assert_eq!(l.free(), UNLIMITED);
        l.add(Tag::Int(5)).unwrap();
        l.set_window(1);
        assert_eq!((l.window(), l.free()), (1, 0));
        l.add(Tag::Int(6)).unwrap(); // the window is advisory: over-fetching is recorded, not refused
        assert_eq!(l.free(), 0);
    }

    #[test]
    fn re_adding_a_settled_tag_moves_it_to_the_end() {
        let mut l = Ledger::new(0);
        for t in ["a", "b", "c"] {
            l.add(s(t)).unwrap();
        }
        l.start(&s("a")).unwrap();
        l.settle(&s("a"));
        l.add(s("a")).unwrap();
        assert_eq!(tags(l.held()), [s("b"), s("c"), s("a")]);
        assert!(!l.is_active(&s("a")));
    }

    #[test]
    fn tombstones_stay_bounded() {
        let mut l = Ledger::new(0);
        l.add(Tag::Int(-1)).unwrap();
        for i in 0..10_000 {
            l.add(Tag::Int(i)).unwrap();
            if i >= 2 {
                assert!(l.settle(&Tag::Int(i - 2)));
            }
        }
        assert_eq!(l.len(), 3);
        assert!(l.order.len() <= 2 * l.len() + 33);
        assert_eq!(tags(l.held()), [Tag::Int(-1), Tag::Int(9998), Tag::Int(9999)]);
    }

    #[test]
    fn matches_a_naive_model() {
        let mut l = Ledger::new(4);
        let mut model: Vec<(Tag, bool)> = Vec::new();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let tag = if x & 1 == 0 {
                Tag::Int(i128::from(x >> 60))
            } else {
                s(&(x >> 60).to_string())
            };
            let pos = model.iter().position(|(t, _)| *t == tag);
            match (x >> 8) % 3 {
                0 => {
                    assert_eq!(l.add(tag.clone()).is_ok(), pos.is_none());
                    if pos.is_none() {
                        model.push((tag, false));
                    }
                }
                1 => {
                    assert_eq!(l.start(&tag).is_ok(), pos.is_some());
                    if let Some(p) = pos {
                        model[p].1 = true;
                    }
                }
                _ => {
                    assert_eq!(l.settle(&tag), pos.is_some());
                    if let Some(p) = pos {
                        model.remove(p);
                    }
                }
            }
            assert_eq!(tags(l.held()), model.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>());
            assert_eq!(tags(l.active()).len(), model.iter().filter(|(_, a)| *a).count());
            assert_eq!(l.free(), 4usize.saturating_sub(model.len()));
        }
    }
}
