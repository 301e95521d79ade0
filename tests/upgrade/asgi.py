"""An upstream that accepts `Upgrade: h2c` and WebSockets (Hypercorn), and the clients that try
both through the gateway, for tests/upgrades.rs.

  asgi.py serve LOG                      serve on 127.0.0.1:0; print "port N"; one JSON line in
                                         LOG for every HTTP request served, HTTP/2 streams too
  asgi.py h2c PORT PATH TOKEN SMUGGLED   GET PATH asking to upgrade to h2c; if the answer is 101,
                                         send GET SMUGGLED as a new HTTP/2 stream on the same
                                         connection. Prints {"status", "body", "smuggled"}
  asgi.py ws URL TOKEN MESSAGE           a WebSocket client: prints {"echo"} or {"refused"}

TOKEN "-" sends no Authorization header.
"""

import asyncio
import json
import socket
import sys


def app_for(log_path):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    return
                await send({"type": "websocket.send", "text": "echo: " + (message.get("text") or "")})
        seen = {
            "http_version": scope["http_version"],
            "method": scope["method"],
            "path": scope["path"],
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
        }
        with open(log_path, "a") as log:
            log.write(json.dumps(seen) + "\n")
        body = json.dumps(seen).encode()
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})

    return app


def serve(log_path):
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    print(f"port {sock.getsockname()[1]}", flush=True)
    asyncio.run(hypercorn_serve(app_for(log_path), config))


def read_response(sock, buf=b""):
    """One HTTP/1.1 response (Content-Length framed): (status, body, bytes read past it)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit(json.dumps({"error": "closed before a response", "got": buf.decode("latin-1")}))
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if status == 101:
        return status, b"", rest
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, rest[:length], rest[length:]


def h2c(port, path, token, smuggled):
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    settings = conn.initiate_upgrade_connection()  # the header's value, base64 already
    sock = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
    auth = "" if token == "-" else f"Authorization: Bearer {token}\r\n"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        f"HTTP2-Settings: {settings.decode()}\r\n\r\n"
    )
    sock.sendall(request.encode())
    status, body, rest = read_response(sock)
    result = {"status": status, "body": body.decode("latin-1"), "smuggled": None}
    if status == 101:
        # The upgrade request's own answer comes on stream 1; the smuggled request is stream 3.
        sock.sendall(conn.data_to_send())
        conn.send_headers(3, [(":method", "GET"), (":path", smuggled), (":scheme", "http"),
                              (":authority", f"127.0.0.1:{port}"), ("x-mfa-gateway-token-kind", "app_user")],
                          end_stream=True)
        sock.sendall(conn.data_to_send())
        data = rest
        while result["smuggled"] is None:
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 3:
                    result["smuggled"] = int(dict(event.headers)[b":status"])
            sock.sendall(conn.data_to_send())
            data = sock.recv(65536)
            if not data:
                break
    print(json.dumps(result))


def ws(url, token, message):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    headers = {} if token == "-" else {"Authorization": f"Bearer {token}"}
    try:
        with connect(url, additional_headers=headers, open_timeout=10) as socket_:
            socket_.send(message)
            print(json.dumps({"echo": socket_.recv(timeout=10)}))
    except InvalidStatus as e:
        print(json.dumps({"refused": e.response.status_code}))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"serve": serve, "h2c": h2c, "ws": ws}[command](*args)
