"""Mint a signed session token for tcpsocket (run by the application's backend, not the browser).

Usage: python3 mint_jwt.py SECRET_FILE SUBJECT [--single-use]
"""

import secrets
import sys
import time
from pathlib import Path

import jwt

secret = Path(sys.argv[1]).read_bytes().strip()
claims = {
    "sub": sys.argv[2],  # the session's identity, in the daemon's logs and rules
    "aud": "tcpsocket",  # the daemon runs with --jwt-audience tcpsocket
    "exp": int(time.time()) + 300,  # valid for five minutes (then refused)
    "permissions": ["tcp-socket"],
    "origins": ["https://mail.example.org"],  # only pages of this origin may use it
    "rules": ["allow imap.example.org:993", "allow smtp.example.org:465"],
}
if "--single-use" in sys.argv:
    claims["single_use"] = True  # one session only, on any node (--jwt-used-store)
    claims["jti"] = secrets.token_urlsafe(16)
print(jwt.encode(claims, secret, algorithm="HS256"))
