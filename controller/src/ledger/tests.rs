use super::*;

fn entry(reconcile: u64, service: &str) -> Entry {
    Entry {
        seq: 0,
        controller: "tend@test".into(),
        reconcile,
        at: 1_700_000_000.0 + reconcile as f64,
        duration_seconds: 0.5,
        trigger: "schedule".into(),
        who: "schedule".into(),
        revision: Some("abc".into()),
        result: "success".into(),
        error: None,
        overrode: vec![],
        plan: None,
        actions: vec![ActionEntry {
            kind: "upgrade".into(),
            service: service.into(),
            host: "h1".into(),
            result: "succeeded".into(),
            version_before: Some("1".into()),
            version_after: Some("2".into()),
            message: None,
            output: "ok\n".into(),
            duration_seconds: 1.5,
        }],
    }
}

fn cfg(max_bytes: u64, keep: usize) -> LedgerConfig {
    LedgerConfig {
        path: None,
        max_bytes,
        keep,
    }
}

#[test]
fn entries_come_back_newest_first_and_numbering_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/ledger.jsonl");
    let l = Ledger::open(path.clone(), &LedgerConfig::default()).unwrap();
    for i in 1..=3 {
        l.append(entry(i, "api")).unwrap();
    }
    drop(l);
    let l = Ledger::open(path, &LedgerConfig::default()).unwrap();
    let e = l.append(entry(1, "api")).unwrap();
    assert_eq!(e.seq, 4, "a restart starts reconcile ids again, not seq");
    let p = l.page(10, None, None).unwrap();
    let seqs: Vec<u64> = p.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![4, 3, 2, 1]);
    assert_eq!(p.next_before, None);
}

#[test]
fn pages_follow_before_until_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let l = Ledger::open(dir.path().join("l.jsonl"), &LedgerConfig::default()).unwrap();
    for i in 1..=5 {
        l.append(entry(i, if i % 2 == 0 { "db" } else { "api" }))
            .unwrap();
    }
    let p = l.page(2, None, None).unwrap();
    assert_eq!(p.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 4]);
    assert_eq!(p.next_before, Some(4));
    let p = l.page(2, Some(4), None).unwrap();
    assert_eq!(p.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 2]);
    let p = l.page(2, Some(2), None).unwrap();
    assert_eq!(p.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
    assert_eq!(p.next_before, None);
    let db = l.page(10, None, Some("db")).unwrap();
    assert_eq!(db.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 2]);
}

#[test]
fn rotation_keeps_n_files_and_reads_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.jsonl");
    let one = serde_json::to_string(&entry(1, "api")).unwrap().len() as u64 + 1;
    // Two entries per file, two rotated files kept: nine entries leave
    // [5, 6] [7, 8] and the current [9].
    let l = Ledger::open(path.clone(), &cfg(2 * one + 2, 2)).unwrap();
    for i in 1..=9 {
        l.append(entry(i, "api")).unwrap();
    }
    assert!(dir.path().join("l.jsonl.1").exists());
    assert!(dir.path().join("l.jsonl.2").exists());
    assert!(!dir.path().join("l.jsonl.3").exists());
    let all = l.read_all().unwrap();
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![5, 6, 7, 8, 9]);
    drop(l);
    let l = Ledger::open(path, &cfg(2 * one + 2, 2)).unwrap();
    assert_eq!(l.append(entry(1, "api")).unwrap().seq, 10);
}

#[test]
fn a_torn_last_line_is_skipped_and_the_next_entry_still_lands() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.jsonl");
    let l = Ledger::open(path.clone(), &LedgerConfig::default()).unwrap();
    l.append(entry(1, "api")).unwrap();
    drop(l);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"seq\":2,\"contr").unwrap();
    drop(f);
    let l = Ledger::open(path, &LedgerConfig::default()).unwrap();
    assert_eq!(l.read_all().unwrap().len(), 1);
    l.append(entry(2, "api")).unwrap();
    let seqs: Vec<u64> = l.read_all().unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
}
