WS_RUNTIME_TOKEN=secrettoken bash scripts/serve
