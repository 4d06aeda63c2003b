"""
Run the whole trial suite and finish with one line ``N passed, N failed, N skipped``.

Any arguments are passed to trial (default: the ``tests`` package). Exit status is
non-zero when anything failed or errored. A skipped test is reported, and the
real-client tests never skip: when they cannot run they fail.
"""

import os
import re
import subprocess
import sys
import threading

SUMMARY = re.compile(r"^(PASSED|FAILED) \((.*)\)\s*$")


def main(argv):
    args = argv or ["tests"]
    jobs = os.environ.get("TRIAL_JOBS", str(min(os.cpu_count() or 1, 2)))
    cmd = [sys.executable, "-m", "twisted.trial", "--temp-directory=_trial_temp", f"-j{jobs}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # A hung test run must fail, not stall CI: kill trial after a generous limit.
    limit = float(os.environ.get("HEADSCALE_TEST_TIMEOUT", "2400"))
    timed_out = threading.Event()

    def kill():
        timed_out.set()
        proc.kill()

    watchdog = threading.Timer(limit, kill)
    watchdog.daemon = True
    watchdog.start()
    counts = {}
    verdict = None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        m = SUMMARY.match(line.strip())
        if m:
            verdict = m.group(1)
            for part in m.group(2).split(","):
                name, _, value = part.strip().partition("=")
                counts[name] = int(value)
    rc = proc.wait()
    watchdog.cancel()
    if timed_out.is_set():
        print(f"run_tests: trial did not finish within {limit:.0f} s and was killed")
    passed = counts.get("successes", 0) + counts.get("expectedFailures", 0)
    failed = counts.get("failures", 0) + counts.get("errors", 0) + counts.get("unexpectedSuccesses", 0)
    skipped = counts.get("skips", 0)
    if verdict is None or (rc != 0 and failed == 0):
        failed += 1  # trial itself broke (import error, crash): count it, never hide it
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 0 if failed == 0 and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
