WS_RUNTIME_TOKEN="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')" \
  twistd -n tcpsocket --origin https://mail.example.org
