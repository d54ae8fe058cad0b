//! Device parameters sent with SET_PARAMS: 512-byte logical / 4 KiB physical sectors,
//! io_opt = one volume block, a bounded max request size, volatile write cache + FUA
//! (so the kernel sends FLUSH and FUA writes), DISCARD and WRITE_ZEROES.

use libublk::sys;

/// Largest request the kernel may send us in USER_COPY mode (split into pool slots).
pub(crate) const MAX_IO_BYTES_USER_COPY: u32 = 4 * super::IO_BUF_BYTES as u32;
/// Largest request in bounce mode: equals the per-tag buffer size.
pub(crate) const MAX_IO_BYTES_BOUNCE: u32 = super::IO_BUF_BYTES as u32;

fn shift_of(n: usize) -> u8 {
    n.trailing_zeros() as u8
}

/// Parameters of a device of `size_bytes` whose requests are at most `max_io_bytes`.
pub(crate) fn device_params(size_bytes: u64, max_io_bytes: u32) -> sys::ublk_params {
    let max_sectors = max_io_bytes >> 9;
    sys::ublk_params {
        len: std::mem::size_of::<sys::ublk_params>() as u32,
        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
        basic: sys::ublk_param_basic {
            attrs: sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA,
            logical_bs_shift: shift_of(crate::LOGICAL_BLOCK_SIZE),
            physical_bs_shift: shift_of(crate::SECTOR_SIZE),
            io_opt_shift: shift_of(crate::BLOCK_SIZE),
            io_min_shift: shift_of(crate::SECTOR_SIZE),
            max_sectors,
            chunk_sectors: 0,
            dev_sectors: size_bytes >> 9,
            virt_boundary_mask: 0,
        },
        discard: sys::ublk_param_discard {
            discard_alignment: 0,
            discard_granularity: crate::SECTOR_SIZE as u32,
            max_discard_sectors: u32::MAX >> 9,
            max_write_zeroes_sectors: u32::MAX >> 9,
            max_discard_segments: 1,
            reserved0: 0,
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_follow_the_block_size() {
        let p = device_params(1 << 30, MAX_IO_BYTES_USER_COPY);
        assert_eq!(1usize << p.basic.io_opt_shift, crate::BLOCK_SIZE);
        assert_eq!(p.basic.logical_bs_shift, 9);
        assert_eq!(p.basic.physical_bs_shift, 12);
        assert_eq!(p.basic.dev_sectors, (1 << 30) >> 9);
        assert_eq!(p.basic.max_sectors, MAX_IO_BYTES_USER_COPY >> 9);
        assert_ne!(p.basic.attrs & sys::UBLK_ATTR_FUA, 0);
        assert_ne!(p.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
    }
}
