//! The paging logic of [`Store::list_page`](crate::Store::list_page), shared by every
//! backend so that they all fold folders, order names and honour `after` the same way.
//!
//! A backend drives a [`PageBuilder`] with its keys in ascending byte order, starting
//! at the builder's lower bound, and re-seeks whenever the builder asks it to. A
//! sub-folder therefore costs one seek however many keys it holds:
//!
//! ```
//! use keyhaven_storage::listing::{PageBuilder, Step};
//!
//! let keys = ["a/x", "a/y", "b", "c/d/e"]; // what the backend holds, sorted
//! let (mut page, mut lower) = PageBuilder::new("", None, 100);
//! 'seek: while !page.is_full() {
//!     for key in keys.iter().filter(|k| **k >= lower.as_str()) {
//!         match page.push(key) {
//!             Step::Continue => {}
//!             Step::Seek(next) => {
//!                 lower = next;
//!                 continue 'seek;
//!             }
//!             Step::Done => break 'seek,
//!         }
//!     }
//!     break;
//! }
//! assert_eq!(page.into_names(), ["a/", "b", "c/"]);
//! ```
//!
//! Why the seek target works: every key inside folder `prefix + "d/"` sorts below
//! `prefix + "d0"` (`'0'` is `'/' + 1`), and no key outside the folder sorts between the
//! two. Keys are UTF-8, which orders the same as its bytes, so `String` and BLOB order
//! agree.

use crate::MAX_LIST_PAGE;

/// What a backend does after feeding a key to [`PageBuilder::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Feed the next key in order.
    Continue,
    /// Skip ahead: the next key to feed is the smallest key `>=` this bound.
    Seek(String),
    /// The page is complete (full, or past the prefix); stop reading.
    Done,
}

/// Builds one page of [`Store::list_page`](crate::Store::list_page) from keys fed in
/// ascending byte order.
#[derive(Debug)]
pub struct PageBuilder<'p> {
    prefix: &'p str,
    limit: usize,
    names: Vec<String>,
}

impl<'p> PageBuilder<'p> {
    /// A builder for the page of `prefix` after `after`, and the inclusive lower bound
    /// of the first key to feed. `limit` is capped at [`MAX_LIST_PAGE`].
    ///
    /// The caller validates `prefix` ([`crate::validate_prefix`]).
    pub fn new(prefix: &'p str, after: Option<&str>, limit: usize) -> (Self, String) {
        let limit = limit.min(MAX_LIST_PAGE);
        let lower = lower_bound(prefix, after);
        let builder = PageBuilder {
            prefix,
            limit,
            names: Vec::with_capacity(limit.min(256)),
        };
        (builder, lower)
    }

    /// Whether the page holds `limit` names; check before the first read, since a
    /// `limit` of 0 makes an empty page.
    pub fn is_full(&self) -> bool {
        self.names.len() >= self.limit
    }

    /// Feed the next key (in ascending byte order, `>=` the current lower bound).
    pub fn push(&mut self, key: &str) -> Step {
        if self.is_full() {
            return Step::Done;
        }
        let Some(rest) = key.strip_prefix(self.prefix) else {
            // Sorted past every key that starts with the prefix.
            return Step::Done;
        };
        if rest.is_empty() {
            // The key equal to the prefix has no name.
            return Step::Continue;
        }
        match rest.split_once('/') {
            Some((head, _)) => {
                let mut name = String::with_capacity(head.len() + 1);
                name.push_str(head);
                name.push('/');
                self.names.push(name);
                if self.is_full() {
                    Step::Done
                } else {
                    Step::Seek(folder_end(self.prefix, head))
                }
            }
            None => {
                self.names.push(rest.to_owned());
                if self.is_full() {
                    Step::Done
                } else {
                    Step::Continue
                }
            }
        }
    }

    /// The names collected so far, in order.
    pub fn into_names(self) -> Vec<String> {
        self.names
    }
}

/// The smallest key that can carry a name strictly greater than `after` under `prefix`.
fn lower_bound(prefix: &str, after: Option<&str>) -> String {
    match after {
        None => prefix.to_owned(),
        // Any name starting with `head/` is the folder name `head/` itself, which is not
        // greater than `after`; the first candidate is past the whole folder.
        Some(after) => match after.split_once('/') {
            Some((head, _)) => folder_end(prefix, head),
            // The smallest string greater than `prefix + after`.
            None => {
                let mut lower = String::with_capacity(prefix.len() + after.len() + 1);
                lower.push_str(prefix);
                lower.push_str(after);
                lower.push('\0');
                lower
            }
        },
    }
}

/// `prefix + head + "0"`: the smallest key after every key in folder `prefix + head + "/"`.
fn folder_end(prefix: &str, head: &str) -> String {
    let mut end = String::with_capacity(prefix.len() + head.len() + 1);
    end.push_str(prefix);
    end.push_str(head);
    end.push('0');
    end
}

/// The smallest byte string greater than every key that starts with `prefix`, or
/// `None` when there is none (empty prefix). Useful as an exclusive SQL upper bound.
pub fn prefix_upper_bound(prefix: &str) -> Option<Vec<u8>> {
    let mut bound = prefix.as_bytes().to_vec();
    while let Some(last) = bound.pop() {
        if last < u8::MAX {
            bound.push(last + 1);
            return Some(bound);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: &[&str], prefix: &str, after: Option<&str>, limit: usize) -> Vec<String> {
        let mut sorted: Vec<&str> = keys.to_vec();
        sorted.sort_unstable();
        let (mut page, mut lower) = PageBuilder::new(prefix, after, limit);
        let mut seeks = 0;
        'seek: while !page.is_full() {
            for key in sorted.iter().filter(|k| **k >= lower.as_str()) {
                match page.push(key) {
                    Step::Continue => {}
                    Step::Seek(next) => {
                        assert!(next.as_str() > *key, "seek must move forward");
                        lower = next;
                        seeks += 1;
                        assert!(seeks <= keys.len(), "too many seeks");
                        continue 'seek;
                    }
                    Step::Done => break 'seek,
                }
            }
            break;
        }
        page.into_names()
    }

    #[test]
    fn folds_folders_and_orders_bytes() {
        let keys = ["p/b", "p/a/1", "p/a/2/3", "p/a0", "p/a.", "p/é", "q/x", "p"];
        assert_eq!(page(&keys, "p/", None, 100), ["a.", "a/", "a0", "b", "é"]);
        assert_eq!(page(&keys, "", None, 100), ["p", "p/", "q/"]);
    }

    #[test]
    fn after_skips_folder_and_bounds() {
        let keys = ["a", "a/x", "a/y", "a0", "b"];
        assert_eq!(page(&keys, "", Some("a"), 100), ["a/", "a0", "b"]);
        assert_eq!(page(&keys, "", Some("a/"), 100), ["a0", "b"]);
        assert_eq!(page(&keys, "", Some("a/zz"), 100), ["a0", "b"]);
        assert_eq!(page(&keys, "", Some(""), 100), ["a", "a/", "a0", "b"]);
        assert_eq!(page(&keys, "", Some("b"), 100), Vec::<String>::new());
    }

    #[test]
    fn limit_zero_and_cap() {
        let keys = ["a", "b"];
        assert!(page(&keys, "", None, 0).is_empty());
        assert_eq!(page(&keys, "", None, 1), ["a"]);
        let (builder, _) = PageBuilder::new("", None, usize::MAX);
        assert_eq!(builder.limit, MAX_LIST_PAGE);
    }

    #[test]
    fn key_equal_to_prefix_is_not_listed() {
        assert_eq!(page(&["f/", "f/x"], "f/", None, 10), ["x"]);
        assert_eq!(page(&["g//h"], "g/", None, 10), ["/"]);
    }

    #[test]
    fn upper_bound() {
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("ab/"), Some(b"ab0".to_vec()));
        assert_eq!(prefix_upper_bound("a"), Some(b"b".to_vec()));
    }
}
