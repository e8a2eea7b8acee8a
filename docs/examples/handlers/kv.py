"""A persistent handler in Python with coapdev.handler: a small key-value store.

    [[resource]]
    path = "/kv"
    handler = ["{python}", "{config_dir}/kv.py"]
    output = "octets"
    get = {}
    put = { roles = ["admin"] }
    delete = { roles = ["admin"] }

GET /kv?key=K answers the value (4.04 if unset), PUT /kv?key=K stores the
payload, DELETE /kv?key=K removes it.  Values are kept in COAPDEV_DATA_DIR.
"""

import json
import os
from pathlib import Path

from coapdev import handler

store = Path(os.environ["COAPDEV_DATA_DIR"]) / "kv.json"
values: dict[str, str] = json.loads(store.read_text()) if store.exists() else {}
app = handler.Router()


def save() -> None:
    tmp = store.with_suffix(".tmp")
    tmp.write_text(json.dumps(values))
    tmp.replace(store)


@app.route("GET")
def read(request: handler.Request) -> handler.Response:
    key = request.arg("key", "")
    if key not in values:
        return handler.Response(f"no value for {key!r}", code="4.04", content_format=0)
    return handler.Response(values[key])


@app.route("PUT")
def write(request: handler.Request) -> handler.Response:
    values[request.arg("key", "")] = request.payload.decode("utf-8", "replace")
    save()
    return handler.Response(code="2.04")


@app.route("DELETE")
def remove(request: handler.Request) -> handler.Response:
    values.pop(request.arg("key", ""), None)
    save()
    return handler.Response(code="2.02")


app.serve()
