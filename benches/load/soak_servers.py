#!/usr/bin/env python3
"""The outside world for benches/load/soak.sh: a key server that flaps, an upstream that sometimes
resets mid-body, slow clients, and the token files the load generators cycle through.

Usage: soak_servers.py DIR KEY_PORT UPSTREAM_PORT GATEWAY_PORT
Writes DIR/valid.txt (one token), DIR/distinct.txt (20 000 tokens), DIR/invalid.txt (expired,
badly signed, unknown kid, garbage), then serves until killed. Needs `cryptography` (pip).
"""
import asyncio, base64, json, socket, struct, sys, time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

out, key_port, up_port, gw_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
TID = "aaaabbbb-0000-cccc-1111-dddd2222eeee"
ISS = f"https://sts.windows.net/{TID}/"
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
pub = key.public_key().public_numbers()
n_bytes = pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")
JWKS = json.dumps({"keys": [{"kty": "RSA", "use": "sig", "kid": "soak-1", "n": b64(n_bytes), "e": b64(b"\x01\x00\x01")}]})
DISCOVERY = json.dumps({"issuer": ISS, "jwks_uri": f"http://127.0.0.1:{key_port}/keys"})


def mint(i, exp_in=7 * 24 * 3600, kid="soak-1", bad_sig=False, amr=("pwd", "mfa")):
    now = int(time.time())
    header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
    claims = {"aud": "https://api.partnercenter.microsoft.com", "iss": ISS, "iat": now - 60, "nbf": now - 60,
              "exp": now + exp_in, "tid": TID, "ver": "1.0", "appid": "00001111-aaaa-2222-bbbb-3333cccc4444",
              "amr": list(amr), "scp": "user_impersonation", "oid": "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb",
              "upn": "soak@example.onmicrosoft.com", "jti": f"soak-{i}"}
    body = f"{header}.{b64(json.dumps(claims).encode())}"
    sig = key.sign(body.encode(), padding.PKCS1v15(), hashes.SHA256())
    if bad_sig:
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    return f"{body}.{b64(sig)}"


def write_tokens():
    with open(f"{out}/valid.txt", "w") as f:
        f.write(mint(0) + "\n")
    with open(f"{out}/distinct.txt", "w") as f:
        for i in range(20_000):
            f.write(mint(i + 1) + "\n")
    with open(f"{out}/invalid.txt", "w") as f:
        for i in range(200):
            f.write([mint(i, exp_in=-3600), mint(i, bad_sig=True), mint(i, kid="gone"), "not.a.token",
                     mint(i, amr=("pwd",))][i % 5] + "\n")


async def key_server():
    """Serves discovery and keys for 17 s, then is gone (connections refused) for 11 s, in turn: a
    cycle that no refresh interval in whole seconds up to 27 s can keep in step with."""
    async def handle(reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1]
            body = (DISCOVERY if b"openid-configuration" in path else JWKS).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                         b"connection: close\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except Exception:
            pass
        writer.close()

    while True:
        server = await asyncio.start_server(handle, "127.0.0.1", key_port, reuse_address=True)
        await asyncio.sleep(17)
        server.close()
        await server.wait_closed()
        await asyncio.sleep(11)


async def upstream():
    """Answers 200 with a small body; on /reset, sends half a body and resets the connection."""
    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                if b" /reset" in head.split(b"\r\n")[0]:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000)
                    await writer.drain()
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nok\n")
                await writer.drain()
        except Exception:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", up_port, reuse_address=True, backlog=1024)
    await server.serve_forever()


async def slow_client(i, token):
    """Sends a request head one byte a second (the gateway's header timeout ends it), reconnects."""
    head = f"GET /v1/offers HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw_port)
            for b in head:
                writer.write(bytes([b]))
                await writer.drain()
                await asyncio.sleep(1)
            await reader.read(1)
            writer.close()
        except Exception:
            await asyncio.sleep(1)


async def main():
    write_tokens()
    print("tokens written", flush=True)
    token = open(f"{out}/valid.txt").read().strip()
    await asyncio.gather(key_server(), upstream(), *(slow_client(i, token) for i in range(50)))


asyncio.run(main())
