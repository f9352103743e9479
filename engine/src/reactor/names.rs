//! One loop's named connections: which connections carry a name (a user
//! id, Phoenix's socket id), so that a disconnect by name finds them.
//!
//! Two hash maps: name to connections, and connection to name for
//! removal; a name's connections are a set, so that removing one is O(1)
//! however many share the name. Only named connections cost anything.

use std::sync::Arc;

use ahash::{AHashMap, RandomState};
use indexmap::IndexSet;

use crate::pubsub::ConnId;

/// The names of one loop's connections.
#[derive(Debug, Default)]
pub(crate) struct Names {
    by_name: AHashMap<Arc<str>, IndexSet<ConnId, RandomState>>,
    by_conn: AHashMap<ConnId, Arc<str>>,
}

impl Names {
    /// Names `conn` `name`, replacing a name it had.
    pub(crate) fn insert(&mut self, name: &str, conn: ConnId) {
        self.remove(conn);
        let name: Arc<str> = match self.by_name.get_key_value(name) {
            Some((existing, _)) => Arc::clone(existing),
            None => Arc::from(name),
        };
        self.by_name
            .entry(Arc::clone(&name))
            .or_default()
            .insert(conn);
        self.by_conn.insert(conn, name);
    }

    /// Forgets `conn`'s name, if it had one.
    pub(crate) fn remove(&mut self, conn: ConnId) {
        let Some(name) = self.by_conn.remove(&conn) else {
            return;
        };
        if let Some(conns) = self.by_name.get_mut(&name) {
            conns.swap_remove(&conn);
            if conns.is_empty() {
                self.by_name.remove(&name);
            }
        }
    }

    /// The connections named `name`.
    pub(crate) fn get(&self, name: &str) -> Vec<ConnId> {
        self.by_name
            .get(name)
            .map_or_else(Vec::new, |conns| conns.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_renames_and_removals() {
        let mut names = Names::default();
        let (a, b) = (ConnId::new(1, 0), ConnId::new(2, 0));
        names.insert("user:1", a);
        names.insert("user:1", b);
        assert_eq!(names.get("user:1"), [a, b]);
        names.insert("user:1", b);
        assert_eq!(names.get("user:1"), [a, b], "naming again changes nothing");
        names.insert("user:2", a);
        assert_eq!(names.get("user:1"), [b]);
        assert_eq!(names.get("user:2"), [a]);
        names.remove(b);
        names.remove(a);
        assert!(names.get("user:1").is_empty());
        assert!(names.by_name.is_empty() && names.by_conn.is_empty());
    }
}
