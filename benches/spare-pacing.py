#!/usr/bin/env python3
"""spare-pacing.py: what preparing a spare log segment does to the log's syncs.

Usage: benches/spare-pacing.py [--rounds N] [--segment-mib M] DIR

One thread plays the log: it appends 600 bytes to a file and fdatasyncs it, then naps
0.4 ms, over and over (about 2,000 syncs a second). Meanwhile a segment of M MiB [64] is
prepared as the WAL's preparer thread does it (`Pace::Gentle` in storage/src/wal/segment.rs:
zeros a page per write, a pause of 2 ms after each MiB), each way in turn:

  sync       each MiB fdatasynced (the preparer before 2026-12-01)
  writeback  each MiB written back and waited for (sync_file_range), one fsync at the end
  none       no preparation: the log's syncs alone, as long as a preparation takes

N rounds [4] of the three. Prints one line per way: the log's sync latency while it ran.
DIR must be on the disk to measure (not a tmpfs); the files are removed at the end.
"""

import argparse
import ctypes
import os
import threading
import time

MIB = 1 << 20
PAGE = 4096
PAUSE_S = 0.002
LOG_RECORD = b"y" * 600
LOG_NAP_S = 0.0004
# sync_file_range: SYNC_FILE_RANGE_WAIT_BEFORE | _WRITE | _WAIT_AFTER
WRITE_AND_WAIT = 1 | 2 | 4

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]


def play_the_log(path, stop, samples):
    """Appends and syncs until `stop`; each sample is (start, seconds)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    os.pwrite(fd, b"\0" * MIB, 0)
    os.fsync(fd)
    offset = 0
    while not stop.is_set():
        started = time.perf_counter()
        os.pwrite(fd, LOG_RECORD, offset)
        os.fdatasync(fd)
        samples.append((started, time.perf_counter() - started))
        offset = (offset + len(LOG_RECORD)) % (MIB - len(LOG_RECORD))
        time.sleep(LOG_NAP_S)
    os.close(fd)


def prepare_segment(path, segment_bytes, way):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    zeros = b"\0" * PAGE
    written = 0
    while written < segment_bytes:
        os.write(fd, zeros)
        written += PAGE
        if written % MIB == 0:
            if way == "sync":
                os.fdatasync(fd)
            elif libc.sync_file_range(fd, written - MIB, MIB, WRITE_AND_WAIT) != 0:
                raise OSError(ctypes.get_errno(), "sync_file_range")
            time.sleep(PAUSE_S)
    os.fsync(fd)
    os.close(fd)
    os.unlink(path)


def percentile(sorted_samples, fraction):
    return sorted_samples[min(len(sorted_samples) - 1, int(len(sorted_samples) * fraction))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--segment-mib", type=int, default=64)
    parser.add_argument("dir")
    args = parser.parse_args()
    log_path = os.path.join(args.dir, "spare-pacing.log")
    spare_path = os.path.join(args.dir, "spare-pacing.spare")
    stop, samples = threading.Event(), []
    log = threading.Thread(target=play_the_log, args=(log_path, stop, samples))
    log.start()
    during = {"sync": [], "writeback": [], "none": []}
    preparation_s = {way: 0.0 for way in during}
    last_preparation_s = 0.0
    try:
        time.sleep(0.3)
        for _ in range(args.rounds):
            for way in during:
                started = time.perf_counter()
                if way == "none":
                    time.sleep(last_preparation_s)
                else:
                    prepare_segment(spare_path, args.segment_mib * MIB, way)
                ended = time.perf_counter()
                last_preparation_s = ended - started
                preparation_s[way] += ended - started
                during[way] += [seconds for (at, seconds) in samples if started <= at < ended]
                time.sleep(0.3)
    finally:
        stop.set()
        log.join()
        os.unlink(log_path)
    for way, latencies in during.items():
        latencies.sort()
        if not latencies:
            print(f"{way}: no sync of the log finished during it")
            continue
        us = lambda seconds: f"{seconds * 1e6:.0f}"
        print(
            f"{way}: {args.rounds} x {preparation_s[way] / args.rounds:.3f} s, the log's syncs meanwhile µs:"
            f" p50 {us(percentile(latencies, 0.5))} p99 {us(percentile(latencies, 0.99))}"
            f" p99.9 {us(percentile(latencies, 0.999))} max {us(latencies[-1])} (n={len(latencies)});"
            f" over 1 ms {sum(1 for s in latencies if s > 0.001)}, over 2.5 ms {sum(1 for s in latencies if s > 0.0025)}"
        )


if __name__ == "__main__":
    main()
