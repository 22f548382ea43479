"""Bytes to events: the HTTP client with its socket-side clock, the SSE and NDJSON parsers, the arrival probe.

Protocol-agnostic; the HTTP backends build on it.
"""
