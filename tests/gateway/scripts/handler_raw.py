"""Test handler speaking the line protocol by hand; misbehaves on request.

The query decides: ``sleep=S`` answers after S seconds (requests are
answered concurrently, in any order); ``hang`` never answers; ``die``
exits at once; ``garbage`` prints a line that is not JSON; ``long`` prints
a 4 MiB line; ``unknown`` answers another id; ``badcode`` answers code 9.99;
``badpayload`` a payload that is not base64; ``stderr`` also writes a
line on stderr; ``deaf`` stops reading stdin for good (and answers
nothing more).  Otherwise GET returns the value last PUT (in memory), and
every start appends a line to starts.txt (or to the file named by the
first argument, in the data directory).
"""

import base64
import json
import os
import sys
import threading
import time

data = os.environ["COAPDEV_DATA_DIR"]
with open(os.path.join(data, sys.argv[1] if len(sys.argv) > 1 else "starts.txt"), "a") as f:
    f.write(f"{os.getpid()} {os.getcwd()}\n")

lock = threading.Lock()
value = b"nothing yet"


def write(line: bytes) -> None:
    with lock:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()


def answer(rid: int, code: str, payload: bytes = b"", fmt: int | None = 0) -> None:
    doc = {"id": rid, "code": code, "payload": base64.b64encode(payload).decode()}
    if fmt is not None:
        doc["content_format"] = fmt
    write(json.dumps(doc).encode() + b"\n")


def handle(req: dict) -> None:
    global value
    rid, query = req["id"], req["query"]
    args = dict(q.split("=", 1) if "=" in q else (q, "") for q in query)
    if "sleep" in args:
        time.sleep(float(args["sleep"]))
    if "stderr" in args:
        print("debug: a line on stderr", file=sys.stderr, flush=True)
    if "hang" in args:
        return
    if "die" in args:
        os._exit(3)
    if "garbage" in args:
        write(b"\x1b[31mthis is not json\n")
        return
    if "long" in args:
        write(b"x" * (4 << 20) + b"\n")
        return
    if "unknown" in args:
        answer(rid + 1_000_000, "2.05", b"for nobody")
        return
    if "badcode" in args:
        write(json.dumps({"id": rid, "code": "9.99"}).encode() + b"\n")
        return
    if "badpayload" in args:
        write(json.dumps({"id": rid, "code": "2.05", "payload": "***"}).encode() + b"\n")
        return
    if req["method"] == "PUT":
        value = base64.b64decode(req["payload"])
        answer(rid, "2.04")
        return
    who = req["client"]
    body = value + f" for {who['name']} ({who['role']}) at {req['path']}".encode()
    answer(rid, "2.05", body)


for line in sys.stdin.buffer:
    request = json.loads(line)
    if "deaf" in request["query"]:
        time.sleep(3600)  # killed by the gateway long before
    threading.Thread(target=handle, args=(request,), daemon=True).start()
