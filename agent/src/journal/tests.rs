use super::*;
use flotilla_schemas::{InstanceId, Measurements, RunId, ServiceName, Step};
use time::Duration;

fn command(action: Action, expires_at: OffsetDateTime) -> Command {
    Command {
        schema: Default::default(),
        command_id: CommandId::new(),
        run_id: RunId::new(),
        service: ServiceName::parse("svc").unwrap(),
        instance: InstanceId::parse("a").unwrap(),
        issued_at: expires_at - Duration::minutes(2),
        expires_at,
        action,
    }
}

fn migrate(expires_at: OffsetDateTime) -> Command {
    // About what a real command weighs: a configuration file's content in a step.
    let content = "key = \"value\"\n".repeat(100);
    command(
        Action::Migrate {
            steps: vec![Step::WriteFile {
                path: "config/service.toml".into(),
                content,
                source: None,
                mode: None,
            }],
            health: Vec::new(),
            gates: Default::default(),
            preconditions: Vec::new(),
            checks: Vec::new(),
            workloads: Vec::new(),
        },
        expires_at,
    )
}

/// Journals `command` as finished with `result` and, when `published`, published.
fn finish(journal: &mut Journal, command: &Command, result: Outcome, published: bool) {
    journal
        .append_all(vec![
            Record::Accepted {
                command: command.clone(),
            },
            Record::Finished {
                result: crate::lifecycle::result(command, result, None, Measurements::default()),
            },
        ])
        .unwrap();
    if published {
        journal
            .append_lazily(Record::Published {
                command_id: command.command_id,
            })
            .unwrap();
    }
}

fn retention(now: OffsetDateTime, kept: &dyn Fn(CommandId) -> bool) -> Retention<'_> {
    Retention {
        now,
        remember_after_expiry: Duration::seconds(60),
        backup_kept: kept,
    }
}

const NO_BACKUP: &dyn Fn(CommandId) -> bool = &|_| false;

#[test]
fn the_merged_record_means_backed_up_and_applying_and_old_journals_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        migrate(OffsetDateTime::now_utc()),
        migrate(OffsetDateTime::now_utc()),
    );
    let lines: Vec<String> = [
        Record::Accepted {
            command: old.clone(),
        },
        Record::BackedUp {
            command_id: old.command_id,
        },
        Record::Applying {
            command_id: old.command_id,
        },
        Record::Accepted {
            command: new.clone(),
        },
        Record::Applying {
            command_id: new.command_id,
        },
    ]
    .iter()
    .map(|r| serde_json::to_string(r).unwrap() + "\n")
    .collect();
    std::fs::write(dir.path().join(FILE), lines.concat()).unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    for id in [old.command_id, new.command_id] {
        let entry = journal.get(id).unwrap();
        assert!(entry.backed_up && entry.applying);
    }
    assert_eq!(journal.unfinished().len(), 2);
}

#[test]
fn each_retention_rule_keeps_what_it_must() {
    let now = OffsetDateTime::now_utc();
    let long_ago = now - Duration::hours(1);
    let dir = tempfile::tempdir().unwrap();
    let mut journal = Journal::open(dir.path()).unwrap();
    // Unfinished: a crash interrupted it; recovery needs it, however old.
    let unfinished = migrate(long_ago);
    journal
        .append(Record::Accepted {
            command: unfinished.clone(),
        })
        .unwrap();
    // Finished but not published: the result must still go out.
    let unpublished = migrate(long_ago);
    finish(&mut journal, &unpublished, Outcome::RolledBack, false);
    // A succeeded migration whose backup is kept: a rollback or finalize may still come.
    let with_backup = migrate(long_ago);
    finish(&mut journal, &with_backup, Outcome::Succeeded, true);
    // A succeeded migration, finalized: its backup is gone.
    let finalized = migrate(long_ago);
    finish(&mut journal, &finalized, Outcome::Succeeded, true);
    // Could still be replayed and accepted: not yet past expiry + the cushion.
    let fresh = migrate(now + Duration::minutes(1));
    finish(&mut journal, &fresh, Outcome::Succeeded, true);
    let just_expired = command(
        Action::Finalize {
            migration: CommandId::new(),
        },
        now - Duration::seconds(30),
    );
    finish(&mut journal, &just_expired, Outcome::Finalized, true);
    // Long expired and done: forgotten.
    let expired_refusal = migrate(long_ago);
    finish(&mut journal, &expired_refusal, Outcome::Refused, true);
    let expired_rollback = command(
        Action::Rollback {
            migration: finalized.command_id,
        },
        long_ago,
    );
    finish(&mut journal, &expired_rollback, Outcome::RolledBack, true);

    let kept_backup = with_backup.command_id;
    let backup_kept = move |id| id == kept_backup;
    let rules = retention(now, &backup_kept);
    let why = |c: &Command| rules.keeps(journal.get(c.command_id).unwrap());
    assert_eq!(why(&unfinished), Some("unfinished"));
    assert_eq!(why(&unpublished), Some("result not yet published"));
    assert_eq!(
        why(&with_backup),
        Some("succeeded migration whose backup is kept")
    );
    assert_eq!(why(&fresh), Some("could still be replayed and accepted"));
    assert_eq!(
        why(&just_expired),
        Some("could still be replayed and accepted")
    );
    assert_eq!(why(&finalized), None);
    assert_eq!(why(&expired_refusal), None);
    assert_eq!(why(&expired_rollback), None);

    assert_eq!(journal.compact(&rules).unwrap(), 3);
    let check = |journal: &Journal| {
        for gone in [&finalized, &expired_refusal, &expired_rollback] {
            assert!(journal.get(gone.command_id).is_none());
        }
        assert_eq!(journal.len(), 5);
        assert_eq!(journal.unfinished().len(), 1);
        assert_eq!(
            journal.unfinished()[0].command.as_ref().unwrap().command_id,
            unfinished.command_id
        );
        assert_eq!(journal.unpublished().len(), 1);
        assert_eq!(journal.unpublished()[0].command_id, unpublished.command_id);
        let entry = journal.get(with_backup.command_id).unwrap();
        assert_eq!(
            entry.result.as_ref().map(|r| r.outcome),
            Some(Outcome::Succeeded)
        );
        assert!(entry.published);
    };
    check(&journal);
    // The file says the same: reopened, it folds to the same entries, and appends go on.
    drop(journal);
    let mut journal = Journal::open(dir.path()).unwrap();
    check(&journal);
    finish(&mut journal, &migrate(now), Outcome::Succeeded, true);
    assert_eq!(Journal::open(dir.path()).unwrap().len(), 6);
}

#[test]
fn a_compaction_cut_short_leaves_a_readable_journal_old_or_new() {
    let now = OffsetDateTime::now_utc();
    let dir = tempfile::tempdir().unwrap();
    let mut journal = Journal::open(dir.path()).unwrap();
    let old = migrate(now - Duration::hours(1));
    let fresh = migrate(now + Duration::minutes(5));
    finish(&mut journal, &old, Outcome::Succeeded, true);
    finish(&mut journal, &fresh, Outcome::Succeeded, true);
    let before = std::fs::read(dir.path().join(FILE)).unwrap();

    // Killed after writing the new journal, before the rename: a whole `.tmp`, and a torn
    // one, are ignored (and removed); the old journal is read as it was.
    let mut compacted = Journal::open(dir.path()).unwrap();
    compacted.compact(&retention(now, NO_BACKUP)).unwrap();
    let after = std::fs::read(dir.path().join(FILE)).unwrap();
    for leftover in [&after[..], &after[..after.len() / 2]] {
        std::fs::write(dir.path().join(FILE), &before).unwrap();
        std::fs::write(dir.path().join(COMPACTING), leftover).unwrap();
        let reopened = Journal::open(dir.path()).unwrap();
        assert_eq!(reopened.len(), 2);
        assert!(!dir.path().join(COMPACTING).exists());
    }
    // Killed after the rename: the new journal.
    std::fs::write(dir.path().join(FILE), &after).unwrap();
    let reopened = Journal::open(dir.path()).unwrap();
    assert_eq!(reopened.len(), 1);
    assert!(reopened.get(fresh.command_id).is_some());
}

/// 5,000 finished commands, compacted as the agent does after each: the entries in memory
/// and the file on disk stay bounded, instead of growing with every command.
#[test]
fn memory_and_file_stay_bounded_over_5000_commands() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = Journal::open(dir.path()).unwrap();
    let (mut max_entries, mut max_bytes, mut compactions) = (0, 0, 0);
    for n in 0..5_000 {
        // Each command expired well before the next arrives (as on a quiet agent, minutes
        // apart), alternately a migration and its finalize.
        let now = OffsetDateTime::now_utc();
        let command = if n % 2 == 0 {
            migrate(now - Duration::hours(1))
        } else {
            command(
                Action::Finalize {
                    migration: CommandId::new(),
                },
                now - Duration::hours(1),
            )
        };
        let result = if n % 2 == 0 {
            Outcome::Succeeded
        } else {
            Outcome::Finalized
        };
        finish(&mut journal, &command, result, true);
        max_entries = max_entries.max(journal.len());
        max_bytes = max_bytes.max(journal.bytes());
        if journal.compaction_due() {
            journal.compact(&retention(now, NO_BACKUP)).unwrap();
            compactions += 1;
        }
    }
    assert!(compactions >= 4, "{compactions} compactions");
    assert!(max_entries <= COMPACT_ENTRIES + 1, "{max_entries} entries");
    assert!(max_bytes <= COMPACT_BYTES + (64 << 10), "{max_bytes} bytes");
    let on_disk = std::fs::metadata(dir.path().join(FILE)).unwrap().len();
    assert!(
        on_disk <= COMPACT_BYTES + (64 << 10),
        "{on_disk} bytes on disk"
    );
    assert_eq!(on_disk, journal.bytes());
    assert!(Journal::open(dir.path()).unwrap().len() <= COMPACT_ENTRIES + 1);
}

/// Entries that must be kept are kept however many there are; the journal then compacts
/// again only once it has doubled, not after every command.
#[test]
fn a_journal_of_needed_entries_is_not_rewritten_after_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = Journal::open(dir.path()).unwrap();
    let now = OffsetDateTime::now_utc();
    let mut compactions = 0;
    for _ in 0..3_000 {
        let command = command(
            Action::Finalize {
                migration: CommandId::new(),
            },
            now + Duration::minutes(5),
        );
        finish(&mut journal, &command, Outcome::Finalized, true);
        if journal.compaction_due() {
            assert_eq!(journal.compact(&retention(now, NO_BACKUP)).unwrap(), 0);
            compactions += 1;
        }
    }
    assert_eq!(journal.len(), 3_000);
    assert!(compactions <= 2, "{compactions} compactions");
}
