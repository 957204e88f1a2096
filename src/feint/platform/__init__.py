"""The shared plumbing of the services (settings, database, cache, web, serving)."""

# Here, not in `serve`, so that the command line can name them without importing the servers.
SERVICES = ("credits", "shadow", "camouflage")
WORKERS_MAX = 64
