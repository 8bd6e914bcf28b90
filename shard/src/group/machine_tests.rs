//! The state machine's own tests: log order, restarts, runs of upserts.

use super::*;
use crate::group::snapshot::NoSource;
use crate::store::edge::EdgeStore;

fn entry(index: u64, cmd: Option<Command>) -> Entry {
    Entry {
        index,
        term: 1,
        data: cmd.map(|c| c.encode()).unwrap_or_default().into(),
        ..Default::default()
    }
}

fn point(id: &str, x: f32) -> Point {
    let mut vector = vec![0.0; 4];
    vector[0] = x;
    Point {
        id: id.into(),
        vector,
        payload: Default::default(),
    }
}

#[test]
fn applies_in_order_once_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let store: Arc<dyn VectorStore> =
            Arc::new(EdgeStore::open(&dir.path().join("shard"), 4, &Default::default()).unwrap());
        StateMachine::open(1, store, Arc::new(NoSource), dir.path()).unwrap()
    };
    let entries = vec![
        entry(1, None),
        entry(
            2,
            Some(Command::Upsert(vec![point("a", 1.0), point("b", 2.0)])),
        ),
        entry(3, Some(Command::Delete(vec!["a".into()]))),
        entry(4, Some(Command::Upsert(vec![point("c", f32::NAN)]))),
    ];
    {
        let mut m = open();
        let out = m.apply(&entries[..3]).unwrap();
        assert_eq!(
            out,
            vec![
                (1, Applied::Noop),
                (2, Applied::Write(2)),
                (3, Applied::Write(1))
            ]
        );
        assert_eq!(m.applied().index, 3);
    }
    let mut m = open();
    assert_eq!(m.applied().index, 3);
    // Entries already applied are skipped; the bad one is rejected, not fatal.
    let out = m.apply(&entries).unwrap();
    assert_eq!(out.len(), 1);
    assert!(matches!(out[0], (4, Applied::Rejected(_))), "{out:?}");
    let ids: Vec<String> = m
        .store()
        .get(&["a".into(), "b".into()], false)
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, vec!["b".to_string()]);
}

#[test]
fn runs_of_upserts_apply_as_one_write_and_keep_log_order() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn VectorStore> =
        Arc::new(EdgeStore::open(&dir.path().join("shard"), 4, &Default::default()).unwrap());
    let mut m = StateMachine::open(1, store, Arc::new(NoSource), dir.path()).unwrap();
    let entries = vec![
        entry(
            1,
            Some(Command::Upsert(vec![point("a", 1.0), point("b", 1.0)])),
        ),
        entry(2, Some(Command::Upsert(vec![point("c", 1.0)]))),
        // The same id again: must land after entry 1's, not be merged with it.
        entry(3, Some(Command::Upsert(vec![point("a", 2.0)]))),
        entry(4, Some(Command::Upsert(vec![point("", 1.0)]))),
        entry(5, Some(Command::Delete(vec!["b".into()]))),
        entry(6, Some(Command::Upsert(vec![point("b", 3.0)]))),
    ];
    let out = m.apply(&entries).unwrap();
    let kinds: Vec<_> = out.iter().map(|(i, a)| (*i, a.clone())).collect();
    assert_eq!(kinds[0], (1, Applied::Write(2)));
    assert_eq!(kinds[1], (2, Applied::Write(1)));
    assert_eq!(kinds[2], (3, Applied::Write(1)));
    assert!(matches!(kinds[3], (4, Applied::Rejected(_))));
    assert_eq!(kinds[4], (5, Applied::Write(1)));
    assert_eq!(kinds[5], (6, Applied::Write(1)));
    let got = m
        .store()
        .get(&["a".into(), "b".into(), "c".into()], true)
        .unwrap();
    let first: Vec<f32> = got.iter().map(|p| p.vector.as_ref().unwrap()[0]).collect();
    assert_eq!(first, vec![2.0, 3.0, 1.0]);
    assert_eq!(m.applied().index, 6);
}
