#!/usr/bin/env python3
"""Mint N distinct, valid RS256 tokens for the distinct-token load run.

Signs with the peer key (../shared/peer/mint.py writes PEERDIR/key.pem, kid 'peer-1') so the
gateway and HAProxy both accept them. Each token differs (its own jti and exp), so none can be
answered from the gateway's verified-token cache. One token per line.

Usage: mint_tokens.py [PEERDIR] [COUNT] [OUT]   (defaults: /tmp/peer 10000 PEERDIR/tokens/distinct.txt)

Environment: MFA=0 mints App+User tokens without MFA (amr ["pwd"]); USERS=distinct gives each
token its own user (upn and oid), for the status report's table of users without MFA at its cap.
"""
import os
import base64, json, sys, time
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

peer = sys.argv[1] if len(sys.argv) > 1 else "/tmp/peer"
count = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
out = sys.argv[3] if len(sys.argv) > 3 else f"{peer}/tokens/distinct.txt"
key = serialization.load_pem_private_key(open(f"{peer}/key.pem", "rb").read(), password=None)
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
tid = "aaaabbbb-0000-cccc-1111-dddd2222eeee"
now = int(time.time())
header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "peer-1"}).encode())
amr = ["pwd", "mfa"] if os.environ.get("MFA", "1") != "0" else ["pwd"]
distinct_users = os.environ.get("USERS") == "distinct"
with open(out, "w") as f:
    for i in range(count):
        user = f"user{i}@testtestpartner.onmicrosoft.com" if distinct_users else "Adminagent.csp@testtestpartner.onmicrosoft.com"
        oid = f"aaaaaaaa-0000-1111-2222-{i:012x}" if distinct_users else "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"
        claims = {"aud": "https://api.partnercenter.microsoft.com", "iss": f"https://sts.windows.net/{tid}/",
                  "iat": now - 60, "nbf": now - 60, "exp": now + 7 * 24 * 3600 + i, "tid": tid, "ver": "1.0",
                  "appid": "00001111-aaaa-2222-bbbb-3333cccc4444", "acr": "1", "amr": amr,
                  "scp": "user_impersonation", "oid": oid,
                  "sub": "pairwise-sub-1", "upn": user,
                  "jti": f"load-{i}"}
        body = f"{header}.{b64(json.dumps(claims).encode())}"
        sig = key.sign(body.encode(), padding.PKCS1v15(), hashes.SHA256())
        f.write(f"{body}.{b64(sig)}\n")
print(f"minted {count} tokens into {out}")
