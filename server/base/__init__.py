"""What every wing of server/ stands on: the settings, the version, the JSON encoding."""
