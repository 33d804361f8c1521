"""A long fuzz run: the property of tests/test_fuzz_entries.py with many more examples.

    python bench/fuzz.py --examples 3000 [--database sqlite|postgres]

Generated stream entries (arbitrary bytes and JSON for every Trace field, deep nesting, huge
strings, non-finite numbers, mixed-zone times) interleaved with valid traces go through the
real sampler and worker code; every valid trace must be scored once, every invalid entry
dead-lettered once with a one-line reason, nothing left pending. Prints examples run and time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    env = {**os.environ, "EVALFLEET_FUZZ_EXAMPLES": str(args.examples)}
    name = "test_generated_entries_through_sampler_and_worker"
    test = f"tests/test_fuzz_entries.py::{name}[{args.database}]"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:logging", "-o", "timeout=0", "-s", test],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - started
    kinds = next((line for line in result.stdout.splitlines() if "entries by kind" in line), "")
    print(
        f"{args.examples} examples on {args.database} in {elapsed:.0f} s: "
        f"{'passed' if result.returncode == 0 else 'FAILED'}; {kinds}"
    )
    if result.returncode:
        print(result.stdout[-5000:])
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
