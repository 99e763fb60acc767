//! Names the server holds for a session (prepared statements, portals) and
//! what Sluice knows each stands for, following the server rather than the
//! client: a definition or removal is pending from the moment it is sent
//! until the server confirms it (a rejected one never holds). While a name
//! has pending changes, every value it may have is a candidate, and callers
//! judge by the worst of them.

use std::collections::{HashMap, VecDeque};

/// PostgreSQL keys prepared statements and portals by their first
/// `NAMEDATALEN - 1` bytes: two names that share those bytes are one name
/// to the server, so they must be one here (or a statement could be run
/// under a name Sluice does not know). This also bounds what a name costs.
const SERVER_NAME_BYTES: usize = 63;

fn key(name: &str) -> &[u8] {
    let b = name.as_bytes();
    &b[..b.len().min(SERVER_NAME_BYTES)]
}

/// One namespace of names (statements or portals).
#[derive(Debug)]
pub struct Names<T> {
    slots: HashMap<Box<[u8]>, Slot<T>>,
    /// Pending changes by id, oldest first (`None`: every name removed).
    owners: VecDeque<(u64, Option<Box<[u8]>>)>,
}

#[derive(Debug)]
struct Slot<T> {
    /// What the server confirmed (`None`: the name is free).
    held: Option<T>,
    /// Sent and not yet answered, oldest first.
    pending: VecDeque<Pending<T>>,
}

#[derive(Debug)]
struct Pending<T> {
    id: u64,
    /// The sync points sent before it (its pipeline segment).
    segment: u64,
    /// A definition, or a removal (`None`).
    value: Option<T>,
}

impl<T> Default for Names<T> {
    fn default() -> Self {
        Names {
            slots: HashMap::new(),
            owners: VecDeque::new(),
        }
    }
}

impl<T> Names<T> {
    /// Names held or pending.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// No name is held or pending.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Changes sent and not yet answered.
    pub fn pending(&self) -> usize {
        self.owners.len()
    }

    /// The name is held or has pending changes.
    pub fn contains(&self, name: &str) -> bool {
        self.slots.contains_key(key(name))
    }

    /// A definition of `name` sent in `segment` (change `id`).
    pub fn define(&mut self, name: &str, value: T, id: u64, segment: u64) {
        self.change(name, Some(value), id, segment);
    }

    /// A removal of `name` sent in `segment` (change `id`).
    pub fn remove(&mut self, name: &str, id: u64, segment: u64) {
        self.change(name, None, id, segment);
    }

    fn change(&mut self, name: &str, value: Option<T>, id: u64, segment: u64) {
        let k = key(name);
        let slot = match self.slots.get_mut(k) {
            Some(s) => s,
            None => self.slots.entry(k.into()).or_insert(Slot {
                held: None,
                pending: VecDeque::new(),
            }),
        };
        slot.pending.push_back(Pending { id, segment, value });
        self.owners.push_back((id, Some(k.into())));
    }

    /// A removal of every name (change `id`).
    pub fn clear(&mut self, id: u64) {
        self.owners.push_back((id, None));
    }

    /// The server answered change `id`: apply it if `confirmed`, else drop
    /// it. False when the change is not one of these names'.
    pub fn resolve(&mut self, id: u64, confirmed: bool) -> bool {
        // Answers come in the order sent, so this is almost always the first.
        let Some(at) = self.owners.iter().position(|(i, _)| *i == id) else {
            return false;
        };
        let Some((_, owner)) = self.owners.remove(at) else {
            return false;
        };
        match owner {
            Some(name) => {
                let Some(slot) = self.slots.get_mut(&name) else {
                    return true;
                };
                if let Some(p) = slot.pending.iter().position(|p| p.id == id) {
                    if let Some(change) = slot.pending.remove(p) {
                        if confirmed {
                            slot.held = change.value;
                        }
                    }
                }
                if slot.held.is_none() && slot.pending.is_empty() {
                    self.slots.remove(&name);
                }
            }
            None if confirmed => {
                self.slots.retain(|_, s| {
                    s.held = None;
                    !s.pending.is_empty()
                });
            }
            None => {}
        }
        true
    }

    /// Every value `name` may have for a message sent now, in `segment`.
    /// When its newest change was sent in this same segment, that change is
    /// the only possibility: had it failed, the server would skip this
    /// message too (until Sync). Otherwise any pending change may or may
    /// not hold. Oldest first.
    pub fn candidates(&self, name: &str, segment: u64) -> impl Iterator<Item = &T> {
        let slot = self.slots.get(key(name));
        let (only, all) = match slot.and_then(|s| s.pending.back()) {
            Some(last) if last.segment == segment => (last.value.as_ref(), None),
            _ => (None, slot),
        };
        only.into_iter().chain(all.into_iter().flat_map(|s| {
            s.held
                .iter()
                .chain(s.pending.iter().filter_map(|p| p.value.as_ref()))
        }))
    }

    /// Run `f` on every candidate of `name` (as [`Names::candidates`]).
    pub fn candidates_mut(&mut self, name: &str, segment: u64, mut f: impl FnMut(&mut T)) {
        let Some(slot) = self.slots.get_mut(key(name)) else {
            return;
        };
        match slot.pending.back_mut() {
            Some(last) if last.segment == segment => last.value.iter_mut().for_each(f),
            _ => {
                slot.held.iter_mut().for_each(&mut f);
                slot.pending
                    .iter_mut()
                    .filter_map(|p| p.value.as_mut())
                    .for_each(f);
            }
        }
    }

    /// Forget held values `keep` rejects (names with pending changes stay).
    pub fn retain_held(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.slots.retain(|_, s| {
            if s.held.as_ref().is_some_and(|v| !keep(v)) {
                s.held = None;
            }
            s.held.is_some() || !s.pending.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: &Names<&'static str>, name: &str, segment: u64) -> Vec<&'static str> {
        n.candidates(name, segment).copied().collect()
    }

    #[test]
    fn a_rejected_redefinition_leaves_the_old_one() {
        let mut n = Names::default();
        n.define("p", "delete", 1, 0);
        assert_eq!(values(&n, "p", 1), ["delete"]);
        assert!(n.resolve(1, true));
        n.define("p", "select", 2, 1);
        // Unanswered, from an earlier segment: either may hold.
        assert_eq!(values(&n, "p", 2), ["delete", "select"]);
        // In its own segment only the new one can be in use.
        assert_eq!(values(&n, "p", 1), ["select"]);
        assert!(n.resolve(2, false));
        assert_eq!(values(&n, "p", 2), ["delete"]);
        assert_eq!(n.pending(), 0);
    }

    #[test]
    fn removals_hold_only_when_confirmed() {
        let mut n = Names::default();
        n.define("p", "delete", 1, 0);
        n.resolve(1, true);
        n.remove("p", 2, 1);
        assert_eq!(values(&n, "p", 1), Vec::<&str>::new());
        assert_eq!(values(&n, "p", 2), ["delete"]);
        n.resolve(2, false);
        assert_eq!(values(&n, "p", 2), ["delete"]);
        n.clear(3);
        n.resolve(3, false);
        assert_eq!(values(&n, "p", 2), ["delete"]);
        n.define("q", "select", 4, 2);
        n.clear(5);
        n.resolve(4, true);
        n.resolve(5, true);
        assert_eq!(n.len(), 0);
        n.remove("p", 6, 3);
        n.resolve(6, true);
        assert_eq!(n.len(), 0);
        assert!(!n.resolve(7, true));
    }

    #[test]
    fn names_are_what_the_server_compares() {
        let mut n = Names::default();
        let long = "s".repeat(63);
        n.define(&format!("{long}_delete"), "delete", 1, 0);
        n.resolve(1, true);
        // The server sees one statement under both names.
        assert_eq!(values(&n, &format!("{long}_other"), 1), ["delete"]);
        assert_eq!(values(&n, &long, 1), ["delete"]);
        assert_eq!(values(&n, &"s".repeat(62), 1), Vec::<&str>::new());
    }

    #[test]
    fn close_then_parse_in_one_pipeline_sees_the_new_definition() {
        let mut n = Names::default();
        n.define("s1", "copy", 1, 0);
        n.resolve(1, true);
        n.remove("s1", 2, 5);
        n.define("s1", "select", 3, 5);
        assert_eq!(values(&n, "s1", 5), ["select"]);
        n.resolve(2, true);
        n.resolve(3, true);
        assert_eq!(values(&n, "s1", 6), ["select"]);
    }
}
