"""The fraudscore scoring service: pure scoring core, CLI and (later) HTTP API."""
