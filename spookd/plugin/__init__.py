"""The I/O shell towards the kubelet: plugin servers, registration, restart watch."""
