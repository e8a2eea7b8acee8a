"""System uptime and load for the default gateway config, from /proc."""

import json
import sys


def main() -> int:
    with open("/proc/uptime") as f:
        seconds = float(f.read().split()[0])
    with open("/proc/loadavg") as f:
        load = [float(x) for x in f.read().split()[:3]]
    print(json.dumps({"seconds": round(seconds), "load": load}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
