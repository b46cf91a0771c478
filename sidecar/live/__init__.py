"""Live operation: the asyncio edges that feed the core with real time and real events."""
