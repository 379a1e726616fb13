TCPSOCKET_FUZZ_EXAMPLES="${TCPSOCKET_FUZZ_EXAMPLES:-10000}" python3 -m pytest tests/test_fuzz.py -q --hypothesis-show-statistics
