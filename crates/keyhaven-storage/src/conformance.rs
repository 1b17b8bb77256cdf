//! The conformance suite every [`Store`] implementation runs in its tests.
//!
//! [`exercise`] takes an **empty** store (it checks), runs every section below in its
//! own key prefix and panics with a message naming the section and the violated rule.
//! It needs a multi-threaded tokio runtime (`#[tokio::test(flavor = "multi_thread")]`)
//! because the concurrency section spawns tasks.
//!
//! Sections: empty store, basic get/put/delete, values (empty, binary, 1 MiB), key
//! rules, listing (folding, byte order, `after`, non-folder prefixes), pagination
//! (several thousand names with folders interleaved, the [`MAX_LIST_PAGE`] cap),
//! transactions, compare-and-swap, concurrency, and `Debug` hiding values.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::{
    Condition, MAX_KEY_LEN, MAX_LIST_PAGE, Op, StorageError, Store, Transaction, TxOutcome,
};

/// Run the whole suite against `store`, which must start empty.
pub async fn exercise(store: Arc<dyn Store>) {
    let s: &dyn Store = &*store;
    starts_empty(s).await;
    basic(s).await;
    values(s).await;
    invalid_keys(s).await;
    listing(s).await;
    pagination(s).await;
    list_page_cap(s).await;
    transactions(s).await;
    compare_and_swap(s).await;
    concurrent_counter(Arc::clone(&store)).await;
    concurrent_puts(Arc::clone(&store)).await;
    concurrent_transfers(Arc::clone(&store)).await;
    debug_hides_values(s).await;
}

#[track_caller]
fn must<T>(result: Result<T, StorageError>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("storage conformance: {what}: unexpected error: {err} ({err:?})"),
    }
}

#[track_caller]
fn must_be_invalid_key<T>(result: Result<T, StorageError>, what: &str) {
    match result {
        Err(StorageError::InvalidKey { .. }) => {}
        Err(err) => panic!("storage conformance: {what}: expected InvalidKey, got {err:?}"),
        Ok(_) => panic!("storage conformance: {what}: expected InvalidKey, got Ok"),
    }
}

async fn expect_value(s: &dyn Store, key: &str, expected: Option<&[u8]>, what: &str) {
    let got = must(s.get(key).await, what);
    if got.as_deref() != expected {
        panic!(
            "storage conformance: {what}: get({key:?}) returned {}, expected {}",
            describe(got.as_deref()),
            describe(expected)
        );
    }
    // After a get (which may fill a read cache), a store that has the value at hand
    // answers the same without waiting.
    if let Some(ready) = s.get_ready(key) {
        let ready = must(ready, what);
        if ready.as_deref() != expected {
            panic!(
                "storage conformance: {what}: get_ready({key:?}) returned {}, expected {}",
                describe(ready.as_deref()),
                describe(expected)
            );
        }
    }
}

fn describe(value: Option<&[u8]>) -> String {
    match value {
        None => "no value".to_owned(),
        Some(v) if v.len() <= 32 => format!("{} bytes {v:?}", v.len()),
        Some(v) => format!("{} bytes", v.len()),
    }
}

fn put(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.to_vec(),
    }
}

fn del(key: &str) -> Op {
    Op::Delete {
        key: key.to_owned(),
    }
}

fn absent(key: &str) -> Condition {
    Condition::Absent {
        key: key.to_owned(),
    }
}

fn equals(key: &str, value: &[u8]) -> Condition {
    Condition::Equals {
        key: key.to_owned(),
        value: value.to_vec(),
    }
}

async fn list(s: &dyn Store, prefix: &str, after: Option<&str>, limit: usize) -> Vec<String> {
    must(
        s.list_page(prefix, after, limit).await,
        &format!("list_page({prefix:?}, {after:?}, {limit})"),
    )
}

#[track_caller]
fn expect_names(got: &[String], expected: &[&str], what: &str) {
    if got != expected {
        panic!("storage conformance: {what}: listed {got:?}, expected {expected:?}");
    }
}

/// Write many puts in transactions of `chunk` ops.
async fn bulk_put(s: &dyn Store, keys: &[String], chunk: usize) {
    for part in keys.chunks(chunk) {
        let ops = part.iter().map(|k| put(k, b"v")).collect();
        let outcome = must(
            s.transact(Transaction {
                conditions: vec![],
                ops,
            })
            .await,
            "bulk put",
        );
        assert_eq!(
            outcome,
            TxOutcome::Committed,
            "storage conformance: bulk put must commit"
        );
    }
}

async fn starts_empty(s: &dyn Store) {
    let names = list(s, "", None, 1).await;
    assert!(
        names.is_empty(),
        "storage conformance: exercise needs an empty store, found {names:?} at the root"
    );
    expect_value(s, "missing", None, "get of a missing key").await;
}

async fn basic(s: &dyn Store) {
    let what = "basic";
    expect_value(s, "basic/a", None, what).await;
    must(s.put("basic/a", b"one".to_vec()).await, what);
    expect_value(s, "basic/a", Some(b"one"), "read after put").await;
    must(s.put("basic/a", b"two".to_vec()).await, what);
    expect_value(s, "basic/a", Some(b"two"), "overwrite").await;
    must(s.delete("basic/a").await, what);
    expect_value(s, "basic/a", None, "read after delete").await;
    must(
        s.delete("basic/a").await,
        "deleting an absent key must succeed",
    );
    must(
        s.delete("basic/never").await,
        "deleting a never-written key must succeed",
    );

    // Keys are plain byte strings: no normalisation of any kind.
    let odd = [
        "basic/../x",
        "basic/./x",
        "basic//x",
        "basic/x/",
        "basic/with space",
        "basic/ключ/ü",
        "basic/emoji-\u{1F511}",
        "basic/\u{1}ctl",
    ];
    for (i, key) in odd.iter().enumerate() {
        let value = format!("odd-{i}").into_bytes();
        must(
            s.put(key, value.clone()).await,
            &format!("put odd key {key:?}"),
        );
    }
    for (i, key) in odd.iter().enumerate() {
        let value = format!("odd-{i}").into_bytes();
        expect_value(
            s,
            key,
            Some(&value),
            "odd keys are distinct, unnormalised keys",
        )
        .await;
    }
    expect_value(s, "x", None, "'basic/../x' must not alias 'x'").await;
    expect_value(
        s,
        "basic/x",
        None,
        "'basic/./x' or 'basic//x' must not alias 'basic/x'",
    )
    .await;

    // Half of MAX_KEY_LEN, so that scoped views (whose prefix uses part of the limit)
    // run the same check.
    let long = format!("basic/{}", "k".repeat(MAX_KEY_LEN / 2 - "basic/".len()));
    must(
        s.put(&long, b"long".to_vec()).await,
        "a key of MAX_KEY_LEN / 2 bytes",
    );
    expect_value(s, &long, Some(b"long"), "a key of MAX_KEY_LEN / 2 bytes").await;
}

async fn values(s: &dyn Store) {
    must(
        s.put("values/empty", Vec::new()).await,
        "put an empty value",
    );
    expect_value(
        s,
        "values/empty",
        Some(b""),
        "an empty value is a value, not absence",
    )
    .await;

    let all_bytes: Vec<u8> = (0..=255u8).collect();
    must(
        s.put("values/bytes", all_bytes.clone()).await,
        "put all 256 byte values",
    );
    expect_value(
        s,
        "values/bytes",
        Some(&all_bytes),
        "all 256 byte values round-trip",
    )
    .await;
    let zeros = vec![0u8; 4096];
    must(s.put("values/zeros", zeros.clone()).await, "put NUL bytes");
    expect_value(s, "values/zeros", Some(&zeros), "NUL bytes round-trip").await;
    let not_utf8 = vec![0xff, 0xfe, 0xc3, 0x28, 0x80];
    must(
        s.put("values/not-utf8", not_utf8.clone()).await,
        "put invalid UTF-8",
    );
    expect_value(
        s,
        "values/not-utf8",
        Some(&not_utf8),
        "invalid UTF-8 round-trips",
    )
    .await;

    let large: Vec<u8> = (0..(1usize << 20))
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect();
    must(
        s.put("values/large", large.clone()).await,
        "put a 1 MiB value",
    );
    expect_value(s, "values/large", Some(&large), "a 1 MiB value round-trips").await;
    let mut changed = large.clone();
    if let Some(last) = changed.last_mut() {
        *last ^= 1;
    }
    must(
        s.put("values/large", changed.clone()).await,
        "overwrite a 1 MiB value",
    );
    expect_value(
        s,
        "values/large",
        Some(&changed),
        "overwrite of a 1 MiB value",
    )
    .await;
}

async fn invalid_keys(s: &dyn Store) {
    let too_long = "k".repeat(MAX_KEY_LEN + 1);
    let bad: [&str; 5] = ["", "/x", "/", "a\0b", &too_long];
    for key in bad {
        let shown = key.chars().take(16).collect::<String>();
        let what = |op: &str| format!("{op} with invalid key {shown:?}");
        must_be_invalid_key(s.get(key).await, &what("get"));
        if let Some(ready) = s.get_ready(key) {
            must_be_invalid_key(ready, &what("get_ready"));
        }
        must_be_invalid_key(s.put(key, b"v".to_vec()).await, &what("put"));
        must_be_invalid_key(s.delete(key).await, &what("delete"));
        must_be_invalid_key(
            s.compare_and_swap(key, None, Some(b"v".to_vec())).await,
            &what("cas"),
        );
        let tx = Transaction {
            conditions: vec![absent(key)],
            ops: vec![put("invalid/ok", b"v")],
        };
        must_be_invalid_key(s.transact(tx).await, &what("transact condition"));
        let tx = Transaction {
            conditions: vec![],
            ops: vec![put("invalid/ok", b"v"), put(key, b"v")],
        };
        must_be_invalid_key(s.transact(tx).await, &what("transact op"));
        let tx = Transaction {
            conditions: vec![],
            ops: vec![put("invalid/ok", b"v"), del(key)],
        };
        must_be_invalid_key(s.transact(tx).await, &what("transact delete op"));
        if !key.is_empty() {
            must_be_invalid_key(s.list_page(key, None, 10).await, &what("list_page prefix"));
        }
    }
    expect_value(
        s,
        "invalid/ok",
        None,
        "a transaction with an invalid key writes nothing",
    )
    .await;
    let names = list(s, "invalid/", None, 10).await;
    expect_names(&names, &[], "nothing is written under invalid keys");
}

async fn listing(s: &dyn Store) {
    let keys = [
        "list/b",
        "list/a",
        "list/A",
        "list/a-",
        "list/a.b",
        "list/a/x",
        "list/a/y/z",
        "list/a0",
        "list/~",
        "list/é",
        "list/f/",
        "list/g//h",
        "lisu",
        "lis",
    ];
    for key in keys {
        must(s.put(key, b"v".to_vec()).await, "listing setup");
    }
    let all = ["A", "a", "a-", "a.b", "a/", "a0", "b", "f/", "g/", "~", "é"];
    expect_names(
        &list(s, "list/", None, 100).await,
        &all,
        "children, folding, byte order",
    );
    expect_names(
        &list(s, "list/a/", None, 100).await,
        &["x", "y/"],
        "a sub-folder",
    );
    expect_names(
        &list(s, "list/a/y/", None, 100).await,
        &["z"],
        "a nested sub-folder",
    );
    expect_names(
        &list(s, "list/f/", None, 100).await,
        &[],
        "a key equal to the prefix",
    );
    expect_names(
        &list(s, "list/g/", None, 100).await,
        &["/"],
        "an empty folder name",
    );
    expect_names(
        &list(s, "list/g//", None, 100).await,
        &["h"],
        "under an empty folder name",
    );
    expect_names(
        &list(s, "nothing/", None, 100).await,
        &[],
        "an absent prefix",
    );
    expect_names(
        &list(s, "list/zzz", None, 100).await,
        &[],
        "a prefix past every key",
    );
    // A prefix that is not a folder.
    expect_names(
        &list(s, "list/a", None, 100).await,
        &["-", ".b", "/", "0"],
        "a prefix that is not a folder",
    );
    expect_names(
        &list(s, "lis", None, 100).await,
        &["t/", "u"],
        "a prefix that is not a folder",
    );

    // `after` is exclusive, and a folder name skips the folder.
    let after = |a: &'static str| async move { list(s, "list/", Some(a), 100).await };
    expect_names(&after("").await, &all, "after the empty name");
    expect_names(&after("0").await, &all, "after a name before all");
    expect_names(&after("a").await, &all[2..], "after a leaf");
    expect_names(&after("a.").await, &all[3..], "after a name between two");
    expect_names(&after("a/").await, &all[5..], "after a folder");
    expect_names(
        &after("a/x").await,
        &all[5..],
        "after a name inside a folder",
    );
    expect_names(
        &after("a0").await,
        &all[6..],
        "after the name following a folder",
    );
    expect_names(&after("é").await, &[], "after the last name");

    // Limits.
    expect_names(&list(s, "list/", None, 0).await, &[], "limit 0");
    expect_names(&list(s, "list/", None, 4).await, &all[..4], "limit 4");
    expect_names(
        &list(s, "list/", Some("a-"), 3).await,
        &all[3..6],
        "after + limit",
    );
    expect_names(
        &list(s, "list/", None, all.len()).await,
        &all,
        "limit = count",
    );
    expect_names(
        &list(s, "list/", Some("é"), 1).await,
        &[],
        "page after a full last page",
    );

    // The root lists every top-level name.
    let root = list(s, "", None, MAX_LIST_PAGE).await;
    for expected in ["basic/", "lis", "lisu", "list/", "values/"] {
        assert!(
            root.iter().any(|n| n == expected),
            "storage conformance: root listing {root:?} lacks {expected:?}"
        );
    }
    let mut sorted = root.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        root, sorted,
        "storage conformance: root listing must be sorted and unique"
    );
}

async fn pagination(s: &dyn Store) {
    // 2,000 leaves, 500 folders sharing a leaf's name, 250 more folders: 2,750 names
    // from 3,750 keys, with folders interleaved among the leaves.
    let mut keys = Vec::new();
    let mut names = BTreeSet::new();
    for i in 0..2000 {
        keys.push(format!("page/k{i:04}"));
        names.insert(format!("k{i:04}"));
        if i % 4 == 0 {
            keys.push(format!("page/k{i:04}/a"));
            keys.push(format!("page/k{i:04}/b/c"));
            names.insert(format!("k{i:04}/"));
        }
        if i % 8 == 0 {
            for j in 0..3 {
                keys.push(format!("page/k{i:04}.f/{j}"));
            }
            names.insert(format!("k{i:04}.f/"));
        }
    }
    bulk_put(s, &keys, 500).await;
    let expected: Vec<String> = names.into_iter().collect();
    assert_eq!(expected.len(), 2750);

    for limit in [1, 7, 100, 1000, 2750, 5000] {
        let mut got: Vec<String> = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = list(s, "page/", after.as_deref(), limit).await;
            pages += 1;
            assert!(
                page.len() <= limit,
                "storage conformance: page of {} names exceeds limit {limit}",
                page.len()
            );
            let last_page = page.len() < limit;
            got.extend(page);
            if last_page {
                break;
            }
            after = got.last().cloned();
            assert!(
                pages <= expected.len() + 1,
                "storage conformance: pagination does not end"
            );
        }
        if got != expected {
            let first_diff = got.iter().zip(&expected).position(|(a, b)| a != b);
            panic!(
                "storage conformance: paging with limit {limit} listed {} names, expected {}; \
                 first difference at {first_diff:?}",
                got.len(),
                expected.len()
            );
        }
    }
}

async fn list_page_cap(s: &dyn Store) {
    let keys: Vec<String> = (0..MAX_LIST_PAGE + 50)
        .map(|i| format!("cap/{i:06}"))
        .collect();
    bulk_put(s, &keys, 2000).await;
    let page = list(s, "cap/", None, usize::MAX).await;
    assert_eq!(
        page.len(),
        MAX_LIST_PAGE,
        "storage conformance: list_page must cap limit at MAX_LIST_PAGE"
    );
    assert_eq!(page.first().map(String::as_str), Some("000000"));
    assert_eq!(
        page.last().map(String::as_str),
        Some(format!("{:06}", MAX_LIST_PAGE - 1).as_str())
    );
    let rest = list(s, "cap/", page.last().map(String::as_str), usize::MAX).await;
    assert_eq!(
        rest.len(),
        50,
        "storage conformance: the page after a capped page"
    );
}

async fn tx(s: &dyn Store, conditions: Vec<Condition>, ops: Vec<Op>, what: &str) -> TxOutcome {
    must(s.transact(Transaction { conditions, ops }).await, what)
}

#[track_caller]
fn expect_outcome(got: TxOutcome, expected: TxOutcome, what: &str) {
    assert_eq!(got, expected, "storage conformance: {what}");
}

async fn transactions(s: &dyn Store) {
    use TxOutcome::{Committed, ConditionFailed};

    expect_outcome(
        tx(s, vec![], vec![], "empty").await,
        Committed,
        "an empty transaction",
    );
    expect_outcome(
        tx(s, vec![absent("tx/none")], vec![], "conditions only").await,
        Committed,
        "a transaction with only conditions",
    );

    // Put and delete in one transaction.
    must(s.put("tx/a", b"1".to_vec()).await, "tx setup");
    let got = tx(
        s,
        vec![],
        vec![put("tx/b", b"2"), del("tx/a")],
        "put+delete",
    )
    .await;
    expect_outcome(got, Committed, "put and delete in one transaction");
    expect_value(s, "tx/a", None, "delete inside a transaction").await;
    expect_value(s, "tx/b", Some(b"2"), "put inside a transaction").await;

    // Conditions are checked against the state before any op.
    let got = tx(s, vec![absent("tx/c")], vec![put("tx/c", b"3")], "create").await;
    expect_outcome(
        got,
        Committed,
        "Absent holds before the op creating the key",
    );
    let got = tx(
        s,
        vec![equals("tx/d", b"x")],
        vec![put("tx/d", b"x")],
        "equals later",
    )
    .await;
    expect_outcome(
        got,
        ConditionFailed { index: 0 },
        "conditions see the state before ops",
    );
    expect_value(s, "tx/d", None, "a failed transaction writes nothing").await;

    // The first failing condition is reported; nothing is written.
    let conditions = vec![
        equals("tx/b", b"2"),
        absent("tx/b"),
        absent("tx/zz"),
        equals("tx/zz", b""),
    ];
    let ops = vec![put("tx/e", b"e"), del("tx/b"), put("tx/c", b"changed")];
    let got = tx(s, conditions, ops, "failing").await;
    expect_outcome(
        got,
        ConditionFailed { index: 1 },
        "the index of the first failed condition",
    );
    expect_value(s, "tx/e", None, "no put of a failed transaction is applied").await;
    expect_value(
        s,
        "tx/b",
        Some(b"2"),
        "no delete of a failed transaction is applied",
    )
    .await;
    expect_value(
        s,
        "tx/c",
        Some(b"3"),
        "no overwrite of a failed transaction is applied",
    )
    .await;
    let got = tx(
        s,
        vec![equals("tx/b", b"2"), equals("tx/c", b"4")],
        vec![put("tx/e", b"e")],
        "2",
    )
    .await;
    expect_outcome(
        got,
        ConditionFailed { index: 1 },
        "the last condition fails",
    );
    expect_value(s, "tx/e", None, "a failed transaction writes nothing").await;

    // Ops apply in order.
    let got = tx(s, vec![], vec![put("tx/o", b"1"), del("tx/o")], "order 1").await;
    expect_outcome(got, Committed, "put then delete");
    expect_value(s, "tx/o", None, "put then delete leaves no value").await;
    let got = tx(s, vec![], vec![del("tx/o"), put("tx/o", b"2")], "order 2").await;
    expect_outcome(got, Committed, "delete then put");
    expect_value(s, "tx/o", Some(b"2"), "delete then put leaves the value").await;
    let got = tx(
        s,
        vec![],
        vec![put("tx/o", b"3"), put("tx/o", b"4")],
        "order 3",
    )
    .await;
    expect_outcome(got, Committed, "two puts");
    expect_value(s, "tx/o", Some(b"4"), "the later put wins").await;

    // An empty value is a value.
    must(s.put("tx/empty", Vec::new()).await, "tx setup");
    let got = tx(s, vec![absent("tx/empty")], vec![], "absent vs empty").await;
    expect_outcome(
        got,
        ConditionFailed { index: 0 },
        "Absent fails on an empty value",
    );
    let got = tx(s, vec![equals("tx/empty", b"")], vec![], "equals empty").await;
    expect_outcome(got, Committed, "Equals(empty) holds on an empty value");
    let got = tx(
        s,
        vec![equals("tx/missing", b"")],
        vec![],
        "equals empty on missing",
    )
    .await;
    expect_outcome(
        got,
        ConditionFailed { index: 0 },
        "Equals(empty) fails on an absent key",
    );

    // Conditions and ops on many keys at once, including a large value.
    let big = vec![7u8; 256 * 1024];
    let ops = (0..50)
        .map(|i| put(&format!("tx/many/{i:02}"), &big))
        .collect();
    expect_outcome(
        tx(s, vec![], ops, "many").await,
        Committed,
        "a 12.5 MiB transaction",
    );
    let conditions = (0..50)
        .map(|i| equals(&format!("tx/many/{i:02}"), &big))
        .collect();
    let ops = (0..50).map(|i| del(&format!("tx/many/{i:02}"))).collect();
    expect_outcome(
        tx(s, conditions, ops, "many").await,
        Committed,
        "50 Equals conditions",
    );
    expect_names(
        &list(s, "tx/many/", None, 100).await,
        &[],
        "50 deletes in one transaction",
    );
}

async fn compare_and_swap(s: &dyn Store) {
    let cas = |key: &'static str, expected: Option<&'static [u8]>, new: Option<&'static [u8]>| async move {
        must(
            s.compare_and_swap(key, expected, new.map(<[u8]>::to_vec))
                .await,
            "compare_and_swap",
        )
    };
    assert!(
        cas("cas/k", None, Some(b"v1")).await,
        "storage conformance: create-only CAS on absent"
    );
    assert!(
        !cas("cas/k", None, Some(b"v9")).await,
        "storage conformance: create-only CAS on present"
    );
    expect_value(
        s,
        "cas/k",
        Some(b"v1"),
        "a failed create-only CAS writes nothing",
    )
    .await;
    assert!(
        !cas("cas/k", Some(b"v0"), Some(b"v2")).await,
        "storage conformance: CAS with a stale value"
    );
    expect_value(s, "cas/k", Some(b"v1"), "a failed CAS writes nothing").await;
    assert!(
        cas("cas/k", Some(b"v1"), Some(b"v2")).await,
        "storage conformance: CAS swap"
    );
    expect_value(s, "cas/k", Some(b"v2"), "CAS swap").await;
    assert!(
        !cas("cas/k", Some(b"v1"), None).await,
        "storage conformance: CAS delete, stale"
    );
    assert!(
        cas("cas/k", Some(b"v2"), None).await,
        "storage conformance: CAS delete"
    );
    expect_value(s, "cas/k", None, "CAS delete").await;
    assert!(
        !cas("cas/k", Some(b"v2"), None).await,
        "storage conformance: CAS on a deleted key"
    );
    assert!(
        cas("cas/k", None, None).await,
        "storage conformance: CAS absent→absent holds"
    );
    assert!(
        !cas("cas/missing", Some(b""), Some(b"x")).await,
        "storage conformance: CAS Some(empty) on absent"
    );
    expect_value(s, "cas/missing", None, "a failed CAS writes nothing").await;
}

async fn join_all(mut tasks: JoinSet<()>, what: &str) {
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = joined {
            panic!("storage conformance: {what}: a task failed: {err}");
        }
    }
}

async fn concurrent_counter(store: Arc<dyn Store>) {
    const TASKS: u64 = 16;
    const INCREMENTS: u64 = 50;
    let mut tasks = JoinSet::new();
    for _ in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            for _ in 0..INCREMENTS {
                let mut attempts = 0u32;
                loop {
                    attempts += 1;
                    assert!(
                        attempts < 100_000,
                        "storage conformance: CAS increment never succeeds"
                    );
                    let current = must(store.get("conc/counter").await, "counter get");
                    let n: u64 = match &current {
                        None => 0,
                        Some(v) => std::str::from_utf8(v)
                            .ok()
                            .and_then(|t| t.parse().ok())
                            .expect("storage conformance: counter holds a number"),
                    };
                    let next = (n + 1).to_string().into_bytes();
                    let swapped = must(
                        store
                            .compare_and_swap("conc/counter", current.as_deref(), Some(next))
                            .await,
                        "counter CAS",
                    );
                    if swapped {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
        });
    }
    join_all(tasks, "concurrent CAS increments").await;
    let total = (TASKS * INCREMENTS).to_string().into_bytes();
    expect_value(
        &*store,
        "conc/counter",
        Some(&total),
        "16 tasks x 50 CAS increments",
    )
    .await;
}

async fn concurrent_puts(store: Arc<dyn Store>) {
    const TASKS: usize = 32;
    const PUTS: usize = 20;
    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            for i in 0..PUTS {
                let key = format!("conc/p/{t:02}/{i:02}");
                must(
                    store.put(&key, key.clone().into_bytes()).await,
                    "concurrent put",
                );
                // Read-your-writes from the writing task.
                expect_value(&*store, &key, Some(key.as_bytes()), "read after own put").await;
            }
        });
    }
    join_all(tasks, "concurrent puts").await;
    let folders = list(&*store, "conc/p/", None, 1000).await;
    assert_eq!(
        folders.len(),
        TASKS,
        "storage conformance: every writer's folder is listed"
    );
    for t in 0..TASKS {
        for i in 0..PUTS {
            let key = format!("conc/p/{t:02}/{i:02}");
            expect_value(
                &*store,
                &key,
                Some(key.as_bytes()),
                "every concurrent put is visible",
            )
            .await;
        }
    }
}

/// Concurrent two-key transfers guarded by `Equals` conditions keep the sum constant.
async fn concurrent_transfers(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const TRANSFERS: usize = 25;
    let encode = |n: i64| n.to_string().into_bytes();
    let outcome = must(
        store
            .transact(Transaction {
                conditions: vec![absent("conc/acct/a"), absent("conc/acct/b")],
                ops: vec![
                    put("conc/acct/a", &encode(1000)),
                    put("conc/acct/b", &encode(1000)),
                ],
            })
            .await,
        "transfer setup",
    );
    assert_eq!(outcome, TxOutcome::Committed);
    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let decode = |v: Option<Vec<u8>>| -> (Vec<u8>, i64) {
                let v = v.expect("storage conformance: account exists");
                let n = std::str::from_utf8(&v).ok().and_then(|t| t.parse().ok());
                (v, n.expect("storage conformance: account holds a number"))
            };
            let (from, to) = if t % 2 == 0 {
                ("conc/acct/a", "conc/acct/b")
            } else {
                ("conc/acct/b", "conc/acct/a")
            };
            for _ in 0..TRANSFERS {
                let mut attempts = 0u32;
                loop {
                    attempts += 1;
                    assert!(
                        attempts < 100_000,
                        "storage conformance: transfer never commits"
                    );
                    let (fv, f) = decode(must(store.get(from).await, "transfer get"));
                    let (tv, to_n) = decode(must(store.get(to).await, "transfer get"));
                    let outcome = must(
                        store
                            .transact(Transaction {
                                conditions: vec![equals(from, &fv), equals(to, &tv)],
                                ops: vec![
                                    put(from, &(f - 3).to_string().into_bytes()),
                                    put(to, &(to_n + 3).to_string().into_bytes()),
                                ],
                            })
                            .await,
                        "transfer",
                    );
                    if outcome == TxOutcome::Committed {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
        });
    }
    join_all(tasks, "concurrent transfers").await;
    let read = |key: &'static str| {
        let store = Arc::clone(&store);
        async move {
            let v = must(store.get(key).await, "transfer total").expect("account exists");
            std::str::from_utf8(&v)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .expect("a number")
        }
    };
    let (a, b) = (read("conc/acct/a").await, read("conc/acct/b").await);
    assert_eq!(
        a + b,
        2000,
        "storage conformance: transfers must be atomic (a={a}, b={b})"
    );
    // Even task counts move equal amounts both ways.
    assert_eq!(
        (a, b),
        (1000, 1000),
        "storage conformance: every transfer applied exactly once"
    );
}

async fn debug_hides_values(s: &dyn Store) {
    let marker = b"conformance-value-marker".to_vec();
    must(s.put("debug/value", marker.clone()).await, "debug setup");
    let shown = format!("{s:?} {s:#?}");
    assert!(
        !shown.contains("conformance-value-marker"),
        "storage conformance: Debug output shows a stored value"
    );
    // The derived Debug of a Vec<u8> prints decimal bytes: "99, 111, 110, 102, ...".
    let as_list = format!("{:?}", &marker[..8]);
    let inner = as_list.trim_start_matches('[').trim_end_matches(']');
    assert!(
        !shown.contains(inner),
        "storage conformance: Debug output shows a stored value as bytes"
    );
}
