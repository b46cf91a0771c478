"""The Kamailio edge: evapi events in, authorization answers out, JSON-RPC to end dialogs."""
