//! The set of client ids a fan-out skips.

use rustc_hash::FxHashSet;

use crate::ids::{id_hash, ClientId};

/// Above this many ids, membership goes through a hash set instead of a linear scan.
const LINEAR_MAX: usize = 8;

/// Client ids to leave out of a fan-out. Borrowed from the caller for one call.
#[derive(Debug, Default)]
pub struct Exclude<'a> {
    ids: Vec<(u64, &'a str)>,
    hashes: Option<FxHashSet<u64>>,
}

impl<'a> Exclude<'a> {
    pub fn none() -> Self {
        Exclude::default()
    }

    pub fn new<I: IntoIterator<Item = &'a str>>(ids: I) -> Self {
        let ids: Vec<(u64, &str)> = ids.into_iter().map(|id| (id_hash(id), id)).collect();
        let hashes = (ids.len() > LINEAR_MAX).then(|| ids.iter().map(|&(h, _)| h).collect());
        Exclude { ids, hashes }
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub(crate) fn contains(&self, id: &ClientId) -> bool {
        if self.ids.is_empty() {
            return false;
        }
        let hash = id.hash();
        if let Some(hashes) = &self.hashes {
            if !hashes.contains(&hash) {
                return false;
            }
        }
        self.ids
            .iter()
            .any(|&(h, name)| h == hash && name == id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_excludes_nothing() {
        assert!(!Exclude::none().contains(&ClientId::new("a")));
    }

    #[test]
    fn small_set_matches_exact_ids() {
        let ex = Exclude::new(["a", "bc"]);
        assert!(ex.contains(&ClientId::new("a")));
        assert!(ex.contains(&ClientId::new("bc")));
        assert!(!ex.contains(&ClientId::new("b")));
    }

    #[test]
    fn large_set_matches_exact_ids() {
        let names: Vec<String> = (0..100).map(|i| format!("client-{i}")).collect();
        let ex = Exclude::new(names.iter().map(String::as_str));
        assert!(ex.contains(&ClientId::new("client-42")));
        assert!(!ex.contains(&ClientId::new("client-100")));
    }
}
