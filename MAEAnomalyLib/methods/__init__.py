"""The registry of methods: one folder per method."""
