//! The control plane: one thread owns every libublk `UblkCtrl` (libublk's control
//! ring is thread-local, so a `UblkCtrl` must never leave the thread that made it);
//! other threads send it [`CtrlReq`]s and wait for the reply.
//!
//! libublk runs ADD_DEV, SET_PARAMS, GET_DEV_INFO, GET_FEATURES and DEL_DEV.
//! Some commands go through [`Ctrl::raw_ctrl_cmd`] / [`Ctrl::raw_dev_info`] instead (a private
//! ring per calling thread, set up on its first command; usable from any thread),
//! with the same `sys` structs and opcodes:
//! - STOP_DEV runs on the caller's thread so that deleting many devices stops them in
//!   parallel (del_gendisk is the slow part; the kernel only serializes ADD/DEL).
//! - START_DEV and END_USER_RECOVERY block in the kernel until every queue has issued
//!   its FETCH_REQs and (START_DEV) the partition scan has read the device; libublk's
//!   `start_dev` also needs libublk's own `UblkDev`/`UblkQueue` and, without
//!   USER_COPY, waits for their buffer registration, which our data plane never does.
//! - START_USER_RECOVERY returns EBUSY until the dead server's char device is fully
//!   released; libublk's retry loop sleeps on the calling (here: control) thread,
//!   which would stall every other device's control command.
//! - GET_DEV_INFO at start-up recovery: one per device in the kernel, from many
//!   threads at once; through libublk each would also open the control device, send
//!   GET_FEATURES and read a JSON file, all on the one control thread.
//!
//! Invariant: every `UblkCtrl` created with ADD_DEV is `disown()`ed at once, so that
//! dropping it (shutdown, panic) never deletes a device a successor must recover.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::{sys, UblkFlags};
use parking_lot::Mutex;

use super::error::UblkError;

/// Path of the ublk control device.
pub(crate) const CTRL_DEV: &str = "/dev/ublk-control";

type Reply<T> = mpsc::SyncSender<Result<T, UblkError>>;

/// What ADD_DEV needs.
#[derive(Debug, Clone)]
pub(crate) struct AddSpec {
    pub dev_id: Option<u32>,
    pub queues: u16,
    pub depth: u16,
    pub max_io_bytes: u32,
    pub flags: u64,
    /// `ublksrv_flags`: the owner's device marker.
    pub marker: u64,
}

/// A request to the control thread.
pub(crate) enum CtrlReq {
    Features(Reply<u64>),
    Add(AddSpec, Reply<sys::ublksrv_ctrl_dev_info>),
    SetParams(u32, Box<sys::ublk_params>, Reply<()>),
    DevInfo(u32, Reply<sys::ublksrv_ctrl_dev_info>),
    Del(u32, Reply<()>),
    Exit,
}

/// Handle to the control thread.
pub(crate) struct Ctrl {
    tx: Mutex<mpsc::Sender<CtrlReq>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// `/dev/ublk-control`, for the commands sent on a caller's own ring.
    file: File,
}

impl Ctrl {
    pub(crate) fn start() -> Result<Ctrl, UblkError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CTRL_DEV)
            .map_err(|e| UblkError::io(CTRL_DEV, e))?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ublk-ctrl".into())
            .spawn(move || CtrlThread::default().run(rx))
            .map_err(|e| UblkError::io("spawn control thread", e))?;
        Ok(Ctrl {
            tx: Mutex::new(tx),
            thread: Mutex::new(Some(thread)),
            file,
        })
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> CtrlReq) -> Result<T, UblkError> {
        let (rtx, rrx) = mpsc::sync_channel(1);
        self.tx
            .lock()
            .send(make(rtx))
            .map_err(|_| UblkError::ShutDown)?;
        rrx.recv().map_err(|_| UblkError::ShutDown)?
    }

    pub(crate) fn features(&self) -> Result<u64, UblkError> {
        self.call(CtrlReq::Features)
    }

    pub(crate) fn add(&self, spec: AddSpec) -> Result<sys::ublksrv_ctrl_dev_info, UblkError> {
        self.call(|r| CtrlReq::Add(spec, r))
    }

    pub(crate) fn set_params(&self, dev_id: u32, p: sys::ublk_params) -> Result<(), UblkError> {
        self.call(|r| CtrlReq::SetParams(dev_id, Box::new(p), r))
    }

    pub(crate) fn dev_info(&self, dev_id: u32) -> Result<sys::ublksrv_ctrl_dev_info, UblkError> {
        self.call(|r| CtrlReq::DevInfo(dev_id, r))
    }

    pub(crate) fn del(&self, dev_id: u32) -> Result<(), UblkError> {
        self.call(|r| CtrlReq::Del(dev_id, r))
    }

    pub(crate) fn shutdown(&self) {
        let _ = self.tx.lock().send(CtrlReq::Exit);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

#[derive(Default)]
struct CtrlThread {
    devs: HashMap<u32, UblkCtrl>,
}

impl CtrlThread {
    fn run(mut self, rx: mpsc::Receiver<CtrlReq>) {
        while let Ok(req) = rx.recv() {
            match req {
                CtrlReq::Features(r) => {
                    let _ = r.send(UblkCtrl::get_features().ok_or(UblkError::Kernel {
                        cmd: "GET_FEATURES",
                        dev_id: None,
                        errno: libc::EOPNOTSUPP,
                    }));
                }
                CtrlReq::Add(spec, r) => {
                    let _ = r.send(self.add(spec));
                }
                CtrlReq::SetParams(id, p, r) => {
                    let res = self.get(id).and_then(|c| {
                        c.set_params(&p)
                            .map(|_| ())
                            .map_err(|e| UblkError::from_libublk("SET_PARAMS", Some(id), e))
                    });
                    let _ = r.send(res);
                }
                CtrlReq::DevInfo(id, r) => {
                    let res = self.get(id).and_then(|c| {
                        c.read_dev_info()
                            .map_err(|e| UblkError::from_libublk("GET_DEV_INFO", Some(id), e))?;
                        Ok(c.dev_info())
                    });
                    let _ = r.send(res);
                }
                CtrlReq::Del(id, r) => {
                    let res = self.get(id).and_then(|c| {
                        c.del_dev()
                            .map(|_| ())
                            .map_err(|e| UblkError::from_libublk("DEL_DEV", Some(id), e))
                    });
                    self.devs.remove(&id);
                    let _ = r.send(res);
                }
                CtrlReq::Exit => break,
            }
        }
        // Every control in the map is disowned or was opened without ADD_DEV:
        // dropping them never deletes a device.
        self.devs.clear();
    }

    fn add(&mut self, spec: AddSpec) -> Result<sys::ublksrv_ctrl_dev_info, UblkError> {
        let id = match spec.dev_id {
            Some(id) => {
                i32::try_from(id).map_err(|_| UblkError::Invalid(format!("device id {id}")))?
            }
            None => -1,
        };
        let ctrl = UblkCtrlBuilder::default()
            .name("glidefs")
            .id(id)
            .nr_queues(spec.queues)
            .depth(spec.depth)
            .io_buf_bytes(spec.max_io_bytes)
            .ctrl_flags(spec.flags)
            .ctrl_target_flags(spec.marker)
            .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
            .build()
            .map_err(|e| UblkError::from_libublk("ADD_DEV", spec.dev_id, e))?;
        ctrl.disown();
        let info = ctrl.dev_info();
        write_run_json(&ctrl, info.dev_id);
        self.devs.insert(info.dev_id, ctrl);
        Ok(info)
    }

    /// The control for `id`, opening one (GET_DEV_INFO, no ADD_DEV) if needed.
    fn get(&mut self, id: u32) -> Result<&UblkCtrl, UblkError> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.devs.entry(id) {
            let iid =
                i32::try_from(id).map_err(|_| UblkError::Invalid(format!("device id {id}")))?;
            let c = UblkCtrl::new(None, iid, 0, 0, 0, 0, 0, UblkFlags::empty())
                .map_err(|e| UblkError::from_libublk("GET_DEV_INFO", Some(id), e))?;
            slot.insert(c);
        }
        self.devs.get(&id).ok_or(UblkError::UnknownDevice(id))
    }
}

/// libublk reloads `<run_dir>/<id>.json` whenever it opens an existing device and
/// complains on stderr when it is missing; we write a small one naming the owner.
/// Best effort: the kernel-side marker (`ublksrv_flags`) is what identifies our devices.
fn write_run_json(ctrl: &UblkCtrl, dev_id: u32) {
    let path = ctrl.run_path();
    let body = serde_json::json!({ "owner": "glidefs", "dev_id": dev_id }).to_string();
    if let Some(dir) = std::path::Path::new(&path).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&path, body) {
        tracing::debug!(dev_id, "cannot write {path}: {e}");
    }
}

/// Remove the run JSON of a deleted device (libublk's del_dev does it for the controls
/// it holds; this covers devices deleted by DEL_DEV from another control).
pub(crate) fn remove_run_json(dev_id: u32) {
    let path = format!("{}/{:04}.json", UblkCtrl::run_dir(), dev_id);
    let _ = std::fs::remove_file(path);
}

thread_local! {
    /// This thread's ring for [`Ctrl::raw_ctrl_cmd`]: set up once per thread rather than
    /// once per command (ring set-up and teardown cost more than the command itself
    /// under emulation, and a bulk recovery sends thousands of commands).
    static CTRL_RING: std::cell::RefCell<Option<IoUring<squeue::Entry128, cqueue::Entry>>> =
        const { std::cell::RefCell::new(None) };
}

/// Commands sent on the calling thread's own ring (many threads at once).
impl Ctrl {
    /// Send one control command with `data[0] = data0` on this thread's private ring and
    /// wait for it. Returns the kernel's result (>= 0) or a `Kernel` error. Any thread
    /// may call this.
    pub(crate) fn raw_ctrl_cmd(
        &self,
        name: &'static str,
        cmd_op: u32,
        dev_id: u32,
        data0: u64,
    ) -> Result<i32, UblkError> {
        let cmd = sys::ublksrv_ctrl_cmd {
            dev_id,
            queue_id: u16::MAX,
            data: [data0],
            ..Default::default()
        };
        submit_ctrl_cmd(self.file.as_raw_fd(), name, cmd_op, &cmd)
    }

    /// GET_DEV_INFO on this thread's private ring (no libublk control, so many threads
    /// can read device infos at once).
    pub(crate) fn raw_dev_info(
        &self,
        dev_id: u32,
    ) -> Result<sys::ublksrv_ctrl_dev_info, UblkError> {
        let info = Box::new(sys::ublksrv_ctrl_dev_info::default());
        let cmd = sys::ublksrv_ctrl_cmd {
            dev_id,
            queue_id: u16::MAX,
            addr: &*info as *const sys::ublksrv_ctrl_dev_info as u64,
            len: std::mem::size_of::<sys::ublksrv_ctrl_dev_info>() as u16,
            ..Default::default()
        };
        // The kernel writes `info` through `addr` before the command completes. On a
        // ring error the command may still be running (io-wq), so `info` is leaked.
        match submit_ctrl_cmd(
            self.file.as_raw_fd(),
            "GET_DEV_INFO",
            sys::UBLK_U_CMD_GET_DEV_INFO,
            &cmd,
        ) {
            Ok(_) => Ok(*info),
            Err(e @ UblkError::Kernel { .. }) => Err(e),
            Err(e) => {
                Box::leak(info);
                Err(e)
            }
        }
    }

    /// START_DEV: returns once every queue has fetched and the disk is added.
    pub(crate) fn start_dev(&self, dev_id: u32) -> Result<(), UblkError> {
        self.raw_ctrl_cmd(
            "START_DEV",
            sys::UBLK_U_CMD_START_DEV,
            dev_id,
            std::process::id().into(),
        )
        .map(|_| ())
    }

    /// START_USER_RECOVERY, retried while the kernel says EBUSY (the dead server's char
    /// device is not fully released yet), for at most `patience`.
    pub(crate) fn start_user_recovery(
        &self,
        dev_id: u32,
        patience: std::time::Duration,
    ) -> Result<(), UblkError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match self.raw_ctrl_cmd(
                "START_USER_RECOVERY",
                sys::UBLK_U_CMD_START_USER_RECOVERY,
                dev_id,
                0,
            ) {
                Err(UblkError::Kernel { errno, .. })
                    if errno == libc::EBUSY && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other.map(|_| ()),
            }
        }
    }

    /// END_USER_RECOVERY: returns once every queue has fetched again.
    pub(crate) fn end_user_recovery(&self, dev_id: u32) -> Result<(), UblkError> {
        self.raw_ctrl_cmd(
            "END_USER_RECOVERY",
            sys::UBLK_U_CMD_END_USER_RECOVERY,
            dev_id,
            std::process::id().into(),
        )
        .map(|_| ())
    }
}

fn submit_ctrl_cmd(
    fd: i32,
    name: &'static str,
    cmd_op: u32,
    cmd: &sys::ublksrv_ctrl_cmd,
) -> Result<i32, UblkError> {
    let mut raw = [0u8; 80];
    // SAFETY: ublksrv_ctrl_cmd is a plain-old-data repr(C) struct of 32 bytes, which
    // fits in the 80-byte command area; we copy its bytes, nothing else.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (cmd as *const sys::ublksrv_ctrl_cmd).cast::<u8>(),
            raw.as_mut_ptr(),
            std::mem::size_of::<sys::ublksrv_ctrl_cmd>(),
        )
    };
    let sqe = opcode::UringCmd80::new(types::Fd(fd), cmd_op)
        .cmd(raw)
        .build()
        .user_data(1);
    CTRL_RING.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                IoUring::builder()
                    .build(2)
                    .map_err(|e| UblkError::io("io_uring for control command", e))?,
            );
        }
        let Some(ring) = slot.as_mut() else {
            return Err(UblkError::NotAvailable);
        };
        let res = submit_on(ring, name, &sqe);
        if res.is_err() {
            // The ring may hold a command or completion we did not consume: drop it
            // (which cancels anything in flight) so the next command starts clean.
            *slot = None;
        }
        res.and_then(|res| {
            if res < 0 {
                Err(UblkError::Kernel {
                    cmd: name,
                    dev_id: Some(cmd.dev_id),
                    errno: -res,
                })
            } else {
                Ok(res)
            }
        })
    })
}

/// Push `sqe`, wait for its completion, return its result (errors: the ring itself).
fn submit_on(
    ring: &mut IoUring<squeue::Entry128, cqueue::Entry>,
    name: &'static str,
    sqe: &squeue::Entry128,
) -> Result<i32, UblkError> {
    // SAFETY: the SQE references no memory of ours except, for commands with a
    // buffer, memory the caller keeps alive until this returns or the ring is dropped.
    unsafe { ring.submission().push(sqe) }
        .map_err(|_| UblkError::io(name, std::io::Error::from_raw_os_error(libc::EBUSY)))?;
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(UblkError::io(name, e)),
        }
        if let Some(c) = ring.completion().next() {
            return Ok(c.result());
        }
    }
}

/// Ids of every ublk device in the kernel (from /sys/class/ublk-char).
pub(crate) fn list_dev_ids() -> Vec<u32> {
    let mut ids = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/class/ublk-char") {
        for e in rd.flatten() {
            if let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("ublkc"))
                .and_then(|n| n.parse::<u32>().ok())
            {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    ids
}
