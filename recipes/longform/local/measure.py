#!/usr/bin/env python3
"""Run a command and record its wall time and peak memory (the largest resident set of it
and its children), with what it aligned: for the longform recipe's longest recording.

    python local/measure.py exp/longest/measure.json data_longest/long.json -- ds2 align ...
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from ds2.data import read_manifest
from ds2.io import atomic_write


def main() -> None:
    if len(sys.argv) < 5 or "--" not in sys.argv:
        sys.exit(__doc__)
    out, manifest = Path(sys.argv[1]), Path(sys.argv[2])
    command = sys.argv[sys.argv.index("--") + 1:]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    records = list(read_manifest(manifest))
    longest = max(records, key=lambda r: r["duration"])
    result = {"minutes": round(longest["duration"] / 60, 1), "words": len(longest["text"].split()),
              "peak_mib": round(peak_kib / 1024), "seconds": round(seconds, 1), "command": command}
    with atomic_write(out) as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
