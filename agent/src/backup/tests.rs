use rustix::fs::{CWD, RenameFlags};

use super::swap::sibling;
use super::*;

#[test]
fn the_space_check_reads_only_even_before_the_first_backup() {
    let (tmp, root, store) = setup();
    let needed = store.check_space(&root).unwrap();
    assert!(needed > 0);
    // The dry run's check creates nothing, not even the backup directory.
    assert!(!tmp.path().join("state").exists());
    let limited = store.with_limit(Some(1));
    assert!(matches!(
        limited.check_space(&root),
        Err(BackupError::OverLimit { limit: 1, .. })
    ));
}

/// A service root with a few kinds of entries, and a store beside it.
fn setup() -> (tempfile::TempDir, PathBuf, BackupStore) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("svc");
    fs::create_dir_all(root.join("config/empty")).unwrap();
    fs::write(root.join("config/a.toml"), "a = 1\n").unwrap();
    fs::write(root.join("legacy.conf"), "x=1\n").unwrap();
    std::os::unix::fs::symlink("config/a.toml", root.join("current")).unwrap();
    let store = BackupStore::new(&tmp.path().join("state"));
    (tmp, root, store)
}

fn change(root: &Path) {
    fs::write(root.join("config/a.toml"), "changed").unwrap();
    fs::remove_file(root.join("legacy.conf")).unwrap();
    fs::write(root.join("new.toml"), "").unwrap();
}

fn same(before: &Manifest, root: &Path) -> bool {
    tree::differences(before, &tree::scan(root).unwrap()).is_empty()
}

fn ino(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().ino()
}

#[test]
fn take_then_restore_swaps_the_backup_in_and_consumes_it() {
    let (_tmp, root, store) = setup();
    let before = tree::scan(&root).unwrap();
    let id = CommandId::new();
    let backup = store.take(&root, id).unwrap();
    assert_eq!(backup.manifest, before);
    let backup_ino = ino(&backup.tree);

    change(&root);
    let changed = tree::scan(&root).unwrap();
    let restored = store.restore(id, &root).unwrap();
    // O(1): the root *is* the backup's tree now, nothing was copied.
    assert_eq!(ino(&root), backup_ino);
    assert!(same(&before, &root));
    let Restored::Swapped {
        swapped_out: Some(out),
    } = restored
    else {
        panic!("{restored:?}")
    };
    // The tree that was the root waits under a discard name, never as a backup.
    assert!(same(&changed, &out));
    assert!(!backup.tree.exists());
    assert!(store.is_restored(id) && store.exists(id));
    assert_eq!(store.load(id).unwrap().manifest, before);
    remove_swapped_out(&out);
    assert!(!out.exists());
    assert!(!sibling(&root, "restore").exists());

    // Consumed: a second restore does nothing and says so.
    assert_eq!(store.restore(id, &root).unwrap(), Restored::AlreadyRestored);
    assert!(same(&before, &root));

    store.discard(id).unwrap();
    assert!(matches!(store.load(id), Err(BackupError::Missing(_))));
    assert!(!store.exists(id));
}

#[test]
fn restore_recreates_a_deleted_root() {
    let (_tmp, root, store) = setup();
    let before = tree::scan(&root).unwrap();
    let id = CommandId::new();
    store.take(&root, id).unwrap();
    fs::remove_dir_all(&root).unwrap();
    assert_eq!(
        store.restore(id, &root).unwrap(),
        Restored::Swapped { swapped_out: None }
    );
    assert!(same(&before, &root));
}

#[test]
fn a_damaged_backup_is_not_swapped_in() {
    let (_tmp, root, store) = setup();
    let id = CommandId::new();
    let backup = store.take(&root, id).unwrap();
    change(&root);
    let changed = tree::scan(&root).unwrap();
    fs::remove_file(backup.tree.join("legacy.conf")).unwrap();
    let err = store.restore(id, &root).unwrap_err();
    assert!(
        matches!(&err, BackupError::Damaged { detail, .. } if detail.contains("legacy.conf: missing")),
        "{err}"
    );
    assert!(same(&changed, &root));
    assert!(!store.is_restored(id));
}

/// kill -9 right after the exchange: the next restore recognises the root as the backup's
/// tree (by its inode) and finishes, instead of swapping the old tree back in.
#[test]
fn a_restore_cut_short_after_its_swap_is_finished_not_redone() {
    let (_tmp, root, store) = setup();
    let before = tree::scan(&root).unwrap();
    let id = CommandId::new();
    let backup = store.take(&root, id).unwrap();
    change(&root);
    let changed = tree::scan(&root).unwrap();
    rustix::fs::renameat_with(CWD, &backup.tree, CWD, &root, RenameFlags::EXCHANGE).unwrap();

    let Restored::Swapped {
        swapped_out: Some(out),
    } = store.restore(id, &root).unwrap()
    else {
        panic!("not finished as a swap")
    };
    assert!(same(&before, &root));
    assert!(same(&changed, &out));

    // Cut short again, after the rename to the discard name but before the marker.
    fs::remove_file(store.path(id).join(RESTORED)).unwrap();
    assert_eq!(
        store.restore(id, &root).unwrap(),
        Restored::Swapped {
            swapped_out: Some(out.clone())
        }
    );
    assert!(same(&before, &root));
    assert_eq!(store.sweep(), vec![out]);
}

/// The two-rename fallback (file systems without RENAME_EXCHANGE), cut between its renames:
/// no root; the backup's tree is still whole, so the restore puts it in place.
#[test]
fn a_restore_cut_short_without_a_root_puts_the_backup_in_place() {
    let (_tmp, root, store) = setup();
    let before = tree::scan(&root).unwrap();
    let id = CommandId::new();
    store.take(&root, id).unwrap();
    change(&root);
    fs::rename(&root, store.path(id).join(DISCARD)).unwrap();
    let restored = store.restore(id, &root).unwrap();
    assert!(matches!(
        restored,
        Restored::Swapped {
            swapped_out: Some(_)
        }
    ));
    assert!(same(&before, &root));
}

/// A backup written before `tree.id` existed is restored the same way.
#[test]
fn a_backup_without_a_tree_id_is_restored() {
    let (_tmp, root, store) = setup();
    let before = tree::scan(&root).unwrap();
    let id = CommandId::new();
    store.take(&root, id).unwrap();
    fs::remove_file(store.path(id).join(TREE_ID)).unwrap();
    change(&root);
    assert!(matches!(
        store.restore(id, &root).unwrap(),
        Restored::Swapped { .. }
    ));
    assert!(same(&before, &root));
}

/// When neither tree carries the recorded inode, the full comparison decides.
#[test]
fn without_a_usable_tree_id_the_full_comparison_decides() {
    let (_tmp, root, store) = setup();
    let before = tree::scan(&root).unwrap();
    let id = CommandId::new();
    let backup = store.take(&root, id).unwrap();
    change(&root);
    rustix::fs::renameat_with(CWD, &backup.tree, CWD, &root, RenameFlags::EXCHANGE).unwrap();
    fs::write(store.path(id).join(TREE_ID), "1").unwrap();
    assert!(matches!(
        store.restore(id, &root).unwrap(),
        Restored::Swapped {
            swapped_out: Some(_)
        }
    ));
    assert!(same(&before, &root));
}

/// Backups behind another mount of the same file system (a bind mount, as systemd's
/// `ReadWritePaths=` and `StateDirectory=` make): same `st_dev`, but a rename across the
/// mounts fails with EXDEV; the restore falls back to the copy, changing nothing first.
#[test]
fn a_backup_behind_a_bind_mount_is_copied() {
    let (tmp, root, _) = setup();
    let (real, mounted) = (tmp.path().join("real"), tmp.path().join("mounted"));
    fs::create_dir_all(&real).unwrap();
    fs::create_dir_all(&mounted).unwrap();
    let bound = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&real)
        .arg(&mounted)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !bound {
        eprintln!("cannot bind-mount here (needs root): the EXDEV fallback is not exercised");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mounted.clone());
    let store = BackupStore::in_dir(&mounted.join("backups"));
    let before = tree::scan(&root).unwrap();
    let id = CommandId::new();
    store.take(&root, id).unwrap();
    change(&root);
    assert_eq!(store.restore(id, &root).unwrap(), Restored::Copied);
    assert!(same(&before, &root));
    assert!(!store.is_restored(id));
    assert!(same(&before, &store.load(id).unwrap().tree));
}

/// A backup on another file system than the root is copied in and kept.
#[test]
fn a_backup_on_another_file_system_is_copied_and_kept() {
    let (_tmp, root, _) = setup();
    let Ok(elsewhere) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("no /dev/shm: the copy fallback is covered by the bench only");
        return;
    };
    if fs::metadata(elsewhere.path()).unwrap().dev() == fs::metadata(&root).unwrap().dev() {
        eprintln!("/dev/shm is on the root's file system here");
        return;
    }
    let store = BackupStore::in_dir(elsewhere.path());
    let before = tree::scan(&root).unwrap();
    let id = CommandId::new();
    let backup = store.take(&root, id).unwrap();
    change(&root);
    assert_eq!(store.restore(id, &root).unwrap(), Restored::Copied);
    assert!(same(&before, &root));
    assert!(same(&before, &backup.tree));
    assert!(!store.is_restored(id));
    // Still whole: a second rollback restores again.
    change(&root);
    assert_eq!(store.restore(id, &root).unwrap(), Restored::Copied);
    assert!(same(&before, &root));
    assert!(!sibling(&root, "restore").exists());
}

/// What a power loss before the one barrier may leave of a backup taken unsynced: nothing, the
/// partial directory, or the renamed one without a readable manifest. None of them is complete
/// (recovery then answers "nothing had changed"); the whole backup, synced or not, and a
/// consumed one are.
#[test]
fn only_a_backup_with_its_manifest_in_place_is_complete() {
    let (tmp, root, store) = setup();
    let id = CommandId::new();
    assert!(!store.is_complete(id), "no backup at all");
    let backup = store.take_unsynced(&root, id).unwrap();
    assert!(store.is_complete(id));
    store.sync().unwrap();
    assert!(store.is_complete(id));
    assert!(store.shares_file_system_with(tmp.path()));

    let done = backup.tree.parent().unwrap().to_owned();
    fs::write(done.join(MANIFEST), "{\"entr").unwrap();
    assert!(!store.is_complete(id), "a torn manifest");
    fs::remove_file(done.join(MANIFEST)).unwrap();
    assert!(!store.is_complete(id), "no manifest");
    fs::rename(&done, store.partial_path(id)).unwrap();
    assert!(!store.is_complete(id), "the rename lost");

    let consumed = CommandId::new();
    store.take(&root, consumed).unwrap();
    change(&root);
    store.restore(consumed, &root).unwrap();
    assert!(
        store.is_complete(consumed),
        "a consumed backup is restored, not torn"
    );
}
