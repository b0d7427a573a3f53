use super::*;

fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("config/empty")).unwrap();
    fs::write(root.join("config/service.toml"), "port = 1\n").unwrap();
    fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    symlink("config/service.toml", root.join("current.toml")).unwrap();
    symlink("/etc/passwd", root.join("outside")).unwrap();
}

#[test]
fn copy_keeps_contents_modes_symlinks_and_empty_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let (from, to) = (tmp.path().join("from"), tmp.path().join("to"));
    fs::create_dir(&from).unwrap();
    sample_tree(&from);
    let manifest = copy_tree(&from, &to).unwrap();
    assert_eq!(manifest, scan(&from).unwrap());
    assert_eq!(
        differences(&manifest, &scan(&to).unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(manifest.files(), 2);
    assert!(manifest.entries.contains_key("config/empty"));
    assert_eq!(
        fs::read_link(to.join("outside")).unwrap(),
        PathBuf::from("/etc/passwd")
    );
}

#[test]
fn stat_differences_see_kinds_modes_sizes_and_links_but_not_contents() {
    let tmp = tempfile::tempdir().unwrap();
    sample_tree(tmp.path());
    let manifest = scan(tmp.path()).unwrap();
    assert!(stat_differences(tmp.path(), &manifest).unwrap().is_empty());
    // Same size, other bytes: only the full check sees it.
    fs::write(tmp.path().join("run.sh"), "#!/bin/XX\n").unwrap();
    assert!(stat_differences(tmp.path(), &manifest).unwrap().is_empty());
    assert_eq!(
        differences(&manifest, &scan(tmp.path()).unwrap()),
        vec!["run.sh: differs"]
    );
    fs::write(tmp.path().join("config/service.toml"), "port = 12\n").unwrap();
    fs::set_permissions(tmp.path().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(tmp.path().join("current.toml")).unwrap();
    symlink("elsewhere", tmp.path().join("current.toml")).unwrap();
    fs::remove_dir(tmp.path().join("config/empty")).unwrap();
    fs::write(tmp.path().join("new"), "").unwrap();
    let mut diff = stat_differences(tmp.path(), &manifest).unwrap();
    diff.sort();
    assert_eq!(
        diff,
        vec![
            "config/empty: missing",
            "config/service.toml: differs",
            "current.toml: differs",
            "new: unexpected",
            "run.sh: differs",
        ]
    );
}

#[test]
fn differences_name_every_changed_path() {
    let tmp = tempfile::tempdir().unwrap();
    sample_tree(tmp.path());
    let before = scan(tmp.path()).unwrap();
    fs::write(tmp.path().join("run.sh"), "changed").unwrap();
    fs::remove_file(tmp.path().join("current.toml")).unwrap();
    fs::write(tmp.path().join("new"), "").unwrap();
    let diff = differences(&before, &scan(tmp.path()).unwrap());
    assert_eq!(
        diff,
        vec![
            "current.toml: missing",
            "run.sh: differs",
            "new: unexpected"
        ]
    );
}
