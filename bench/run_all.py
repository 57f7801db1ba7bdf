"""Run every benchmark of this folder (``bench_*.py``) one after the other, with its defaults.

``make bench`` calls this. Each benchmark prints its markdown rows and writes its JSON results next
to itself; ``bench/README.md`` holds the table of the last measured numbers and the command of each.
Run one benchmark alone with ``python bench/<name>.py --help``.
"""
import subprocess
import sys
import time
from pathlib import Path


def main(argv):
    here = Path(__file__).resolve().parent
    wanted = set(argv)
    scripts = [p for p in sorted(here.glob("bench_*.py")) if not wanted or p.stem in wanted]
    failed = []
    for path in scripts:
        print(f"== {path.name}", flush=True)
        t = time.time()
        rc = subprocess.call([sys.executable, str(path)], cwd=here.parent)
        print(f"== {path.name}: exit {rc} after {time.time() - t:.0f} s", flush=True)
        if rc:
            failed.append(path.name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
