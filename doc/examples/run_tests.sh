bash scripts/test
