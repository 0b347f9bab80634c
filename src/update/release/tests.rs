//! Tests of installing, flipping, listing and pruning releases in a scratch install root,
//! hostile symlinks included.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::symlink;

use super::*;

/// A payload with two programs, a data file and a symlink.
fn payload(dir: &Path, marker: &str) -> PathBuf {
    let payload = dir.join("payload");
    fs::create_dir_all(payload.join("bin")).unwrap();
    fs::create_dir_all(payload.join("share/doc")).unwrap();
    write_executable(&payload.join("bin/mcp-raspi-server"), &format!("server {marker}"));
    write_executable(&payload.join("bin/raspi-ops-agent"), "agent");
    fs::write(payload.join("share/doc/README"), "read me").unwrap();
    symlink("mcp-raspi-server", payload.join("bin/server-alias")).unwrap();
    payload
}

fn write_executable(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// An empty install root, `opt` under `dir`.
fn install_root(dir: &Path) -> PathBuf {
    let root = dir.join("opt");
    fs::create_dir(&root).unwrap();
    root
}

fn link_of(root: &Path) -> PathBuf {
    fs::read_link(root.join(CURRENT_LINK)).unwrap()
}

fn names(dir: &Path) -> Vec<OsString> {
    sorted_entries(dir).unwrap()
}

/// A directory outside the install root that must survive every operation.
fn bystander(dir: &Path) -> PathBuf {
    let outside = dir.join("outside");
    fs::create_dir_all(outside.join("1.0/bin")).unwrap();
    fs::create_dir_all(outside.join("2.0")).unwrap();
    fs::write(outside.join("precious"), "keep").unwrap();
    outside
}

fn assert_untouched(outside: &Path) {
    assert_eq!(names(outside), ["1.0", "2.0", "precious"]);
    assert_eq!(fs::read_to_string(outside.join("precious")).unwrap(), "keep");
    assert_eq!(fs::metadata(outside.join("1.0")).unwrap().permissions().mode() & 0o777, 0o755);
}

#[test]
fn installing_a_payload_creates_the_release_and_leaves_no_partial_directory() {
    let dir = tempfile::tempdir().unwrap();
    let payload = payload(dir.path(), "a");
    let root = install_root(dir.path());
    let release = install_release(&payload, &root, "0.1.0").unwrap();
    assert_eq!(release, root.join("releases/0.1.0"));
    assert_eq!(fs::read_to_string(release.join("bin/mcp-raspi-server")).unwrap(), "server a");
    assert_eq!(fs::read_to_string(release.join("share/doc/README")).unwrap(), "read me");
    assert_eq!(fs::read_link(release.join("bin/server-alias")).unwrap(), Path::new("mcp-raspi-server"));
    for path in [release.clone(), release.join("bin"), release.join("share/doc")] {
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o755, "{}", path.display());
    }
    assert_eq!(fs::metadata(release.join("bin/raspi-ops-agent")).unwrap().mode() & 0o777, 0o755);
    assert_eq!(names(&root.join("releases")), ["0.1.0"]);
}

#[test]
fn files_are_hard_linked_when_the_filesystem_allows() {
    let dir = tempfile::tempdir().unwrap();
    let payload = payload(dir.path(), "a");
    fs::create_dir(dir.path().join("opt")).unwrap();
    let release = install_release(&payload, &dir.path().join("opt"), "0.1.0").unwrap();
    let (a, b) = (
        fs::metadata(payload.join("bin/mcp-raspi-server")).unwrap(),
        fs::metadata(release.join("bin/mcp-raspi-server")).unwrap(),
    );
    assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
}

#[test]
fn a_copied_file_keeps_its_contents_and_mode_but_not_set_id_bits() {
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("from");
    fs::write(&from, vec![7u8; 200_000]).unwrap();
    fs::set_permissions(&from, fs::Permissions::from_mode(0o4750)).unwrap();
    let target_dir = open_root(dir.path()).unwrap();
    copy_file(&from, &target_dir, OsStr::new("to"), &dir.path().join("to")).unwrap();
    let to = dir.path().join("to");
    assert_eq!(fs::read(&to).unwrap(), vec![7u8; 200_000]);
    assert_eq!(fs::metadata(&to).unwrap().mode() & 0o7777, 0o750);
    assert_ne!(fs::metadata(&from).unwrap().ino(), fs::metadata(&to).unwrap().ino());
}

#[test]
fn installing_the_same_version_again_is_a_no_op_when_the_contents_match() {
    let dir = tempfile::tempdir().unwrap();
    let payload = payload(dir.path(), "a");
    let root = install_root(dir.path());
    install_release(&payload, &root, "0.1.0").unwrap();
    // Like an upgrade by dpkg: the payload's file is replaced, with the same contents.
    let server = payload.join("bin/mcp-raspi-server");
    fs::remove_file(&server).unwrap();
    write_executable(&server, "server a");
    assert_eq!(install_release(&payload, &root, "0.1.0").unwrap(), root.join("releases/0.1.0"));
}

#[test]
fn installing_different_contents_under_an_installed_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let payload = payload(dir.path(), "a");
    let root = install_root(dir.path());
    install_release(&payload, &root, "0.1.0").unwrap();
    let server = payload.join("bin/mcp-raspi-server");
    fs::remove_file(&server).unwrap();
    write_executable(&server, "server b");
    let err = install_release(&payload, &root, "0.1.0").unwrap_err();
    assert!(matches!(err, ReleaseError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("other contents"), "{err}");
    assert_eq!(fs::read_to_string(root.join("releases/0.1.0/bin/mcp-raspi-server")).unwrap(), "server a");
}

#[test]
fn an_interrupted_install_is_replaced_by_a_complete_one() {
    let dir = tempfile::tempdir().unwrap();
    let payload = payload(dir.path(), "a");
    let root = dir.path().join("opt");
    fs::create_dir_all(root.join("releases/0.2.0.partial/bin")).unwrap();
    fs::write(root.join("releases/0.2.0.partial/bin/half"), "x").unwrap();
    let release = install_release(&payload, &root, "0.2.0").unwrap();
    assert!(!release.join("bin/half").exists());
    assert!(!root.join("releases/0.2.0.partial").exists());
}

#[test]
fn a_partial_directory_swapped_for_a_symlink_is_removed_as_a_link_and_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = bystander(dir.path());
    let root = dir.path().join("opt");
    fs::create_dir_all(root.join("releases")).unwrap();
    symlink(&outside, root.join("releases/0.3.0.partial")).unwrap();
    install_release(&payload(dir.path(), "a"), &root, "0.3.0").unwrap();
    assert_untouched(&outside);
    assert_eq!(names(&root.join("releases")), ["0.3.0"]);
}

#[test]
fn a_releases_directory_swapped_for_a_symlink_is_refused_by_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let outside = bystander(dir.path());
    let root = install_root(dir.path());
    symlink(&outside, root.join("releases")).unwrap();
    assert!(install_release(&payload(dir.path(), "a"), &root, "1.0").is_err());
    assert!(flip_current(&root, "1.0").is_err());
    assert!(prune(&root, 0).is_err());
    assert!(list_releases(&root).is_err());
    assert_untouched(&outside);
    assert!(fs::symlink_metadata(root.join(CURRENT_LINK)).is_err());
}

#[test]
fn a_lock_file_that_is_a_symlink_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = install_root(dir.path());
    symlink(dir.path().join("created-by-root"), root.join(LOCK_FILE)).unwrap();
    assert!(install_release(&payload(dir.path(), "a"), &root, "1.0").is_err());
    assert!(!dir.path().join("created-by-root").exists());
}

#[test]
fn a_payload_without_bin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("payload/share")).unwrap();
    fs::create_dir(dir.path().join("opt")).unwrap();
    let err = install_release(&dir.path().join("payload"), &dir.path().join("opt"), "0.1.0").unwrap_err();
    assert!(matches!(err, ReleaseError::BadPayload(_)), "{err}");
}

#[test]
fn flipping_points_current_at_the_release_with_a_relative_link() {
    let dir = tempfile::tempdir().unwrap();
    let payload = payload(dir.path(), "a");
    let root = install_root(dir.path());
    install_release(&payload, &root, "0.1.0").unwrap();
    assert_eq!(flip_current(&root, "0.1.0").unwrap(), None);
    assert_eq!(link_of(&root), Path::new("releases/0.1.0"));
    assert_eq!(current_version(&root).unwrap().as_deref(), Some("0.1.0"));
    assert_eq!(fs::read_to_string(root.join("current/bin/mcp-raspi-server")).unwrap(), "server a");
    assert_eq!(names(&root), [".lock", "current", "releases"]);
}

#[test]
fn flipping_again_moves_current_and_answers_the_previous_version() {
    let dir = tempfile::tempdir().unwrap();
    let root = install_root(dir.path());
    install_release(&payload(&dir.path().join("a"), "a"), &root, "0.1.0").unwrap();
    install_release(&payload(&dir.path().join("b"), "b"), &root, "0.2.0").unwrap();
    flip_current(&root, "0.1.0").unwrap();
    assert_eq!(flip_current(&root, "0.2.0").unwrap().as_deref(), Some("0.1.0"));
    assert_eq!(fs::read_to_string(root.join("current/bin/mcp-raspi-server")).unwrap(), "server b");
    // Flipping to the active release is harmless.
    assert_eq!(flip_current(&root, "0.2.0").unwrap().as_deref(), Some("0.2.0"));
    assert_eq!(list_releases(&root).unwrap(), ["0.1.0", "0.2.0"]);
}

#[test]
fn flipping_to_a_release_that_is_not_installed_leaves_current_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = install_root(dir.path());
    install_release(&payload(dir.path(), "a"), &root, "0.1.0").unwrap();
    flip_current(&root, "0.1.0").unwrap();
    let err = flip_current(&root, "0.9.0").unwrap_err();
    assert!(matches!(err, ReleaseError::NotInstalled { .. }), "{err}");
    assert_eq!(link_of(&root), Path::new("releases/0.1.0"));
}

#[test]
fn a_current_that_is_a_real_directory_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let root = install_root(dir.path());
    install_release(&payload(dir.path(), "a"), &root, "0.1.0").unwrap();
    fs::create_dir_all(root.join("current/bin")).unwrap();
    let err = flip_current(&root, "0.1.0").unwrap_err();
    assert!(matches!(err, ReleaseError::BadCurrent { .. }), "{err}");
    assert!(root.join("current/bin").is_dir());
    assert!(current_version(&root).is_err());
}

#[test]
fn no_current_link_means_no_current_version() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(current_version(dir.path()).unwrap(), None);
    symlink("/usr/bin", dir.path().join(CURRENT_LINK)).unwrap();
    assert!(current_version(dir.path()).is_err());
}

#[test]
fn pruning_keeps_the_newest_releases_and_always_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = install_root(dir.path());
    for (i, v) in ["0.9.0", "0.10.0", "0.10.0~rc1", "0.2.0", "1:0.1.0"].iter().enumerate() {
        install_release(&payload(&dir.path().join(i.to_string()), v), &root, v).unwrap();
    }
    flip_current(&root, "0.2.0").unwrap();
    fs::create_dir_all(root.join("releases/3.0.partial/bin")).unwrap();
    symlink("releases/0.9.0", root.join(".current.new-1")).unwrap();
    assert_eq!(list_releases(&root).unwrap(), ["0.2.0", "0.9.0", "0.10.0~rc1", "0.10.0", "1:0.1.0"]);
    let removed = prune(&root, 2).unwrap();
    assert_eq!(removed, ["0.9.0", "0.10.0~rc1"]);
    assert_eq!(list_releases(&root).unwrap(), ["0.2.0", "0.10.0", "1:0.1.0"]);
    assert!(!root.join("releases/3.0.partial").exists());
    assert!(fs::symlink_metadata(root.join(".current.new-1")).is_err());
    assert_eq!(prune(&root, 0).unwrap(), ["0.10.0", "1:0.1.0"]);
    assert_eq!(list_releases(&root).unwrap(), ["0.2.0"]);
}

#[test]
fn pruning_never_removes_a_protected_release() {
    let dir = tempfile::tempdir().unwrap();
    let root = install_root(dir.path());
    for (i, v) in ["0.1.0", "0.2.0", "0.3.0", "0.4.0"].iter().enumerate() {
        install_release(&payload(&dir.path().join(i.to_string()), v), &root, v).unwrap();
    }
    flip_current(&root, "0.4.0").unwrap();
    assert_eq!(prune_protecting(&root, 1, &["0.1.0"]).unwrap(), ["0.2.0", "0.3.0"]);
    assert_eq!(list_releases(&root).unwrap(), ["0.1.0", "0.4.0"]);
    let size = release_size(&root, "0.4.0").unwrap();
    assert_eq!(size, ("server 0.4.0".len() + "agent".len() + "read me".len() + "mcp-raspi-server".len()) as u64);
    assert!(matches!(release_size(&root, "0.2.0"), Err(ReleaseError::NotInstalled { .. })));
}

#[test]
fn pruning_removes_a_symlinked_release_as_a_link_only() {
    let dir = tempfile::tempdir().unwrap();
    let outside = bystander(dir.path());
    let root = dir.path().join("opt");
    fs::create_dir_all(root.join("releases")).unwrap();
    symlink(outside.join("1.0"), root.join("releases/1.0.partial")).unwrap();
    symlink(outside.join("2.0"), root.join("releases/0.5")).unwrap();
    assert!(prune(&root, 0).unwrap().is_empty());
    assert_untouched(&outside);
    assert!(fs::symlink_metadata(root.join("releases/1.0.partial")).is_err());
}

#[test]
fn pruning_an_empty_root_removes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    assert!(prune(dir.path(), 3).unwrap().is_empty());
    assert!(list_releases(dir.path()).unwrap().is_empty());
}

#[test]
fn the_owner_gets_the_directories_and_the_link_but_not_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = install_root(dir.path());
    // As root, another user; otherwise this user, which still exercises every call.
    let me = nix::unistd::geteuid();
    let owner = if me.is_root() {
        Owner { uid: 65534, gid: 65534 }
    } else {
        Owner { uid: me.as_raw(), gid: nix::unistd::getegid().as_raw() }
    };
    let release = install_release_owned(&payload(dir.path(), "a"), &root, "0.1.0", Some(owner)).unwrap();
    flip_current_owned(&root, "0.1.0", Some(owner)).unwrap();
    let paths = [root.join(RELEASES_DIR), release.clone(), release.join("bin"), release.join("share/doc")];
    for path in paths.into_iter().chain([root.join(CURRENT_LINK)]) {
        let meta = fs::symlink_metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (owner.uid, owner.gid), "{}", path.display());
    }
    assert_eq!(fs::metadata(release.join("bin/mcp-raspi-server")).unwrap().uid(), me.as_raw());
}
