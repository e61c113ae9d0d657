"""Runs one command and reports its wall time and peak RSS, from a process small enough not to skew them.

Linux keeps a process's peak RSS across execve, so a child forked from the big benchmark driver (moto, the
proxy, seeded data) would report the driver's size. This launcher runs with `python -S` (a few MiB), forks
the measured command itself, and writes `{"seconds", "max_rss_kib", "cpu_seconds", "exit_code"}` (CPU: user plus
system) to the file given first.

    python -S bench/launch.py RESULT.json COMMAND [ARG...]
"""

import json
import os
import sys
import time


def main() -> int:
    result_path, command = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    pid = os.posix_spawnp(command[0], command, os.environ)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    exit_code = os.waitstatus_to_exitcode(status)
    with open(result_path, "w", encoding="utf-8") as result:  # noqa: PTH123 - pathlib is not imported with -S
        json.dump(
            {
                "seconds": seconds,
                "max_rss_kib": usage.ru_maxrss,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "exit_code": exit_code,
            },
            result,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
