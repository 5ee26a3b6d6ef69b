"""`make bench`: every benchmark, each printing its figures beside its baseline.

    python bench/run.py [ingest|freshness|api ...]   (default: all three)
Extra arguments after `--` go to each script, e.g. `-- --events 200000`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("ingest", "freshness", "api")


def main() -> int:
    args = sys.argv[1:]
    extra: list[str] = []
    if "--" in args:
        extra = args[args.index("--") + 1 :]
        args = args[: args.index("--")]
    chosen = args or list(SCRIPTS)
    unknown = [name for name in chosen if name not in SCRIPTS]
    if unknown:
        print(__doc__, file=sys.stderr)
        return 2
    for name in chosen:
        print(f"=== bench/{name}.py", flush=True)
        code = subprocess.call([sys.executable, str(HERE / f"{name}.py"), *extra])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
