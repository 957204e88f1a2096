"""Decoy servers: a byte-exact HTTP server (server.py) and personas as data (persona.py, personas/)."""
