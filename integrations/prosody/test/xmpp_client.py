#!/usr/bin/python3
"""One slixmpp client, driven by the Prosody integration tests.

The test starts this script with Debian's /usr/bin/python3 (it has python3-slixmpp), sends
commands as JSON lines on stdin and reads JSON lines on stdout:

  {"id": 1, "cmd": "list_certs"}            ->  {"id": 1, "ok": true, "items": [...]}
                                            or  {"id": 1, "ok": false, "error": {"type", "condition", "text"}}
  unsolicited: {"event": "session_start", "jid": ...}, {"event": "failed_auth", "condition": ...},
               {"event": "stream_error", "condition": ...}, {"event": "disconnected", ...}

Every line carries "t", the wall-clock time (time.time()) when it was produced, so the test
can measure how long after a revocation the server closed the stream.
"""
import argparse
import asyncio
import base64
import json
import logging
import ssl
import sys
import threading
import time

try:
    import slixmpp
    from slixmpp.exceptions import IqError, IqTimeout
except ImportError as error:  # the test turns this line into a failure naming the package
    print(json.dumps({"event": "fatal", "message": f"python3-slixmpp is not installed: {error}"}), flush=True)
    sys.exit(3)


def emit(message):
    message.setdefault("t", time.time())
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def der_base64(pem_path):
    """The certificate as XEP-0257 wants it in <x509cert/>: base64 of the DER bytes."""
    with open(pem_path, encoding="ascii") as file:
        pem = file.read()
    return base64.b64encode(ssl.PEM_cert_to_DER_cert(pem)).decode("ascii")


class Client(slixmpp.ClientXMPP):
    def __init__(self, options):
        super().__init__(options.jid, options.password or "")
        self.options = options
        for plugin in ("xep_0030", "xep_0077", "xep_0199", "xep_0257"):
            self.register_plugin(plugin)
        if options.cert:
            self.certfile, self.keyfile = options.cert, options.key
        if options.ca:
            self.ca_certs = options.ca
        self.add_event_handler("session_start", self.on_session_start)
        self.add_event_handler("failed_auth", self.on_failed_auth)
        self.add_event_handler("failed_all_auth", lambda _: emit({"event": "failed_all_auth"}))
        self.add_event_handler("stream_error", self.on_stream_error)
        self.add_event_handler("disconnected", lambda reason: emit({"event": "disconnected", "reason": str(reason)}))
        self.add_event_handler("connection_failed", lambda error: emit({"event": "connection_failed", "reason": str(error)}))

    async def on_session_start(self, _):
        emit({"event": "session_start", "jid": str(self.boundjid)})

    def on_failed_auth(self, stanza):
        emit({"event": "failed_auth", "condition": stanza["condition"], "text": stanza["text"]})

    def on_stream_error(self, error):
        emit({"event": "stream_error", "condition": error["condition"], "text": error["text"]})

    async def run_command(self, command):
        name = command["cmd"]
        plugin = self["xep_0257"]
        if name == "list_certs":
            result = await plugin.get_certs(timeout=10)
            items = []
            for item in result["sasl_certs"]["items"]:
                items.append({"name": item["name"], "x509cert": item["x509cert"] or None, "users": sorted(item["users"])})
            return {"items": items}
        if name == "add_cert":
            await plugin.add_cert(command["name"], der_base64(command["pem_path"]),
                                  allow_management=command.get("manage", True), timeout=10)
            return {}
        if name == "disable_cert":
            await plugin.disable_cert(command["name"], timeout=10)
            return {}
        if name == "revoke_cert":
            await plugin.revoke_cert(command["name"], timeout=10)
            return {}
        if name == "disco_features":
            info = await self["xep_0030"].get_info(jid=self.boundjid.domain, timeout=10)
            return {"features": sorted(info["disco_info"]["features"])}
        if name == "change_password":
            await self["xep_0077"].change_password(command["password"], timeout=10)
            return {}
        if name == "delete_account":
            await self["xep_0077"].cancel_registration(timeout=10)
            return {}
        if name == "ping":
            await self["xep_0199"].ping(jid=self.boundjid.domain, timeout=10)
            return {}
        if name == "jid":
            return {"jid": str(self.boundjid)}
        if name == "disconnect":
            self.disconnect()
            return {}
        raise ValueError(f"unknown command {name!r}")


async def serve(client, loop):
    queue = asyncio.Queue()

    def read_stdin():
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()
    while True:
        line = await queue.get()
        if line is None:
            return
        line = line.strip()
        if not line:
            continue
        command = json.loads(line)
        asyncio.ensure_future(answer(client, command))


async def answer(client, command):
    reply = {"id": command.get("id")}
    try:
        reply.update(await client.run_command(command))
        reply["ok"] = True
    except IqError as error:
        iq = error.iq
        reply.update(ok=False, error={"type": iq["error"]["type"], "condition": iq["error"]["condition"],
                                      "text": iq["error"]["text"]})
    except IqTimeout:
        reply.update(ok=False, error={"type": "timeout", "condition": "timeout", "text": "no answer within 10s"})
    except Exception as error:  # reported to the test, which fails with it
        reply.update(ok=False, error={"type": "exception", "condition": type(error).__name__, "text": str(error)})
    emit(reply)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password")
    parser.add_argument("--cert", help="client certificate (PEM) presented in TLS, for SASL EXTERNAL")
    parser.add_argument("--key", help="private key of --cert")
    parser.add_argument("--ca", help="CA that signed the server's certificate")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--debug", action="store_true")
    options = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if options.debug else logging.WARNING, stream=sys.stderr)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    client = Client(options)
    client.connect(address=(options.host, options.port))
    emit({"event": "started"})
    loop.run_until_complete(serve(client, loop))


if __name__ == "__main__":
    main()
