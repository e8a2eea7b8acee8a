"""Device temperature for the default gateway config, from /sys/class/thermal.

Prints {"celsius": 47.2, "sensor": "cpu-thermal"}; on machines without a
thermal sensor (many VMs and containers) {"celsius": null, "sensor": null}.
"""

import glob
import json
import os
import sys


def main() -> int:
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        try:
            with open(os.path.join(zone, "temp")) as f:
                millidegrees = int(f.read().strip())
        except (OSError, ValueError):
            continue
        try:
            with open(os.path.join(zone, "type")) as f:
                sensor = f.read().strip()
        except OSError:
            sensor = os.path.basename(zone)
        print(json.dumps({"celsius": round(millidegrees / 1000, 1), "sensor": sensor}))
        return 0
    print(json.dumps({"celsius": None, "sensor": None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
