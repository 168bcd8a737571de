"""Running as a service: the daemon, observability, notifications, unit files."""
