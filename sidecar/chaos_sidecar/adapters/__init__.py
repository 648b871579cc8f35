"""I/O adapters: aiohttp peer server and client, event log. They execute, never decide."""
