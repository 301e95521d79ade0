"""A gRPC server and client for tests/grpc.rs, without generated code (raw bytes in and out).

  echo.py serve                     prints "port N", then serves echo.Echo/Say (unary) and
                                    echo.Echo/Count (server streaming) until killed
  echo.py call TARGET TOKEN [CA]    calls both through TARGET (TLS when CA, a PEM file, is given)
                                    and prints one JSON line with what came back
"""
import json
import sys
import time
from concurrent import futures

import grpc


def identity(context):
    md = dict(context.invocation_metadata())
    return md.get("x-mfa-gateway-token-kind", "-")


def say(request, context):
    return b"kind=" + identity(context).encode() + b";" + request


def count(request, context):
    for i in range(int(request.decode() or "3")):
        yield f"{i}:{identity(context)}".encode()


def serve():
    handler = grpc.method_handlers_generic_handler(
        "echo.Echo",
        {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"port {port}", flush=True)
    while True:
        time.sleep(3600)


def call(target, token, ca=None):
    if ca:
        with open(ca, "rb") as f:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=f.read()))
    else:
        channel = grpc.insecure_channel(target)
    md = (("authorization", f"Bearer {token}"),)
    out = {}
    say_rpc = channel.unary_unary("/echo.Echo/Say")
    try:
        reply, c = say_rpc.with_call(b"hello", metadata=md, timeout=10)
        out["unary"] = {"code": c.code().name, "reply": reply.decode()}
    except grpc.RpcError as e:
        out["unary"] = {"code": e.code().name, "details": e.details()}
    count_rpc = channel.unary_stream("/echo.Echo/Count")
    stream = count_rpc(b"3", metadata=md, timeout=10)
    try:
        out["stream"] = {"replies": [m.decode() for m in stream], "code": stream.code().name}
    except grpc.RpcError as e:
        out["stream"] = {"code": e.code().name, "details": e.details()}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        call(*sys.argv[2:])
