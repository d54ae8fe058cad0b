//! Keeps the daemon's own mount namespace free of mounts of ublk block devices.
//!
//! A ublk server must not be the last holder of a mount of a device it serves: when
//! it exits, the kernel tears its mount namespace down in `do_exit`, and unmounting
//! the last reference of a filesystem syncs it, which waits for I/O that only the
//! exiting server could answer. The process then hangs in D state for good, even on
//! SIGKILL (libublk-rs #50). It happens when the daemon starts in a private copy of
//! a namespace in which a filesystem on one of its devices is mounted (a restart
//! after kill -9 under `unshare -m`, or a container), and the mount is later undone
//! everywhere else: the daemon's copy is then the last one.
//!
//! So, when the daemon has a mount namespace of its own (not init's), it detaches
//! every mount of a `ublkbN` device there: after recovery (the devices answer I/O
//! again, so a detach that drops the last reference can sync) and at shutdown, before
//! the workers stop. Only private and slave mounts are detached: an unmount of those
//! never propagates to anyone else, while one of a `shared:` mount would unmount it
//! in every peer namespace too, so those are left alone (with a warning). In init's
//! namespace nothing is done (init holds it).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// One mount of a ublk block device, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UblkMount {
    /// Where it is mounted (unescaped).
    pub mount_point: PathBuf,
    /// The mount source as given to mount(2), e.g. `/dev/ublkb3`.
    pub source: String,
    /// `major:minor` of the device.
    pub dev: String,
    /// In a shared peer group (`shared:N`): unmounting it here would propagate to
    /// the peers, i.e. unmount it for others too, so it is left alone.
    pub shared: bool,
}

/// Parse mountinfo text; keep the mounts `is_ublk(dev, source)` accepts, deepest
/// first (mountinfo lists a parent before its children).
pub(crate) fn parse_ublk_mounts(
    mountinfo: &str,
    is_ublk: impl Fn(&str, &str) -> bool,
) -> Vec<UblkMount> {
    let mut out: Vec<UblkMount> = mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root mount_point options [optional...] - fstype source super
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let dev = *f.get(2)?;
            let mount_point = unescape(f.get(4)?);
            let shared = f.iter().skip(6).any(|t| t.starts_with("shared:"));
            let source = unescape(right.split(' ').nth(1)?);
            is_ublk(dev, &source).then(|| UblkMount {
                mount_point: PathBuf::from(mount_point),
                source,
                dev: dev.to_string(),
                shared,
            })
        })
        .collect();
    out.reverse();
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 3 < b.len())
            .then(|| &b[i + 1..i + 4])
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u16, |v, c| v * 8 + u16::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        if let Some(c) = octal {
            out.push(c);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `major:minor` is a ublk block device: its sysfs name is `ublkbN` (ublk
/// disks use the shared extended major, so the number alone does not say).
fn is_ublk_dev(dev: &str, source: &str) -> bool {
    match std::fs::read_link(Path::new("/sys/dev/block").join(dev)) {
        Ok(target) => target
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("ublkb")),
        Err(_) => source.starts_with("/dev/ublkb"),
    }
}

/// Whether this process shares init's mount namespace (None: cannot tell).
fn in_init_mount_namespace() -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self/ns/mnt").ok()?;
    let init = std::fs::metadata("/proc/1/ns/mnt").ok()?;
    Some(me.dev() == init.dev() && me.ino() == init.ino())
}

/// Detach every ublk mount of the daemon's own mount namespace (see the module doc).
/// Returns how many were detached; does nothing in init's namespace.
pub fn detach_ublk_mounts(when: &str) -> io::Result<usize> {
    match in_init_mount_namespace() {
        Some(true) => return Ok(0),
        Some(false) => {}
        None => {
            tracing::debug!(
                when,
                "cannot compare mount namespaces with init; leaving mounts alone"
            );
            return Ok(0);
        }
    }
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut n = 0;
    for m in parse_ublk_mounts(&text, is_ublk_dev) {
        if m.shared {
            tracing::warn!(
                when,
                mount_point = %m.mount_point.display(),
                source = %m.source,
                "a mount of a ublk device in the daemon's namespace propagates to other \
                 namespaces (shared); not detached. Start the daemon with private or slave \
                 mount propagation (systemd PrivateMounts, unshare --propagation private)"
            );
            continue;
        }
        match rustix::mount::unmount(&m.mount_point, rustix::mount::UnmountFlags::DETACH) {
            Ok(()) => {
                n += 1;
                tracing::warn!(
                    when,
                    mount_point = %m.mount_point.display(),
                    source = %m.source,
                    dev = %m.dev,
                    "detached a mount of a ublk device from the daemon's own mount namespace \
                     (holding it could hang the daemon's exit); other namespaces keep theirs"
                );
            }
            Err(e) => tracing::warn!(
                when,
                mount_point = %m.mount_point.display(),
                source = %m.source,
                error = %e,
                "could not detach a mount of a ublk device from the daemon's mount namespace"
            ),
        }
    }
    Ok(n)
}

/// [`detach_ublk_mounts`] on a thread of its own, waiting at most `wait`: dropping
/// the last reference of a filesystem syncs it, which blocks until its device
/// answers I/O. Past `wait` the thread is left to finish on its own.
pub fn detach_ublk_mounts_bounded(when: &'static str, wait: Duration) {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("glidefs-umount".into())
        .spawn(move || {
            let _ = tx.send(detach_ublk_mounts(when));
        });
    if let Err(e) = spawned {
        tracing::warn!(when, error = %e, "could not start the mount-detach thread");
        return;
    }
    match rx.recv_timeout(wait) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(when, error = %e, "reading /proc/self/mountinfo failed; ublk mounts not checked")
        }
        Err(_) => tracing::warn!(
            when,
            wait_s = wait.as_secs(),
            "detaching ublk mounts is still waiting (a filesystem syncing to its device); going on"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
98 22 259:3 / /mnt/vm\\040disk rw,relatime - ext4 /dev/ublkb0 rw
99 98 259:4 / /mnt/vm\\040disk/inner rw,relatime shared:9 - xfs /dev/ublkb1 rw
100 22 259:5 / /srv/other rw - ext4 /dev/nvme0n1p1 rw
";

    #[test]
    fn finds_ublk_mounts_deepest_first_with_escaped_paths() {
        let got = parse_ublk_mounts(MOUNTINFO, |dev, _| dev == "259:3" || dev == "259:4");
        let points: Vec<_> = got.iter().map(|m| m.mount_point.clone()).collect();
        assert_eq!(
            points,
            vec![
                PathBuf::from("/mnt/vm disk/inner"),
                PathBuf::from("/mnt/vm disk")
            ]
        );
        assert_eq!(got[1].source, "/dev/ublkb0");
        assert_eq!(got[1].dev, "259:3");
    }

    #[test]
    fn shared_mounts_are_marked_and_slave_or_private_ones_not() {
        let got = parse_ublk_mounts(MOUNTINFO, |dev, _| dev == "259:3" || dev == "259:4");
        assert!(got[0].shared, "shared:9 propagates an unmount to its peers");
        assert!(!got[1].shared);
        let slave = "98 22 259:3 / /mnt/a rw master:4 - ext4 /dev/ublkb0 rw\n";
        assert!(!parse_ublk_mounts(slave, |_, _| true)[0].shared);
    }

    #[test]
    fn other_devices_and_malformed_lines_are_left_alone() {
        let text = format!("{MOUNTINFO}garbage line without separator\n7 8 - x\n");
        let got = parse_ublk_mounts(&text, |_, source| source.starts_with("/dev/ublkb"));
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|m| m.source.starts_with("/dev/ublkb")));
    }

    #[test]
    fn unescape_decodes_octal_and_keeps_stray_backslashes() {
        assert_eq!(unescape("a\\040b\\011c\\134d"), "a b\tc\\d");
        assert_eq!(unescape("tail\\04"), "tail\\04");
        assert_eq!(unescape("x\\9yz"), "x\\9yz");
        assert_eq!(unescape("big\\777"), "big\\777");
    }
}
