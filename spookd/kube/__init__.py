"""Everything that speaks to the Kubernetes API server: client, watch, Lease claims, Events, cleanup."""
