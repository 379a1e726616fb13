WS_RUNTIME_TOKEN=change-this-secret-token bash scripts/serve
