#!/usr/bin/env python3
"""One direct 4 KiB read from each block device listed in DEVICES_FILE (one path per
line), in one process, sequentially; for timing when every device serves I/O again.

  read_all.py DEVICES_FILE [T0]

Started before a recovering daemon, each read waits in the kernel until its device
is recovered, so the pass ends once the last device serves I/O. Prints
"# elapsed SECONDS" (since T0, a time.time() value, when given; else since start).
Exit status 1 (naming the device) when a read fails or returns short."""
import mmap
import os
import sys
import time


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    t0 = float(argv[2]) if len(argv) == 3 else time.time()
    with open(argv[1]) as f:
        devices = [line.split()[-1] for line in f if line.strip() and not line.startswith("#")]
    buf = mmap.mmap(-1, 4096)  # page aligned, as O_DIRECT wants
    for dev in devices:
        try:
            fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
            try:
                n = os.preadv(fd, [buf], 0)
            finally:
                os.close(fd)
        except OSError as e:
            print(f"read {dev}: {e}", file=sys.stderr)
            return 1
        if n != 4096:
            print(f"read {dev}: {n} bytes", file=sys.stderr)
            return 1
    print(f"# elapsed {time.time() - t0:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
