python3 -m venv .venv && .venv/bin/pip install . && WS_RUNTIME_TOKEN=secrettoken .venv/bin/twistd -n tcpsocket
